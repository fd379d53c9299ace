//! Typed control requests and the one parser for both of Receptor's request forms.
//!
//! Owns turning one request line (newline and `\r` already stripped) into a [`Request`],
//! with the error messages Receptor gives. No IO: the session driver reads lines, skips
//! empty ones, and calls [`parse_request`].

pub mod connect;
pub mod work;

use std::fmt;

use serde_json::{Map, Value, json};

pub use self::connect::{ConnectParseError, ConnectRequest};
pub use self::work::{Subcommand, WorkParseError, WorkRequest};
use crate::id::{NameError, NodeId};

/// One operator request on the control socket.
///
/// New commands (`work ...`, `connect`, `reload`) become new variants here, a word in
/// [`Command`], and an arm in the session's handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `status`: the node's view of the mesh.
    Status {
        /// JSON form only: the top-level keys to return (unknown ones are ignored).
        /// `None` returns every key.
        requested_fields: Option<Vec<String>>,
    },
    /// `ping <node>`: round trip to a node.
    Ping {
        /// The node to ping.
        target: NodeId,
    },
    /// `traceroute <node>`: each hop on the way to a node.
    Traceroute {
        /// The node to trace.
        target: NodeId,
    },
    /// Warren's `deploy` (JSON form only): `length` bytes of a component follow the line;
    /// deploy it, with its signature, to `node`.
    Deploy {
        /// The node to deploy to (`localhost` or our own id: this node).
        node: String,
        /// The signature file's text.
        signature: String,
        /// How many component bytes follow the request line.
        length: u64,
    },
    /// `work <subcommand> ...`: work units on this node.
    Work(WorkRequest),
    /// `connect <node> <service> [tls]`: bridge the connection to a mesh service.
    Connect(ConnectRequest),
    /// `reload`: re-read the node's config file and apply what can change while running.
    Reload,
}

impl Request {
    /// What the request asks, for an audit log: the command and its targets, never a
    /// parameter's value or a signature (work parameters carry secrets).
    pub fn audit_line(&self) -> String {
        match self {
            Self::Status { .. } => "status".to_owned(),
            Self::Ping { target } => format!("ping {target}"),
            Self::Traceroute { target } => format!("traceroute {target}"),
            Self::Deploy { node, length, .. } => format!("deploy to {node} ({length} bytes)"),
            Self::Work(work) => work.audit_line(),
            Self::Connect(connect) => format!("connect {} {}", connect.node, connect.service),
            Self::Reload => "reload".to_owned(),
        }
    }

    /// The request as the one-line JSON form (without the newline), as clients send it.
    pub fn to_json(&self) -> String {
        let value = match self {
            Self::Status {
                requested_fields: None,
            } => json!({"command": "status"}),
            Self::Status {
                requested_fields: Some(fields),
            } => json!({"command": "status", "requested_fields": fields}),
            Self::Ping { target } => json!({"command": "ping", "target": target}),
            Self::Traceroute { target } => json!({"command": "traceroute", "target": target}),
            Self::Deploy {
                node,
                signature,
                length,
            } => json!({
                "command": "deploy",
                "node": node,
                "signature": signature,
                "length": length.to_string(),
            }),
            Self::Work(work) => work.to_json_value(),
            Self::Connect(connect) => {
                let mut value = json!({
                    "command": "connect",
                    "node": connect.node,
                    "service": connect.service,
                });
                if let Some(tls) = &connect.tls {
                    value["tls"] = json!(tls);
                }
                value
            }
            Self::Reload => json!({"command": "reload"}),
        };
        value.to_string()
    }
}

/// A command word the control service knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `status`
    Status,
    /// `ping`
    Ping,
    /// `traceroute`
    Traceroute,
    /// `deploy` (Warren's; JSON form only)
    Deploy,
    /// `work`
    Work,
    /// `connect`
    Connect,
    /// `reload`
    Reload,
}

