//! Warren's `ansible-runner` front end: `ansible-runner run ... [--via-receptor NODE]`
//! runs through Warren; every other subcommand is handed to the real `ansible-runner`
//! further down `PATH`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Local runs supervise detached jobs with this binary re-executed.
    warren::host::contain::supervisor::main_if_requested();
    warren::cli::frontend::main()
}
