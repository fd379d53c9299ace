//! The WebAssembly host: runs each job inside a work-handler component that can do only
//! what the node's policy grants it.
//!
//! - [`builtin`]: the work-handler components built into the node (guest-runner).
//! - [`bindings`]: the generated types of the `warren:worker` world.
//! - [`policy`]: what a work type may do, as pure checks (testable without wasm), with
//!   [`args`]: what arguments a granted program may be given.
//! - [`state`]: the per-job store data: WASI context, resource table, capabilities.
//! - [`fds`], [`disk`] and [`quota`]: per-job caps on host descriptors and resources, the
//!   job directory's disk quota, and the node's free-space floor.
//! - [`process`] and [`jobio`]: the host side of the world's interfaces; [`guestfs`]:
//!   the job's limits inside WASI's filesystem.
//! - [`contain`]: job containment: cgroups or a subreaper supervisor, rlimits, a private
//!   network on request, and detached jobs that survive a restart of the node.
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

pub mod args;
pub mod bindings;
pub mod builtin;
pub mod cache;
pub mod component;
pub mod contain;
pub mod deploy;
pub mod detect;
pub mod disk;
pub mod fds;
pub mod guestfs;
pub mod jobio;
pub mod policy;
pub mod process;
pub mod quota;
pub mod registry;
pub mod runner;
pub mod signing;
pub mod state;

#[cfg(test)]
mod tests;
