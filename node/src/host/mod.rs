//! The WebAssembly host: runs each job inside a work-handler component that can do only
//! what the node's policy grants it.
//!
//! - [`builtin`]: the work-handler components built into the node (guest-runner).
//! - [`bindings`]: the generated types of the `warren:worker` world; [`world`]: its
//!   version, which components link, and the job as its `job` record.
//! - [`policy`]: what a work type may do, as pure checks (testable without wasm), with
//!   [`args`]: what arguments a granted program may be given.
//! - [`state`]: the per-job store data: WASI context, resource table, capabilities.
//! - [`fds`], [`disk`] and [`quota`]: per-job caps on host descriptors and resources, the
//!   job directory's disk quota, and the node's free-space floor.
//! - [`process`] and [`jobio`]: the host side of the world's interfaces; [`guestfs`]:
//!   the job's limits inside WASI's filesystem.
//! - [`contain`]: job containment: cgroups or a subreaper supervisor, rlimits, a private
//!   network on request, and detached jobs that survive a restart of the node.
//! - [`params`]: what a handler is told about its job, typed (the work type's task and the
//!   submission's parameters), converted once from the control protocol's name/value map.
//! - [`reattach`]: finishing a detached job a restarted node found running: its quota,
//!   containment and real start time.
//! - [`registry`]: the offered work types and their active components.
//! - [`runner`]: one engine per node; per job a store with limits, an instance, a call.
//! - [`cache`]: the compiled-component cache, trusted only if the node's user alone can
//!   write it.
//! - [`component`]: which components may run: signatures, capabilities, imports.
//! - [`deploy`]: switching work types to a newly deployed component.
//! - [`detect`]: finding ansible-runner (probed before it is offered) and the programs of
//!   command work types.
//! - [`signing`]: signed component manifests, signer keys, and verification before a
//!   component may run.
//!
//! Without feature `host` only the pure parts remain (`policy`, `args`, `params`, `disk`, `fds`,
//! `signing` less its wasm reader, `detect`, `contain` less re-attaching): the config
//! needs them (and the supervisor binary `contain`), the client node
//! nothing else.

pub mod args;
#[cfg(feature = "host")]
pub mod bindings;
#[cfg(feature = "host")]
pub mod builtin;
#[cfg(feature = "host")]
pub mod cache;
#[cfg(feature = "host")]
pub mod component;
pub mod contain;
#[cfg(feature = "host")]
pub mod deploy;
pub mod detect;
pub mod disk;
pub mod fds;
#[cfg(feature = "host")]
pub mod guestfs;
#[cfg(feature = "host")]
pub mod jobio;
pub mod params;
pub mod policy;
#[cfg(feature = "host")]
pub mod process;
#[cfg(feature = "host")]
pub mod quota;
#[cfg(feature = "host")]
pub mod reattach;
#[cfg(feature = "host")]
pub mod registry;
#[cfg(feature = "host")]
pub mod runner;
pub mod signing;
#[cfg(feature = "host")]
pub mod state;
#[cfg(feature = "host")]
pub mod world;

#[cfg(test)]
mod tests;
