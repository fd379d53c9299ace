//! A canned [`Backend`] and sample data for the control module's tests.
//!
//! Owns nothing outside tests; node `a` links to node `b` and nothing else answers. Work
//! units live in memory: `echo` succeeds and `fail` fails, each with its payload as output;
//! `nostart` never starts; other work types are unknown.

use crate::control::DeployFailure;
use crate::host::signing::VerifyError;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::reply::{
    Advertisement, Connection, DeployReply, ReloadReply, StatusReport, TraceHop, WorkCommand,
};
use super::session::{Backend, Duplex, WorkCreate};
use crate::id::{NodeId, ServiceName};
use crate::work::{UnitId, UnitState, UnitStatus, WorkError};

fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("invariant: test ids are valid")
}

/// A status report for node `a`, linked to `b`.
pub(crate) fn sample_report() -> StatusReport {
    let (a, b) = (node("a"), node("b"));
    StatusReport {
        config_generation: 0,
        advertisements: vec![Advertisement {
            node_id: a.clone(),
            service: "control".into(),
            time: "2026-11-28T09:00:00.123Z".into(),
            conn_type: 1,
            tags: Some(BTreeMap::from([("type".into(), "Control Service".into())])),
            work_commands: Some(vec![WorkCommand {
                work_type: "echo".into(),
                secure: false,
            }]),
        }],
        connections: vec![Connection {
            node_id: b.clone(),
            cost: 1.0,
        }],
        known_connection_costs: BTreeMap::from([
            (a.clone(), BTreeMap::from([(b.clone(), 1.0)])),
            (b.clone(), BTreeMap::from([(a.clone(), 2.5)])),
        ]),
        node_id: a,
        routing_table: BTreeMap::from([(b.clone(), b)]),
        system_cpu_count: 2,
        system_memory_mib: 1024,
        version: "0.1.0".into(),
        work_types: Vec::new(),
        containment: String::new(),
    }
}

/// Node `a`: `b` answers pings in 1.5 ms, every other node is unreachable.
#[derive(Debug, Default)]
pub(crate) struct FakeBackend {
    units: Mutex<BTreeMap<UnitId, FakeUnit>>,
    /// Numbers the unit ids: `unit0001`, `unit0002`, ...
    created: AtomicU32,
}

/// One in-memory work unit.
#[derive(Debug)]
struct FakeUnit {
    status: UnitStatus,
    stdin: Vec<u8>,
    stdout: Vec<u8>,
    /// Live output for the next `work results`, instead of `stdout`.
    live: Option<DuplexStream>,
}

impl FakeBackend {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The payload a unit was started with.
    pub(crate) fn stdin_of(&self, unit: UnitId) -> Vec<u8> {
        self.lock()[&unit].stdin.clone()
    }

    /// Adds a running unit whose results are whatever is written to `output`'s peer, until
    /// that peer is dropped.
    pub(crate) fn add_live_unit(&self, output: DuplexStream) -> UnitId {
        let id = self.next_id();
        let mut status = UnitStatus::new("echo", BTreeMap::new(), node("a"), node("a"), 0);
        status.state = UnitState::Running;
        let unit = FakeUnit {
            status,
            stdin: Vec::new(),
            stdout: Vec::new(),
            live: Some(output),
        };
        self.lock().insert(id, unit);
        id
    }

    fn next_id(&self) -> UnitId {
        let n = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        format!("unit{n:04}")
            .parse()
            .expect("invariant: unitNNNN is a valid id")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<UnitId, FakeUnit>> {
        self.units
            .lock()
            .expect("invariant: no panics while locked")
    }

    fn with_unit<T>(
        &self,
        unit: UnitId,
        f: impl FnOnce(&mut FakeUnit) -> T,
    ) -> Result<T, WorkError> {
        let mut units = self.lock();
        let found = units.get_mut(&unit).ok_or(WorkError::UnknownUnit(unit))?;
        Ok(f(found))
    }
}

const RTT: Duration = Duration::from_micros(1500);

impl Backend for FakeBackend {
    fn node_id(&self) -> NodeId {
        node("a")
    }

    async fn status(&self) -> StatusReport {
        sample_report()
    }

    async fn ping(&self, target: NodeId) -> Result<Duration, (Option<NodeId>, String)> {
        if target.as_str() == "b" {
            Ok(RTT)
        } else {
            Err((Some(node("a")), "no route to node".into()))
        }
    }

