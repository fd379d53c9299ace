//! An example work handler that does, on request, what a hostile or broken handler would:
//! loop forever, allocate without bound, trap, read files, spawn programs, read its
//! environment. Warren's tests run it to prove the sandbox holds; it also shows how small a
//! work handler can be.
//!
//! The behaviour is chosen by `job.handler`; parameters come from `job.params`. Findings are
//! written to the job's results as one line.

#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "work-handler",
        generate_all,
        // wit-parser in wit-bindgen 0.46 needs the gated wasi:cli timezone import enabled to
        // parse the vendored WIT; nothing is generated for it.
        features: ["clocks-timezone"],
    });
}

use bindings::exports::warren::worker::handler::Guest;
use bindings::warren::worker::process::{self, Command, ExitStatus};
use bindings::warren::worker::types::{Failure, Job, Outcome};
use bindings::warren::worker::{cancel, job_io};

struct Probe;

fn param<'a>(job: &'a Job, name: &str) -> Option<&'a str> {
    job.params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Writes `line` to the results.
fn report(line: &str) {
    if let Some(results) = job_io::results() {
        let _ = results.blocking_write_and_flush(format!("{line}\n").as_bytes());
    }
}

fn failed(detail: &str) -> Outcome {
    Outcome::Failed(Failure {
        detail: detail.to_owned(),
        exit_code: None,
    })
}

impl Guest for Probe {
    fn handle(job: Job) -> Outcome {
        match job.handler.as_str() {
            "noop" => Outcome::Succeeded,
            "echo" => echo(),
            "loop" => spin(),
            "alloc" => hoard(),
            "trap" => std::process::abort(),
            "read-file" => read_file(param(&job, "path").unwrap_or("/etc/passwd")),
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                report(&format!("env {}", vars.join(",")));
                Outcome::Succeeded
            }
            "spawn" => spawn(&job),
            "wait-cancel" => wait_cancel(),
            other => failed(&format!("probe-handler has no behaviour {other}")),
        }
    }
}

/// Copies the payload to the results.
fn echo() -> Outcome {
    let (Some(input), Some(output)) = (job_io::payload(), job_io::results()) else {
        return failed("streams already taken");
    };
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) if chunk.is_empty() => continue,
            Ok(chunk) => {
                if output.blocking_write_and_flush(&chunk).is_err() {
                    return failed("results closed");
                }
            }
            Err(_) => return Outcome::Succeeded,
        }
    }
}

/// Computes forever.
fn spin() -> Outcome {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Allocates until the host stops it.
fn hoard() -> Outcome {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        kept.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&kept);
    }
}

fn read_file(path: &str) -> Outcome {
    match std::fs::read(path) {
        Ok(bytes) => report(&format!("read ok {}", bytes.len())),
        Err(e) => report(&format!("read err {e}")),
    }
    Outcome::Succeeded
}

/// Spawns `program` with `arg`s, `env` (`NAME=VALUE`) and `cwd` from the params; reports
/// the spawn error variant or the exit status.
fn spawn(job: &Job) -> Outcome {
    let list = |name: &str| -> Vec<String> {
        job.params
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let env = list("env")
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let cmd = Command {
        program: param(job, "program").unwrap_or("").to_owned(),
        args: list("arg"),
        env,
        cwd: param(job, "cwd").map(str::to_owned),
    };
    let child = match process::spawn(&cmd, true) {
        Ok(child) => child,
        Err(e) => {
            report(&format!("spawn err {e:?}"));
            return Outcome::Succeeded;
        }
    };
    let exit = child.subscribe_exit();
    exit.block();
    drop(exit);
    match child.try_wait() {
        Some(ExitStatus::Exited(code)) => report(&format!("spawn exited {code}")),
        Some(ExitStatus::Signaled(sig)) => report(&format!("spawn signaled {sig}")),
        None => report("spawn unknown"),
    }
    Outcome::Succeeded
}

/// Blocks until cancelled, then reports it.
fn wait_cancel() -> Outcome {
    let pollable = cancel::subscribe();
    pollable.block();
    report("cancelled");
    Outcome::Canceled(Failure {
        detail: "cancelled as asked".to_owned(),
        exit_code: None,
    })
}

bindings::export!(Probe with_types_in bindings);
