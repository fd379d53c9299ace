//! An example work handler that does, on request, what a hostile or broken handler would:
//! loop forever, allocate without bound, trap, read files, spawn programs, read its
//! environment, hoard descriptors and pollables, fill its job directory. Warren's tests run
//! it to prove the sandbox holds; it also shows how small a work handler can be.
//!
//! The behaviour is chosen by the `probe` parameter, else by the work type's name (a
//! deployed probe serves a work type whose name is fixed); parameters come from
//! `job.params`. Findings are written to the job's results as one line.

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
use bindings::warren::worker::types::{Failure, Job, Outcome, Task};
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
        let behaviour = param(&job, "probe").unwrap_or(&job.work_type).to_owned();
        match behaviour.as_str() {
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
            "open-files" => open_files(&job),
            "pollables" => pollables(),
            "write" => write(&job),
            "create-files" => create_files(&job),
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

/// Spawns a program with arguments, `env` (`NAME=VALUE`) and `cwd` from the params;
/// reports the spawn error variant or the exit status. The program and its first arguments
/// are a command work type's (when the probe is deployed over one), else the `program`
/// param's; `arg` and then `probe-arg` params add arguments.
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
    let (program, mut args) = match &job.task {
        Task::Command(spec) => (spec.program.clone(), spec.args.clone()),
        Task::AnsibleRunner | Task::Component => (String::new(), Vec::new()),
    };
    let program = param(job, "program").map_or(program, str::to_owned);
    args.extend(list("arg"));
    args.extend(list("probe-arg"));
    let cmd = Command {
        program,
        args,
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

/// A number parameter, or `default`.
fn number(job: &Job, name: &str, default: u64) -> u64 {
    param(job, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Opens a file in the job directory again and again, keeping every descriptor, until the
/// host refuses or `max` are open; reports how many and the error. With `hold`, keeps them
/// until cancelled.
fn open_files(job: &Job) -> Outcome {
    if let Err(e) = std::fs::write("probe-fd", b"x") {
        report(&format!("open-files setup err {e}"));
        return Outcome::Succeeded;
    }
    let max = number(job, "max", 100_000);
    let mut kept = Vec::new();
    let mut error = "none".to_owned();
    while (kept.len() as u64) < max {
        match std::fs::File::open("probe-fd") {
            Ok(file) => kept.push(file),
            Err(e) => {
                error = format!("{:?}: {e}", e.kind());
                break;
            }
        }
    }
    report(&format!("open-files {} err {error}", kept.len()));
    let outcome = if param(job, "hold").is_some() {
        wait_cancel()
    } else {
        Outcome::Succeeded
    };
    drop(kept);
    outcome
}

/// Subscribes to the cancel pollable without end, keeping every pollable.
fn pollables() -> Outcome {
    let mut kept = Vec::new();
    loop {
        kept.push(cancel::subscribe());
        std::hint::black_box(&kept);
    }
}

/// Writes `bytes` bytes (default 1 GiB) to `path` in the job directory, 64 KiB at a time;
/// reports how much was written and the error that stopped it.
fn write(job: &Job) -> Outcome {
    use std::io::Write;
    let path = param(job, "path").unwrap_or("probe-write");
    let bytes = number(job, "bytes", 1 << 30);
    let mut file = match std::fs::File::create(path) {
        Ok(file) => file,
        Err(e) => {
            report(&format!("write err {e} after 0"));
            return Outcome::Succeeded;
        }
    };
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    while written < bytes {
        let n = chunk
            .len()
            .min(usize::try_from(bytes - written).unwrap_or(usize::MAX));
        if let Err(e) = file.write_all(&chunk[..n]) {
            report(&format!("write err {e} after {written}"));
            return Outcome::Succeeded;
        }
        written += n as u64;
    }
    report(&format!("write ok {written}"));
    Outcome::Succeeded
}

/// Creates empty files until the host refuses or `max` (default 1,000,000) exist.
fn create_files(job: &Job) -> Outcome {
    let max = number(job, "max", 1_000_000);
    let mut made = 0u64;
    while made < max {
        if let Err(e) = std::fs::write(format!("f{made}"), b"") {
            report(&format!("create-files {made} err {e}"));
            return Outcome::Succeeded;
        }
        made += 1;
    }
    report(&format!("create-files {made} err none"));
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
