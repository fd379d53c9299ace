//! Warren's built-in work handler, compiled to a WebAssembly component (`wasm32-wasip2`).
//!
//! It exports `warren:worker/handler` and dispatches each job on `job.task` (what the
//! node's config asks for the work type) to one of its behaviours. It can do only what the node's policy grants through the imports of the
//! `work-handler` world; it holds no policy of its own and never panics on host or job
//! input (a panic in a guest is a trap).
//!
//! Crate map:
//!
//! - [`ansible`]: the `ansible-runner` handler (`ansible-runner worker` with checked args).
//! - [`command`]: the `command` handler (Receptor's command work type).
//! - [`child`]: running one child to its end: spawn, relay, and the job's outcome.
//! - [`relay`]: the single-threaded poll loop that moves bytes between the job's streams
//!   and the child's, and its pure parts ([`relay::Pipe`], [`relay::Lines`]).
//! - [`manifest`]: the `warren-manifest` custom section embedded in the component.

// The crate map above is for people reading the source (`cargo doc --document-private-items`):
// every module is private, as a component exports only its world.
#![allow(rustdoc::private_intra_doc_links)]

mod ansible;
mod child;
mod command;
mod manifest;
mod relay;

/// The bindings of the `work-handler` world, with the wasi:io interfaces it uses.
#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "work-handler",
        generate_all,
        // wit-parser 0.239 (in wit-bindgen 0.46) rejects the feature-gated
        // `import wasi:clocks/timezone` of the vendored wasi:cli unless the feature is on;
        // this world does not import wasi:cli, so nothing is generated for it.
        features: ["clocks-timezone"],
    });
}

use bindings::exports::warren::worker::handler::Guest;
use bindings::warren::worker::types::{Failure, Job, Outcome, Task};

/// The component's export: one job in, its outcome out.
struct Runner;

impl Guest for Runner {
    fn handle(job: Job) -> Outcome {
        match &job.task {
            Task::AnsibleRunner => ansible::handle(&job),
            Task::Command(spec) => command::handle(&job, spec),
            Task::Component => failed(format!(
                "guest-runner serves ansible-runner and command work types; work type {} \
                 is configured for a component of its own",
                job.work_type
            )),
        }
    }
}

/// A failure outcome with no exit code.
fn failed(detail: String) -> Outcome {
    Outcome::Failed(Failure {
        detail,
        exit_code: None,
    })
}

bindings::export!(Runner with_types_in bindings);
