//! Typed control replies and their exact wire text.
//!
//! Owns every string the control socket writes: the greeting, `ERROR:` lines and the JSON
//! replies, byte for byte as Receptor writes them. Receptor builds replies as Go maps
//! (`json.Marshal` sorts their keys) holding Go structs (whose keys keep declaration order),
//! so top-level keys here are sorted and nested objects keep Receptor's field order. The
//! same types deserialize on the client side. No IO.

pub mod limits;
pub mod reload;
pub mod work;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

pub use self::limits::JobLimits;
pub use self::reload::{CONNECTING_LINE, ReloadReply};
pub use self::work::{SubmitReply, UnitStatusReply, WorkReply};
use super::goformat::{go_duration_string, go_escape_json, serialize_go_float};
use super::request::ParseError;
use crate::id::NodeId;

/// What the greeting line starts with; the node id follows.
pub const GREETING_PREFIX: &str = "Receptor Control, node ";

/// What every error line starts with. receptorctl strips exactly these 7 bytes.
pub const ERROR_PREFIX: &str = "ERROR: ";

/// The message for a command word the node does not serve.
pub const UNKNOWN_COMMAND: &str = "Unknown command";

/// The greeting sent as soon as a client connects: `Receptor Control, node <id>\n`.
pub fn greeting(node: &NodeId) -> String {
    format!("{GREETING_PREFIX}{node}\n")
}

/// One error line: `ERROR: <message>\n`.
pub fn error_line(message: &str) -> String {
    format!("{ERROR_PREFIX}{message}\n")
}

/// A node's view of the mesh, as the `status` command reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusReport {
    /// Services the node knows of, its own included.
    #[serde(rename = "Advertisements", default)]
    pub advertisements: Vec<Advertisement>,
    /// Warren's addition: how many reloads changed the running config since the start.
    #[serde(rename = "ConfigGeneration", default)]
    pub config_generation: u64,
    /// The node's direct links.
    #[serde(rename = "Connections", default)]
    pub connections: Vec<Connection>,
    /// Every known node's links and their costs.
    #[serde(rename = "KnownConnectionCosts", default)]
    pub known_connection_costs: BTreeMap<NodeId, BTreeMap<NodeId, f64>>,
    /// This node's id.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// Destination node to next hop.
    #[serde(rename = "RoutingTable", default)]
    pub routing_table: BTreeMap<NodeId, NodeId>,
    /// Logical CPUs on the node's host.
    #[serde(rename = "SystemCPUCount")]
    pub system_cpu_count: u64,
    /// Memory on the node's host, in MiB.
    #[serde(rename = "SystemMemoryMiB")]
    pub system_memory_mib: u64,
    /// The node's software version.
    #[serde(rename = "Version")]
    pub version: String,
    /// Warren's addition: the work types this node offers and the component serving each.
    /// (receptorctl shows it under "Additional data".)
    #[serde(rename = "WorkTypes", default)]
    pub work_types: Vec<WorkTypeStatus>,
    /// Warren's addition: how this node contains the programs its jobs start (empty from
    /// nodes that do not say).
    #[serde(
        rename = "Containment",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub containment: String,
}

/// What a deploy made active on the target node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReply {
    /// The node deployed to.
    #[serde(rename = "Node")]
    pub node: String,
    /// The component's name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Its version.
    #[serde(rename = "Version")]
    pub version: String,
    /// sha256 of its bytes, hex.
    #[serde(rename = "Sha256")]
    pub sha256: String,
    /// Its signer's token.
    #[serde(rename = "Signer")]
    pub signer: String,
    /// The work types now running it.
    #[serde(rename = "WorkTypes")]
    pub work_types: Vec<String>,
}

/// One offered work type and its active component (a Warren addition to `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkTypeStatus {
    /// The work type's name.
    #[serde(rename = "WorkType")]
    pub work_type: String,
    /// What serves it (`command`, `ansible-runner`, or the work type's own component).
    #[serde(rename = "Handler")]
    pub handler: String,
    /// The active component's name.
    #[serde(rename = "Component")]
    pub component: String,
    /// Its version.
    #[serde(rename = "Version")]
    pub version: String,
    /// sha256 of its bytes, hex.
    #[serde(rename = "Sha256")]
    pub sha256: String,
    /// Its signer's token, or `built-in`.
    #[serde(rename = "Signer")]
    pub signer: String,
    /// What each of its jobs may use (absent from nodes that predate it).
    #[serde(rename = "Limits", default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<JobLimits>,
    /// The limits on the programs its jobs start (empty from nodes that do not say).
    #[serde(
        rename = "ProgramLimits",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub program_limits: String,
}

