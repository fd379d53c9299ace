//! The `work` command family: [`WorkRequest`] parsed from Receptor's text and JSON forms.
//!
//! Follows Receptor's `pkg/workceptor/controlsvc.go` (`InitFromString`, `InitFromJSON`)
//! and its error texts. No IO and no policy: whether a node is local, or a `ttl` allowed, is
//! the session's decision.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::work::{UnitId, UnitIdError};

/// JSON keys of a submit that steer the control service and are not work parameters
/// (Receptor's `nonParams`).
const NON_PARAMS: [&str; 8] = [
    "command",
    "subcommand",
    "node",
    "worktype",
    "tlsclient",
    "ttl",
    "signwork",
    "signature",
];

/// One `work` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkRequest {
    /// `work submit <node> <worktype> [params...]`: create a unit; its payload follows.
    Submit {
        /// `localhost`, the node's own id, or another node.
        node: String,
        /// The work type to run.
        work_type: String,
        /// Work parameters: every key but the control keys (`node`, `worktype`, `ttl`, ...). The text
        /// form puts everything after the work type under `params`.
        params: BTreeMap<String, String>,
        /// Remote work only: give up if the remote has not started by then (a Go duration).
        ttl: Option<String>,
        /// Remote work only: sign the work request.
        signwork: bool,
        /// Remote work only: the TLS client config for the mesh hop (Receptor's).
        tls_client: Option<String>,
        /// A JWT for work types that verify signatures.
        signature: Option<String>,
    },
    /// `work list [unitid]`: every unit's status, or one unit's.
    List {
        /// Only this unit.
        unit: Option<UnitId>,
    },
    /// `work status <unitid>`.
    Status {
        /// The unit.
        unit: UnitId,
    },
    /// `work results <unitid> [startpos]`: stream stdout from `startpos`.
    Results {
        /// The unit.
        unit: UnitId,
        /// Byte offset to start from.
        startpos: u64,
    },
    /// `work cancel <unitid>`.
    Cancel {
        /// The unit.
        unit: UnitId,
    },
    /// `work release <unitid>` or, with `force`, `work force-release <unitid>`.
    Release {
        /// The unit.
        unit: UnitId,
        /// Delete local files even if a remote release fails.
        force: bool,
    },
}

/// A `work` subcommand word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subcommand {
    /// `submit`
    Submit,
    /// `list`
    List,
    /// `status`
    Status,
    /// `results`
    Results,
    /// `cancel`
    Cancel,
    /// `release`
    Release,
    /// `force-release`
    ForceRelease,
}

impl Subcommand {
    /// Looks up a (lower-cased) subcommand word.
    pub fn from_word(word: &str) -> Option<Self> {
        Some(match word {
            "submit" => Self::Submit,
            "list" => Self::List,
            "status" => Self::Status,
            "results" => Self::Results,
            "cancel" => Self::Cancel,
            "release" => Self::Release,
            "force-release" => Self::ForceRelease,
            _ => return None,
        })
    }

    /// The subcommand word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::List => "list",
            Self::Status => "status",
            Self::Results => "results",
            Self::Cancel => "cancel",
            Self::Release => "release",
            Self::ForceRelease => "force-release",
        }
    }
}

impl fmt::Display for Subcommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a `work` request was refused. `Display` is the exact text after `ERROR: `
/// (Receptor's wording where Receptor has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkParseError {
    /// An unknown (or missing) subcommand.
    #[error("bad command")]
    BadCommand {
        /// The word given, lower-cased.
        subcommand: String,
    },
    /// A text-form submit without node and work type.
    #[error("work submit requires a target node and work type")]
    SubmitUsage,
    /// A text-form command without its unit id.
    #[error("work {subcommand} requires a unit ID")]
    MissingUnit {
        /// The subcommand.
        subcommand: Subcommand,
    },
    /// Text-form `status`, `cancel`, `release` or `force-release` with more tokens.
    #[error("work {subcommand} does not take parameters after the unit ID")]
    ExtraParams {
        /// The subcommand.
        subcommand: Subcommand,
    },
    /// Text-form `results` with more than a unit id and a start position.
    #[error("work results only takes a unit ID and optional start position")]
    ResultsUsage,
    /// A text-form start position that is not a non-negative integer.
    #[error("error converting start position to integer: {reason}")]
    BadStartPos {
        /// Why it did not parse.
        reason: String,
    },
    /// A required JSON field is absent.
    #[error("field {field} missing")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A JSON field that must be a string is not.
    #[error("field {field} must be a string")]
    FieldNotString {
        /// The field.
        field: &'static str,
    },
    /// A JSON submit with a non-string value.
    #[error("submit parameters must all be strings and {key} is not")]
    SubmitParamNotString {
        /// The first offending key.
        key: String,
    },
    /// A JSON `startpos` that is not a non-negative number.
    #[error("field startpos value {value} is not convertible to an int")]
    StartPosNotInt {
        /// The value as JSON.
        value: String,
    },
    /// A unit id that cannot exist: Receptor would answer `unknown work unit`, so this does
    /// too, and says why.
    #[error("unknown work unit {value} ({reason})")]
    BadUnitId {
        /// The id given.
        value: String,
        /// Why it is not a unit id.
        reason: UnitIdError,
    },
}

