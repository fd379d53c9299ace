//! `warren run` (and the `ansible-runner` front end): run a playbook from a private data
//! dir, on a node across the mesh (`--via-receptor NODE`) or on this machine, with
//! `ansible-runner run`'s output, artifacts and exit code.
//!
//! The payload is ansible-runner's transmit stream, packed natively and streamed; the
//! results are its worker stream, processed natively as it arrives.

mod embedded;
mod local;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::ansible::kwargs::{RunOptions, cli_kwargs};
use crate::ansible::process::{ProcessConfig, ProcessError, ProcessOutcome, process};
use crate::ansible::transmit::Transmit;
use crate::ansible::unpack::{ArtifactLimits, parse_size};
use crate::cli::progress::Progress;
use crate::config::EndpointAddr;
use crate::id::NodeId;

/// Exit code of a run that timed out or was cancelled, as `ansible-runner run` exits.
const EXIT_CANCELED: u8 = 254;

/// The work type that runs ansible-runner on a node.
const WORK_TYPE: &str = "ansible-runner";

/// Flags of `warren run`: `ansible-runner run`'s, plus where to run.
#[derive(Debug, Clone, clap::Args)]
#[command(disable_version_flag = true)]
pub struct RunArgs {
    /// The private data dir: project/, inventory/, env/ (artifacts land in artifacts/).
    #[arg(value_name = "PRIVATE_DATA_DIR")]
    pub private_data_dir: PathBuf,

    /// The playbook to run, relative to PRIVATE_DATA_DIR/project.
    #[arg(short = 'p', long = "playbook", value_name = "PLAYBOOK")]
    pub playbook: Option<String>,

    /// Run this module instead of a playbook (with --hosts and -a).
    #[arg(short = 'm', long = "module")]
    pub module: Option<String>,

    /// The module's arguments.
    #[arg(short = 'a', long = "args", value_name = "MODULE_ARGS")]
    pub module_args: Option<String>,

    /// Host pattern for a module run.
    #[arg(long = "hosts")]
    pub hosts: Option<String>,

    /// Run on this node of the mesh instead of here.
    #[arg(long = "via-receptor", value_name = "NODE")]
    pub via_receptor: Option<NodeId>,

    /// The node to link to [default: receptor://localhost:8888]; every address the name
    /// resolves to is tried.
    #[arg(long = "receptor-peer", value_name = "URL")]
    pub receptor_peer: Option<EndpointAddr>,

    /// This run's node id on the mesh [default: a unique temporary id].
    #[arg(long = "receptor-node-id", value_name = "ID")]
    pub receptor_node_id: Option<NodeId>,

    /// Seconds to wait for NODE to be reachable.
    #[arg(long = "receptor-timeout", value_name = "SECS", default_value_t = 15.0)]
    pub receptor_timeout: f64,

    /// The run's identifier: artifacts go to PRIVATE_DATA_DIR/artifacts/IDENT
    /// [default: a random UUID].
    #[arg(short = 'i', long = "ident")]
    pub ident: Option<String>,

    /// An inventory file or directory (inside PRIVATE_DATA_DIR/inventory or a path).
    #[arg(long = "inventory")]
    pub inventory: Option<PathBuf>,

    /// Limit the run to these hosts.
    #[arg(long = "limit")]
    pub limit: Option<String>,

    /// Parallel processes.
    #[arg(long = "forks")]
    pub forks: Option<u32>,

    /// Extra ansible-playbook arguments.
    #[arg(long = "cmdline")]
    pub cmdline: Option<String>,

    /// More verbose ansible output (repeatable).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print each event as JSON instead of its text.
    #[arg(short = 'j', long = "json")]
    pub json: bool,

    /// Print nothing on standard output.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// Keep only the N newest artifact dirs (0: keep all).
    #[arg(long = "rotate-artifacts", default_value_t = 0)]
    pub rotate_artifacts: u32,

    /// Where artifacts go [default: PRIVATE_DATA_DIR/artifacts].
    #[arg(long = "artifact-dir")]
    pub artifact_dir: Option<PathBuf>,

    /// The project directory [default: PRIVATE_DATA_DIR/project].
    #[arg(long = "project-dir")]
    pub project_dir: Option<String>,

