//! The node's end-to-end sessions and the streams that ride them: opening a stream waits
//! for the session with its target (one handshake per pair of nodes, then none per stream);
//! a session message is judged against the link-state database and the trust policy.

use std::time::Instant;

use super::{Event, MeshNode, OpenError, PendingOpen};
use crate::id::{NodeId, ServiceName};
use crate::keys::PublicKey;
use crate::mesh::message::{PacketBody, ResetReason, Unreachable};
use crate::mesh::session::{PeerIdentity, SessionMsg, SessionRefusal};
use crate::mesh::stream::{Outbound, StreamData, StreamError, StreamEvent, StreamId};
use crate::mesh::trust::{Binding, TrustDecision, decide_remote};

impl MeshNode {
    /// Opens a stream to `service` on `dst`. `Opened` or `Reset` follows as an event; the
    /// first stream to a node waits for the session handshake (one round trip).
    ///
    /// # Errors
    /// [`OpenError`] when `dst` is us, unreachable, or has no key we could bind.
    pub fn open_stream(
        &mut self,
        now: Instant,
        dst: &NodeId,
        service: ServiceName,
        from_service: ServiceName,
    ) -> Result<StreamId, OpenError> {
        if dst == &self.config.id {
            return Err(OpenError::ToSelf);
        }
        if self.next_link(dst).is_none() {
            return Err(OpenError::NoRoute(dst.clone()));
        }
        let established = (self.sessions.established(dst)).map(|s| s.peer.binding.clone());
        match established {
            Some(binding) if !self.may_open_to(&binding) => {
                return Err(OpenError::Unverified(dst.clone()));
            }
            Some(_) => {}
            None => {
                self.target_key(dst)?;
            }
        }
        let id = self.streams.allocate();
        self.queue_open(now, id, dst.clone(), from_service, service);
        Ok(id)
    }

    /// The key to start a session with `dst` under, and what binds it to the id: a local pin
    /// first (followed through key successions), else the key of its verified advert, else
    /// the key it proved on a link with us.
    ///
    /// # Errors
    /// [`OpenError::NoKey`] when nothing is known of `dst`'s key, and
    /// [`OpenError::Unverified`] when only the first key seen binds it (see
    /// [`MeshNode::may_open_to`]).
    fn target_key(&self, dst: &NodeId) -> Result<(PublicKey, Binding), OpenError> {
        // A pin stands for the node's current key (after the rotations accepted here).
        if let Some((anchor, key)) = self.config.trust.pin_of(dst) {
            return Ok((key, Binding::Pinned { anchor }));
        }
        let (key, binding) = self
            .lsdb
            .binding(dst)
            .map(|(key, binding)| (key, binding.clone()))
            .or_else(|| self.neighbour_binding(dst))
            .ok_or_else(|| OpenError::NoKey(dst.clone()))?;
        if !self.may_open_to(&binding) {
            return Err(OpenError::Unverified(dst.clone()));
        }
        Ok((key, binding))
    }

    /// The key a linked neighbour `dst` proved in its link handshake, and what bound it
    /// there: for an open made after the link came up but before its advert arrived.
    fn neighbour_binding(&self, dst: &NodeId) -> Option<(PublicKey, Binding)> {
        self.links
            .values()
            .find_map(|slot| match (&slot.peer, &slot.binding) {
                (Some((node, key)), Some(binding)) if slot.up && node == dst => {
                    Some((*key, binding.clone()))
                }
                _ => None,
            })
    }

    /// Whether this node sends work and streams to a node whose key `binding` binds: only
    /// when something it configured vouches (a pin, a trusted key, a certificate). The first
    /// key seen for an id is whoever flooded an advert for it first — after a restart, any
    /// node of the mesh — so only a client that checks it itself (`first_seen_targets`)
    /// takes it.
    fn may_open_to(&self, binding: &Binding) -> bool {
        binding.is_verified() || self.config.first_seen_targets
    }

    /// Opens stream `id` now if the session with `to` is up, else queues it behind the
    /// session's handshake (starting one if none is under way).
    pub(super) fn queue_open(
        &mut self,
        now: Instant,
        id: StreamId,
        to: NodeId,
        from_service: ServiceName,
        service: ServiceName,
    ) {
        let open = PendingOpen {
            id,
            from_service,
            service,
        };
        if self.sessions.established(&to).is_some() {
            self.launch(now, &to, open);
            return;
        }
        self.pending_opens.entry(to.clone()).or_default().push(open);
        if !self.sessions.is_initiating(&to) {
            self.initiate_session(now, &to);
        }
    }

