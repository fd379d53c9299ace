//! The contents of a unit's `status` file: [`UnitStatus`].
//!
//! Owns the JSON shape (Receptor's keys plus Warren's own) and the redaction of secret
//! parameters for display. No IO: the store reads and writes the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::unit::{SubmitNonce, UnitId, UnitState};
use crate::id::NodeId;
use crate::keys::PublicKey;

/// What a redacted secret parameter's value is replaced with.
pub const REDACTED: &str = "REDACTED";

/// Parameters whose name starts with this (ASCII case-insensitively) are secrets.
const SECRET_PREFIX: &str = "secret_";

/// A unit's status, stored as one JSON line in `<data_dir>/units/<id>/status`.
///
/// The first five keys are Receptor's (`{"State":2,"Detail":"...","StdoutSize":30,
/// "WorkType":"cat","ExtraData":null}`), so tools that read Receptor's status keep working;
/// the rest are Warren's own, under names Receptor does not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnitStatus {
    /// Where the unit is in its life cycle (Receptor's numeric code on disk).
    pub state: UnitState,
    /// Human-readable detail, such as "Running" or "exit status 1".
    pub detail: String,
    /// Bytes in the unit's `stdout` file when the status was written.
    pub stdout_size: u64,
    /// The work type the unit was submitted as.
    pub work_type: String,
    /// Receptor's per-type extra data; Warren writes `null` and keeps its data in its own
    /// keys.
    #[serde(default)]
    pub extra_data: serde_json::Value,
    /// The node that submitted the unit.
    pub submitter: NodeId,
    /// The key the submitter proved (its end-to-end session's), when it came over the
    /// mesh: the unit belongs to it, and only it (or an operator) may see or touch the unit.
    /// `None` for units submitted through this node's control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter_key: Option<PublicKey>,
    /// The submitted parameters. Secret ones (`secret_*`) are stored as given; use
    /// [`UnitStatus::redacted`] before showing a status to anyone.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The node the work runs on.
    pub node: NodeId,
    /// The unit's id on the node that runs it, when this unit forwards work to another node.
    #[serde(default)]
    pub remote_unit_id: Option<UnitId>,
    /// The work-handler component that runs (or ran) the unit, once known.
    #[serde(default)]
    pub component: Option<Component>,
    /// When the unit was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
    /// When the status was last written, in milliseconds since the Unix epoch.
    pub updated_at: u64,
    /// Remote work only: when the unit fails if the remote node has not started it (the
    /// submission's `ttl`), in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Bytes of payload, once all of it is stored (a unit whose payload is complete can be
    /// queued again after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    /// Remote work only: sign the submission (receptorctl's `signwork`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sign_work: bool,
    /// The submission's nonce: on the submitting node, the one it sends (recorded before
    /// the submission leaves, so a restart can ask for the same unit again); on the running
    /// node, the one the submitter gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_nonce: Option<SubmitNonce>,
}

/// Which work-handler component runs a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    /// The component's name.
    pub name: String,
    /// The component's version.
    pub version: String,
    /// The SHA-256 of the component's bytes, in lower-case hex.
    pub sha256: String,
}

impl UnitStatus {
    /// The status of a unit just created: `Pending`, "Unit Created", empty stdout.
    pub fn new(
        work_type: impl Into<String>,
        params: BTreeMap<String, String>,
        submitter: NodeId,
        node: NodeId,
        now_ms: u64,
    ) -> Self {
        Self {
            state: UnitState::Pending,
            detail: "Unit Created".to_owned(),
            stdout_size: 0,
            work_type: work_type.into(),
            extra_data: serde_json::Value::Null,
            submitter,
            params,
            node,
            remote_unit_id: None,
            component: None,
            created_at: now_ms,
            updated_at: now_ms,
            expires_at: None,
            payload_size: None,
            submitter_key: None,
            sign_work: false,
            submit_nonce: None,
        }
    }

    /// A copy fit for status output: every `secret_*` parameter's value (name matched
    /// case-insensitively) is replaced with [`REDACTED`].
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for (name, value) in &mut copy.params {
            if is_secret(name) {
                REDACTED.clone_into(value);
            }
        }
        copy
    }
}

/// Whether a parameter named `name` holds a secret.
pub fn is_secret(name: &str) -> bool {
    name.get(..SECRET_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(SECRET_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn sample() -> UnitStatus {
        let params = BTreeMap::from([
            ("params".to_owned(), "--private-data-dir=/tmp/x".to_owned()),
            ("secret_kube_config".to_owned(), "token".to_owned()),
            ("SECRET_Pod".to_owned(), "pod yaml".to_owned()),
        ]);
        UnitStatus::new("cat", params, node("ctl"), node("exec"), 1_700_000_000_000)
    }

    #[test]
    fn json_has_receptor_keys_then_warren_keys() {
        let mut status = sample();
        status.state = UnitState::Succeeded;
        status.stdout_size = 30;
        let value = serde_json::to_value(&status).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object["State"], 2);
        assert_eq!(object["Detail"], "Unit Created");
        assert_eq!(object["StdoutSize"], 30);
        assert_eq!(object["WorkType"], "cat");
        assert_eq!(object["ExtraData"], serde_json::Value::Null);
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "Component",
                "CreatedAt",
                "Detail",
                "ExtraData",
                "Node",
                "Params",
                "RemoteUnitId",
                "State",
                "StdoutSize",
                "Submitter",
                "UpdatedAt",
                "WorkType",
            ]
        );
        let back: UnitStatus = serde_json::from_value(value).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn redacted_hides_only_secret_params() {
        let status = sample();
        let shown = status.redacted();
        assert_eq!(shown.params["params"], "--private-data-dir=/tmp/x");
        assert_eq!(shown.params["secret_kube_config"], REDACTED);
        assert_eq!(shown.params["SECRET_Pod"], REDACTED);
        // The stored status keeps the real values.
        assert_eq!(status.params["secret_kube_config"], "token");
        let json = serde_json::to_string(&shown).unwrap();
        assert!(
            !json.contains("token") && !json.contains("pod yaml"),
            "{json}"
        );
    }

    #[test]
    fn secret_prefix_is_case_insensitive_and_exact() {
        assert!(is_secret("secret_x"));
        assert!(is_secret("Secret_"));
        assert!(!is_secret("secret"));
        assert!(!is_secret("my_secret_x"));
        assert!(!is_secret("sécret_x"));
    }
}
