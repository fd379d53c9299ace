//! A canned [`Backend`] and sample data for the control module's tests.
//!
//! Owns nothing outside tests; node `a` links to node `b` and nothing else answers.

use std::collections::BTreeMap;
use std::time::Duration;

use super::reply::{Advertisement, Connection, DeployReply, StatusReport, TraceHop, WorkCommand};
use super::session::Backend;
use crate::id::NodeId;

fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("invariant: test ids are valid")
}

/// A status report for node `a`, linked to `b`.
pub(crate) fn sample_report() -> StatusReport {
    let (a, b) = (node("a"), node("b"));
    StatusReport {
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
    }
}

/// Node `a`: `b` answers pings in 1.5 ms, every other node is unreachable.
#[derive(Debug, Default)]
pub(crate) struct FakeBackend;

impl FakeBackend {
    pub(crate) fn new() -> Self {
        Self
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
    ) -> Result<DeployReply, String> {
        if signature != "good" {
            return Err("signature check failed".into());
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
}
