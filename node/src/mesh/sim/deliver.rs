//! Stream delivery through the simulation: a sender that sends only what its credit allows,
//! and a slow reader that consumes only while the sender is blocked, so that the window is
//! filled and its bound checked.

use std::time::Duration;

use bytes::Bytes;

use super::{NodeIdx, Sim};
use crate::id::{NodeId, ServiceName};
use crate::mesh::node::Event;
use crate::mesh::stream::{StreamError, StreamEvent, StreamId};

/// Largest single `stream_send` of the sender.
const SEND_BATCH: usize = 256 * 1024;

/// The outcome of [`Sim::transfer`].
#[derive(Debug)]
pub(crate) struct Transfer {
    /// What the receiver got, in order.
    pub(crate) received: Vec<u8>,
    /// Most bytes ever sent by the sender and not yet consumed by the receiver.
    pub(crate) max_unconsumed: u64,
    /// Whether a send beyond the credit was tried, and refused.
    pub(crate) over_credit_refused: bool,
    /// Virtual time from open to the receiver seeing the end.
    pub(crate) elapsed: Duration,
}

#[derive(Debug)]
struct Sender {
    id: StreamId,
    opened: bool,
    credit: u64,
    sent: usize,
    fin: bool,
    tried_over_credit: bool,
}

#[derive(Debug, Default)]
struct Receiver {
    id: Option<StreamId>,
    received: Vec<u8>,
    pending: usize,
    consumed: usize,
    finished: bool,
}

impl Sender {
    fn on_event(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::Stream(StreamEvent::Opened { id }) if *id == self.id => self.opened = true,
            Event::Stream(StreamEvent::Credit { id, bytes }) if *id == self.id => {
                self.credit += bytes;
            }
            Event::Stream(StreamEvent::Reset { id, reason }) if *id == self.id => {
                return Err(format!("sender's stream reset: {reason}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn is_blocked(&self, len: usize) -> bool {
        self.credit == 0 || self.sent == len
    }
}

impl Receiver {
    fn on_event(&mut self, opener: &NodeId, event: &Event) -> Result<(), String> {
        let Event::Stream(event) = event else {
            return Ok(());
        };
        match event {
            StreamEvent::Incoming { id, from, .. } if &from.node == opener && self.id.is_none() => {
                self.id = Some(*id);
            }
            StreamEvent::Data { id, data } if Some(*id) == self.id => {
                self.received.extend_from_slice(data);
                self.pending += data.len();
            }
            StreamEvent::Finished { id } if Some(*id) == self.id => self.finished = true,
            StreamEvent::Reset { id, reason } if Some(*id) == self.id => {
                return Err(format!("receiver's stream reset: {reason}"));
            }
            _ => {}
        }
        Ok(())
    }
}

impl Sim {
    /// Streams `payload` from `a` to a listener on `b` and returns what `b` received.
    ///
    /// # Panics
    /// When the transfer fails or stalls.
    pub(crate) fn deliver(&mut self, a: NodeIdx, b: NodeIdx, payload: &[u8]) -> Vec<u8> {
        match self.transfer(a, b, payload, 1_000_000) {
            Ok(t) => t.received,
            Err(e) => panic!("deliver {} -> {}: {e}", self.id(a), self.id(b)),
        }
    }

    /// [`Sim::deliver`] with the flow-control figures.
    ///
    /// # Errors
    /// What went wrong: no route, a reset, a window overrun, or a stall.
    pub(crate) fn transfer(
        &mut self,
        a: NodeIdx,
        b: NodeIdx,
        payload: &[u8],
        max_steps: u64,
    ) -> Result<Transfer, String> {
        let service = ServiceName::new("sink").expect("valid service");
        let source = ServiceName::new("source").expect("valid service");
        let svc = service.clone();
        self.with_node(b, |n, now| n.listen(now, svc));
        let (a_id, b_id) = (self.id(a), self.id(b));
        self.run_until(|s| s.node(a).is_reachable(&b_id), max_steps)
            .map_err(|e| format!("{b_id} never became reachable: {e:?}"))?;
        let start = self.now();
        let (mut seen_a, mut seen_b) = (self.events(a).len(), self.events(b).len());
        let id = self
            .with_node(a, |n, now| n.open_stream(now, &b_id, service, source))
            .map_err(|e| e.to_string())?;
        let mut tx = Sender {
            id,
            opened: false,
            credit: 0,
            sent: 0,
            fin: false,
            tried_over_credit: false,
        };
        let mut rx = Receiver::default();
        let mut transfer = Transfer {
            received: Vec::new(),
            max_unconsumed: 0,
            over_credit_refused: false,
            elapsed: Duration::ZERO,
        };
        for _ in 0..max_steps {
            for event in &self.events(a)[seen_a..] {
                tx.on_event(event)?;
            }
            for event in &self.events(b)[seen_b..] {
                rx.on_event(&a_id, event)?;
            }
            (seen_a, seen_b) = (self.events(a).len(), self.events(b).len());
            self.pump(a, b, payload, &mut tx, &mut rx, &mut transfer)?;
            if rx.finished {
                transfer.received = rx.received;
                transfer.elapsed = self.now() - start;
                return Ok(transfer);
            }
            self.step();
        }
        Err(format!(
            "stalled after {max_steps} steps: sent {}, received {}",
            tx.sent,
            rx.received.len()
        ))
    }

    /// One round of the application on both ends: send what credit allows, finish, and
    /// consume while the sender is blocked.
    fn pump(
        &mut self,
        a: NodeIdx,
        b: NodeIdx,
        payload: &[u8],
        tx: &mut Sender,
        rx: &mut Receiver,
        transfer: &mut Transfer,
    ) -> Result<(), String> {
        if !tx.opened {
            return Ok(());
        }
        let n = (payload.len() - tx.sent)
            .min(SEND_BATCH)
            .min(usize::try_from(tx.credit).unwrap_or(usize::MAX));
        if n > 0 {
            let data = Bytes::copy_from_slice(&payload[tx.sent..tx.sent + n]);
            self.with_node(a, |node, now| node.stream_send(now, tx.id, data))
                .map_err(|e| e.to_string())?;
            tx.sent += n;
            tx.credit -= n as u64;
        }
        if tx.credit == 0 && tx.sent < payload.len() && !tx.tried_over_credit {
            tx.tried_over_credit = true;
            let one = Bytes::from_static(b"x");
            match self.with_node(a, |node, now| node.stream_send(now, tx.id, one)) {
                Err(StreamError::NoCredit { .. }) => transfer.over_credit_refused = true,
                other => return Err(format!("a send beyond the credit gave {other:?}")),
            }
        }
        if tx.sent == payload.len() && !tx.fin {
            tx.fin = true;
            self.with_node(a, |node, now| node.stream_finish(now, tx.id));
        }
        let unconsumed = (tx.sent - rx.consumed) as u64;
        transfer.max_unconsumed = transfer.max_unconsumed.max(unconsumed);
        if let Some(rid) = rx.id
            && rx.pending > 0
            && tx.is_blocked(payload.len())
        {
            let n = std::mem::take(&mut rx.pending);
            rx.consumed += n;
            self.with_node(b, |node, now| node.stream_consumed(now, rid, n));
        }
        Ok(())
    }
}
