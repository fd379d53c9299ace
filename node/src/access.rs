//! Who may do what on this node over the mesh: deny by default.
//!
//! A node grants mesh peers, by their proven identity (node id bound by a pin or a
//! certificate, a certificate's group, or a bare key), the right to submit given work types,
//! to use its control service, and to deploy components. The local Unix socket keeps full
//! rights (its file permissions guard it). Every refusal names what was refused and the exact
//! flag that would allow it. No IO.

use std::fmt;
use std::str::FromStr;

use crate::id::{GroupName, NodeId};
use crate::keys::PublicKey;
use crate::mesh::session::PeerIdentity;
use crate::mesh::trust::Binding;

/// Whom a rule grants something to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Who {
    /// A node id, matched only when a pin or a certificate binds the peer's key to it (a
    /// first-seen or merely trusted key could claim any id).
    Node(NodeId),
    /// Every node whose certificate puts it in this group.
    Group(GroupName),
    /// Whoever holds this key, whatever id it uses.
    Key(PublicKey),
}

impl Who {
    /// Whether `peer` is who the rule names.
    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            Self::Node(node) => {
                &peer.node == node
                    && matches!(
                        peer.binding,
                        Binding::Pinned { .. } | Binding::Certified { .. }
                    )
            }
            Self::Group(group) => peer.groups().contains(group),
            Self::Key(key) => &peer.key == key,
        }
    }

    /// The way to name `peer` in a rule that would admit it: its node id when something
    /// binds it, else its key.
    pub fn suggest(peer: &PeerIdentity) -> Self {
        match peer.binding {
            Binding::Pinned { .. } | Binding::Certified { .. } => Self::Node(peer.node.clone()),
            Binding::TrustedKey | Binding::FirstSeen => Self::Key(peer.key),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(node) => write!(f, "{node}"),
            Self::Group(group) => write!(f, "group:{group}"),
            Self::Key(key) => write!(f, "{key}"),
        }
    }
}

/// Why a rule's subject did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a node id, group:NAME or x25519:TOKEN ({reason})")]
pub struct WhoError {
    /// What was given.
    pub value: String,
    /// What was wrong.
    pub reason: String,
}

impl FromStr for Who {
    type Err = WhoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| WhoError {
            value: s.to_owned(),
            reason,
        };
        if let Some(group) = s.strip_prefix("group:") {
            return group
                .parse()
                .map(Self::Group)
                .map_err(|e| bad(e.to_string()));
        }
        if s.starts_with("x25519:") {
            return s.parse().map(Self::Key).map_err(|e| bad(format!("{e}")));
        }
        s.parse().map(Self::Node).map_err(|e| bad(e.to_string()))
    }
}

/// The work types a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkTypes {
    /// Every work type (`*`).
    Any,
    /// One work type.
    Named(String),
}

impl WorkTypes {
    fn covers(&self, work_type: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Named(name) => name == work_type,
        }
    }
}

impl fmt::Display for WorkTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// `--allow-work TYPE=WHO`: who may submit which work types.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkGrant {
    /// The work types.
    pub work_types: WorkTypes,
    /// To whom.
    pub who: Who,
}

impl FromStr for WorkGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((work_type, who)) = s.split_once('=') else {
            return Err(format!(
                "{s:?}: expected TYPE=WHO, as in ansible-runner=controller or *=group:admins"
            ));
        };
        let work_types = match work_type {
            "*" => WorkTypes::Any,
            name if crate::mesh::advert::is_work_type_name(name) => {
                WorkTypes::Named(name.to_owned())
            }
            _ => return Err(format!("{work_type:?} is not a work type name or *")),
        };
        let who = who.parse().map_err(|e: WhoError| e.to_string())?;
        Ok(Self { work_types, who })
    }
}

impl fmt::Display for WorkGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.work_types, self.who)
    }
}

/// Everything this node grants mesh peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Who may submit which work types.
    pub work: Vec<WorkGrant>,
    /// Who may use the control service over the mesh (full control of this node).
    pub control: Vec<Who>,
    /// Who may deploy components (a trusted signer's signature is required as well).
    pub deploy: Vec<Who>,
}

/// What a peer asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act<'a> {
    /// Submit a unit of this work type.
    Submit(&'a str),
    /// Use the control service.
    Control,
    /// Deploy a component.
    Deploy,
}

/// A refusal: what was refused, to whom, and the flag that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("node {node} does not allow {peer} to {what}; to allow it, start {node} with `{hint}`")]
pub struct Refusal {
    /// The refusing node.
    pub node: NodeId,
    /// The peer, as the refusing node names it.
    pub peer: String,
    /// What was refused ("submit work type ansible-runner").
    pub what: String,
    /// The flag that would allow it (`--allow-work ansible-runner=controller`).
    pub hint: String,
}

