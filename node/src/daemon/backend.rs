//! The control service's view of a running node: Receptor-shaped status, ping and traceroute
//! answered from the mesh, and work units answered by the node's [`Work`].

use crate::control::DeployFailure;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::AsyncRead;
use tokio::sync::watch;

use super::Deployer;
use super::reload::Reloader;
use crate::control::Backend;
use crate::control::goformat::rfc3339_utc;
use crate::control::reply::{
    Advertisement, Connection, DeployReply, JobLimits, ReloadReply, StatusReport, TraceHop,
    WorkCommand, WorkTypeStatus,
};
use crate::control::session::{Duplex, WorkCreate};
use crate::host::registry::Registry;
use crate::id::{NodeId, ServiceName};
use crate::mesh::driver::MeshHandle;
use crate::mesh::lsdb::Advert;
use crate::mesh::message::Unreachable;
use crate::mesh::node::{AdvertCounts, MeshStatus, ProbeFailure};
use crate::work::{Requester, Submission, UnitId, UnitStatus, Work, WorkError};

/// The mesh service that carries the control protocol between nodes.
pub const CONTROL_SERVICE: &str = "control";

/// Receptor's ConnType for a plain (non-TLS) control service: the mesh link is already
/// encrypted and authenticated.
const CONN_TYPE_STREAM: u8 = 1;

/// Answers control requests from a node's mesh handle and work manager.
#[derive(Clone)]
pub struct NodeBackend {
    mesh: MeshHandle,
    max_hops: u8,
    /// The offered work types, as last built or deployed.
    registry: watch::Receiver<Arc<Registry>>,
    deployer: Deployer,
    /// Runs this node's work units.
    work: Work,
    /// Answers `reload`.
    reloader: Reloader,
}

impl NodeBackend {
    /// A backend over `mesh` and `work`, tracing at most `max_hops` hops.
    pub fn new(
        mesh: MeshHandle,
        max_hops: u8,
        registry: watch::Receiver<Arc<Registry>>,
        deployer: Deployer,
        work: Work,
        reloader: Reloader,
    ) -> Self {
        Self {
            mesh,
            max_hops,
            registry,
            deployer,
            work,
            reloader,
        }
    }
}

impl fmt::Debug for NodeBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBackend")
            .field("node", self.mesh.id())
            .field("max_hops", &self.max_hops)
            .finish_non_exhaustive()
    }
}

impl Backend for NodeBackend {
    fn node_id(&self) -> NodeId {
        self.mesh.id().clone()
    }

    async fn status(&self) -> StatusReport {
        let status = self.mesh.status().await.unwrap_or_else(|_| MeshStatus {
            id: self.mesh.id().clone(),
            links: Vec::new(),
            routes: BTreeMap::new(),
            adverts: Vec::new(),
            advert_counts: AdvertCounts::default(),
        });
        let registry = self.registry.borrow().clone();
        let mut report = report(&status, &registry);
        report.config_generation = self.reloader.generation();
        report
    }

    async fn ping(&self, target: NodeId) -> Result<Duration, (Option<NodeId>, String)> {
        match self.mesh.probe(&target, None).await {
            Ok(Ok((_, rtt))) => Ok(rtt),
            Ok(Err((from, reason, _))) => Err((from, describe(&target, reason))),
            Err(gone) => Err((None, gone.to_string())),
        }
    }

    async fn deploy(
        &self,
        node: String,
        signature: String,
        component: Vec<u8>,
    ) -> Result<DeployReply, DeployFailure> {
        self.deployer.deploy(&node, signature, component).await
    }

    /// Units are submitted by this node (the control socket's users are on it); work for
    /// another node becomes a local unit that mirrors it.
    async fn work_create(&self, request: WorkCreate) -> Result<UnitId, WorkError> {
        let submission = Submission {
            node: request.node,
            work_type: request.work_type,
            params: request.params,
            submitter: (self.mesh.id().clone(), None),
            ttl: request.ttl,
            sign_work: request.sign_work,
        };
        self.work.create(submission).await
    }

    async fn work_start(
        &self,
        unit: UnitId,
        payload: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), WorkError> {
        self.work.start(unit, payload).await.map(|_| ())
    }

    async fn work_status(&self, unit: UnitId) -> Result<UnitStatus, WorkError> {
        let status = self.work.status(unit, &Requester::Operator).await?;
        Ok(status.redacted())
    }

    async fn work_list(&self) -> Result<Vec<(UnitId, UnitStatus)>, WorkError> {
        let units = self.work.list(&Requester::Operator).await?;
        Ok(units
            .into_iter()
            .map(|(id, status)| (id, status.redacted()))
            .collect())
    }