/// Parses the text form's parameter string (everything after `work `).
///
/// Tokens are split on single spaces, as Receptor's `strings.Split` does, so doubled
/// spaces make empty tokens.
///
/// # Errors
/// [`WorkParseError`] with the message the client should see.
pub fn parse_text(params: &str) -> Result<WorkRequest, WorkParseError> {
    let tokens: Vec<&str> = params.split(' ').collect();
    let word = tokens[0].to_lowercase();
    let Some(sub) = Subcommand::from_word(&word) else {
        return Err(WorkParseError::BadCommand { subcommand: word });
    };
    let args = &tokens[1..];
    match sub {
        Subcommand::Submit => text_submit(args),
        Subcommand::List => Ok(WorkRequest::List {
            unit: args.first().map(|id| unit_id(id)).transpose()?,
        }),
        Subcommand::Results => text_results(args),
        Subcommand::Status
        | Subcommand::Cancel
        | Subcommand::Release
        | Subcommand::ForceRelease => match args {
            [] => Err(WorkParseError::MissingUnit { subcommand: sub }),
            [id] => Ok(with_unit(sub, unit_id(id)?)),
            _ => Err(WorkParseError::ExtraParams { subcommand: sub }),
        },
    }
}

fn text_submit(args: &[&str]) -> Result<WorkRequest, WorkParseError> {
    let [node, work_type, rest @ ..] = args else {
        return Err(WorkParseError::SubmitUsage);
    };
    let mut params = BTreeMap::new();
    if !rest.is_empty() {
        params.insert("params".to_owned(), rest.join(" "));
    }
    Ok(WorkRequest::Submit {
        node: (*node).to_owned(),
        work_type: (*work_type).to_owned(),
        params,
        ttl: None,
        signwork: false,
        tls_client: None,
        signature: None,
    })
}

fn text_results(args: &[&str]) -> Result<WorkRequest, WorkParseError> {
    let (id, startpos) = match args {
        [] => {
            return Err(WorkParseError::MissingUnit {
                subcommand: Subcommand::Results,
            });
        }
        [id] => (id, 0),
        [id, pos] => (
            id,
            pos.parse()
                .map_err(|e: std::num::ParseIntError| WorkParseError::BadStartPos {
                    reason: e.to_string(),
                })?,
        ),
        _ => return Err(WorkParseError::ResultsUsage),
    };
    Ok(WorkRequest::Results {
        unit: unit_id(id)?,
        startpos,
    })
}

/// The request for a subcommand that takes just a unit id.
fn with_unit(sub: Subcommand, unit: UnitId) -> WorkRequest {
    match sub {
        Subcommand::Cancel => WorkRequest::Cancel { unit },
        Subcommand::Release => WorkRequest::Release { unit, force: false },
        Subcommand::ForceRelease => WorkRequest::Release { unit, force: true },
        _ => WorkRequest::Status { unit },
    }
}

fn unit_id(value: &str) -> Result<UnitId, WorkParseError> {
    value.parse().map_err(|reason| WorkParseError::BadUnitId {
        value: value.to_owned(),
        reason,
    })
}

/// Parses the JSON form (`"command":"work"` already checked).
///
/// # Errors
/// [`WorkParseError`] with the message the client should see.
pub fn parse_json(object: &Map<String, Value>) -> Result<WorkRequest, WorkParseError> {
    let word = string_field(object, "subcommand")?.to_lowercase();
    let Some(sub) = Subcommand::from_word(&word) else {
        return Err(WorkParseError::BadCommand { subcommand: word });
    };
    match sub {
        Subcommand::Submit => json_submit(object),
        Subcommand::List => Ok(WorkRequest::List {
            unit: match object.get("unitid") {
                Some(Value::String(id)) => Some(unit_id(id)?),
                _ => None,
            },
        }),
        Subcommand::Results => Ok(WorkRequest::Results {
            unit: unit_id(string_field(object, "unitid")?)?,
            startpos: json_startpos(object)?,
        }),
        Subcommand::Status
        | Subcommand::Cancel
        | Subcommand::Release
        | Subcommand::ForceRelease => Ok(with_unit(sub, unit_id(string_field(object, "unitid")?)?)),
    }
}

