//! `warren work`: submit work units and follow, inspect, cancel and release them through
//! the local node's control socket (the verbs of `receptorctl work`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::cli::progress::Progress;
use crate::control::render::{render_work_list, render_work_status};
use crate::control::request::WorkRequest;
use crate::control::{Client, Request, default_socket_path};
use crate::terminal::{Mode, Sanitizer, json_safe, one_line, sanitize};
use crate::work::UnitId;

/// `warren work` subcommands.
// Help text (clap prints these comments as written): `<detail>` is a placeholder, not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, clap::Subcommand)]
pub enum WorkCommand {
    /// Create a work unit, send it its input, and print its id.
    ///
    /// The payload (--payload FILE, or - for standard input) becomes the unit's standard
    /// input; without --payload the unit gets empty input. With --follow the unit's output
    /// is streamed to standard output (the id then goes to standard error) and the exit
    /// status is non-zero if the unit failed.
    ///
    /// Example: ansible-runner transmit ./pdd -p x.yml | warren work submit ansible-runner
    /// --payload - --param params=--delete -f | ansible-runner process ./pdd
    Submit(SubmitArgs),
    /// List the node's work units and their states.
    List(ListArgs),
    /// Show one work unit's state, output size and detail.
    Status(StatusArgs),
    /// Stream a work unit's output to standard output until the unit finishes.
    ///
    /// Exits non-zero ("Remote unit failed: <detail>") if the unit failed.
    Results(ResultsArgs),
    /// Cancel work units; their output is kept until they are released.
    Cancel(CancelArgs),
    /// Release work units: cancel them if still running and delete their files.
    Release(ReleaseArgs),
}

/// Where the node's control socket is.
// Help text (clap prints these comments as written): `<uid>` is a placeholder, not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, clap::Args)]
pub struct WorkSocketArgs {
    /// The node's control socket [default: $WARREN_SOCKET, else
    /// $XDG_RUNTIME_DIR/warren/control.sock, else for root /run/warren/control.sock, else
    /// /tmp/warren-<uid>/control.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Also trust a control socket served by this uid (by default only sockets served by
    /// your own user or root are used: a socket another user serves may be an impostor).
    #[arg(long = "socket-owner", env = "WARREN_SOCKET_OWNER", value_name = "UID")]
    pub socket_owner: Option<u32>,
}

/// Flags of `warren work submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The work type to run (see `warren status` for what each node offers).
    #[arg(value_name = "WORKTYPE")]
    pub work_type: String,
    /// The node to run it on (`localhost`: the node behind the socket).
    #[arg(long, value_name = "NODE", default_value = "localhost")]
    pub node: String,
    /// File whose contents become the unit's standard input; `-` reads standard input.
    #[arg(long, short = 'p', value_name = "FILE|-")]
    pub payload: Option<PathBuf>,
    /// A work parameter, such as `params=--verbose` (repeatable).
    #[arg(long = "param", short = 'a', value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Stream the unit's output to standard output until it finishes.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Show no progress (payloads over 4 MiB show bytes sent and the rate on standard
    /// error when it is a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    socket: WorkSocketArgs,
}

/// Flags of `warren work list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print the node's JSON reply (Receptor's format) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    socket: WorkSocketArgs,
}

/// Flags of `warren work status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The work unit's id.
    #[arg(value_name = "UNIT")]
    pub unit: UnitId,
    /// Print the node's JSON reply (Receptor's format) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    socket: WorkSocketArgs,
}

/// Flags of `warren work results`.
#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    /// The work unit's id.
    #[arg(value_name = "UNIT")]
    pub unit: UnitId,
    /// Skip this many bytes of output.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub startpos: u64,
    #[command(flatten)]
    socket: WorkSocketArgs,
}

/// Flags of `warren work cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The work units' ids.
    #[arg(value_name = "UNIT", required = true)]
    pub units: Vec<UnitId>,
    #[command(flatten)]
    socket: WorkSocketArgs,
}

/// Flags of `warren work release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The work units' ids.
    #[arg(value_name = "UNIT", required = true)]
    pub units: Vec<UnitId>,
    /// Delete local files even if the node running a remote unit cannot be told.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    socket: WorkSocketArgs,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

async fn connect(args: &WorkSocketArgs) -> anyhow::Result<Client> {
    let path = args.socket.clone().unwrap_or_else(default_socket_path);
    Ok(Client::connect_served_by(&path, args.socket_owner).await?)
}

/// Runs a `warren work` subcommand.
pub(super) async fn run(command: WorkCommand) -> anyhow::Result<ExitCode> {
    match command {
        WorkCommand::Submit(args) => submit(args).await,
        WorkCommand::List(args) => list(args).await,
        WorkCommand::Status(args) => status(args).await,
        WorkCommand::Results(args) => follow(&args.socket, args.unit, args.startpos).await,
        WorkCommand::Cancel(args) => {
            acknowledge(&args.socket, &args.units, async |c, u| {
                c.work_cancel(u).await
            })
            .await
        }
        WorkCommand::Release(args) => {
            let force = args.force;
            acknowledge(&args.socket, &args.units, async |c, u| {
                c.work_release(u, force).await
            })
            .await
        }
    }
}

