//! Cross-process tests: real `warren` processes on 127.0.0.1, driven as a user would.
//!
//! One test binary (linking is the slow part of a build); each capability has a module.

// Test helpers are `pub` for the sibling modules; the lint is meant for library crates.
#![allow(unreachable_pub)]

mod support;

// Hand-built zips (bombs, lying sizes, any mode), shared with the library's own tests.
#[path = "../node/src/ansible/craft.rs"]
mod craft;

mod access;
mod cli;
mod component;
mod contain;
mod content;
mod control_socket;
mod demo;
mod deploy;
mod detached;
mod docs;
mod faults;
mod hostile_worker;
mod job_users;
mod limits;
mod mesh;
mod metrics;
mod reattached;
mod receptorctl;
mod reload;
mod run;
mod supervisor;
mod survive;
mod survive_submit;
mod toolchain;
mod trust;
mod websocket;
