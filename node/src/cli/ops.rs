//! `warren node`, and the operator verbs `status`, `ping` and `traceroute`, which are
//! clients of a node's control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::NodeArgs;
use crate::control::render::{render_ping_line, render_status, render_traceroute};
use crate::control::reply::PingReply;
use crate::control::{Client, Request, default_socket_path};
use crate::daemon::ConfigSource;
use crate::id::NodeId;
use crate::terminal::json_safe;

/// Where the node's control socket is.
// Help text (clap prints these comments as written): `<uid>` is a placeholder, not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArgs {
    /// The node's control socket [default: $WARREN_SOCKET, else
    /// $XDG_RUNTIME_DIR/warren/control.sock, else for root /run/warren/control.sock, else
    /// /tmp/warren-<uid>/control.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Also trust a control socket served by this uid (by default only sockets served by
    /// your own user or root are used: a socket another user serves may be an impostor).
    #[arg(long = "socket-owner", env = "WARREN_SOCKET_OWNER", value_name = "UID")]
    pub socket_owner: Option<u32>,

    /// Print the node's JSON replies (Receptor's format) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `warren ping`.
#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    /// The node to ping.
    pub node: NodeId,
    /// How many pings to send.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub count: u32,
    /// Seconds between pings.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    #[command(flatten)]
    socket: SocketArgs,
}

/// Flags of `warren traceroute`.
#[derive(Debug, Clone, clap::Args)]
pub struct TracerouteArgs {
    /// The node to trace the route to.
    pub node: NodeId,
    #[command(flatten)]
    socket: SocketArgs,
}

async fn connect(args: &SocketArgs) -> anyhow::Result<Client> {
    let path = args.socket.clone().unwrap_or_else(default_socket_path);
    Ok(Client::connect_served_by(&path, args.socket_owner).await?)
}

pub(super) async fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    // `reload` re-reads the file and the same flags, as at start.
    let source: Option<ConfigSource> = args.config.is_some().then(|| {
        let args = args.clone();
        Arc::new(move || args.clone().into_config().map(|(config, _)| config)) as ConfigSource
    });
    let (config, ready_file) = args.into_config()?;
    crate::daemon::run(&config, ready_file.as_deref(), source).await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn status(args: SocketArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    if args.json {
        let request = Request::Status {
            requested_fields: None,
        };
        let value: serde_json::Value = client.call(&request).await?;
        println!("{}", json_safe(&serde_json::to_string_pretty(&value)?));
    } else {
        print!("{}", render_status(&client.status().await?));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn ping(args: PingArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.socket).await?;
    let interval = Duration::try_from_secs_f64(args.interval)
        .context("--interval must be a non-negative number of seconds")?;
    let mut failed = false;
    for i in 0..args.count {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        if args.socket.json {
            let request = Request::Ping {
                target: args.node.clone(),
            };
            let value: serde_json::Value = client.call(&request).await?;
            failed |= value.get("Success") != Some(&serde_json::Value::Bool(true));
            println!("{}", json_safe(&value.to_string()));
        } else {
            let reply = client.ping(&args.node).await?;
            failed |= matches!(reply, PingReply::Failure { .. });
            println!("{}", render_ping_line(&args.node, &reply));
        }
    }
    // receptorctl's convention: 2 when any ping failed.
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub(super) async fn traceroute(args: TracerouteArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.socket).await?;
    let request = Request::Traceroute {
        target: args.node.clone(),
    };
    let failed;
    if args.socket.json {
        let value: serde_json::Value = client.call(&request).await?;
        failed = value
            .as_object()
            .is_some_and(|hops| hops.values().any(|h| h.get("Error").is_some()));
        println!("{}", json_safe(&serde_json::to_string_pretty(&value)?));
    } else {
        let hops = client.traceroute(&args.node).await?;
        failed = hops.iter().any(|h| h.error.is_some());
        print!("{}", render_traceroute(&hops));
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
