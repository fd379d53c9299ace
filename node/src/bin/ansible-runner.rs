//! Warren's `ansible-runner` front end: `ansible-runner run ... [--via-receptor NODE]`
//! runs through Warren; every other subcommand is handed to the real `ansible-runner`
//! further down `PATH`.

use std::process::ExitCode;

fn main() -> ExitCode {
    warren::cli::frontend::main()
}
