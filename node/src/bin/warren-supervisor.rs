//! `warren-supervisor`: the per-job supervisor on its own, a small binary that starts in a
//! fraction of the time the whole `warren` binary takes (see `host::contain::supervisor`).
//! The node runs it as `warren-supervisor __warren-supervise` from the directory of its own
//! binary, and falls back to `warren __warren-supervise` where it is missing.

fn main() {
    warren::host::contain::supervisor::main_if_requested();
    eprintln!("warren-supervisor is started by a Warren node for each job; it takes no commands");
    std::process::exit(2);
}
