//! Typed identifiers: node ids, service names and certificate groups.
//!
//! Owns validation of the names that travel on the wire and appear in configs, so that every
//! other module can take a `NodeId` and know it is well formed. No IO.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest node id or service name accepted, in bytes.
///
/// Long enough for host names and generated ids, short enough that adverts stay small.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid node id or service name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What was being parsed ("node id", "service name").
        kind: &'static str,
    },
    /// The string was longer than [`MAX_NAME_LEN`].
    #[error("{kind} {value:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong {
        /// What was being parsed.
        kind: &'static str,
        /// The offending value.
        value: String,
    },
    /// The string held a character outside `[A-Za-z0-9._@:-]`.
    #[error("{kind} {value:?} may only contain letters, digits and . _ - @ :")]
    BadCharacter {
        /// What was being parsed.
        kind: &'static str,
        /// The offending value.
        value: String,
    },
    /// The string is reserved (for example `localhost`, which means "this node").
    #[error("{kind} {value:?} is reserved")]
    Reserved {
        /// What was being parsed.
        kind: &'static str,
        /// The offending value.
        value: String,
    },
}

fn validate(kind: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            value: value.to_owned(),
        });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':');
    if !value.chars().all(allowed) {
        return Err(NameError::BadCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $reserved:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates `value`.
            ///
            /// # Errors
            /// [`NameError`] when the value is empty, too long, holds a character outside
            /// `[A-Za-z0-9._@:-]`, or is reserved.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                validate($kind, &value)?;
                let reserved: &[&str] = $reserved;
                // In any case: `LocalHost` would otherwise be a node no one can target.
                if reserved.iter().any(|r| r.eq_ignore_ascii_case(&value)) {
                    return Err(NameError::Reserved { kind: $kind, value });
                }
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A node's id on the mesh, unique per mesh (duplicates are detected and refused).
    NodeId,
    "node id",
    &["localhost"]
);

impl NodeId {
    /// Whether `typed` (a target node as an operator or a client names it) means this node:
    /// its id, or `localhost` in any case (which no node may take as its id). The one place
    /// that decides "is it local?".
    pub fn is_named_by(&self, typed: &str) -> bool {
        typed.eq_ignore_ascii_case("localhost") || typed == self.as_str()
    }
}

name_type!(
    /// The name of a service a node offers on the mesh (`control`, `ping`, ...).
    ServiceName,
    "service name",
    &[]
);

name_type!(
    /// A group a mesh certificate puts its node in (`workers`, `controllers`, ...); allow
    /// rules can name groups instead of nodes.
    GroupName,
    "group name",
    &[]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_node_ids() {
        for id in ["node1", "relay.example.com", "cli-Ab3x9_z", "a@b:c"] {
            assert_eq!(NodeId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn rejects_bad_node_ids() {
        assert!(matches!(NodeId::new(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            NodeId::new("a b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            NodeId::new("a\nb"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            NodeId::new("x".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
        for reserved in ["localhost", "LocalHost", "LOCALHOST"] {
            assert!(matches!(
                NodeId::new(reserved),
                Err(NameError::Reserved { .. })
            ));
        }
    }

    #[test]
    fn a_node_is_named_by_its_id_or_localhost_in_any_case() {
        let me = NodeId::new("node1").unwrap();
        for typed in ["node1", "localhost", "LOCALHOST", "Localhost"] {
            assert!(me.is_named_by(typed), "{typed}");
        }
        for typed in ["Node1", "node2", "", "localhost2"] {
            assert!(!me.is_named_by(typed), "{typed}");
        }
    }

    #[test]
    fn deserialize_validates() {
        let ok: NodeId = serde_json::from_str("\"n1\"").unwrap();
        assert_eq!(ok.as_str(), "n1");
        assert!(serde_json::from_str::<NodeId>("\"bad id\"").is_err());
    }
}
