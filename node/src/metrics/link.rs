//! The mesh driver's side of the metrics: what it sees of each link (up, down and how,
//! bytes each way), kept per link id so that the hot path is one atomic add.

use std::collections::HashMap;

use prometheus_client::metrics::counter::Counter;

use super::{Metrics, PeerLabel, ReasonLabel};
use crate::id::NodeId;
use crate::mesh::link::{LinkEnd, LinkId};
use crate::mesh::message::CloseReason;

/// Per-link counters for one mesh driver. Owned by the driver task, so no locking.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    metrics: Metrics,
    /// Links that are up, with their counters.
    up: HashMap<LinkId, UpLink>,
}

#[derive(Debug)]
struct UpLink {
    rx: Counter,
    tx: Counter,
    messages: Counter,
    peer: String,
}

impl LinkMetrics {
    pub(super) fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            up: HashMap::new(),
        }
    }

    /// `link` came up with `peer`.
    pub fn link_up(&mut self, link: LinkId, peer: &NodeId) {
        let Some(f) = self.metrics.families() else {
            return;
        };
        let label = PeerLabel {
            peer: peer.to_string(),
        };
        f.link_ups.get_or_create(&label).inc();
        let counters = UpLink {
            rx: f.link_rx_bytes.get_or_create(&label).clone(),
            tx: f.link_tx_bytes.get_or_create(&label).clone(),
            messages: f.link_tx_messages.get_or_create(&label).clone(),
            peer: label.peer,
        };
        self.up.insert(link, counters);
        f.links_up
            .set(i64::try_from(self.up.len()).unwrap_or(i64::MAX));
    }

    /// `link` ended as `end`: a flap if it had been up, else a handshake failure or a
    /// refusal.
    pub fn link_down(&mut self, link: LinkId, end: &LinkEnd) {
        let Some(f) = self.metrics.families() else {
            return;
        };
        if let Some(up) = self.up.remove(&link) {
            f.links_up
                .set(i64::try_from(self.up.len()).unwrap_or(i64::MAX));
            // Our own shutdown is not a flap.
            if *end != LinkEnd::ByUs(CloseReason::Shutdown) {
                f.link_flaps
                    .get_or_create(&PeerLabel { peer: up.peer })
                    .inc();
            }
            return;
        }
        let (reason, by) = match end {
            LinkEnd::ByUs(reason) if is_refusal(*reason) => {
                let label = ReasonLabel {
                    reason: reason_name(*reason).to_owned(),
                    by: "us".to_owned(),
                };
                f.refusals.get_or_create(&label).inc();
                return;
            }
            LinkEnd::ByUs(reason) => (reason_name(*reason), "us"),
            LinkEnd::ByPeer(reason) => (reason_name(*reason), "peer"),
            // The text is the peer's or the crypto library's; only its kind is a label.
            LinkEnd::Failed(_) => ("error", "us"),
        };
        let label = ReasonLabel {
            reason: reason.to_owned(),
            by: by.to_owned(),
        };
        f.handshake_failures.get_or_create(&label).inc();
    }

    /// `bytes` were read from `link`'s socket.
    pub fn received(&self, link: LinkId, bytes: usize) {
        if let Some(up) = self.up.get(&link) {
            up.rx.inc_by(bytes as u64);
        }
    }

    /// A message of `bytes` was handed to `link`'s socket.
    pub fn sent(&self, link: LinkId, bytes: usize) {
        if let Some(up) = self.up.get(&link) {
            up.tx.inc_by(bytes as u64);
            up.messages.inc();
        }
    }

    /// Another node claims this node's id.
    pub fn duplicate_node_id(&self) {
        if let Some(f) = self.metrics.families() {
            f.duplicate_node_ids.inc();
        }
    }
}

/// Reasons for which this node refuses a peer rather than failing with it.
fn is_refusal(reason: CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::UntrustedKey
            | CloseReason::KeyPinnedToOtherNode
            | CloseReason::IdPinnedToOtherKey
            | CloseReason::DuplicateNodeId
            | CloseReason::DuplicateLink
            | CloseReason::KeyRetired
    )
}