    fn initiate_session(&mut self, now: Instant, to: &NodeId) {
        let target = match self.target_key(to) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(peer = %to, error = %e, "cannot start a session");
                self.fail_pending(to, ResetReason::SessionFailed);
                return;
            }
        };
        let Some(own) = self.lsdb.get(&self.config.id).cloned() else {
            return;
        };
        let id = self.rng.next_u64();
        match self.sessions.initiate(now, to, target, id, &own) {
            Ok(msg) => {
                if !self.route_packet(to, PacketBody::Session(msg)) {
                    self.sessions.forget(to);
                    self.fail_pending(to, ResetReason::NoRoute);
                }
            }
            Err(e) => {
                tracing::warn!(peer = %to, error = %e, "cannot start a session");
                self.fail_pending(to, ResetReason::SessionFailed);
            }
        }
    }

    /// Sends the open of a queued stream on the established session with `to`.
    fn launch(&mut self, now: Instant, to: &NodeId, open: PendingOpen) {
        let Some(link) = self.next_link(to) else {
            self.stream_event(StreamEvent::Reset {
                id: open.id,
                reason: ResetReason::NoRoute,
            });
            return;
        };
        let number = self.rng.next_u64();
        let me = self.config.id.clone();
        let Some(session) = self.sessions.established(to) else {
            return;
        };
        // The session may be one the peer started (both ends at once, or before ours): its
        // binding is checked again, as `open_stream` checked the one it expected.
        if !(session.peer.binding.is_verified() || self.config.first_seen_targets) {
            tracing::warn!(peer = %to, "refused to open a stream: only the first key seen binds the node's id here");
            self.stream_event(StreamEvent::Reset {
                id: open.id,
                reason: ResetReason::SessionFailed,
            });
            return;
        }
        let out = self.streams.open(
            now,
            open.id,
            &me,
            number,
            link,
            session,
            open.from_service,
            open.service,
        );
        self.send_stream(out);
    }

    fn launch_pending(&mut self, now: Instant, to: &NodeId) {
        for open in self.pending_opens.remove(to).unwrap_or_default() {
            self.launch(now, to, open);
        }
    }

    /// Fails every stream waiting for the session with `to`.
    pub(super) fn fail_pending(&mut self, to: &NodeId, reason: ResetReason) {
        for open in self.pending_opens.remove(to).unwrap_or_default() {
            self.stream_event(StreamEvent::Reset {
                id: open.id,
                reason,
            });
        }
    }

    fn stream_event(&mut self, event: StreamEvent) {
        self.events.push_back(Event::Stream(event));
    }

    /// A session message from `src`.
    pub(super) fn handle_session(&mut self, now: Instant, src: NodeId, msg: SessionMsg) {
        match msg {
            SessionMsg::Init { session, noise } => self.session_init(now, src, session, &noise),
            SessionMsg::Accept { session, noise } => {
                self.session_accepted(now, src, session, &noise);
            }
            SessionMsg::Refuse { session, reason } => {
                if self.sessions.is_initiating(&src) && self.sessions.id_with(&src) == Some(session)
                {
                    tracing::warn!(peer = %src, %reason, "the node refused our end-to-end session");
                    self.sessions.forget(&src);
                    self.fail_pending(&src, ResetReason::SessionFailed);
                }
            }
        }
    }

    fn session_init(&mut self, now: Instant, src: NodeId, session: u64, noise: &[u8]) {
        let (key, init, pending) = match self.sessions.read_init(&src, noise) {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(peer = %src, error = %e, "refused a session handshake");
                self.refuse_session(&src, session, SessionRefusal::BadHandshake);
                return;
            }
        };
        // The initiator's own advert rides along: take it as if flooded to us.
        self.handle_advert(now, None, init.advert);
        let binding = match self.lsdb.binding(&src) {
            Some((stored, binding)) if stored == key => binding.clone(),
            _ => match self.bind_remote(now, &src, &key) {
                Some(binding) => binding,
                None => {
                    tracing::warn!(peer = %src, %key, "refused an end-to-end session: nothing binds its key to its node id here");
                    self.refuse_session(&src, session, SessionRefusal::UntrustedKey);
                    return;
                }
            },
        };
        let peer = PeerIdentity {
            node: src.clone(),
            key,
            binding,
        };
        match self.sessions.accept(now, pending, session, peer) {
            Ok(Some(reply)) => {
                tracing::debug!(peer = %src, "end-to-end session accepted");
                self.route_packet(&src, PacketBody::Session(reply));
                self.launch_pending(now, &src);
            }
            // Both ends initiated at once and ours wins: the peer answers ours.
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(peer = %src, error = %e, "session handshake failed");
                self.refuse_session(&src, session, SessionRefusal::BadHandshake);
            }
        }
    }

    /// What binds `key` to `node` when no stored advert does: only a local pin.
    fn bind_remote(&self, now: Instant, node: &NodeId, key: &PublicKey) -> Option<Binding> {
        match decide_remote(&self.config.trust, key, node, None, self.wall_ms(now)) {
            TrustDecision::Trusted(binding @ (Binding::Pinned { .. } | Binding::TrustedKey)) => {
                Some(binding)
            }
            _ => None,
        }
    }

    fn refuse_session(&mut self, to: &NodeId, session: u64, reason: SessionRefusal) {
        self.route_packet(
            to,
            PacketBody::Session(SessionMsg::Refuse { session, reason }),
        );
    }

    fn session_accepted(&mut self, now: Instant, src: NodeId, session: u64, noise: &[u8]) {
        match self.sessions.read_accept(now, &src, session, noise) {
            Ok(_) => {
                self.unreachable_hints.remove(&src);
                tracing::debug!(peer = %src, "end-to-end session established");
                self.launch_pending(now, &src);
            }
            Err(e) => {
                tracing::debug!(peer = %src, error = %e, "ignored a session answer");
            }
        }
    }

    /// Times out session handshakes, forgets idle sessions.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        for peer in self.sessions.expire(now, self.config.session_idle) {
            let reason = match self.unreachable_hints.remove(&peer) {
                Some(Unreachable::HopLimit) => ResetReason::HopLimit,
                Some(Unreachable::NoRoute) => ResetReason::NoRoute,
                None => ResetReason::SessionFailed,
            };
            tracing::warn!(%peer, %reason, "no answer to our end-to-end session handshake");
            self.fail_pending(&peer, reason);
        }
    }

    /// Sends bytes on a stream (at most the credit granted so far).
    ///
    /// # Errors
    /// [`StreamError`] for an unknown or finished stream, or data beyond the credit.
    pub fn stream_send(
        &mut self,
        now: Instant,
        id: StreamId,
        data: impl Into<StreamData>,
    ) -> Result<(), StreamError> {
        let mut out = Vec::new();
        self.streams.send(now, id, data.into(), &mut out)?;
        self.emit_stream(Vec::new(), out);
        Ok(())
    }

    /// Sends what the writer of `id` sealed on its [`Outbound`] since the last flush.
    pub fn stream_flush(&mut self, now: Instant, id: StreamId) {
        let mut out = Vec::new();
        self.streams.flush(now, id, &mut out);
        self.emit_stream(Vec::new(), out);
    }

    /// The sending side of stream `id`, for a writer that seals its own data (then calls
    /// [`MeshNode::stream_flush`]) instead of handing it to [`MeshNode::stream_send`].
    pub fn stream_outbound(&self, id: StreamId) -> Option<Outbound> {
        self.streams.outbound(id)
    }

    /// The application consumed `n` received bytes of `id`.
    pub fn stream_consumed(&mut self, now: Instant, id: StreamId, n: usize) {
        let mut out = Vec::new();
        self.streams.consumed(now, id, n, &mut out);
        self.emit_stream(Vec::new(), out);
    }

    /// We will send no more on `id`.
    pub fn stream_finish(&mut self, now: Instant, id: StreamId) {
        let mut out = Vec::new();
        self.streams.finish(now, id, &mut out);
        self.emit_stream(Vec::new(), out);
    }

    /// Resets a stream from our side (a queued open is dropped).
    pub fn stream_reset(&mut self, _now: Instant, id: StreamId, reason: ResetReason) {
        for opens in self.pending_opens.values_mut() {
            opens.retain(|o| o.id != id);
        }
        let mut out = Vec::new();
        self.streams.reset(id, reason, &mut out);
        self.emit_stream(Vec::new(), out);
    }

    /// The identity of stream `id`'s peer.
    pub fn stream_peer(&self, id: StreamId) -> Option<&PeerIdentity> {
        self.streams.peer(id)
    }
}
