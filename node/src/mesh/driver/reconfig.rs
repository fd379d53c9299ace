//! A reload's changes to the running mesh: the peers to dial, the listeners, whom to trust.
//! Peers are matched by where and how they are dialled, so an unchanged peer keeps its link
//! (a new cost applies from its next dial).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{Driver, PeerTarget, accept_loop};
use crate::ca::SignedCertificate;
use crate::keys::{LinkKeypair, SignedSuccession};
use crate::mesh::route::Cost;
use crate::mesh::transport::{Dial, Listener};
use crate::mesh::trust::TrustPolicy;

/// What a reload changes in the mesh; `None` and empty fields leave things as they are.
#[derive(Default)]
pub struct Reconfigure {
    /// Every peer to dial from now on: new ones are dialled, missing ones removed (their
    /// dialled links closed with a reason).
    pub peers: Option<Vec<(PeerTarget, Dial)>>,
    /// Listeners to close, by bound address.
    pub close_listeners: Vec<SocketAddr>,
    /// Newly bound listeners to accept on.
    pub open_listeners: Vec<(Listener, Cost)>,
    /// A new trust policy and own certificate.
    pub trust: Option<(TrustPolicy, Option<SignedCertificate>)>,
    /// A rotated link key and this node's succession chain leading to it (checked by the
    /// caller against the running key).
    pub keys: Option<(LinkKeypair, Vec<SignedSuccession>)>,
}

impl std::fmt::Debug for Reconfigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfigure")
            .field("peers", &self.peers.as_ref().map(Vec::len))
            .field("close_listeners", &self.close_listeners)
            .field("open_listeners", &self.open_listeners.len())
            .field("trust", &self.trust.is_some())
            .field("keys", &self.keys.as_ref().map(|(k, _)| k.public()))
            .finish()
    }
}

/// What identifies a configured peer across reloads.
fn peer_key(target: &PeerTarget, dial: &Dial) -> String {
    format!("{}:{} {dial:?}", target.host, target.port)
}

impl Driver {
    pub(super) fn reconfigure(&mut self, now: std::time::Instant, change: Reconfigure) {
        for addr in change.close_listeners {
            self.accepts.retain(|(bound, task)| {
                let closing = *bound == Some(addr);
                if closing {
                    task.abort();
                    tracing::info!(%addr, "listener closed by reload");
                }
                !closing
            });
        }
        for (listener, cost) in change.open_listeners {
            let addr = listener.tcp.local_addr().ok();
            tracing::info!(?addr, "listener opened by reload");
            let task = tokio::spawn(accept_loop(listener, cost, self.socket_tx.clone()));
            self.accepts.push((addr, task));
        }
        // Peers first: a removed peer hears that it was removed, not that its key is no
        // longer trusted.
        if let Some(peers) = change.peers {
            self.set_peers(now, peers);
        }
        // The key before the trust settings: a new certificate goes out with the new key in
        // one advert, never beside the old key.
        if let Some((keys, chain)) = change.keys {
            let cert = match &change.trust {
                Some((_, cert)) => cert.clone(),
                None => self.node.config().cert.clone(),
            };
            if let Err(e) = self.node.rotate_key(now, keys, chain, cert) {
                tracing::error!(error = %e, "the rotated key was not adopted");
            }
        }
        if let Some((policy, cert)) = change.trust {
            self.node.set_trust(now, policy, cert);
        }
    }

    fn set_peers(&mut self, now: std::time::Instant, peers: Vec<(PeerTarget, Dial)>) {
        let mut wanted: HashMap<String, (PeerTarget, Dial)> = peers
            .into_iter()
            .map(|(target, dial)| (peer_key(&target, &dial), (target, dial)))
            .collect();
        let current: Vec<_> = (self.peers.iter())
            .map(|(slot, target)| {
                let dial = self.dials.get(slot).cloned().unwrap_or_default();
                (*slot, peer_key(target, &dial))
            })
            .collect();
        for (slot, key) in current {
            match wanted.remove(&key) {
                Some((target, _)) => {
                    self.peers.insert(slot, target);
                }
                None => {
                    tracing::info!(peer = %key, "peer removed by reload");
                    self.peers.remove(&slot);
                    self.dials.remove(&slot);
                    self.node.remove_peer(now, slot);
                }
            }
        }
        for (key, (target, dial)) in wanted {
            tracing::info!(peer = %key, "peer added by reload");
            let slot = self.node.add_peer(now);
            self.peers.insert(slot, target);
            self.dials.insert(slot, dial);
        }
    }
}
