//! The `warren` command line: clap types for each command and the code that runs them.
//! This is an edge of the crate, so errors here are `anyhow`.

mod ca;
mod component;
mod docs;
pub mod frontend;
mod keygen;
mod node_args;
mod ops;
mod progress;
mod run;
mod top;
mod work;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use ca::{CaCommand, CertSignArgs, InitArgs, RevokeArgs, ShowArgs};
pub use component::{ComponentCommand, ComponentKeygenArgs, SignArgs, VerifyArgs};
pub use docs::{CompletionsArgs, ManArgs};
pub use keygen::KeygenArgs;
pub use node_args::NodeArgs;
pub use ops::{PingArgs, SocketArgs, TracerouteArgs};
pub use run::RunArgs;
pub use top::TopArgs;
pub use work::{
    CancelArgs, ListArgs, ReleaseArgs, ResultsArgs, StatusArgs, SubmitArgs, WorkCommand,
    WorkSocketArgs,
};

/// Warren: run Ansible jobs and other work on remote nodes across an encrypted mesh.
///
/// Nodes link over Noise-encrypted, mutually authenticated TCP connections and route across
/// relays. Each node's control socket speaks Receptor's protocol, so receptorctl works too.
#[derive(Debug, Parser)]
#[command(name = "warren", version = crate::VERSION, propagate_version = true)]
pub struct Cli {
    /// More log output on standard error (-v info, -vv debug, -vvv trace). RUST_LOG
    /// overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `warren` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a mesh node until SIGINT or SIGTERM.
    ///
    /// Give --config FILE, or the quick flags with at least --id, --key and --data-dir.
    /// Example: warren node --id node1 --listen 127.0.0.1:8888 --key node1.key
    /// --trust relay=x25519:... --data-dir /var/lib/warren/node1
    Node(Box<NodeArgs>),
    /// Create a link key pair, show the public token of an existing one, or rotate a
    /// node's key (`--rotate --out FILE`, then reload the node).
    Keygen(KeygenArgs),
    /// A mesh authority: certificates that admit nodes without per-peer trust entries.
    ///
    /// Start with `warren ca init --out ca.key`, then `warren ca sign --ca ca.key --node
    /// node1 --key x25519:... --out node1.cert`, and run nodes with --ca TOKEN --cert FILE.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Show a node's links, routing table, known nodes and what each offers.
    Status(SocketArgs),
    /// Ping a node across the mesh through the local node's control socket.
    Ping(PingArgs),
    /// Show the relays on the way to a node.
    Traceroute(TracerouteArgs),
    /// Run a playbook like `ansible-runner run`, here or on a node across the mesh.
    ///
    /// Example: warren run demo/ -p test.yml --via-receptor node1 --receptor-peer
    /// receptor://relay.example.com:8888. Output, artifacts (PRIVATE_DATA_DIR/artifacts/
    /// IDENT) and the exit code are those of a local `ansible-runner run`.
    Run(Box<RunArgs>),
    /// Sign work-handler components and verify their signatures.
    ///
    /// Nodes run only components signed by a key they trust. Start with
    /// `warren component keygen --out signer.key`.
    #[command(subcommand)]
    Component(ComponentCommand),
    /// Submit work units and follow, list, inspect, cancel and release them.
    ///
    /// Speaks to the local node's control socket, as `receptorctl work` does.
    ///
    /// Example: warren work submit echo --payload input.txt -f
    #[command(subcommand)]
    Work(WorkCommand),
    /// Show a node's key metrics live: links and traffic, flaps, units, queue, memory.
    ///
    /// Reads the node's /metrics endpoint. Example: warren node ... --metrics 127.0.0.1:9100,
    /// then warren top 127.0.0.1:9100.
    Top(TopArgs),
    /// Print shell completions for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Print the man page, or write one per command into a directory.
    Man(ManArgs),
}

impl Cli {
    /// Runs the command; returns the process exit code.
    pub fn run(self) -> ExitCode {
        crate::heap::bound_arenas();
        let default_level = match self.command {
            Command::Node(_) => "info",
            // The run explains failures itself; the embedded node's warnings would repeat them.
            Command::Run(_) => "error",
            _ => "warn",
        };
        crate::logging::init(default_level, self.verbose);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("warren: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(async {
            match self.command {
                Command::Node(args) => ops::node(*args).await,
                Command::Keygen(args) => keygen::run(args),
                Command::Ca(command) => ca::run(command),
                Command::Status(args) => ops::status(args).await,
                Command::Ping(args) => ops::ping(args).await,
                Command::Traceroute(args) => ops::traceroute(args).await,
                Command::Run(args) => run::run(*args).await,
                Command::Component(command) => component::run(command).await,
                Command::Work(command) => work::run(command).await,
                Command::Top(args) => top::run(args).await,
                Command::Completions(args) => docs::completions(&args),
                Command::Man(args) => docs::man(&args),
            }
        });
        match result {
            Ok(code) => code,
            Err(e) => {
                // Errors quote what peers, workers and nodes said.
                eprintln!("warren: {}", crate::terminal::sanitize(&error_text(&e)));
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes on one line, `: `-separated, each cause left out when the text
/// before it already says it (many messages quote their cause, and would otherwise print
/// it twice or three times).
pub(crate) fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod error_text_tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("key file {path}: {source}")]
    struct Quoting {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let error = anyhow::Error::new(Quoting {
            path: "/k",
            source: io,
        })
        .context("cannot start the node");
        assert_eq!(
            error_text(&error),
            "cannot start the node: key file /k: No such file"
        );
    }

    #[test]
    fn a_cause_the_message_does_not_quote_follows_it() {
        let error = anyhow::anyhow!("No such file").context("cannot rotate the key in /k");
        assert_eq!(
            error_text(&error),
            "cannot rotate the key in /k: No such file"
        );
    }
}
