//! The process's log filter: installed once at start, changed by a node's config
//! (`[node] log-level`) at start and on reload.
//!
//! Precedence, highest first: `RUST_LOG` (unless empty), the command line's `-v` flags, the config's
//! `log-level`, the command's default. A filter set by a higher source is never replaced
//! by a lower one, so `-vv` keeps debugging on across reloads.

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

/// Replaces the installed filter.
type Swap = Box<dyn Fn(EnvFilter) -> Result<(), tracing_subscriber::reload::Error> + Send + Sync>;

struct Installed {
    swap: Swap,
    /// What set the filter when it may not be changed by a config (`RUST_LOG`, `-v`).
    pinned_by: Option<&'static str>,
    /// The command's default, restored when a config drops its `log-level`.
    default: String,
    /// The config's level now in force, if any.
    current: Mutex<Option<String>>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// A `log-level` that is not a level or a filter.
#[derive(Debug, thiserror::Error)]
#[error(
    "log-level {value:?} is not a level (error, warn, info, debug, trace) or a filter such as \
     \"warren=debug,warren::mesh=trace\": {reason}"
)]
pub struct LogLevelError {
    value: String,
    reason: String,
}

/// Turns a config's `log-level` into a filter: a bare level applies to Warren's own
/// modules (`debug` = `warren=debug`); anything else is `RUST_LOG` syntax.
///
/// # Errors
/// When `value` parses as neither.
pub fn filter_for(value: &str) -> Result<EnvFilter, LogLevelError> {
    let value = value.trim();
    let directives = match value.to_ascii_lowercase().as_str() {
        "error" | "warn" | "info" | "debug" | "trace" | "off" => {
            format!("warren={}", value.to_ascii_lowercase())
        }
        _ => value.to_owned(),
    };
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| LogLevelError {
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// Installs the process's subscriber, logging to stderr: `RUST_LOG` if set (and not
/// empty), else the `-v` count's level, else `default_level` for Warren's modules.
pub fn init(default_level: &str, verbose: u8) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::builder().parse(v).ok());
    let pinned_by = match (&from_env, verbose) {
        (Some(_), _) => Some("RUST_LOG"),
        (None, 0) => None,
        (None, _) => Some("-v"),
    };
    let level = match verbose {
        0 => default_level,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let default = format!("warren={default_level}");
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(format!("warren={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if tracing::subscriber::set_global_default(builder.finish()).is_err() {
        return; // a subscriber is already installed (tests): leave it
    }
    let swap: Swap = Box::new(move |filter| handle.reload(filter));
    let _ = INSTALLED.set(Installed {
        swap,
        pinned_by,
        default,
        current: Mutex::new(None),
    });
}

/// What [`apply_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogChange {
    /// The filter is now the config's (or the default, when the config has none).
    Applied,
    /// Nothing changed: the level is the one in force already.
    Unchanged,
    /// `RUST_LOG` or `-v` set the filter; the config's level is not applied.
    Pinned(&'static str),
    /// No subscriber of ours is installed (a library user's process).
    NotInstalled,
}

/// Applies a config's `log-level` (`None`: the command's default) unless a higher source
/// set the filter.
///
/// # Errors
/// When the level does not parse (nothing is changed then).
pub fn apply_config(level: Option<&str>) -> Result<LogChange, LogLevelError> {
    let filter = level.map(filter_for).transpose()?;
    let Some(installed) = INSTALLED.get() else {
        return Ok(LogChange::NotInstalled);
    };
    if let Some(source) = installed.pinned_by {
        return Ok(LogChange::Pinned(source));
    }
    let mut current = installed
        .current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let wanted = level.map(|l| l.trim().to_owned());
    if *current == wanted {
        return Ok(LogChange::Unchanged);
    }
    let filter = filter.unwrap_or_else(|| EnvFilter::new(&installed.default));
    (installed.swap)(filter).map_err(|e| LogLevelError {
        value: level.unwrap_or_default().to_owned(),
        reason: e.to_string(),
    })?;
    *current = wanted;
    Ok(LogChange::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_means_warrens_modules_and_filters_pass_through() {
        assert_eq!(filter_for("debug").unwrap().to_string(), "warren=debug");
        assert_eq!(filter_for(" WARN ").unwrap().to_string(), "warren=warn");
        let f = filter_for("warren=info,warren::mesh=trace")
            .unwrap()
            .to_string();
        assert!(f.contains("warren::mesh=trace"), "{f}");
    }

    #[test]
    fn a_bad_level_names_the_value_and_what_is_accepted() {
        let e = filter_for("warren=loud").unwrap_err().to_string();
        assert!(e.contains("\"warren=loud\""), "{e}");
        assert!(e.contains("error, warn, info, debug, trace"), "{e}");
    }
}
