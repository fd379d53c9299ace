//! Replies to the `work` commands: status objects, unit lists, cancel and release
//! acknowledgements, and the plain status lines of the streaming exchanges.
//!
//! Receptor answers `work status` with a Go map built from `StatusFileData` plus
//! `StateName` (`unitStatusForCFR`), so its keys come out sorted: `Detail`, `ExtraData`,
//! `State`, `StateName`, `StdoutSize`, `WorkType`. No IO.

use std::collections::BTreeMap;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::work::{UnitId, UnitStatus};

/// What the `work submit` status line says before the unit id.
const CREATED_PREFIX: &str = "Work unit created with ID ";
/// What the `work submit` status line says after the unit id.
const CREATED_SUFFIX: &str = ". Send stdin data and EOF.";
/// What the `work results` status line says before the unit id.
const STREAMING_PREFIX: &str = "Streaming results for work unit ";

/// `Work unit created with ID <id>. Send stdin data and EOF.\n`: the payload may follow.
pub fn created_line(unit: &UnitId) -> String {
    format!("{CREATED_PREFIX}{unit}{CREATED_SUFFIX}\n")
}

/// The unit id in a `work submit` status line (without its newline), as receptorctl's
/// regex `Work unit created with ID (.+). Send stdin data and EOF.` finds it.
pub fn parse_created_line(line: &str) -> Option<&str> {
    let id = line
        .strip_prefix(CREATED_PREFIX)?
        .strip_suffix(CREATED_SUFFIX)?;
    (!id.is_empty()).then_some(id)
}

/// `Streaming results for work unit <id>\n`: the unit's output follows, then the server
/// closes the connection.
pub fn streaming_line(unit: &UnitId) -> String {
    format!("{STREAMING_PREFIX}{unit}\n")
}

/// The unit id in a `work results` status line (without its newline).
pub fn parse_streaming_line(line: &str) -> Option<&str> {
    line.strip_prefix(STREAMING_PREFIX)
        .filter(|id| !id.is_empty())
}

/// A unit's status as `work status` and `work list` report it (Receptor's keys, sorted).
///
/// The client decodes it from Receptor nodes too, so the numeric state is kept as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitStatusReply {
    /// Human-readable detail, such as "exit status 0".
    #[serde(rename = "Detail")]
    pub detail: String,
    /// Per-work-type extra data: `null`, an object or a string.
    #[serde(rename = "ExtraData", default)]
    pub extra_data: serde_json::Value,
    /// The state code: 0 Pending, 1 Running, 2 Succeeded, 3 Failed, 4 Canceled.
    #[serde(rename = "State")]
    pub state: i64,
    /// The state's name.
    #[serde(rename = "StateName")]
    pub state_name: String,
    /// Bytes of output so far.
    #[serde(rename = "StdoutSize")]
    pub stdout_size: u64,
    /// The unit's work type.
    #[serde(rename = "WorkType")]
    pub work_type: String,
}

/// The `State` code receptorctl treats as a failed unit.
pub const STATE_FAILED: i64 = 3;

impl UnitStatusReply {
    /// Whether the unit failed (receptorctl's `State == 3` check).
    pub fn is_failed(&self) -> bool {
        self.state == STATE_FAILED
    }
}

impl From<&UnitStatus> for UnitStatusReply {
    fn from(status: &UnitStatus) -> Self {
        Self {
            detail: status.detail.clone(),
            extra_data: extra_data(status),
            state: i64::from(status.state.code()),
            state_name: status.state.name().to_owned(),
            stdout_size: status.stdout_size,
            work_type: status.work_type.clone(),
        }
    }
}

/// Receptor's per-type `ExtraData`: Warren reports the component that runs the unit, the
/// containment of the programs it started (`Containment`, as the host recorded it), and,
/// for a unit mirrored from another node, where it runs (Receptor's remote units carry
/// `RemoteNode` and `RemoteUnitID` the same way), and which node submitted it.
fn extra_data(status: &UnitStatus) -> serde_json::Value {
    let mut extra = serde_json::Map::new();
    extra.insert("Submitter".into(), status.submitter.to_string().into());
    if let Some(c) = &status.component {
        let component =
            serde_json::json!({"Name": c.name, "Version": c.version, "Sha256": c.sha256});
        extra.insert("Component".into(), component);
    }
    if let Some(containment) = status.extra_data.get("Containment") {
        extra.insert("Containment".into(), containment.clone());
    }
    if let Some(remote) = &status.remote_unit_id {
        extra.insert("RemoteNode".into(), status.node.to_string().into());
        extra.insert("RemoteUnitID".into(), remote.to_string().into());
    }
    serde_json::Value::Object(extra)
}