/// A close reason as a label value.
fn reason_name(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::UntrustedKey => "untrusted_key",
        CloseReason::KeyPinnedToOtherNode => "key_pinned_to_other_node",
        CloseReason::IdPinnedToOtherKey => "id_pinned_to_other_key",
        CloseReason::DuplicateNodeId => "duplicate_node_id",
        CloseReason::DuplicateLink => "duplicate_link",
        CloseReason::IdleTimeout => "idle_timeout",
        CloseReason::HandshakeTimeout => "handshake_timeout",
        CloseReason::ProtocolViolation => "protocol_violation",
        CloseReason::VersionMismatch { .. } => "version_mismatch",
        CloseReason::SendQueueFull => "send_queue_full",
        CloseReason::BadCertificate => "bad_certificate",
        CloseReason::TooManyHandshakes => "too_many_handshakes",
        CloseReason::Removed => "removed",
        CloseReason::KeyRetired => "key_retired",
        CloseReason::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MeshFigures;

    fn peer(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    #[test]
    fn bytes_count_per_peer_only_while_up_and_a_drop_after_up_is_a_flap() {
        let metrics = Metrics::new();
        let mut links = metrics.links();
        let link = LinkId(1);
        links.received(link, 100); // still handshaking: not a peer's bytes yet
        links.link_up(link, &peer("relay"));
        links.received(link, 10);
        links.sent(link, 7);
        links.sent(link, 3);
        links.link_down(link, &LinkEnd::ByPeer(CloseReason::IdleTimeout));
        links.received(link, 1000); // after down: ignored
        let text = metrics.encode(&MeshFigures::default());
        assert!(
            text.contains("warren_link_received_bytes_total{peer=\"relay\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("warren_link_sent_bytes_total{peer=\"relay\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("warren_link_sent_messages_total{peer=\"relay\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("warren_link_flaps_total{peer=\"relay\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("warren_links_up 0\n"), "{text}");
    }

    #[test]
    fn links_that_never_came_up_count_as_refusals_or_handshake_failures_by_reason() {
        let metrics = Metrics::new();
        let mut links = metrics.links();
        links.link_down(LinkId(1), &LinkEnd::ByUs(CloseReason::UntrustedKey));
        links.link_down(LinkId(2), &LinkEnd::ByPeer(CloseReason::UntrustedKey));
        // A hostile peer's text never becomes a label value.
        links.link_down(LinkId(3), &LinkEnd::Failed("x\"} 9\nevil 1".into()));
        let text = metrics.encode(&MeshFigures::default());
        assert!(
            text.contains("warren_link_refusals_total{reason=\"untrusted_key\",by=\"us\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "warren_handshake_failures_total{reason=\"untrusted_key\",by=\"peer\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("warren_handshake_failures_total{reason=\"error\",by=\"us\"} 1"),
            "{text}"
        );
        assert!(!text.contains("evil"), "{text}");
    }

    #[test]
    fn our_own_shutdown_is_not_a_flap_and_a_disabled_handle_counts_nothing() {
        let metrics = Metrics::new();
        let mut links = metrics.links();
        links.link_up(LinkId(1), &peer("a"));
        links.link_down(LinkId(1), &LinkEnd::ByUs(CloseReason::Shutdown));
        assert!(
            !metrics
                .encode(&MeshFigures::default())
                .contains("warren_link_flaps_total{")
        );

        let mut off = Metrics::default().links();
        off.link_up(LinkId(1), &peer("a"));
        off.sent(LinkId(1), 5);
        assert!(off.up.is_empty());
        assert_eq!(
            Metrics::default().encode(&MeshFigures::default()),
            "# EOF\n"
        );
    }

    #[test]
    fn advert_counts_from_the_core_become_counters_by_refusal_kind() {
        let metrics = Metrics::new();
        let mut figures = MeshFigures {
            routes: 2,
            known_nodes: 3,
            ..MeshFigures::default()
        };
        figures.adverts.received = 12;
        figures.adverts.stored = 5;
        figures.adverts.refused.insert("bad_signature", 4);
        figures.adverts.refused.insert("rate_limited", 3);
        let text = metrics.encode(&figures);
        assert!(
            text.contains("warren_adverts_received_total 12\n"),
            "{text}"
        );
        assert!(text.contains("warren_adverts_stored_total 5\n"), "{text}");
        assert!(
            text.contains("warren_adverts_refused_total{kind=\"bad_signature\"} 4\n"),
            "{text}"
        );
        // A second scrape raises each counter to the core's new total, never past it.
        figures.adverts.received = 15;
        let text = metrics.encode(&figures);
        assert!(
            text.contains("warren_adverts_received_total 15\n"),
            "{text}"
        );
        assert!(
            text.contains("warren_adverts_refused_total{kind=\"rate_limited\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("warren_known_nodes 3\n"), "{text}");
    }
}
