//! Prometheus metrics: one [`Metrics`] handle, cloned into whatever counts (the mesh driver,
//! the work manager, the WebAssembly host), and the `/metrics` endpoint that encodes them.
//!
//! Owns the registry and its metric families. Counting is a relaxed atomic add, so hooks
//! are cheap on hot paths; a disabled handle ([`Metrics::default`]) counts nothing.
//! Values that already live elsewhere (routes, known nodes, process memory and files) are
//! read at scrape time, not counted. Every label value comes from a bounded set: peer node
//! ids of links that came up, work types this node offers, enum names; never a peer's free
//! text.

mod link;
mod process;
mod serve;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use link::LinkMetrics;
pub use serve::{MetricsServer, ServeError, serve};

use crate::mesh::node::AdvertCounts;
use crate::work::UnitState;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels naming a peer node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabel {
    pub(crate) peer: String,
}

/// Labels naming why a link ended before it came up, and which side said so.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: String,
    pub(crate) by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkTypeLabel {
    work_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitLabel {
    work_type: String,
    state: String,
}

/// The metric families. Each is a cheap handle onto shared atomics.
#[derive(Debug)]
pub(crate) struct Families {
    pub(crate) links_up: Gauge,
    pub(crate) link_ups: Family<PeerLabel, Counter>,
    pub(crate) link_flaps: Family<PeerLabel, Counter>,
    pub(crate) link_rx_bytes: Family<PeerLabel, Counter>,
    pub(crate) link_tx_bytes: Family<PeerLabel, Counter>,
    pub(crate) link_tx_messages: Family<PeerLabel, Counter>,
    pub(crate) handshake_failures: Family<ReasonLabel, Counter>,
    pub(crate) refusals: Family<ReasonLabel, Counter>,
    pub(crate) duplicate_node_ids: Counter,
    routes: Gauge,
    known_nodes: Gauge,
    adverts_received: Counter,
    adverts_stored: Counter,
    adverts_refused: Family<KindLabel, Counter>,
    units_started: Family<WorkTypeLabel, Counter>,
    units_reattached: Family<WorkTypeLabel, Counter>,
    units_finished: Family<UnitLabel, Counter>,
    units_running: Family<WorkTypeLabel, Gauge>,
    job_seconds: Family<WorkTypeLabel, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    payload_bytes: Counter,
    content_received_bytes: Counter,
    content_cached_bytes: Counter,
    content_cache_lease_unavailable: Gauge,
    result_bytes: Counter,
    component_compiles: Counter,
    component_cache_hits: Counter,
    rss_bytes: Gauge,
    open_fds: Gauge,
}

impl Families {
    fn new() -> Self {
        Self {
            links_up: Default::default(),
            link_ups: Default::default(),
            link_flaps: Default::default(),
            link_rx_bytes: Default::default(),
            link_tx_bytes: Default::default(),
            link_tx_messages: Default::default(),
            handshake_failures: Default::default(),
            refusals: Default::default(),
            duplicate_node_ids: Default::default(),
            routes: Default::default(),
            known_nodes: Default::default(),
            adverts_received: Default::default(),
            adverts_stored: Default::default(),
            adverts_refused: Default::default(),
            units_started: Default::default(),
            units_reattached: Default::default(),
            units_finished: Default::default(),
            units_running: Default::default(),
            job_seconds: Family::new_with_constructor(job_histogram as fn() -> Histogram),
            queue_depth: Default::default(),
            payload_bytes: Default::default(),
            content_received_bytes: Default::default(),
            content_cached_bytes: Default::default(),
            content_cache_lease_unavailable: Default::default(),
            result_bytes: Default::default(),
            component_compiles: Default::default(),
            component_cache_hits: Default::default(),
            rss_bytes: Default::default(),
            open_fds: Default::default(),
        }
    }
}

/// Job duration buckets: 10 ms to about 11 hours.
fn job_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 16))
}

/// A unit counted in `units_running` ([`Metrics::unit_started`]). [`RunningUnit::finished`]
/// counts its end; dropped without it (its task aborted, as when a released unit is
/// dropped after the release wait while its job has not ended) it is only no longer
/// counted running: a gauge that only a finished task lowered stayed one too high.
#[derive(Debug)]
#[must_use = "dropping it stops counting the unit running"]
pub struct RunningUnit {
    metrics: Metrics,
    work_type: String,
    running: bool,
}

impl RunningUnit {
    /// The unit ended in `state` after `took`, from its job's own start (`None`: not
    /// known; the duration histogram then does not count it).
    pub fn finished(mut self, state: UnitState, took: Option<Duration>) {
        self.running = false;
        self.metrics.unit_finished(&self.work_type, state, took);
    }
}

impl Drop for RunningUnit {
    fn drop(&mut self) {
        if let (true, Some(f)) = (self.running, self.metrics.families()) {
            let label = WorkTypeLabel {
                work_type: std::mem::take(&mut self.work_type),
            };
            f.units_running.get_or_create(&label).dec();
        }
    }
}

