//! The `warren` binary: parse the command line and run it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A job's supervisor is this binary re-executed; it never reaches the CLI.
    warren::host::contain::supervisor::main_if_requested();
    warren::cli::Cli::parse().run()
}
