//! The job's run options (`{"kwargs": {...}}`, the first line of the transmit stream), built
//! as `ansible-runner transmit` builds them from its command line.
//!
//! [`cli_kwargs`] mirrors ansible-runner 2.4's `main()` and `init_runner()`: the same keys in
//! the same order, unset ones `null`, paths made relative to the private data dir. It only
//! reads the filesystem (to resolve `--inventory`); it never writes.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::pyjson;

/// Run options in insertion order, serialised as Python's `json.dumps` would.
///
/// A plain `serde_json::Map` sorts its keys; the reference keeps `main()`'s order, and the
/// kwargs line is compared byte for byte.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kwargs {
    entries: Vec<(String, Value)>,
}

impl Kwargs {
    /// An empty set of options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`, keeping its position if it is already present (as a Python dict does).
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The stream's first line: `{"kwargs": {...}}` and a newline.
    pub fn to_line(&self) -> String {
        let mut line = String::from("{\"kwargs\": ");
        pyjson::write_object(&mut line, self.iter());
        line.push_str("}\n");
        line
    }
}

impl From<Map<String, Value>> for Kwargs {
    /// Takes the map's own iteration order.
    fn from(map: Map<String, Value>) -> Self {
        Self {
            entries: map.into_iter().collect(),
        }
    }
}

/// What `ansible-runner transmit` accepts on its command line and Warren supports.
///
/// Process isolation and roles (`-r`) are not supported: their keys are sent as the CLI
/// sends them when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `-i/--ident`; `None` draws a random UUID (sent as 32 hex digits), as the CLI does.
    pub ident: Option<String>,
    /// `-b/--binary`.
    pub binary: Option<String>,
    /// `-p/--playbook`, relative to `project/` (absolute paths inside it are made relative).
    pub playbook: Option<String>,
    /// `-m/--module`.
    pub module: Option<String>,
    /// `-a/--args`.
    pub module_args: Option<String>,
    /// `--hosts` (only with a module).
    pub host_pattern: Option<String>,
    /// The number of `-v`s; `None` when none was given.
    pub verbosity: Option<u8>,
    /// `-q/--quiet`.
    pub quiet: bool,
    /// `--rotate-artifacts N` (0 disables).
    pub rotate_artifacts: u32,
    /// `-j/--json`.
    pub json_mode: bool,
    /// `--omit-event-data`.
    pub omit_event_data: bool,
    /// `--only-failed-event-data`.
    pub only_failed_event_data: bool,
    /// `--inventory`: a path (relative to the current dir or to `<pdd>/inventory/`).
    pub inventory: Option<PathBuf>,
    /// `--forks` (the CLI sends it as a string).
    pub forks: Option<u32>,
    /// `--project-dir`.
    pub project_dir: Option<String>,
    /// `--artifact-dir`.
    pub artifact_dir: Option<String>,
    /// `--roles-path` (sent as a one-element list).
    pub roles_path: Option<String>,
    /// `--container-image`.
    pub container_image: Option<String>,
    /// `--container-volume-mount`, repeatable.
    pub container_volume_mounts: Vec<String>,
    /// `--container-option`, repeatable.
    pub container_options: Vec<String>,
    /// `--cmdline`. The reference writes it to `env/cmdline` when that file is missing and
    /// drops the key; we keep the key and never write into the private data dir. The
    /// worker's own `dump_artifacts` writes the same file, so the job runs the same.
    pub cmdline: Option<String>,
    /// `--limit`.
    pub limit: Option<String>,
    /// `--omit-env-files`.
    pub suppress_env_files: bool,
}