/// The node's metrics. Clone it into each counting part; [`Metrics::default`] is disabled.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    families: Families,
    registry: Registry,
}

impl Metrics {
    /// An enabled set of metrics with every family registered.
    #[must_use]
    pub fn new() -> Self {
        let families = Families::new();
        let mut registry = Registry::with_prefix("warren");
        register(&mut registry, &families);
        Self {
            inner: Some(Arc::new(Inner { families, registry })),
        }
    }

    /// Whether this handle counts anything.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub(crate) fn families(&self) -> Option<&Families> {
        self.inner.as_deref().map(|i| &i.families)
    }

    /// A unit of `work_type` started running here: counted running until the returned
    /// [`RunningUnit`] is finished or dropped.
    pub fn unit_started(&self, work_type: &str) -> RunningUnit {
        if let Some(f) = self.families() {
            let label = WorkTypeLabel {
                work_type: work_type.to_owned(),
            };
            f.units_started.get_or_create(&label).inc();
            f.units_running.get_or_create(&label).inc();
        }
        RunningUnit {
            metrics: self.clone(),
            work_type: work_type.to_owned(),
            running: true,
        }
    }

    /// A unit that this node was running when its previous process stopped, and that this
    /// process finishes: its detached job re-attached, or found ended. It counts as started
    /// here too, so that within one process `units_started_total` less
    /// `units_finished_total` is what runs (counters start again at each process start),
    /// and as re-attached.
    pub fn unit_reattached(&self, work_type: &str) -> RunningUnit {
        let running = self.unit_started(work_type);
        if let Some(f) = self.families() {
            let label = WorkTypeLabel {
                work_type: work_type.to_owned(),
            };
            f.units_reattached.get_or_create(&label).inc();
        }
        running
    }

    /// A unit that [`Metrics::unit_started`] counted ended in `state` after `took`, from
    /// its job's own start (`None`: not known, as for a re-attached unit whose job left no
    /// record; the duration histogram then does not count it).
    fn unit_finished(&self, work_type: &str, state: UnitState, took: Option<Duration>) {
        if let Some(f) = self.families() {
            let label = WorkTypeLabel {
                work_type: work_type.to_owned(),
            };
            f.units_running.get_or_create(&label).dec();
            if let Some(took) = took {
                f.job_seconds
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
            }
            let state = UnitLabel {
                work_type: label.work_type,
                state: state.to_string(),
            };
            f.units_finished.get_or_create(&state).inc();
        }
    }

    /// Units waiting for a free slot to run.
    pub fn queue_depth(&self, waiting: usize) {
        if let Some(f) = self.families() {
            f.queue_depth
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }

    /// A payload of `bytes` was stored for a unit.
    pub fn payload_bytes(&self, bytes: u64) {
        if let Some(f) = self.families() {
            f.payload_bytes.inc_by(bytes);
        }
    }

    /// A content-addressed submission sent `bytes` of file contents this node lacked.
    pub fn content_received(&self, bytes: u64) {
        if let Some(f) = self.families() {
            f.content_received_bytes.inc_by(bytes);
        }
    }

    /// A content-addressed submission used `bytes` of file contents already cached here.
    pub fn content_cached(&self, bytes: u64) {
        if let Some(f) = self.families() {
            f.content_cached_bytes.inc_by(bytes);
        }
    }

    /// The content cache's checks so far found file leases not available `total` times
    /// (each time a cached file is hashed again that a stamp would have spared).
    pub fn content_leases_unavailable(&self, total: u64) {
        if let Some(f) = self.families() {
            (f.content_cache_lease_unavailable).set(i64::try_from(total).unwrap_or(i64::MAX));
        }
    }

    /// A unit that ran here produced `bytes` of results.
    pub fn result_bytes(&self, bytes: u64) {
        if let Some(f) = self.families() {
            f.result_bytes.inc_by(bytes);
        }
    }

    /// A component was compiled (its cached form was missing or unusable).
    pub fn component_compiled(&self) {
        if let Some(f) = self.families() {
            f.component_compiles.inc();
        }
    }

    /// A component was loaded from the compiled-component cache.
    pub fn component_cache_hit(&self) {
        if let Some(f) = self.families() {
            f.component_cache_hits.inc();
        }
    }

    /// The counters a mesh driver keeps per link, on this handle's families.
    #[must_use]
    pub fn links(&self) -> LinkMetrics {
        LinkMetrics::new(self.clone())
    }

    /// Encodes every metric in the OpenMetrics text format ([`CONTENT_TYPE`]), after
    /// setting the scrape-time figures from the caller's mesh snapshot, and memory and
    /// open files from `/proc`.
    #[must_use]
    pub fn encode(&self, mesh: &MeshFigures) -> String {
        let Some(inner) = &self.inner else {
            return "# EOF\n".to_owned();
        };
        let f = &inner.families;
        f.routes.set(i64::try_from(mesh.routes).unwrap_or(i64::MAX));
        f.known_nodes
            .set(i64::try_from(mesh.known_nodes).unwrap_or(i64::MAX));
        catch_up(&f.adverts_received, mesh.adverts.received);
        catch_up(&f.adverts_stored, mesh.adverts.stored);
        for (kind, &count) in &mesh.adverts.refused {
            let label = KindLabel {
                kind: (*kind).to_owned(),
            };
            catch_up(&f.adverts_refused.get_or_create(&label), count);
        }
        let usage = process::usage();
        f.rss_bytes.set(usage.rss_bytes);
        f.open_fds.set(usage.open_fds);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &inner.registry);
        out
    }
}

