//! The `warren` binary: parse the command line and run it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    warren::cli::Cli::parse().run()
}