/// The payload of `warren work submit` and its size when known (a file, or standard input
/// redirected from one).
async fn open_payload(
    path: Option<&std::path::Path>,
) -> anyhow::Result<(Box<dyn AsyncRead + Unpin + Send>, Option<u64>)> {
    let size_of = |meta: std::io::Result<std::fs::Metadata>| {
        meta.ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
    };
    Ok(match path {
        None => (Box::new(tokio::io::empty()), Some(0)),
        Some(path) if path.as_os_str() == "-" => {
            let size = size_of(std::fs::metadata("/dev/stdin"));
            (Box::new(tokio::io::stdin()), size)
        }
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open payload {}", path.display()))?;
            let size = size_of(file.metadata().await);
            (Box::new(file), size)
        }
    })
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let (payload, size) = open_payload(args.payload.as_deref()).await?;
    let mut payload = Progress::new(payload, size, args.quiet);
    let params: BTreeMap<String, String> = args.params.into_iter().collect();
    let client = connect(&args.socket).await?;
    let submitted = client
        .work_submit(&args.node, &args.work_type, params, &mut payload)
        .await;
    payload.finish(submitted.is_ok());
    let submitted = submitted?;
    let unit = submitted.unit_id;
    if !args.follow {
        println!("{unit}");
        return Ok(ExitCode::SUCCESS);
    }
    // Standard output carries the unit's output, so the id goes to standard error.
    eprintln!("Work unit {unit}: {}", one_line(&submitted.result));
    follow(&args.socket, unit, 0).await
}

/// Streams the unit's output to standard output, then exits 1 if the unit failed (as
/// receptorctl does: a fresh connection asks for the status).
async fn follow(socket: &WorkSocketArgs, unit: UnitId, startpos: u64) -> anyhow::Result<ExitCode> {
    let mut output = connect(socket).await?.work_results(unit, startpos).await?;
    let mut stdout = tokio::io::stdout();
    // Byte for byte into a pipe (`| ansible-runner process`); filtered on a terminal.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        copy_to_terminal(&mut output, &mut stdout).await
    } else {
        tokio::io::copy(&mut output, &mut stdout).await.map(drop)
    }
    .context("streaming the unit's output")?;
    stdout.flush().await?;
    let status = connect(socket).await?.work_status(unit).await?;
    if status.is_failed() {
        eprintln!("Remote unit failed: {}", sanitize(&status.detail));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies `input` to `stdout` through the terminal filter: colour passes, other escape
/// sequences from the unit's output do not.
async fn copy_to_terminal(
    input: &mut (impl AsyncRead + Unpin),
    stdout: &mut tokio::io::Stdout,
) -> std::io::Result<()> {
    let mut sanitizer = Sanitizer::new(Mode::Colour);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len());
    loop {
        let read = input.read(&mut buf).await?;
        out.clear();
        if read == 0 {
            sanitizer.finish(&mut out);
            return stdout.write_all(&out).await;
        }
        sanitizer.push(&buf[..read], &mut out);
        stdout.write_all(&out).await?;
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.socket).await?;
    if args.json {
        let request = Request::Work(WorkRequest::List { unit: None });
        let value: serde_json::Value = client.call(&request).await?;
        println!("{}", json_safe(&serde_json::to_string_pretty(&value)?));
    } else {
        print!("{}", render_work_list(&client.work_list().await?));
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.socket).await?;
    if args.json {
        let request = Request::Work(WorkRequest::Status { unit: args.unit });
        let value: serde_json::Value = client.call(&request).await?;
        println!("{}", json_safe(&serde_json::to_string_pretty(&value)?));
    } else {
        let status = client.work_status(args.unit).await?;
        print!("{}", render_work_status(args.unit.as_str(), &status));
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends one cancel or release per unit on one connection, printing `<id>: <verb>`;
/// a refused unit is reported and the rest still go; exits 1 if any was refused.
async fn acknowledge<F>(
    socket: &WorkSocketArgs,
    units: &[UnitId],
    mut op: F,
) -> anyhow::Result<ExitCode>
where
    F: AsyncFnMut(&mut Client, UnitId) -> Result<String, crate::control::ClientError>,
{
    if units.is_empty() {
        bail!("no work unit ids given");
    }
    let mut client = connect(socket).await?;
    let mut failed = false;
    for &unit in units {
        match op(&mut client, unit).await {
            Ok(verb) => println!("{unit}: {}", one_line(&verb)),
            Err(crate::control::ClientError::Remote { message }) => {
                eprintln!("{unit}: {}", sanitize(&message));
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> WorkCommand {
        let cli = Cli::try_parse_from([&["warren", "work"], args].concat()).unwrap();
        match cli.command {
            Command::Work(command) => command,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_submit_flags() {
        let WorkCommand::Submit(args) = parse(&[
            "submit",
            "echo",
            "-p",
            "-",
            "--param",
            "params=-v=1",
            "-a",
            "x=",
            "-f",
            "-q",
        ]) else {
            panic!()
        };
        assert!(args.quiet);
        assert_eq!(args.node, "localhost");
        assert_eq!(args.payload.as_deref(), Some(std::path::Path::new("-")));
        assert_eq!(
            args.params,
            [
                ("params".into(), "-v=1".into()),
                ("x".into(), String::new())
            ]
        );
        assert!(args.follow);
    }

    #[test]
    fn rejects_bad_params_and_ids() {
        let bad = |args: &[&str]| Cli::try_parse_from([&["warren", "work"], args].concat());
        assert!(bad(&["submit", "echo", "--param", "novalue"]).is_err());
        assert!(bad(&["status", "short"]).is_err());
        assert!(bad(&["cancel"]).is_err());
        let WorkCommand::Release(args) = parse(&["release", "Ab3dEf9h", "Zz0Zz0Zz", "--force"])
        else {
            panic!()
        };
        assert_eq!(args.units.len(), 2);
        assert!(args.force);
    }
}