/// The top-level status keys, in Go's (byte-wise sorted) output order.
pub const STATUS_FIELDS: [&str; 11] = [
    "Advertisements",
    "ConfigGeneration",
    "Connections",
    "Containment",
    "KnownConnectionCosts",
    "NodeID",
    "RoutingTable",
    "SystemCPUCount",
    "SystemMemoryMiB",
    "Version",
    "WorkTypes",
];

/// One direct link of the node (Receptor's `ConnStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// The peer.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// The link's routing cost.
    #[serde(rename = "Cost", serialize_with = "serialize_go_float")]
    pub cost: f64,
}

/// A service some node offers (Receptor's `ServiceAdvertisement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertisement {
    /// The node offering the service.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// The service name.
    #[serde(rename = "Service")]
    pub service: String,
    /// When the advert was made, RFC 3339 in UTC (see [`super::goformat::rfc3339_utc`]).
    #[serde(rename = "Time")]
    pub time: String,
    /// 0 datagram, 1 stream, 2 stream with TLS.
    #[serde(rename = "ConnType")]
    pub conn_type: u8,
    /// Free-form tags; Receptor's control service advertises `type: Control Service`.
    #[serde(rename = "Tags", default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Work types the node accepts, on the control service's advert.
    #[serde(rename = "WorkCommands", default)]
    pub work_commands: Option<Vec<WorkCommand>>,
}

/// A work type a node accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkCommand {
    /// The work type name.
    #[serde(rename = "WorkType")]
    pub work_type: String,
    /// Whether submissions must be signed.
    #[serde(rename = "Secure")]
    pub secure: bool,
}

/// A status reply: the report, restricted to the requested top-level keys.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReply {
    /// The full report.
    pub report: StatusReport,
    /// Keys to include; `None` means all. Unknown names are silently left out.
    pub requested_fields: Option<Vec<String>>,
}

impl Serialize for StatusReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wanted = |name: &str| {
            self.requested_fields
                .as_ref()
                .is_none_or(|fields| fields.iter().any(|f| f == name))
        };
        let r = &self.report;
        let mut map = serializer.serialize_map(None)?;
        for name in STATUS_FIELDS.into_iter().filter(|n| wanted(n)) {
            match name {
                "Advertisements" => map.serialize_entry(name, &r.advertisements)?,
                "Connections" => map.serialize_entry(name, &r.connections)?,
                // Warren's additions are left out when empty, so the reply is Receptor's.
                "Containment" if r.containment.is_empty() => {}
                "Containment" => map.serialize_entry(name, &r.containment)?,
                "KnownConnectionCosts" => {
                    map.serialize_entry(name, &GoCostTable(&r.known_connection_costs))?;
                }
                "NodeID" => map.serialize_entry(name, &r.node_id)?,
                "RoutingTable" => map.serialize_entry(name, &r.routing_table)?,
                "SystemCPUCount" => map.serialize_entry(name, &r.system_cpu_count)?,
                "SystemMemoryMiB" => map.serialize_entry(name, &r.system_memory_mib)?,
                "Version" => map.serialize_entry(name, &r.version)?,
                // Warren's additions.
                // Left out until a reload changed the config, so the reply is Receptor's.
                "ConfigGeneration" if r.config_generation == 0 => {}
                "ConfigGeneration" => map.serialize_entry(name, &r.config_generation)?,
                // Left out when empty, so the reply is Receptor's.
                "WorkTypes" if r.work_types.is_empty() => {}
                "WorkTypes" => map.serialize_entry(name, &r.work_types)?,
                _ => {}
            }
        }
        map.end()
    }
}

/// Serialises the cost table with Go's float formatting.
struct GoCostTable<'a>(&'a BTreeMap<NodeId, BTreeMap<NodeId, f64>>);

impl Serialize for GoCostTable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Row<'a>(&'a BTreeMap<NodeId, f64>);
        impl Serialize for Row<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                struct Cost(f64);
                impl Serialize for Cost {
                    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        serialize_go_float(&self.0, s)
                    }
                }
                serializer.collect_map(self.0.iter().map(|(k, v)| (k, Cost(*v))))
            }
        }
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, Row(v))))
    }
}

/// The outcome of one ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingReply {
    /// The node answered.
    Success {
        /// The node that answered.
        from: NodeId,
        /// Round-trip time.
        time: Duration,
    },
    /// No answer; Receptor sends only the error text, no `From`.
    Failure {
        /// Why.
        error: String,
    },
}

/// Ping's wire shape; keys in sorted order.
#[derive(Serialize, Deserialize)]
struct PingWire {
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(rename = "From", default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(rename = "Success")]
    success: bool,
    #[serde(rename = "Time", default, skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
    #[serde(rename = "TimeStr", default, skip_serializing_if = "Option::is_none")]
    time_str: Option<String>,
}