fn json_submit(object: &Map<String, Value>) -> Result<WorkRequest, WorkParseError> {
    if let Some((key, _)) = object.iter().find(|(_, v)| !v.is_string()) {
        return Err(WorkParseError::SubmitParamNotString { key: key.clone() });
    }
    let optional = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let params = object
        .iter()
        .filter(|(k, _)| !NON_PARAMS.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    Ok(WorkRequest::Submit {
        node: string_field(object, "node")?.to_owned(),
        work_type: string_field(object, "worktype")?.to_owned(),
        params,
        ttl: optional("ttl"),
        // Receptor treats anything but "true" (even a malformed value) as false.
        signwork: optional("signwork").is_some_and(|s| s == "true"),
        tls_client: optional("tlsclient"),
        signature: optional("signature"),
    })
}

fn json_startpos(object: &Map<String, Value>) -> Result<u64, WorkParseError> {
    let value = object
        .get("startpos")
        .ok_or(WorkParseError::MissingField { field: "startpos" })?;
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    // Go decodes JSON numbers as float64 and truncates them.
    match value.as_f64() {
        Some(f) if f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        _ => Err(WorkParseError::StartPosNotInt {
            value: value.to_string(),
        }),
    }
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, WorkParseError> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(WorkParseError::FieldNotString { field }),
        None => Err(WorkParseError::MissingField { field }),
    }
}

impl WorkRequest {
    /// What the request asks, for an audit log: the subcommand, the node, work type and
    /// unit it names and how many parameters, never their values.
    pub fn audit_line(&self) -> String {
        match self {
            Self::Submit {
                node,
                work_type,
                params,
                ..
            } => format!(
                "work submit {work_type} on {node} ({} parameters)",
                params.len()
            ),
            Self::List { unit: None } => "work list".to_owned(),
            Self::List { unit: Some(unit) } => format!("work list {unit}"),
            Self::Status { unit } => format!("work status {unit}"),
            Self::Results { unit, startpos } => format!("work results {unit} from {startpos}"),
            Self::Cancel { unit } => format!("work cancel {unit}"),
            Self::Release { unit, force } => {
                format!("work {}release {unit}", if *force { "force-" } else { "" })
            }
        }
    }

    /// The request as a JSON object (`"command":"work"` included), as clients send it.
    /// A submit's params go first, so a param named like a control key cannot override it.
    pub fn to_json_value(&self) -> Value {
        let mut object = Map::new();
        let (sub, unit) = match self {
            Self::Submit { params, .. } => {
                for (k, v) in params {
                    object.insert(k.clone(), Value::String(v.clone()));
                }
                (Subcommand::Submit, None)
            }
            Self::List { unit } => (Subcommand::List, *unit),
            Self::Status { unit } => (Subcommand::Status, Some(*unit)),
            Self::Results { unit, startpos } => {
                object.insert("startpos".into(), Value::from(*startpos));
                (Subcommand::Results, Some(*unit))
            }
            Self::Cancel { unit } => (Subcommand::Cancel, Some(*unit)),
            Self::Release { unit, force: false } => (Subcommand::Release, Some(*unit)),
            Self::Release { unit, force: true } => (Subcommand::ForceRelease, Some(*unit)),
        };
        object.insert("command".into(), "work".into());
        object.insert("subcommand".into(), sub.as_str().into());
        if let Some(unit) = unit {
            object.insert("unitid".into(), unit.to_string().into());
        }
        if let Self::Submit { .. } = self {
            self.submit_keys(&mut object);
        }
        Value::Object(object)
    }

    fn submit_keys(&self, object: &mut Map<String, Value>) {
        let Self::Submit {
            node,
            work_type,
            ttl,
            signwork,
            tls_client,
            signature,
            ..
        } = self
        else {
            return;
        };
        object.insert("node".into(), node.clone().into());
        object.insert("worktype".into(), work_type.clone().into());
        let optional = [
            ("ttl", ttl),
            ("tlsclient", tls_client),
            ("signature", signature),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                object.insert(key.into(), value.clone().into());
            }
        }
        if *signwork {
            object.insert("signwork".into(), "true".into());
        }
    }
}

#[cfg(test)]
mod tests;
