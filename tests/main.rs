//! Cross-process tests: real `warren` processes on 127.0.0.1, driven as a user would.
//!
//! One test binary (linking is the slow part of a build); each capability has a module.

// Test helpers are `pub` for the sibling modules; the lint is meant for library crates.
#![allow(unreachable_pub)]

mod support;

mod cli;
mod component;
mod contain;
mod deploy;
mod detached;
mod mesh;
mod receptorctl;
mod run;