impl Serialize for PingReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            Self::Success { from, time } => PingWire {
                error: None,
                from: Some(from.to_string()),
                success: true,
                time: Some(go_nanos(*time)),
                time_str: Some(go_duration_string(*time)),
            },
            Self::Failure { error } => PingWire {
                error: Some(error.clone()),
                from: None,
                success: false,
                time: None,
                time_str: None,
            },
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PingReply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = PingWire::deserialize(deserializer)?;
        if !wire.success {
            let error = wire.error.unwrap_or_else(|| "ping failed".to_owned());
            return Ok(Self::Failure { error });
        }
        let from = wire.from.ok_or_else(|| de::Error::missing_field("From"))?;
        let time = wire.time.ok_or_else(|| de::Error::missing_field("Time"))?;
        Ok(Self::Success {
            from: from.parse().map_err(de::Error::custom)?,
            time: from_go_nanos(time),
        })
    }
}

/// One traceroute hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHop {
    /// The node that answered at this hop count, if any did.
    pub from: Option<NodeId>,
    /// Round-trip time to that node.
    pub time: Duration,
    /// Why the trace stopped here, on the last hop only.
    pub error: Option<String>,
}

/// A hop's wire shape; keys in sorted order. `From` is `""` when no node answered.
#[derive(Serialize, Deserialize)]
struct HopWire {
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(rename = "From", default)]
    from: String,
    #[serde(rename = "Time", default)]
    time: i64,
    #[serde(rename = "TimeStr", default)]
    time_str: String,
}

/// A traceroute reply: hops in order, sent as `{"0":{..},"1":{..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TracerouteReply {
    /// Hops from the nearest outward.
    pub hops: Vec<TraceHop>,
}

impl Serialize for TracerouteReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Go sorts the keys as strings: "0", "1", "10", "2", ...
        let sorted: BTreeMap<String, HopWire> = self
            .hops
            .iter()
            .enumerate()
            .map(|(i, hop)| {
                let wire = HopWire {
                    error: hop.error.clone(),
                    from: hop
                        .from
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    time: go_nanos(hop.time),
                    time_str: go_duration_string(hop.time),
                };
                (i.to_string(), wire)
            })
            .collect();
        serializer.collect_map(sorted)
    }
}

impl<'de> Deserialize<'de> for TracerouteReply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, HopWire>::deserialize(deserializer)?;
        let mut numbered = raw
            .into_iter()
            .map(|(key, wire)| {
                let index: usize = key.parse().map_err(de::Error::custom)?;
                let from = match wire.from.as_str() {
                    "" => None,
                    name => Some(name.parse().map_err(de::Error::custom)?),
                };
                let hop = TraceHop {
                    from,
                    time: from_go_nanos(wire.time),
                    error: wire.error,
                };
                Ok((index, hop))
            })
            .collect::<Result<Vec<_>, D::Error>>()?;
        numbered.sort_by_key(|(index, _)| *index);
        Ok(Self {
            hops: numbered.into_iter().map(|(_, hop)| hop).collect(),
        })
    }
}

/// A Go `time.Duration` in JSON: signed nanoseconds, saturating.
fn go_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn from_go_nanos(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

/// Everything the session can answer to one request line.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A `status` result.
    Status(StatusReply),
    /// A `ping` result (a failed ping is still this, not an error).
    Ping(PingReply),
    /// A `traceroute` result.
    Traceroute(TracerouteReply),
    /// A `deploy` result: what is now active.
    Deploy(DeployReply),
    /// A `work` command's result.
    Work(WorkReply),
    /// A `reload` result.
    Reload(ReloadReply),
    /// The request line was refused.
    Rejected(ParseError),
    /// The command failed: `ERROR: <message>`.
    Error(String),
}

impl Reply {
    /// The reply's exact bytes, ending in `\n`.
    pub fn encode(&self) -> String {
        match self {
            Self::Status(status) => json_line(status),
            Self::Ping(ping) => json_line(ping),
            Self::Traceroute(trace) => json_line(trace),
            Self::Deploy(deployed) => json_line(deployed),
            Self::Work(work) => json_line(work),
            Self::Reload(reload) => json_line(reload),
            Self::Rejected(err) => rejection(err),
            Self::Error(message) => error_line(message),
        }
    }
}

/// The error line(s) for a refused request: a line that never named a command also gets
/// `ERROR: Unknown command`, as Receptor writes it.
fn rejection(err: &ParseError) -> String {
    let mut out = error_line(&err.to_string());
    if err.is_followed_by_unknown_command() {
        out.push_str(&error_line(UNKNOWN_COMMAND));
    }
    out
}

/// A JSON reply line as Go's `json.Marshal` writes it, plus the newline.
fn json_line<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => go_escape_json(json) + "\n",
        Err(e) => error_line(&format!("could not convert response to JSON: {e}")),
    }
}

#[cfg(test)]
mod tests;