impl Command {
    /// Looks up a command word exactly as written (the text form lower-cases it first).
    pub fn from_word(word: &str) -> Option<Self> {
        match word {
            "status" => Some(Self::Status),
            "ping" => Some(Self::Ping),
            "traceroute" => Some(Self::Traceroute),
            "deploy" => Some(Self::Deploy),
            "work" => Some(Self::Work),
            "connect" => Some(Self::Connect),
            "reload" => Some(Self::Reload),
            _ => None,
        }
    }

    /// The command word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Ping => "ping",
            Self::Traceroute => "traceroute",
            Self::Deploy => "deploy",
            Self::Work => "work",
            Self::Connect => "connect",
            Self::Reload => "reload",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request line was refused. `Display` is the exact text after `ERROR: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line started with `{` but was not a JSON object.
    #[error("{message}")]
    BadJson {
        /// The JSON parser's description of the problem.
        message: String,
    },
    /// A request field is missing or malformed.
    #[error("{command} {field}: {problem}")]
    Field {
        /// The command.
        command: Command,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// A JSON request had no `command` key.
    #[error("JSON did not contain a command")]
    MissingCommand,
    /// A JSON request's `command` was not a string.
    #[error("command must be a string")]
    CommandNotString,
    /// The command word is not one this node serves.
    #[error("Unknown command")]
    UnknownCommand {
        /// The word as looked up (lower-cased in the text form).
        command: String,
    },
    /// The command takes no parameters but some were given.
    #[error("{command} command does not take parameters")]
    UnexpectedParams {
        /// The command.
        command: Command,
    },
    /// A ping or traceroute without a target.
    #[error("no {command} target")]
    MissingTarget {
        /// The command.
        command: Command,
    },
    /// A JSON `target` that was not a string.
    #[error("{command} target must be string")]
    TargetNotString {
        /// The command.
        command: Command,
    },
    /// A target that is not a valid node id.
    #[error("invalid {command} target: {reason}")]
    InvalidTarget {
        /// The command.
        command: Command,
        /// Why the target is not a node id.
        reason: NameError,
    },
    /// `requested_fields` was not a list.
    #[error("requested_fields must be a list of strings")]
    RequestedFieldsNotList,
    /// An element of `requested_fields` was not a string.
    #[error("each element of requested_fields must be a string")]
    RequestedFieldNotString,
    /// A `work` request was refused.
    #[error("{0}")]
    Work(#[from] WorkParseError),
    /// A `connect` request was refused.
    #[error("{0}")]
    Connect(#[from] ConnectParseError),
}

impl ParseError {
    /// Whether the line never named a command, so Receptor also answers
    /// `ERROR: Unknown command` after this error (it looks up the empty command).
    pub fn is_followed_by_unknown_command(&self) -> bool {
        matches!(
            self,
            Self::BadJson { .. } | Self::MissingCommand | Self::CommandNotString
        )
    }
}

/// Parses one request line (without its line ending; never empty in practice).
///
/// A line starting with `{` is a JSON object with a string `command`; anything else is the
/// text form `<command> <params>`, whose command word is lower-cased and whose parameters
/// are everything after the first space. Extra JSON keys are ignored, as Receptor does.
///
/// # Errors
/// [`ParseError`] with the message the client should see.
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    if line.first() == Some(&b'{') {
        parse_json(line)
    } else {
        parse_text(line)
    }
}

fn parse_text(line: &[u8]) -> Result<Request, ParseError> {
    let text = String::from_utf8_lossy(line);
    let (word, params) = text.split_once(' ').unwrap_or((&text, ""));
    let word = word.to_lowercase();
    let Some(command) = Command::from_word(&word) else {
        return Err(ParseError::UnknownCommand { command: word });
    };
    match command {
        Command::Status if params.is_empty() => Ok(Request::Status {
            requested_fields: None,
        }),
        Command::Status => Err(ParseError::UnexpectedParams { command }),
        Command::Ping => Ok(Request::Ping {
            target: text_target(command, params)?,
        }),
        Command::Deploy => Err(ParseError::Field {
            command,
            field: "request",
            problem: "is accepted in JSON form only",
        }),
        Command::Traceroute => Ok(Request::Traceroute {
            target: text_target(command, params)?,
        }),
        Command::Work => Ok(Request::Work(work::parse_text(params)?)),
        Command::Connect => Ok(Request::Connect(connect::parse_text(params)?)),
        // Receptor's reload ignores any parameters.
        Command::Reload => Ok(Request::Reload),
    }
}

fn parse_json(line: &[u8]) -> Result<Request, ParseError> {
    let object: Map<String, Value> =
        serde_json::from_slice(line).map_err(|e| ParseError::BadJson {
            message: e.to_string(),
        })?;
    let word = match object.get("command") {
        Some(Value::String(word)) => word,
        Some(_) => return Err(ParseError::CommandNotString),
        None => return Err(ParseError::MissingCommand),
    };
    let Some(command) = Command::from_word(word) else {
        return Err(ParseError::UnknownCommand {
            command: word.clone(),
        });
    };
    match command {
        Command::Status => Ok(Request::Status {
            requested_fields: requested_fields(&object)?,
        }),
        Command::Ping => Ok(Request::Ping {
            target: json_target(command, &object)?,
        }),
        Command::Traceroute => Ok(Request::Traceroute {
            target: json_target(command, &object)?,
        }),
        Command::Deploy => deploy_request(&object),
        Command::Work => Ok(Request::Work(work::parse_json(&object)?)),
        Command::Connect => Ok(Request::Connect(connect::parse_json(&object)?)),
        Command::Reload => Ok(Request::Reload),
    }
}

fn deploy_request(object: &Map<String, Value>) -> Result<Request, ParseError> {
    let field = |field: &'static str| match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(ParseError::Field {
            command: Command::Deploy,
            field,
            problem: "must be a string",
        }),
    };
    let length = field("length")?.parse().map_err(|_| ParseError::Field {
        command: Command::Deploy,
        field: "length",
        problem: "must be a byte count",
    })?;
    Ok(Request::Deploy {
        node: field("node")?,
        signature: field("signature")?,
        length,
    })
}

fn text_target(command: Command, params: &str) -> Result<NodeId, ParseError> {
    if params.is_empty() {
        return Err(ParseError::MissingTarget { command });
    }
    NodeId::new(params).map_err(|reason| ParseError::InvalidTarget { command, reason })
}

fn json_target(command: Command, object: &Map<String, Value>) -> Result<NodeId, ParseError> {
    match object.get("target") {
        Some(Value::String(target)) => text_target(command, target),
        Some(_) => Err(ParseError::TargetNotString { command }),
        None => Err(ParseError::MissingTarget { command }),
    }
}

fn requested_fields(object: &Map<String, Value>) -> Result<Option<Vec<String>>, ParseError> {
    let list = match object.get("requested_fields") {
        // Receptor crashes on `null`; treating it as absent is the useful reading.
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ParseError::RequestedFieldsNotList),
    };
    list.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ParseError::RequestedFieldNotString),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn err_text(line: &str) -> String {
        parse_request(line.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn an_audit_line_names_the_command_and_its_targets_but_no_secret() {
        let submit = parse_request(
            br#"{"command":"work","subcommand":"submit","node":"node1","worktype":"ansible-runner","secret_ssh_key":"HUSH-1","params":"-x HUSH-2","signature":"HUSH-3"}"#,
        )
        .unwrap();
        let line = submit.audit_line();
        assert_eq!(line, "work submit ansible-runner on node1 (2 parameters)");
        let deploy = parse_request(
            br#"{"command":"deploy","node":"node1","signature":"HUSH-4","length":"12"}"#,
        )
        .unwrap();
        assert_eq!(deploy.audit_line(), "deploy to node1 (12 bytes)");
        for (text, expected) in [
            ("work cancel Ab3dEf9h", "work cancel Ab3dEf9h"),
            ("work force-release Ab3dEf9h", "work force-release Ab3dEf9h"),
            ("connect node2 control", "connect node2 control"),
            ("reload", "reload"),
        ] {
            assert_eq!(
                parse_request(text.as_bytes()).unwrap().audit_line(),
                expected
            );
        }
        assert!(!format!("{line} {}", deploy.audit_line()).contains("HUSH"));
    }

    #[test]
    fn parses_text_form() {
        assert_eq!(
            parse_request(b"status").unwrap(),
            Request::Status {
                requested_fields: None
            }
        );
        assert_eq!(
            parse_request(b"PING node2").unwrap(),
            Request::Ping {
                target: node("node2")
            }
        );
        assert_eq!(
            parse_request(b"Traceroute n3").unwrap(),
            Request::Traceroute { target: node("n3") }
        );
    }

    #[test]
    fn parses_json_form() {
        let req = parse_request(br#"{"command":"status","requested_fields":["Version"]}"#);
        assert_eq!(
            req.unwrap(),
            Request::Status {
                requested_fields: Some(vec!["Version".into()])
            }
        );
        let req = parse_request(br#"{"command":"ping","target":"n2","extra":1}"#);
        assert_eq!(req.unwrap(), Request::Ping { target: node("n2") });
        let req = parse_request(br#"{"target":"n2","command":"traceroute"}"#);
        assert_eq!(req.unwrap(), Request::Traceroute { target: node("n2") });
        let req = parse_request(br#"{"command":"status","requested_fields":[]}"#);
        assert_eq!(
            req.unwrap(),
            Request::Status {
                requested_fields: Some(vec![])
            }
        );
    }

    #[test]
    fn json_command_word_is_case_sensitive() {
        let err = parse_request(br#"{"command":"STATUS"}"#).unwrap_err();
        assert_eq!(
            err,
            ParseError::UnknownCommand {
                command: "STATUS".into()
            }
        );
        assert!(!err.is_followed_by_unknown_command());
    }

    #[test]
    fn framing_errors_are_followed_by_unknown_command() {
        for line in [
            r#"{"command":"#,
            r#"{"x":1}"#,
            r#"{"command":5}"#,
            "{} trailing",
        ] {
            let err = parse_request(line.as_bytes()).unwrap_err();
            assert!(err.is_followed_by_unknown_command(), "{line}: {err:?}");
        }
        assert_eq!(err_text(r#"{"x":1}"#), "JSON did not contain a command");
        assert_eq!(err_text(r#"{"command":null}"#), "command must be a string");
    }

    #[test]
    fn reports_parameter_errors() {
        assert_eq!(err_text("bogus"), "Unknown command");
        assert_eq!(err_text(" status"), "Unknown command");
        assert_eq!(
            err_text("status now"),
            "status command does not take parameters"
        );
        assert_eq!(err_text("ping"), "no ping target");
        assert_eq!(err_text("ping "), "no ping target");
        assert_eq!(err_text("traceroute"), "no traceroute target");
        assert_eq!(err_text(r#"{"command":"ping"}"#), "no ping target");
        assert_eq!(
            err_text(r#"{"command":"ping","target":7}"#),
            "ping target must be string"
        );
        assert_eq!(
            err_text(r#"{"command":"traceroute","target":["a"]}"#),
            "traceroute target must be string"
        );
        assert_eq!(
            err_text("ping a b"),
            r#"invalid ping target: node id "a b" may only contain letters, digits and . _ - @ :"#
        );
        assert_eq!(
            err_text(r#"{"command":"status","requested_fields":"Version"}"#),
            "requested_fields must be a list of strings"
        );
        assert_eq!(
            err_text(r#"{"command":"status","requested_fields":[1]}"#),
            "each element of requested_fields must be a string"
        );
    }

    #[test]
    fn json_form_round_trips() {
        for req in [
            Request::Status {
                requested_fields: None,
            },
            Request::Status {
                requested_fields: Some(vec!["NodeID".into(), "Version".into()]),
            },
            Request::Ping { target: node("a") },
            Request::Traceroute { target: node("b") },
            Request::Reload,
            Request::Connect(ConnectRequest {
                node: node("n1"),
                service: "control".parse().unwrap(),
                tls: None,
            }),
        ] {
            assert_eq!(parse_request(req.to_json().as_bytes()).unwrap(), req);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_request(&line);
        }

        #[test]
        fn json_like_lines_never_panic(tail in "[\\PC\"{}\\[\\]:,0-9a-z ]{0,64}") {
            let _ = parse_request(format!("{{{tail}").as_bytes());
        }
    }
}