    /// Largest artifacts zip accepted from the worker, in bytes; K, M, G, T suffixes are
    /// powers of 1024. A bigger one is refused unread.
    #[arg(
        long = "artifacts-max-zip",
        env = "WARREN_ARTIFACTS_MAX_ZIP",
        value_name = "BYTES",
        default_value = "1G",
        value_parser = parse_size
    )]
    pub artifacts_max_zip: u64,

    /// Most bytes the worker's artifacts may unpack to. Files that would pass it are not
    /// written (see artifacts/IDENT/warren-incomplete.txt) and the run fails.
    #[arg(
        long = "artifacts-max-bytes",
        env = "WARREN_ARTIFACTS_MAX_BYTES",
        value_name = "BYTES",
        default_value = "1G",
        value_parser = parse_size
    )]
    pub artifacts_max_bytes: u64,

    /// Most files, directories and links in the worker's artifacts zip.
    #[arg(
        long = "artifacts-max-entries",
        env = "WARREN_ARTIFACTS_MAX_ENTRIES",
        value_name = "N",
        default_value_t = ArtifactLimits::DEFAULT.entries
    )]
    pub artifacts_max_entries: u64,

    /// Largest unpacked-to-zipped ratio of one artifacts file over 1 MiB (zip bombs reach
    /// 1000 and more; text stays far below).
    #[arg(
        long = "artifacts-max-ratio",
        env = "WARREN_ARTIFACTS_MAX_RATIO",
        value_name = "N",
        default_value_t = ArtifactLimits::DEFAULT.ratio
    )]
    pub artifacts_max_ratio: u64,

    /// Most job events the worker may send (one file each in artifacts/IDENT/job_events/).
    /// Past it the run fails and artifacts/IDENT/warren-incomplete.txt says so.
    #[arg(
        long = "artifacts-max-events",
        env = "WARREN_ARTIFACTS_MAX_EVENTS",
        value_name = "N",
        default_value_t = ArtifactLimits::DEFAULT.events
    )]
    pub artifacts_max_events: u64,

    /// Most bytes of job events the worker may send, all events together.
    #[arg(
        long = "artifacts-max-event-bytes",
        env = "WARREN_ARTIFACTS_MAX_EVENT_BYTES",
        value_name = "BYTES",
        default_value = "4G",
        value_parser = parse_size
    )]
    pub artifacts_max_event_bytes: u64,
}

impl RunArgs {
    /// The caps on the worker's artifacts these flags set.
    pub fn artifact_limits(&self) -> ArtifactLimits {
        ArtifactLimits {
            zip_bytes: self.artifacts_max_zip,
            unpacked_bytes: self.artifacts_max_bytes,
            entries: self.artifacts_max_entries,
            ratio: self.artifacts_max_ratio,
            events: self.artifacts_max_events,
            event_bytes: self.artifacts_max_event_bytes,
        }
    }
}

/// A job ready to submit: what to send and where its results go.
struct Prepared {
    private_data_dir: PathBuf,
    kwargs: crate::ansible::kwargs::Kwargs,
    process: ProcessConfig,
}

fn uuid4() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Checks the command line the way `ansible-runner run` does, before anything is sent.
fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
    let pdd = &args.private_data_dir;
    if !pdd.is_dir() {
        bail!(
            "private data dir {} does not exist or is not a directory",
            pdd.display()
        );
    }
    if args.playbook.is_none() && args.module.is_none() {
        bail!("The -p option must be specified when not using -m or -r");
    }
    if args.hosts.is_some() && args.module.is_none() {
        bail!("The --hosts option can only be used with -m or -r");
    }
    if let Some(playbook) = &args.playbook {
        let project = args
            .project_dir
            .as_ref()
            .map_or_else(|| pdd.join("project"), PathBuf::from);
        let path = if Path::new(playbook).is_absolute() {
            PathBuf::from(playbook)
        } else {
            project.join(playbook)
        };
        if !path.is_file() {
            bail!(
                "playbook {playbook} not found (looked for {})",
                path.display()
            );
        }
    }
    let ident = match &args.ident {
        Some(ident) => ident.clone(),
        None => uuid4()?,
    };
    let options = RunOptions {
        ident: Some(ident.clone()),
        playbook: args.playbook.clone(),
        module: args.module.clone(),
        module_args: args.module_args.clone(),
        host_pattern: args.hosts.clone(),
        verbosity: (args.verbose > 0).then_some(args.verbose),
        quiet: args.quiet,
        rotate_artifacts: args.rotate_artifacts,
        json_mode: args.json,
        inventory: args.inventory.clone(),
        forks: args.forks,
        project_dir: args.project_dir.clone(),
        cmdline: args.cmdline.clone(),
        limit: args.limit.clone(),
        ..RunOptions::default()
    };
    let kwargs = cli_kwargs(pdd, &options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut process = ProcessConfig::new(pdd, Some(&ident));
    if let Some(dir) = &args.artifact_dir {
        process.artifact_dir = dir.join(&ident);
    }
    process.quiet = args.quiet;
    process.json = args.json;
    process.skip_empty_stdout = true;
    process.limits = args.artifact_limits();
    Ok(Prepared {
        private_data_dir: pdd.clone(),
        kwargs,
        process,
    })
}

/// Runs `warren run`; the exit code is the playbook's.
pub(super) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let prepared = prepare(&args)?;
    let outcome = match &args.via_receptor {
        Some(node) => embedded::run_remote(&args, node, prepared).await?,
        None => local::run_local(prepared).await?,
    };
    Ok(exit_code(&outcome))
}

