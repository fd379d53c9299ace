//! The `ansible-runner` front end: accepts the seed's command lines
//! (`ansible-runner run demo/ -p test.yml --via-receptor node1 ...`), runs them through
//! Warren, and hands whatever it does not implement (`transmit`, `worker`, `process`, ...)
//! to the real `ansible-runner` further down `PATH`, so a real installation keeps working.
//! Nodes recognise it by [`FRONTEND_PROBE_FLAG`] and never take it for the real one.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use super::run::RunArgs;
use crate::host::detect::{FRONTEND_PROBE_FLAG, FRONTEND_PROBE_REPLY};

/// `ansible-runner run` as Warren serves it.
#[derive(Debug, Parser)]
#[command(name = "ansible-runner", disable_version_flag = true)]
struct Frontend {
    #[command(subcommand)]
    command: FrontendCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FrontendCommand {
    /// Run a playbook, here or with --via-receptor on a node across a Warren mesh.
    Run(RunArgs),
}

/// The front end's entry point.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(flag) if flag == FRONTEND_PROBE_FLAG => {
            println!("{FRONTEND_PROBE_REPLY}");
            ExitCode::SUCCESS
        }
        Some("run") => {
            let Frontend {
                command: FrontendCommand::Run(run),
            } = Frontend::parse();
            super::Cli {
                verbose: 0,
                command: super::Command::Run(Box::new(run)),
            }
            .run()
        }
        _ => hand_over(&args),
    }
}

/// Replaces this process with the real `ansible-runner`, or explains why it cannot.
fn hand_over(args: &[OsString]) -> ExitCode {
    let what = args.get(1).map_or_else(
        || "(no subcommand)".to_owned(),
        |a| a.to_string_lossy().into_owned(),
    );
    let Some(real) = real_ansible_runner() else {
        eprintln!(
            "ansible-runner (Warren's front end) runs only `ansible-runner run`; \
             for `{what}` install the real ansible-runner further down PATH (pip install ansible-runner)"
        );
        return ExitCode::from(2);
    };
    let error = std::process::Command::new(&real).args(&args[1..]).exec();
    eprintln!("ansible-runner: cannot run {}: {error}", real.display());
    ExitCode::from(127)
}

/// The first `ansible-runner` on `PATH` that is not a Warren front end.
fn real_ansible_runner() -> Option<PathBuf> {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ansible-runner"))
        .filter(|candidate| candidate.is_file())
        .find(|candidate| {
            let canonical = candidate.canonicalize().ok();
            canonical != me && !is_frontend(candidate)
        })
}

fn is_frontend(candidate: &Path) -> bool {
    std::process::Command::new(candidate)
        .arg(FRONTEND_PROBE_FLAG)
        .output()
        .is_ok_and(|out| {
            out.status.success() && out.stdout.starts_with(FRONTEND_PROBE_REPLY.as_bytes())
        })
}