    async fn traceroute(&self, target: NodeId) -> Vec<TraceHop> {
        let reached = target.as_str() == "b";
        vec![TraceHop {
            from: reached.then(|| node("b")),
            time: RTT,
            error: (!reached).then(|| "no route to node".to_owned()),
        }]
    }

    /// Accepts any component whose signature text is `good`, echoing its length.
    async fn deploy(
        &self,
        node: String,
        signature: String,
        component: Vec<u8>,
    ) -> Result<DeployReply, DeployFailure> {
        if signature != "good" {
            return Err(DeployFailure::BadSignatureFile(VerifyError::Malformed(
                "signature check failed".into(),
            )));
        }
        Ok(DeployReply {
            node,
            name: "x".into(),
            version: component.len().to_string(),
            sha256: String::new(),
            signer: String::new(),
            work_types: vec!["echo".into()],
        })
    }

    async fn work_create(&self, request: WorkCreate) -> Result<UnitId, WorkError> {
        self.create(request.work_type, request.params)
    }

    async fn work_start(
        &self,
        unit: UnitId,
        payload: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), WorkError> {
        let mut bytes = Vec::new();
        payload
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| WorkError::Internal(format!("Error reading input data: {e}")))?;
        self.with_unit(unit, |u| Self::finish(u, bytes))?
    }

    async fn work_status(&self, unit: UnitId) -> Result<UnitStatus, WorkError> {
        self.with_unit(unit, |u| u.status.clone())
    }

    async fn work_list(&self) -> Result<Vec<(UnitId, UnitStatus)>, WorkError> {
        Ok(self
            .lock()
            .iter()
            .map(|(id, u)| (*id, u.status.clone()))
            .collect())
    }

    async fn work_results(
        &self,
        unit: UnitId,
        startpos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, WorkError> {
        self.with_unit(unit, |u| -> Box<dyn AsyncRead + Send + Unpin> {
            if let Some(live) = u.live.take() {
                return Box::new(live);
            }
            let start = usize::try_from(startpos).map_or(u.stdout.len(), |s| s.min(u.stdout.len()));
            Box::new(Cursor::new(u.stdout[start..].to_vec()))
        })
    }

    async fn work_cancel(&self, unit: UnitId) -> Result<(), WorkError> {
        self.with_unit(unit, |u| {
            if !u.status.state.is_terminal() {
                u.status.state = UnitState::Canceled;
            }
        })
    }

    async fn work_release(&self, unit: UnitId, _force: bool) -> Result<(), WorkError> {
        self.lock()
            .remove(&unit)
            .map(drop)
            .ok_or(WorkError::UnknownUnit(unit))
    }

    /// Node `b` offers `echo`, which sends back what it receives; nothing else answers.
    async fn connect(&self, node: NodeId, service: ServiceName) -> Result<Box<dyn Duplex>, String> {
        if node.as_str() != "b" || service.as_str() != "echo" {
            return Err(format!("no route to node {node}"));
        }
        let (ours, theirs) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(theirs);
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = write.shutdown().await;
        });
        Ok(Box::new(ours))
    }

    async fn reload(&self) -> ReloadReply {
        ReloadReply::Applied
    }
}

impl FakeBackend {
    fn create(
        &self,
        work_type: String,
        params: BTreeMap<String, String>,
    ) -> Result<UnitId, WorkError> {
        if !["echo", "fail", "nostart"].contains(&work_type.as_str()) {
            return Err(WorkError::UnknownWorkType {
                node: node("a"),
                work_type,
            });
        }
        let id = self.next_id();
        let mut status = UnitStatus::new(work_type, params, node("a"), node("a"), 0);
        status.detail = "Waiting for Input Data".into();
        let unit = FakeUnit {
            status,
            stdin: Vec::new(),
            stdout: Vec::new(),
            live: None,
        };
        self.lock().insert(id, unit);
        Ok(id)
    }

    /// Runs a unit to completion at once: its output is its payload.
    fn finish(unit: &mut FakeUnit, payload: Vec<u8>) -> Result<(), WorkError> {
        let (state, detail) = match unit.status.work_type.as_str() {
            "echo" => (UnitState::Succeeded, "exit status 0"),
            "fail" => (UnitState::Failed, "exit status 1"),
            _ => {
                unit.status.state = UnitState::Failed;
                unit.status.detail = "Error starting worker: no runner".into();
                return Err(WorkError::Internal(unit.status.detail.clone()));
            }
        };
        unit.status.state = state;
        detail.clone_into(&mut unit.status.detail);
        unit.status.stdout_size = payload.len() as u64;
        unit.stdout.clone_from(&payload);
        unit.stdin = payload;
        Ok(())
    }
}