/// `ansible-runner run`'s exit status: the playbook's rc, 254 for timeout or cancel.
fn exit_code(outcome: &ProcessOutcome) -> ExitCode {
    match outcome.status.as_deref() {
        Some("timeout" | "canceled") => ExitCode::from(EXIT_CANCELED),
        Some("successful") => ExitCode::from(outcome.rc.unwrap_or(0).clamp(0, 255) as u8),
        _ => ExitCode::from(outcome.rc.filter(|rc| *rc != 0).unwrap_or(1).clamp(1, 255) as u8),
    }
}

/// Streams the transmit stream into `out` (one end of a pipe to the submitter), with
/// progress on a terminal, and closes `out` when all is sent. On failure `out` is left open,
/// so the submitter never mistakes a cut stream for a whole one.
async fn send_payload(
    prepared: &Prepared,
    out: &mut tokio::io::DuplexStream,
) -> anyhow::Result<()> {
    let transmit = Transmit::prepare(&prepared.private_data_dir, &prepared.kwargs)
        .await
        .context("packing the private data dir")?;
    let total = transmit.stream_len();
    let mut counted = Progress::new(&mut *out, Some(total), prepared.process.quiet);
    let sent = transmit.send(&mut counted).await;
    counted.finish(sent.is_ok());
    drop(counted);
    sent.context("sending the private data dir")?;
    out.shutdown().await.ok();
    Ok(())
}

/// Completes only if sending the payload fails, with its error: raced against the job, it
/// ends the run on a failed payload; once the payload is sent it never completes.
async fn payload_failure(prepared: &Prepared, out: &mut tokio::io::DuplexStream) -> anyhow::Error {
    match send_payload(prepared, out).await {
        Ok(()) => std::future::pending().await,
        Err(e) => e,
    }
}

/// Whether the payload failed only because its reader went away (the submission's stream
/// ended first), rather than because the private data dir could not be packed.
fn reader_gone(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Processes the worker stream from `input` to standard output and the artifact dir.
async fn receive(
    prepared: &Prepared,
    input: tokio::io::DuplexStream,
) -> anyhow::Result<ProcessOutcome> {
    let stdout = tokio::io::stdout();
    let outcome = process(input, &prepared.process, stdout)
        .await
        .with_context(|| {
            format!(
                "processing the job's results (partial artifacts are in {})",
                prepared.process.artifact_dir.display()
            )
        })?;
    Ok(outcome)
}

/// Whether processing stopped because it refused what the worker sent (a hostile or
/// over-cap stream), rather than because the stream ended or broke off: then the
/// processor's error is the one to report, and whatever the reader side says after it is
/// only its echo.
fn refused_stream(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ProcessError>(),
        Some(e) if !matches!(
            e,
            ProcessError::UnexpectedEnd | ProcessError::ArtifactsTruncated { .. } | ProcessError::Read(_)
        )
    )
}

/// The outcome of a run cancelled before the worker reported it: the artifacts say
/// `canceled` and 254, as ansible-runner leaves a cancelled run.
fn canceled_outcome(process: &ProcessConfig) -> anyhow::Result<ProcessOutcome> {
    let dir = &process.artifact_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, text) in [("status", "canceled"), ("rc", "254")] {
        let path = dir.join(file);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(ProcessOutcome {
        status: Some("canceled".into()),
        rc: Some(i32::from(EXIT_CANCELED)),
        job_explanation: None,
        command: None,
        cwd: None,
        events: 0,
        artifact_dir: dir.clone(),
    })
}

/// How long to wait for the target node, from `--receptor-timeout`.
fn timeout(args: &RunArgs) -> Duration {
    Duration::try_from_secs_f64(args.receptor_timeout).unwrap_or(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> RunArgs {
        let all = [&["warren", "run", "pdd", "-p", "x.yml"], args].concat();
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Run(run) => *run,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn artifact_limits_default_to_the_library_defaults_and_take_flags() {
        // The environment could set them; these tests assume it does not.
        for var in ["ZIP", "BYTES", "ENTRIES", "RATIO", "EVENTS", "EVENT_BYTES"] {
            assert!(std::env::var_os(format!("WARREN_ARTIFACTS_MAX_{var}")).is_none());
        }
        assert_eq!(parse(&[]).artifact_limits(), ArtifactLimits::DEFAULT);
        let set = parse(&[
            "--artifacts-max-bytes",
            "2G",
            "--artifacts-max-zip",
            "512M",
            "--artifacts-max-entries",
            "10",
            "--artifacts-max-ratio",
            "50",
            "--artifacts-max-events",
            "7",
            "--artifacts-max-event-bytes",
            "3M",
        ]);
        let want = ArtifactLimits {
            zip_bytes: 512 << 20,
            unpacked_bytes: 2 << 30,
            entries: 10,
            ratio: 50,
            events: 7,
            event_bytes: 3 << 20,
        };
        assert_eq!(set.artifact_limits(), want);
    }

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("10MB"), Ok(10 << 20));
        for bad in ["", "G", "1.5G", "-1", "12X", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
