//! The embedded client nodes of a process, shared: one per (peer, identity file, client
//! node id), used by every job that names the same three, so that a hundred concurrent
//! `run_async` calls make one link to the peer, not a hundred. A node nobody has used for
//! [`LINGER`] is closed (its link told why); the next job links again.
//!
//! The first job to need a node links it while the others naming the same three wait on
//! its slot, so two jobs never race to make two links.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use warren::client::{ClientError, ClientNode, ClientOptions, identity};
use warren::config::EndpointAddr;
use warren::id::NodeId;
use warren::mesh::driver::MeshHandle;

/// How long a node with no job stays linked: a script that runs jobs one after another
/// reuses it; an idle process does not hold a link for ever.
const LINGER: Duration = Duration::from_secs(30);

/// How often idle nodes are looked for.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// What makes two jobs share a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NodeKey {
    peer: String,
    identity: PathBuf,
    node_id: Option<String>,
}

/// One key's node, if linked; locked while it is being linked.
type Slot = tokio::sync::Mutex<Option<Arc<SharedNode>>>;

/// The process's shared nodes.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: Mutex<HashMap<NodeKey, Arc<Slot>>>,
}

/// A linked client node and who is using it.
#[derive(Debug)]
pub(crate) struct SharedNode {
    /// The node; locked by a job waiting for its target ([`ClientNode::wait_for`] may
    /// remember the target's key).
    client: tokio::sync::Mutex<ClientNode>,
    mesh: MeshHandle,
    id: NodeId,
    peer: EndpointAddr,
    /// Jobs holding a [`Lease`].
    leases: AtomicUsize,
    /// When the last lease ended.
    idle_since: Mutex<Instant>,
}

/// A job's hold on a shared node: while one exists the node stays linked.
#[derive(Debug)]
pub(crate) struct Lease(Arc<SharedNode>);

impl Registry {
    /// An empty registry whose idle nodes are closed by a task on `runtime`.
    pub(crate) fn new(runtime: &Runtime) -> Arc<Self> {
        let registry = Arc::new(Self::default());
        let weak = Arc::downgrade(&registry);
        runtime.spawn(reap(weak));
        registry
    }

    /// A lease on the node for `options` (peer, identity, node id), linking it first if no
    /// live one exists; `notice` learns of keys created or remembered while linking.
    ///
    /// # Errors
    /// [`ClientError`] explaining why the peer could not be linked.
    pub(crate) async fn lease(
        &self,
        options: ClientOptions,
        notice: impl FnMut(String),
    ) -> Result<Lease, ClientError> {
        let key = NodeKey {
            peer: options.peer.to_string(),
            identity: identity::identity_path(options.identity.as_deref())?,
            node_id: options.node_id.as_ref().map(ToString::to_string),
        };
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(slots.entry(key).or_default())
        };
        let mut linked = slot.lock().await;
        if let Some(node) = linked.as_ref() {
            if node.mesh.status().await.is_ok() {
                return Ok(Lease::new(Arc::clone(node)));
            }
            // Its driver stopped: link anew.
            *linked = None;
        }
        let peer = options.peer.clone();
        let client = ClientNode::connect(options, notice).await?;
        let node = Arc::new(SharedNode {
            mesh: client.mesh().clone(),
            id: client.id().clone(),
            peer,
            client: tokio::sync::Mutex::new(client),
            leases: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        });
        *linked = Some(Arc::clone(&node));
        Ok(Lease::new(node))
    }

    /// How many nodes are linked.
    pub(crate) fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .values()
            .filter(|slot| slot.try_lock().map_or(true, |node| node.is_some()))
            .count()
    }

    /// Closes every node.
    pub(crate) async fn shutdown_all(&self) {
        for slot in self.all_slots() {
            let node = slot.lock().await.take();
            if let Some(node) = node {
                node.mesh.shutdown().await;
            }
        }
    }

    /// Closes the nodes idle for [`LINGER`].
    async fn close_idle(&self) {
        for slot in self.all_slots() {
            let Ok(mut linked) = slot.try_lock() else {
                continue;
            };
            let idle = linked
                .as_ref()
                .is_some_and(|node| node.idle_for() >= LINGER);
            if idle && let Some(node) = linked.take() {
                tracing::debug!(id = %node.id, peer = %node.peer, "closing an idle client node");
                node.mesh.shutdown().await;
            }
        }
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.values().cloned().collect()
    }
}

/// Closes idle nodes until the registry is gone.
async fn reap(registry: Weak<Registry>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.close_idle().await;
    }
}

impl SharedNode {
    /// How long no job has held it (zero while one does).
    fn idle_for(&self) -> Duration {
        if self.leases.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

impl Lease {
    fn new(node: Arc<SharedNode>) -> Self {
        node.leases.fetch_add(1, Ordering::AcqRel);
        Self(node)
    }

    /// The embedded node.
    pub(crate) fn mesh(&self) -> &MeshHandle {
        &self.0.mesh
    }

    /// The client node's id (the submitter the target sees).
    pub(crate) fn id(&self) -> &NodeId {
        &self.0.id
    }

    /// Waits up to `timeout` for a route to `node` offering `work_type`, checking its key.
    ///
    /// # Errors
    /// [`ClientError`] for no route, no such work type, or a changed key.
    pub(crate) async fn wait_for(
        &self,
        node: &NodeId,
        work_type: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut client = self.0.client.lock().await;
        client.set_timeout(timeout);
        client.wait_for(node, work_type).await
    }
}

impl Clone for Lease {
    /// Another hold on the same node.
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.0))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.leases.fetch_sub(1, Ordering::AcqRel);
    }
}
