//! The `reload` reply and `connect`'s status line.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The line `connect` writes before the bytes of the bridged stream; receptorctl checks
/// that the line starts with `Connecting`.
pub const CONNECTING_LINE: &str = "Connecting\n";

/// Receptor's error code for a changed setting that cannot be applied while running
/// (receptorctl exits with it).
pub const ERRORCODE_NOT_RELOADABLE: u8 = 3;

/// Receptor's error code for a config that cannot be read or applied.
pub const ERRORCODE_BAD_CONFIG: u8 = 4;

/// The answer to `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ReloadWire")]
pub enum ReloadReply {
    /// Everything in the config is in effect: `{"Success":true}`.
    Applied,
    /// Nothing was applied: `{"Success":false,"Error":"<message> ERRORCODE <code>"}`.
    Failed {
        /// What went wrong.
        message: String,
        /// [`ERRORCODE_NOT_RELOADABLE`] or [`ERRORCODE_BAD_CONFIG`].
        code: u8,
    },
}

#[derive(Deserialize)]
struct ReloadWire {
    #[serde(rename = "Success")]
    success: bool,
    #[serde(rename = "Error", default)]
    error: String,
}

/// A `reload` reply that is not the shape Receptor gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadReplyError {
    /// A failure whose `Error` does not end in ` ERRORCODE <code>`.
    #[error("reload error without ERRORCODE: {error}")]
    NoErrorCode {
        /// The `Error` received.
        error: String,
    },
    /// An `ERRORCODE` that is not a number from 0 to 255.
    #[error("bad ERRORCODE {code}")]
    BadErrorCode {
        /// The code received.
        code: String,
    },
}

impl TryFrom<ReloadWire> for ReloadReply {
    type Error = ReloadReplyError;
    fn try_from(wire: ReloadWire) -> Result<Self, ReloadReplyError> {
        if wire.success {
            return Ok(Self::Applied);
        }
        let (message, code) =
            wire.error
                .rsplit_once(" ERRORCODE ")
                .ok_or_else(|| ReloadReplyError::NoErrorCode {
                    error: wire.error.clone(),
                })?;
        let code = code.parse().map_err(|_| ReloadReplyError::BadErrorCode {
            code: code.to_owned(),
        })?;
        Ok(Self::Failed {
            message: message.to_owned(),
            code,
        })
    }
}

impl Serialize for ReloadReply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Applied => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("Success", &true)?;
                map.end()
            }
            Self::Failed { message, code } => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("Error", &format!("{message} ERRORCODE {code}"))?;
                map.serialize_entry("Success", &false)?;
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_receptor() {
        assert_eq!(
            serde_json::to_string(&ReloadReply::Applied).unwrap(),
            r#"{"Success":true}"#
        );
        let failed = ReloadReply::Failed {
            message: "peers changed".into(),
            code: ERRORCODE_NOT_RELOADABLE,
        };
        let text = serde_json::to_string(&failed).unwrap();
        assert_eq!(
            text,
            r#"{"Error":"peers changed ERRORCODE 3","Success":false}"#
        );
        assert_eq!(serde_json::from_str::<ReloadReply>(&text).unwrap(), failed);
    }
}
