//! `connect <node> <service> [tls]`: the request that turns a control session into a raw
//! byte bridge to a service on another node (receptorctl's `work list --node`, and its own
//! `connect` verb).

use serde_json::{Map, Value};

use crate::id::{NameError, NodeId, ServiceName};

/// Why a `connect` request was refused. `Display` is the text after `ERROR: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectParseError {
    /// Fewer than two parameters in the text form.
    #[error("no connect target")]
    NoTarget,
    /// More than three parameters in the text form.
    #[error("too many parameters")]
    TooManyParams,
    /// A JSON request without the field.
    #[error("no connect target {field}")]
    Missing {
        /// `node` or `service`.
        field: &'static str,
    },
    /// A JSON field that is not a string.
    #[error("connect {field} must be string")]
    NotString {
        /// `node`, `service` or `tls`.
        field: &'static str,
    },
    /// The node is not a valid node id.
    #[error("invalid connect target: {0}")]
    BadNode(NameError),
    /// The service is not a valid service name.
    #[error("invalid connect service: {0}")]
    BadService(NameError),
}

/// A parsed `connect` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The node to reach.
    pub node: NodeId,
    /// The service on it.
    pub service: ServiceName,
    /// A TLS client config name; `None` when absent or empty (receptorctl sends a trailing
    /// space when it has none).
    pub tls: Option<String>,
}

impl ConnectRequest {
    fn new(node: &str, service: &str, tls: Option<&str>) -> Result<Self, ConnectParseError> {
        Ok(Self {
            node: NodeId::new(node).map_err(ConnectParseError::BadNode)?,
            service: ServiceName::new(service).map_err(ConnectParseError::BadService)?,
            tls: tls.filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }
}

/// The text form's parameters, split on single spaces as Receptor's `strings.Split` does:
/// `node1 control ` has an empty third token, which means no TLS.
///
/// # Errors
/// [`ConnectParseError`] with Receptor's message.
pub fn parse_text(params: &str) -> Result<ConnectRequest, ConnectParseError> {
    let tokens: Vec<&str> = params.split(' ').collect();
    match tokens.as_slice() {
        [node, service] => ConnectRequest::new(node, service, None),
        [node, service, tls] => ConnectRequest::new(node, service, Some(tls)),
        [_] => Err(ConnectParseError::NoTarget),
        _ => Err(ConnectParseError::TooManyParams),
    }
}

/// The JSON form: string fields `node`, `service` and optional `tls`.
///
/// # Errors
/// [`ConnectParseError`] naming the missing or mistyped field.
pub fn parse_json(object: &Map<String, Value>) -> Result<ConnectRequest, ConnectParseError> {
    let field = |field: &'static str| match object.get(field) {
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ConnectParseError::NotString { field }),
        None => Ok(None),
    };
    let node = field("node")?.ok_or(ConnectParseError::Missing { field: "node" })?;
    let service = field("service")?.ok_or(ConnectParseError::Missing { field: "service" })?;
    ConnectRequest::new(node, service, field("tls")?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn text_form_tolerates_receptorctls_trailing_space() {
        let req = parse_text("node1 control ").unwrap();
        assert_eq!(req.node.as_str(), "node1");
        assert_eq!(req.service.as_str(), "control");
        assert_eq!(req.tls, None);
        assert_eq!(
            parse_text("node1 control client").unwrap().tls.as_deref(),
            Some("client")
        );
    }

    #[test]
    fn text_form_errors_match_receptor() {
        assert_eq!(parse_text("").unwrap_err().to_string(), "no connect target");
        assert_eq!(
            parse_text("node1").unwrap_err().to_string(),
            "no connect target"
        );
        assert_eq!(
            parse_text("a b c d").unwrap_err().to_string(),
            "too many parameters"
        );
        assert!(matches!(
            parse_text(" control"),
            Err(ConnectParseError::BadNode(_))
        ));
    }

    #[test]
    fn json_form() {
        let req = parse_json(&object(json!({"node": "n1", "service": "control"}))).unwrap();
        assert_eq!((req.node.as_str(), req.service.as_str()), ("n1", "control"));
        let err = parse_json(&object(json!({"node": "n1"}))).unwrap_err();
        assert_eq!(err.to_string(), "no connect target service");
        let err = parse_json(&object(json!({"node": 1, "service": "x"}))).unwrap_err();
        assert_eq!(err.to_string(), "connect node must be string");
        let err =
            parse_json(&object(json!({"node": "n", "service": "x", "tls": true}))).unwrap_err();
        assert_eq!(err.to_string(), "connect tls must be string");
    }
}