impl AccessPolicy {
    /// Whether `peer` may do `act` here.
    ///
    /// # Errors
    /// A [`Refusal`] naming the flag that would allow it.
    pub fn check(&self, me: &NodeId, peer: &PeerIdentity, act: Act<'_>) -> Result<(), Refusal> {
        let allowed = match act {
            Act::Submit(work_type) => self
                .work
                .iter()
                .any(|g| g.work_types.covers(work_type) && g.who.matches(peer)),
            Act::Control => self.control.iter().any(|w| w.matches(peer)),
            Act::Deploy => self.deploy.iter().any(|w| w.matches(peer)),
        };
        if allowed {
            return Ok(());
        }
        let who = Who::suggest(peer);
        let (what, hint) = match act {
            Act::Submit(work_type) => (
                format!("submit work type {work_type}"),
                format!("--allow-work {work_type}={who}"),
            ),
            Act::Control => (
                "use its control service".to_owned(),
                format!("--allow-control {who}"),
            ),
            Act::Deploy => (
                "deploy components".to_owned(),
                format!("--allow-deploy {who}"),
            ),
        };
        Err(Refusal {
            node: me.clone(),
            peer: format!("{} ({})", peer.node, peer.key),
            what,
            hint,
        })
    }

    /// Whether `peer` has the control service's full rights (and so may see and act on
    /// every unit, not only its own).
    pub fn may_control(&self, peer: &PeerIdentity) -> bool {
        self.control.iter().any(|w| w.matches(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, key: u8, binding: Binding) -> PeerIdentity {
        PeerIdentity {
            node: node.parse().unwrap(),
            key: PublicKey::from_bytes([key; 32]),
            binding,
        }
    }

    fn pinned_as(key: u8) -> Binding {
        Binding::Pinned {
            anchor: PublicKey::from_bytes([key; 32]),
        }
    }

    fn me() -> NodeId {
        "node1".parse().unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default_and_the_refusal_names_the_flag() {
        let policy = AccessPolicy::default();
        let p = peer("controller", 1, pinned_as(1));
        let refusal = policy
            .check(&me(), &p, Act::Submit("ansible-runner"))
            .unwrap_err();
        assert_eq!(refusal.hint, "--allow-work ansible-runner=controller");
        assert!(
            refusal
                .to_string()
                .contains("start node1 with `--allow-work ansible-runner=controller`")
        );
        let refusal = policy.check(&me(), &p, Act::Control).unwrap_err();
        assert_eq!(refusal.hint, "--allow-control controller");
    }

    #[test]
    fn a_node_id_rule_needs_a_pin_or_a_certificate_behind_the_id() {
        let policy = AccessPolicy {
            work: vec!["cat=controller".parse().unwrap()],
            ..AccessPolicy::default()
        };
        let pinned = peer("controller", 1, pinned_as(1));
        assert!(policy.check(&me(), &pinned, Act::Submit("cat")).is_ok());
        assert!(policy.check(&me(), &pinned, Act::Submit("sh")).is_err());
        // Anyone can *claim* "controller" in a mesh without authority: not enough.
        let claimed = peer("controller", 2, Binding::FirstSeen);
        let refusal = policy
            .check(&me(), &claimed, Act::Submit("cat"))
            .unwrap_err();
        assert!(
            refusal.hint.starts_with("--allow-work cat=x25519:"),
            "{}",
            refusal.hint
        );
    }

    #[test]
    fn groups_and_keys_and_any_work_type() {
        let key = PublicKey::from_bytes([3; 32]);
        let policy = AccessPolicy {
            work: vec![
                "*=group:ops".parse().unwrap(),
                format!("ansible-runner={key}").parse().unwrap(),
            ],
            control: vec!["group:ops".parse().unwrap()],
            deploy: Vec::new(),
        };
        let op = peer(
            "w",
            9,
            Binding::Certified {
                serial: 1,
                groups: vec!["ops".parse().unwrap()],
            },
        );
        assert!(policy.check(&me(), &op, Act::Submit("anything")).is_ok());
        assert!(policy.check(&me(), &op, Act::Control).is_ok());
        assert!(policy.check(&me(), &op, Act::Deploy).is_err());
        let holder = peer("whoever", 3, Binding::FirstSeen);
        assert!(
            policy
                .check(&me(), &holder, Act::Submit("ansible-runner"))
                .is_ok()
        );
        assert!(policy.check(&me(), &holder, Act::Submit("cat")).is_err());
    }

    #[test]
    fn rules_parse_and_refuse_nonsense() {
        assert!("ansible-runner=group:ops".parse::<WorkGrant>().is_ok());
        assert!("no-equals".parse::<WorkGrant>().is_err());
        assert!("bad type=x".parse::<WorkGrant>().is_err());
        assert!("cat=group:".parse::<WorkGrant>().is_err());
        assert!("cat=x25519:nope".parse::<WorkGrant>().is_err());
        assert_eq!(
            "*=group:ops".parse::<WorkGrant>().unwrap().to_string(),
            "*=group:ops"
        );
    }
}