/// A run option set that `ansible-runner transmit` would refuse.
#[derive(Debug, thiserror::Error)]
pub enum KwargsError {
    /// Neither a playbook nor a module was given.
    #[error("The -p option must be specified when not using -m or -r")]
    MissingPlaybook,
    /// `--hosts` without a module.
    #[error("The --hosts option can only be used with -m or -r")]
    HostsWithoutModule,
    /// `--inventory` names neither an existing path nor a file under `<pdd>/inventory/`.
    #[error("Value for --inventory does not appear to be a valid path.")]
    InvalidInventory {
        /// The value given.
        inventory: PathBuf,
    },
    /// The current directory could not be read to make paths absolute.
    #[error("cannot read the current directory")]
    CurrentDir(#[source] std::io::Error),
}

/// Builds the kwargs that `ansible-runner transmit <pdd> ...` sends for `options`.
///
/// # Errors
///
/// The CLI's own refusals, see [`KwargsError`].
pub fn cli_kwargs(private_data_dir: &Path, options: &RunOptions) -> Result<Kwargs, KwargsError> {
    if options.host_pattern.is_some() && options.module.is_none() {
        return Err(KwargsError::HostsWithoutModule);
    }
    if options.module.is_none() && options.playbook.is_none() {
        return Err(KwargsError::MissingPlaybook);
    }
    let cwd = std::env::current_dir().map_err(KwargsError::CurrentDir)?;
    let pdd = normalize(&cwd.join(private_data_dir));
    let inventory = match &options.inventory {
        Some(inventory) => Some(resolve_inventory(&cwd, &pdd, inventory)?),
        None => None,
    };
    let ident = options.ident.clone().unwrap_or_else(random_ident);
    let playbook = options
        .playbook
        .as_deref()
        .map(|playbook| relative_inside(playbook, &pdd.join("project")));
    Ok(fill(options, ident, playbook, inventory))
}

/// The kwargs in `main()`'s `run_options` order, less the keys `transmit` pops.
fn fill(
    options: &RunOptions,
    ident: String,
    playbook: Option<String>,
    inventory: Option<String>,
) -> Kwargs {
    let string = |value: &Option<String>| value.clone().map_or(Value::Null, Value::String);
    let list = |values: &[String]| match values {
        [] => Value::Null,
        _ => Value::from(values.to_vec()),
    };
    let mut kwargs = Kwargs::new();
    kwargs.insert("ident", Value::String(ident));
    kwargs.insert("binary", string(&options.binary));
    kwargs.insert("playbook", string(&playbook));
    kwargs.insert("module", string(&options.module));
    kwargs.insert("module_args", string(&options.module_args));
    kwargs.insert("host_pattern", string(&options.host_pattern));
    kwargs.insert(
        "verbosity",
        options.verbosity.map_or(Value::Null, Value::from),
    );
    kwargs.insert("quiet", Value::Bool(options.quiet));
    kwargs.insert("rotate_artifacts", Value::from(options.rotate_artifacts));
    kwargs.insert("json_mode", Value::Bool(options.json_mode));
    kwargs.insert("omit_event_data", Value::Bool(options.omit_event_data));
    kwargs.insert(
        "only_failed_event_data",
        Value::Bool(options.only_failed_event_data),
    );
    kwargs.insert("inventory", string(&inventory));
    kwargs.insert(
        "forks",
        string(&options.forks.map(|forks| forks.to_string())),
    );
    kwargs.insert("project_dir", string(&options.project_dir));
    kwargs.insert("artifact_dir", string(&options.artifact_dir));
    let roles_path = options.roles_path.as_ref().map(|path| vec![path.clone()]);
    kwargs.insert("roles_path", roles_path.map_or(Value::Null, Value::from));
    // `transmit` has no process-isolation options: argparse leaves them unset.
    for key in [
        "process_isolation",
        "process_isolation_executable",
        "process_isolation_path",
        "process_isolation_hide_paths",
        "process_isolation_show_paths",
        "process_isolation_ro_paths",
    ] {
        kwargs.insert(key, Value::Null);
    }
    kwargs.insert("container_image", string(&options.container_image));
    kwargs.insert(
        "container_volume_mounts",
        list(&options.container_volume_mounts),
    );
    kwargs.insert("container_options", list(&options.container_options));
    kwargs.insert("directory_isolation_base_path", Value::Null);
    kwargs.insert("cmdline", string(&options.cmdline));
    kwargs.insert("limit", string(&options.limit));
    kwargs.insert(
        "suppress_env_files",
        Value::Bool(options.suppress_env_files),
    );
    kwargs
}

/// `valid_inventory()` then `init_runner()`: an existing path (from the current dir) or a
/// file under `<pdd>/inventory/`, sent relative to the private data dir when inside it.
fn resolve_inventory(cwd: &Path, pdd: &Path, inventory: &Path) -> Result<String, KwargsError> {
    let direct = cwd.join(inventory);
    let under_pdd = pdd.join("inventory").join(inventory);
    let found = if direct.is_file() || direct.is_dir() {
        direct
    } else if !inventory.is_absolute() && (under_pdd.is_file() || under_pdd.is_dir()) {
        under_pdd
    } else {
        return Err(KwargsError::InvalidInventory {
            inventory: inventory.to_owned(),
        });
    };
    Ok(relative_inside(&found.to_string_lossy(), pdd))
}

/// `path` relative to `base` when it is an absolute path inside it, else unchanged.
fn relative_inside(path: &str, base: &Path) -> String {
    let candidate = Path::new(path);
    if !candidate.is_absolute() {
        return path.to_owned();
    }
    match normalize(candidate).strip_prefix(base) {
        Ok(relative) if relative.as_os_str().is_empty() => ".".to_owned(),
        Ok(relative) => relative.to_string_lossy().into_owned(),
        Err(_) => path.to_owned(),
    }
}

/// Lexical normalisation as Python's `os.path.abspath` does it (no symlink resolution).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A random version-4 UUID as 32 hex digits, as `uuid4().hex`.
fn random_ident() -> String {
    let mut bytes = [0u8; 16];
    // An OS RNG failure is not recoverable in any useful way; a fixed fallback would
    // collide, so mix in the time and pid instead.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_cli_refuses() {
        let pdd = Path::new("/nonexistent");
        let none = RunOptions::default();
        assert!(matches!(
            cli_kwargs(pdd, &none),
            Err(KwargsError::MissingPlaybook)
        ));
        let hosts = RunOptions {
            playbook: Some("x.yml".into()),
            host_pattern: Some("all".into()),
            ..RunOptions::default()
        };
        assert!(matches!(
            cli_kwargs(pdd, &hosts),
            Err(KwargsError::HostsWithoutModule)
        ));
        let inventory = RunOptions {
            playbook: Some("x.yml".into()),
            inventory: Some("missing".into()),
            ..RunOptions::default()
        };
        assert!(matches!(
            cli_kwargs(pdd, &inventory),
            Err(KwargsError::InvalidInventory { .. })
        ));
    }

    #[test]
    fn random_ident_is_uuid4_hex() {
        let ident = random_ident();
        assert_eq!(ident.len(), 32);
        assert_eq!(&ident[12..13], "4");
        assert_ne!(ident, random_ident());
    }

    #[test]
    fn playbook_inside_project_is_made_relative() {
        let options = RunOptions {
            playbook: Some("/pdd/project/sub/site.yml".into()),
            ..RunOptions::default()
        };
        let kwargs = cli_kwargs(Path::new("/pdd"), &options).unwrap();
        assert_eq!(kwargs.get("playbook"), Some(&Value::from("sub/site.yml")));
    }
}