/// What the mesh core counted, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct MeshFigures {
    /// Nodes with a route.
    pub routes: usize,
    /// Nodes with an advert in the link-state database.
    pub known_nodes: usize,
    /// What became of received adverts (monotonic in the core).
    pub adverts: AdvertCounts,
}

/// Raises `counter` to the core's monotonic `total` (the scrape is the only writer).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn register(r: &mut Registry, f: &Families) {
    r.register("links_up", "Links that are up", f.links_up.clone());
    r.register(
        "link_ups",
        "Times a link to the peer came up",
        f.link_ups.clone(),
    );
    r.register(
        "link_flaps",
        "Times a link to the peer went down after being up",
        f.link_flaps.clone(),
    );
    r.register(
        "link_received_bytes",
        "Bytes read from the peer's link socket while up",
        f.link_rx_bytes.clone(),
    );
    r.register(
        "link_sent_bytes",
        "Bytes handed to the peer's link socket while up",
        f.link_tx_bytes.clone(),
    );
    r.register(
        "link_sent_messages",
        "Noise transport messages handed to the peer's link socket while up",
        f.link_tx_messages.clone(),
    );
    r.register(
        "handshake_failures",
        "Links that ended before coming up, by reason and by which side ended them",
        f.handshake_failures.clone(),
    );
    r.register(
        "link_refusals",
        "Peers this node refused (trust, duplicate ids or links), by reason",
        f.refusals.clone(),
    );
    r.register(
        "duplicate_node_ids",
        "Times another node was seen claiming this node's id",
        f.duplicate_node_ids.clone(),
    );
    r.register("routes", "Nodes this node has a route to", f.routes.clone());
    r.register(
        "known_nodes",
        "Nodes with an advert in the link-state database",
        f.known_nodes.clone(),
    );
    r.register(
        "adverts_received",
        "Link-state adverts received from neighbours and session handshakes",
        f.adverts_received.clone(),
    );
    r.register(
        "adverts_stored",
        "Received adverts stored as new information (and flooded on)",
        f.adverts_stored.clone(),
    );
    r.register(
        "adverts_refused",
        "Received adverts refused, by kind (bad signature, untrusted, rate limited, ...)",
        f.adverts_refused.clone(),
    );
    register_work(r, f);
}

fn register_work(r: &mut Registry, f: &Families) {
    r.register(
        "units_started",
        "Work units started here, by work type",
        f.units_started.clone(),
    );
    r.register(
        "units_reattached",
        "Work units a restarted node found running (or ended) and finished, by work type; \
         counted in units_started too",
        f.units_reattached.clone(),
    );
    r.register(
        "units_finished",
        "Work units that ran here and ended, by work type and final state",
        f.units_finished.clone(),
    );
    r.register(
        "units_running",
        "Work units running here now",
        f.units_running.clone(),
    );
    r.register(
        "job_duration_seconds",
        "How long units ran here, from start to end",
        f.job_seconds.clone(),
    );
    r.register(
        "work_queue_depth",
        "Units waiting for a free slot to run",
        f.queue_depth.clone(),
    );
    r.register(
        "payload_bytes",
        "Bytes of unit payloads stored here",
        f.payload_bytes.clone(),
    );
    r.register(
        "content_received_bytes",
        "Bytes of file contents received in content-addressed submissions (not cached here)",
        f.content_received_bytes.clone(),
    );
    r.register(
        "content_cached_bytes",
        "Bytes of file contents content-addressed submissions found in the content cache",
        f.content_cached_bytes.clone(),
    );
    r.register(
        "content_cache_lease_unavailable",
        "Checks of cached contents that found file leases not available (each such file is hashed again at every use)",
        f.content_cache_lease_unavailable.clone(),
    );
    r.register(
        "result_bytes",
        "Bytes of results produced by units run here",
        f.result_bytes.clone(),
    );
    r.register(
        "component_compiles",
        "Components compiled",
        f.component_compiles.clone(),
    );
    r.register(
        "component_cache_hits",
        "Components loaded precompiled from the cache",
        f.component_cache_hits.clone(),
    );
    r.register(
        "process_resident_memory_bytes",
        "Resident memory of this process",
        f.rss_bytes.clone(),
    );
    r.register(
        "process_open_fds",
        "Open file descriptors of this process",
        f.open_fds.clone(),
    );
}
