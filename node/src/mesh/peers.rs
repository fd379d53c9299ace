//! Configured peers to dial: when to dial each, and exponential backoff with jitter after
//! failures.
//!
//! Owns one slot per configured peer address. A slot is idle (waiting for its dial time),
//! dialling, linked (its link is up or handshaking), or satisfied (another link already
//! reaches the node behind it, so dialling again would only make a duplicate). No IO; the
//! randomness for jitter comes from a seeded generator.

use std::time::{Duration, Instant};

use super::link::LinkId;
use crate::id::NodeId;

/// A configured peer's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerSlotId(pub usize);

/// Backoff bounds.
#[derive(Debug, Clone)]
pub struct BackoffConfig {
    /// First retry delay.
    pub min: Duration,
    /// Longest delay between retries.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    Idle {
        due: Instant,
    },
    Dialing,
    Linked(LinkId),
    Satisfied(NodeId),
    /// Removed from the configuration: never dialled again.
    Removed,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    failures: u32,
    /// The node last reached through this slot, so it can be recognised as satisfied.
    last_peer: Option<NodeId>,
}

/// Small deterministic generator for jitter (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A factor in `[0.75, 1.25)`.
    fn jitter(&mut self) -> f64 {
        0.75 + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 0.5
    }
}

/// Every configured peer's dial state.
#[derive(Debug)]
pub struct Peers {
    slots: Vec<Slot>,
    backoff: BackoffConfig,
    rng: Rng,
}

impl Peers {
    /// No peers yet.
    pub fn new(backoff: BackoffConfig, seed: u64) -> Self {
        Self {
            slots: Vec::new(),
            backoff,
            rng: Rng::new(seed),
        }
    }

    /// Adds a peer to dial at once.
    pub fn add(&mut self, now: Instant) -> PeerSlotId {
        self.slots.push(Slot {
            state: SlotState::Idle { due: now },
            failures: 0,
            last_peer: None,
        });
        PeerSlotId(self.slots.len() - 1)
    }

    /// The slot, unless it was removed.
    fn live(&mut self, slot: PeerSlotId) -> Option<&mut Slot> {
        self.slots
            .get_mut(slot.0)
            .filter(|s| s.state != SlotState::Removed)
    }

    /// The next slot due for dialling, marked as dialling.
    pub fn poll_dial(&mut self, now: Instant) -> Option<PeerSlotId> {
        let index = self
            .slots
            .iter()
            .position(|s| matches!(s.state, SlotState::Idle { due } if due <= now))?;
        self.slots[index].state = SlotState::Dialing;
        Some(PeerSlotId(index))
    }

    /// When the next slot falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Idle { due } => Some(due),
                _ => None,
            })
            .min()
    }

    /// The dial connected; the link is handshaking.
    pub fn handle_dialed(&mut self, slot: PeerSlotId, link: LinkId) {
        if let Some(s) = self.live(slot) {
            s.state = SlotState::Linked(link);
        }
    }

    /// The dial failed, or its link died before coming up: back off.
    pub fn handle_failed(&mut self, now: Instant, slot: PeerSlotId) {
        let delay = self.next_delay(slot);
        if let Some(s) = self.live(slot) {
            s.failures = s.failures.saturating_add(1);
            s.state = SlotState::Idle { due: now + delay };
        }
    }

    fn next_delay(&mut self, slot: PeerSlotId) -> Duration {
        let failures = self.slots.get(slot.0).map_or(0, |s| s.failures);
        let base = self
            .backoff
            .min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.backoff.max);
        base.mul_f64(self.rng.jitter())
    }

    /// The slot's link came up to `peer`. The backoff is reset only when the link is later
    /// lost ([`Peers::handle_link_lost`]), not when the peer refuses it at once.
    pub fn handle_up(&mut self, slot: PeerSlotId, peer: &NodeId) {
        if let Some(s) = self.live(slot) {
            s.last_peer = Some(peer.clone());
        }
    }

    /// The slot's link was surplus: `peer` is reached by another link. Dial again only when
    /// that peer is lost.
    pub fn handle_satisfied(&mut self, slot: PeerSlotId, peer: NodeId) {
        if let Some(s) = self.live(slot) {
            s.failures = 0;
            s.last_peer = Some(peer.clone());
            s.state = SlotState::Satisfied(peer);
        }
    }

    /// The slot's own link went down after being up: redial soon.
    pub fn handle_link_lost(&mut self, now: Instant, slot: PeerSlotId) {
        if let Some(s) = self.live(slot) {
            s.failures = 0;
        }
        let delay = self.next_delay(slot);
        if let Some(s) = self.live(slot) {
            s.state = SlotState::Idle { due: now + delay };
        }
    }

    /// We lost every link to `peer`: slots that were satisfied by it dial again.
    pub fn handle_peer_lost(&mut self, now: Instant, peer: &NodeId) {
        for index in 0..self.slots.len() {
            if self.slots[index].state == SlotState::Satisfied(peer.clone()) {
                let delay = self.next_delay(PeerSlotId(index));
                self.slots[index].state = SlotState::Idle { due: now + delay };
            }
        }
    }

    /// Stops dialling `slot` for good (its peer was removed from the configuration); the
    /// link it dialled, if any, is the caller's to close.
    pub fn remove(&mut self, slot: PeerSlotId) {
        if let Some(s) = self.slots.get_mut(slot.0) {
            s.state = SlotState::Removed;
        }
    }

    /// We gained a link to `peer` by other means: slots that last reached it need not dial.
    pub fn handle_peer_reached(&mut self, peer: &NodeId) {
        for s in &mut self.slots {
            let idle = matches!(s.state, SlotState::Idle { .. });
            if idle && s.last_peer.as_ref() == Some(peer) {
                s.state = SlotState::Satisfied(peer.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets_on_success() {
        let t0 = Instant::now();
        let mut peers = Peers::new(BackoffConfig::default(), 7);
        let slot = peers.add(t0);
        assert_eq!(peers.poll_dial(t0), Some(slot));
        assert_eq!(peers.poll_dial(t0), None, "a dialling slot is not due");
        let mut last = Duration::ZERO;
        for failures in 0..8u32 {
            peers.handle_failed(t0, slot);
            let delay = peers.next_due().unwrap() - t0;
            let base = Duration::from_millis(250)
                .saturating_mul(1 << failures)
                .min(Duration::from_secs(30));
            assert!(delay >= base.mul_f64(0.75) && delay < base.mul_f64(1.25));
            if failures < 6 {
                assert!(
                    delay > last.mul_f64(1.1),
                    "delays grow: {delay:?} after {last:?}"
                );
            }
            last = delay;
            assert_eq!(peers.poll_dial(t0 + delay), Some(slot));
        }
        peers.handle_dialed(slot, LinkId(1));
        peers.handle_up(slot, &NodeId::new("p").unwrap());
        peers.handle_link_lost(t0, slot);
        assert!(peers.next_due().unwrap() - t0 < Duration::from_millis(313));
    }

    #[test]
    fn satisfied_slot_redials_only_when_peer_lost() {
        let t0 = Instant::now();
        let p = NodeId::new("p").unwrap();
        let mut peers = Peers::new(BackoffConfig::default(), 1);
        let slot = peers.add(t0);
        peers.poll_dial(t0);
        peers.handle_satisfied(slot, p.clone());
        assert_eq!(peers.next_due(), None);
        peers.handle_peer_lost(t0, &p);
        assert!(peers.next_due().is_some());
    }
}