/// A successful answer to a `work` command.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkReply {
    /// The submit's payload was stored and the unit queued:
    /// `{"result":"Job Started","unitid":"<id>"}`.
    Started(UnitId),
    /// `work status`: one status object.
    Status(UnitStatusReply),
    /// `work list`: `{"<id>": <status object>, ...}` (ids sorted, as Go sorts map keys).
    List(BTreeMap<UnitId, UnitStatusReply>),
    /// `work cancel`: `{"cancelled":"<id>"}`.
    Cancelled(UnitId),
    /// `work release` / `work force-release`: `{"released":"<id>"}`.
    Released(UnitId),
}

impl Serialize for WorkReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Started(unit) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("result", "Job Started")?;
                map.serialize_entry("unitid", unit)?;
                map.end()
            }
            Self::Status(status) => status.serialize(serializer),
            Self::List(units) => units.serialize(serializer),
            Self::Cancelled(unit) => one_entry(serializer, "cancelled", unit),
            Self::Released(unit) => one_entry(serializer, "released", unit),
        }
    }
}

fn one_entry<S: Serializer>(serializer: S, key: &str, unit: &UnitId) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(1))?;
    map.serialize_entry(key, unit)?;
    map.end()
}

/// The final line of a successful submit, as the client decodes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubmitReply {
    /// `Job Started`, or `Job Submitted` when a remote start is pending.
    pub result: String,
    /// The unit's id.
    #[serde(rename = "unitid")]
    pub unit_id: UnitId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::reply::Reply;
    use crate::id::NodeId;
    use crate::work::UnitState;

    fn unit(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    fn sample_status() -> UnitStatus {
        let node = NodeId::new("a").unwrap();
        let mut status = UnitStatus::new("echo", BTreeMap::new(), node.clone(), node, 0);
        status.state = UnitState::Failed;
        status.detail = "exit status 1 <&>".into();
        status.stdout_size = 30;
        status
    }

    #[test]
    fn status_lines_are_exact_and_parse_back() {
        let id = unit("Ab3dEf9h");
        let created = created_line(&id);
        assert_eq!(
            created,
            "Work unit created with ID Ab3dEf9h. Send stdin data and EOF.\n"
        );
        assert_eq!(parse_created_line(created.trim_end()), Some("Ab3dEf9h"));
        assert_eq!(parse_created_line("Work unit created with ID . Send"), None);
        let streaming = streaming_line(&id);
        assert_eq!(streaming, "Streaming results for work unit Ab3dEf9h\n");
        assert_eq!(parse_streaming_line(streaming.trim_end()), Some("Ab3dEf9h"));
    }

    #[test]
    fn status_object_is_byte_exact() {
        let reply = Reply::Work(WorkReply::Status((&sample_status()).into()));
        assert_eq!(
            reply.encode(),
            concat!(
                r#"{"Detail":"exit status 1 \u003c\u0026\u003e","ExtraData":{"Submitter":"a"},"State":3,"#,
                r#""StateName":"Failed","StdoutSize":30,"WorkType":"echo"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn list_and_acknowledgements_are_exact() {
        let status: UnitStatusReply = (&sample_status()).into();
        let list = BTreeMap::from([
            (unit("b0000000"), status.clone()),
            (unit("A0000000"), status),
        ]);
        let line = Reply::Work(WorkReply::List(list)).encode();
        assert!(line.starts_with(r#"{"A0000000":{"Detail":"#), "{line}");
        assert!(line.contains(r#"},"b0000000":{"Detail":"#), "{line}");
        let back: BTreeMap<String, UnitStatusReply> = serde_json::from_str(&line).unwrap();
        assert!(back["b0000000"].is_failed());
        assert_eq!(
            Reply::Work(WorkReply::List(BTreeMap::new())).encode(),
            "{}\n"
        );
        let id = unit("Ab3dEf9h");
        assert_eq!(
            Reply::Work(WorkReply::Cancelled(id)).encode(),
            "{\"cancelled\":\"Ab3dEf9h\"}\n"
        );
        assert_eq!(
            Reply::Work(WorkReply::Released(id)).encode(),
            "{\"released\":\"Ab3dEf9h\"}\n"
        );
        let started = Reply::Work(WorkReply::Started(id)).encode();
        assert_eq!(
            started,
            "{\"result\":\"Job Started\",\"unitid\":\"Ab3dEf9h\"}\n"
        );
        let back: SubmitReply = serde_json::from_str(&started).unwrap();
        assert_eq!(back.unit_id, id);
    }
}
