//! One function per fuzz target. Each takes libFuzzer's input, must never panic on it
//! (beyond the properties it asserts), and returns the milestones the input reached, which
//! the seed check (`examples/seeds.rs`) compares with what each seed was made to reach.

mod ansible;
mod control;
mod files;
mod keys;
mod link;
mod mesh;
mod text;

pub use ansible::{artifacts_unpack, worker_stream};
pub use control::{control_request, work_protocol};
pub use files::{ca_armor, component_signature, config_toml};
pub use keys::{key_succession, pinned};
pub use link::link_handshake;
pub use mesh::{lsdb_advert, mesh_frame, mesh_message, mesh_node, mesh_session};
pub use text::{assert_terminal_safe, terminal_filter};

/// Milestones an input reached (stable names, asserted by the seed check).
pub type Reached = Vec<&'static str>;

/// A target's body.
pub type Target = fn(&[u8]) -> Reached;

/// Every target by name, for the seed check.
pub const ALL: &[(&str, Target)] = &[
    ("mesh_frame", mesh_frame),
    ("mesh_message", mesh_message),
    ("link_handshake", link_handshake),
    ("lsdb_advert", lsdb_advert),
    ("mesh_node", mesh_node),
    ("mesh_session", mesh_session),
    ("control_request", control_request),
    ("work_protocol", work_protocol),
    ("worker_stream", worker_stream),
    ("artifacts_unpack", artifacts_unpack),
    ("config_toml", config_toml),
    ("component_signature", component_signature),
    ("ca_armor", ca_armor),
    ("key_succession", key_succession),
    ("terminal_filter", terminal_filter),
];
