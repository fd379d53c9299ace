//! The section filter every bench binary shares: `cargo bench --bench NAME -- FILTER` runs
//! the sections whose name contains FILTER (all without one), each under a heading.

use std::process::ExitCode;

/// The sections whose name contains the command line's filter (all when there is none);
/// `None`, after saying which sections exist, when none matches.
pub(crate) fn choose<'a, T>(
    sections: &'a [(&'static str, T)],
) -> Option<Vec<&'a (&'static str, T)>> {
    // cargo passes `--bench`; anything not a flag is the filter.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let chosen: Vec<_> = sections
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = sections.iter().map(|s| s.0).collect();
        eprintln!(
            "no section matches {:?}; sections: {}",
            filter.unwrap_or_default(),
            names.join(", ")
        );
        return None;
    }
    Some(chosen)
}

/// Runs each chosen section with `call`, printing its heading; a failure is reported and
/// the others still run.
pub(crate) fn run<T>(
    chosen: Vec<&(&'static str, T)>,
    mut call: impl FnMut(&T) -> anyhow::Result<()>,
) -> ExitCode {
    let mut failed = false;
    for (name, section) in chosen {
        println!("== {name}");
        if let Err(e) = call(section) {
            eprintln!("{name}: FAILED: {e:#}");
            failed = true;
        }
        println!();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