    async fn work_results(
        &self,
        unit: UnitId,
        startpos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, WorkError> {
        let reader = self
            .work
            .results(unit, startpos, &Requester::Operator)
            .await?;
        Ok(Box::new(reader))
    }

    async fn work_cancel(&self, unit: UnitId) -> Result<(), WorkError> {
        self.work.cancel(unit, &Requester::Operator).await
    }

    async fn work_release(&self, unit: UnitId, force: bool) -> Result<(), WorkError> {
        self.work.release(unit, force, &Requester::Operator).await
    }

    async fn connect(&self, node: NodeId, service: ServiceName) -> Result<Box<dyn Duplex>, String> {
        match self.mesh.connect(&node, &service).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn reload(&self) -> ReloadReply {
        self.reloader.reload().await
    }

    async fn traceroute(&self, target: NodeId) -> Vec<TraceHop> {
        let mut hops = Vec::new();
        for limit in 0..self.max_hops {
            match self.mesh.probe(&target, Some(limit)).await {
                Ok(Ok((from, time))) => {
                    let done = from == target;
                    hops.push(TraceHop {
                        from: Some(from),
                        time,
                        error: None,
                    });
                    if done {
                        break;
                    }
                }
                Ok(Err((from, ProbeFailure::Unreachable(Unreachable::HopLimit), time))) => {
                    hops.push(TraceHop {
                        from,
                        time,
                        error: None,
                    });
                }
                Ok(Err((from, reason, time))) => {
                    let error = Some(describe(&target, reason));
                    hops.push(TraceHop { from, time, error });
                    break;
                }
                Err(gone) => {
                    let error = Some(gone.to_string());
                    hops.push(TraceHop {
                        from: None,
                        time: Duration::ZERO,
                        error,
                    });
                    break;
                }
            }
        }
        hops
    }
}

fn describe(target: &NodeId, reason: ProbeFailure) -> String {
    match reason {
        ProbeFailure::Unreachable(Unreachable::NoRoute) => format!("no route to node {target}"),
        ProbeFailure::Unreachable(Unreachable::HopLimit) => "hop limit exceeded".to_owned(),
        ProbeFailure::Timeout => "timeout".to_owned(),
    }
}

/// Builds Receptor's status report from a mesh snapshot and the offered work types.
pub fn report(status: &MeshStatus, registry: &Registry) -> StatusReport {
    StatusReport {
        config_generation: 0,
        work_types: registry
            .iter()
            .map(|a| WorkTypeStatus {
                work_type: a.work_type.clone(),
                handler: a.handler_name().to_owned(),
                component: a.info.name.clone(),
                version: a.info.version.clone(),
                sha256: a.info.sha256_hex(),
                signer: a.info.signer_label(),
                limits: Some(job_limits(&a.policy)),
                program_limits: a.policy.program_limits.describe(),
            })
            .collect(),
        containment: registry.containment().to_owned(),
        node_id: status.id.clone(),
        version: crate::VERSION.to_owned(),
        system_cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        system_memory_mib: system_memory_mib(),
        connections: status
            .links
            .iter()
            .map(|l| Connection {
                node_id: l.peer.clone(),
                cost: l.cost.as_f64(),
            })
            .collect(),
        routing_table: status
            .routes
            .iter()
            .map(|(dst, route)| (dst.clone(), route.next_hop.clone()))
            .collect(),
        known_connection_costs: status
            .adverts
            .iter()
            .map(|a| {
                let costs = a
                    .links
                    .iter()
                    .map(|l| (l.peer.clone(), l.cost.as_f64()))
                    .collect();
                (a.origin.clone(), costs)
            })
            .collect(),
        advertisements: status.adverts.iter().flat_map(advertisements).collect(),
    }
}

/// The limits a work type's jobs run under, as status shows them.
fn job_limits(policy: &crate::host::policy::Policy) -> JobLimits {
    let limits = &policy.limits;
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    JobLimits {
        memory_bytes: count(limits.memory_bytes),
        deadline_seconds: limits.deadline.as_secs(),
        output_bytes: limits.output_bytes,
        descriptors: limits.descriptors.map(count),
        resources: count(crate::host::fds::resource_cap(limits.descriptors)),
        disk_bytes: limits.disk.map(|d| d.bytes),
        disk_inodes: limits.disk.map(|d| d.inodes),
        arguments: (policy.args.iter())
            .map(|(program, args)| (program.clone(), args.to_string()))
            .collect(),
    }
}

/// One Receptor advertisement per service of a node; work types ride on `control`, as in
/// Receptor.
fn advertisements(advert: &Advert) -> Vec<Advertisement> {
    let time = rfc3339_utc(UNIX_EPOCH + Duration::from_millis(advert.issued_at_ms));
    let work: Vec<WorkCommand> = advert
        .work_types
        .iter()
        .map(|w| WorkCommand {
            work_type: w.clone(),
            secure: false,
        })
        .collect();
    advert
        .services
        .iter()
        .map(|service| Advertisement {
            node_id: advert.origin.clone(),
            service: service.to_string(),
            time: time.clone(),
            conn_type: CONN_TYPE_STREAM,
            tags: None,
            work_commands: (service.as_str() == CONTROL_SERVICE).then(|| work.clone()),
        })
        .collect()
}

/// Total memory from /proc/meminfo, 0 where unknown.
fn system_memory_mib() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}
