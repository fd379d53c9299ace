//! `--via-receptor NODE`: a short-lived node inside the CLI links to a peer, waits for NODE,
//! submits the job and follows its results. The client node itself (identity, known keys,
//! explanations) is the library's [`ClientNode`]. The private data dir goes as a manifest
//! and only the contents the node's cache lacks; to a node that keeps no content cache, as
//! the whole transmit stream.

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;

use super::{Prepared, RunArgs, WORK_TYPE, payload_failure, receive, timeout};
use crate::ansible::process::ProcessOutcome;
use crate::ansible::transmit::ContentPlan;
use crate::cli::progress::Progress;
use crate::client::{ClientNode, ClientOptions};
use crate::config::{DEFAULT_PORT, EndpointAddr, Scheme};
use crate::id::NodeId;
use crate::mesh::driver::MeshHandle;
use crate::work::UnitId;
use crate::work::client::{ClientError, Offered, SubmitRequest, WorkClient};
use crate::work::protocol::WorkRefusal;

/// Runs the job on `node` through the peer; returns what processing the results found.
pub(super) async fn run_remote(
    args: &RunArgs,
    node: &NodeId,
    prepared: Prepared,
) -> anyhow::Result<ProcessOutcome> {
    let options = ClientOptions {
        peer: args.receptor_peer.clone().unwrap_or(EndpointAddr {
            host: "localhost".into(),
            port: DEFAULT_PORT,
            scheme: Scheme::Tcp,
            path: String::new(),
        }),
        node_id: args.receptor_node_id.clone(),
        identity: None,
        timeout: timeout(args),
    };
    let mut client = ClientNode::connect(options, |note| eprintln!("{note}")).await?;
    let result = async {
        client.wait_for(node, WORK_TYPE).await?;
        submit_and_follow(client.mesh(), node, &prepared).await
    }
    .await;
    client.shutdown().await;
    result
}

/// The user's terminal type, passed along so the node's Ansible colours its output as a
/// local `ansible-runner run` would.
pub(super) fn terminal_param() -> std::collections::BTreeMap<String, String> {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| (crate::host::params::TERMINAL.to_owned(), t))
        .into_iter()
        .collect()
}

/// How the payload goes to the node.
enum Upload {
    /// The node keeps a content cache and answered the manifest: send what it lacks.
    Contents(ContentPlan, Box<Offered>),
    /// The node keeps none (or does not know content-addressed submissions): send the
    /// transmit stream whole.
    Whole,
}

/// Offers the private data dir's manifest to `node`; [`Upload::Whole`] when it keeps no
/// content cache, takes no content-addressed submission now, or the manifest is over the
/// bounds any node takes.
async fn offer(client: &WorkClient, node: &NodeId, prepared: &Prepared) -> anyhow::Result<Upload> {
    let plan = ContentPlan::prepare(&prepared.private_data_dir, &prepared.kwargs)
        .await
        .context("packing the private data dir")?;
    if !plan.manifest().fits_the_wire() {
        return Ok(Upload::Whole);
    }
    let request = (WORK_TYPE.to_owned(), terminal_param());
    match client.offer_manifest(node, request, plan.manifest()).await {
        Ok(offered) => Ok(Upload::Contents(plan, Box::new(offered))),
        Err(ClientError::Refused(WorkRefusal::ContentCacheOff { .. })) => Ok(Upload::Whole),
        Err(e) => Err(anyhow::anyhow!("{e}").context(format!("running the job on {node}"))),
    }
}

/// Sends the contents `node` lacks and the inline ones into `out` (with progress on a
/// terminal), closing it when all is sent; completes only on failure, with its error.
async fn contents_failure(
    plan: ContentPlan,
    lacking: &[u32],
    quiet: bool,
    out: &mut tokio::io::DuplexStream,
) -> anyhow::Error {
    let indices = plan.to_send(lacking);
    let total = plan.send_len(&indices);
    let mut counted = Progress::new(&mut *out, Some(total), quiet);
    let sent = plan.send(indices, &mut counted).await;
    counted.finish(sent.is_ok());
    drop(counted);
    if let Err(e) = sent {
        return anyhow::Error::new(e).context("sending the private data dir");
    }
    out.shutdown().await.ok();
    std::future::pending().await
}

/// Streams the payload to a new unit on `node` (only what its content cache lacks, when
/// it keeps one) and follows its results into the processor on the same stream (resuming
/// by offset if the path breaks). Ctrl-C cancels the unit and goes on reading until it
/// ends. Once the artifacts are written, the unit is released on the node: its output
/// holds the job's events, which need not stay there.
async fn submit_and_follow(
    mesh: &MeshHandle,
    node: &NodeId,
    prepared: &Prepared,
) -> anyhow::Result<ProcessOutcome> {
    let client = WorkClient::new(mesh.clone());
    let upload = offer(&client, node, prepared).await?;
    let (mut payload_in, mut payload_out) = tokio::io::duplex(256 * 1024);
    let (results_in, mut results_out) = tokio::io::duplex(256 * 1024);
    let unit_cell: std::sync::Mutex<Option<UnitId>> = std::sync::Mutex::new(None);
    let request = SubmitRequest {
        work_type: WORK_TYPE.to_owned(),
        params: terminal_param(),
        signature: None,
    };
    let created = |unit: UnitId| {
        eprintln!("running as unit {unit} on {node}");
        *unit_cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(unit);
    };
    let client_ref = &client;
    type Sending<'a> = std::pin::Pin<Box<dyn Future<Output = anyhow::Error> + Send + 'a>>;
    let (offered, sending): (Option<Offered>, Sending<'_>) = match upload {
        Upload::Contents(plan, offered) => {
            created(offered.unit);
            let lacking = offered.lacking.clone();
            let quiet = prepared.process.quiet;
            let sending =
                Box::pin(
                    async move { contents_failure(plan, &lacking, quiet, &mut payload_in).await },
                );
            (Some(*offered), sending)
        }
        Upload::Whole => (None, Box::pin(payload_failure(prepared, &mut payload_in))),
    };
    let job = async move {
        let result = match offered {
            Some(offered) => {
                (client_ref.finish_offer(offered, &mut payload_out, &mut results_out)).await
            }
            None => {
                client_ref
                    .submit_and_follow(node, request, &mut payload_out, created, &mut results_out)
                    .await
            }
        };
        // Both pipes close with the stream: a packer still writing gets a broken pipe rather
        // than waiting for a reader that is gone (it hung there when the path broke during
        // the upload), and the processor sees the end of the results.
        drop(payload_out);
        drop(results_out);
        result
    };
    let interrupted = std::sync::atomic::AtomicBool::new(false);
    let unit_now = || {
        *unit_cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    // The first Ctrl-C cancels the unit and goes on reading to its end; the second stops
    // waiting (the node may be out of reach, so that end may never come).
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            return std::future::pending::<()>().await;
        }
        interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            () = cancel(&client, node, unit_now()) => std::future::pending::<()>().await,
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let work = async { tokio::join!(job, receive(prepared, results_in)) };
    tokio::pin!(work);
    let (followed, processed) = tokio::select! {
        done = &mut work => done,
        // The stream ended first (its path broke during the upload, or the node refused):
        // the packer's broken pipe only echoes that, and the stream's end says why.
        failed = sending => {
            if super::reader_gone(&failed) {
                (&mut work).await
            } else {
                // The payload broke off (a file changed, or could not be read): the node
                // never saw its end, so the unit is cancelled rather than run on half a dir.
                return Err(abandon(&client, node, unit_now(), failed).await);
            }
        }
        () = interrupt => return stop_waiting(prepared, node, unit_now()),
    };
    let followed = followed.map_err(|e| anyhow::anyhow!("{e}"));
    let (unit, unit_status) = match followed {
        Ok(done) => done,
        // The processor refused the stream and stopped reading it: the follower's broken
        // pipe only echoes that.
        Err(_) if processed.as_ref().is_err_and(super::refused_stream) => {
            if let Some(unit) = unit_now() {
                release(&client, node, unit).await;
            }
            return processed;
        }
        Err(e) => return Err(e.context(format!("running the job on {node}"))),
    };
    let outcome = match processed {
        // Cancelled before the worker could report it: end as a cancelled run does.
        Err(e) if interrupted.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("{}", crate::terminal::sanitize(&crate::cli::error_text(&e)));
            super::canceled_outcome(&prepared.process)
        }
        // The worker's stream broke off: say what became of the unit on the node.
        Err(e) => Err(e.context(format!(
            "unit {unit} on {node} ended {}: {}",
            unit_status.state,
            crate::terminal::one_line(&unit_status.detail)
        ))),
        ok => ok,
    }?;
    // The artifacts are written: the unit's files on the node (its output holds the job's
    // events and facts) need not outlive the run.
    release(&client, node, unit).await;
    Ok(outcome)
}

/// After the payload failed: cancels and releases the unit on `node` if it was created, and
/// returns the payload's error saying so.
async fn abandon(
    client: &WorkClient,
    node: &NodeId,
    unit: Option<UnitId>,
    failed: anyhow::Error,
) -> anyhow::Error {
    let Some(unit) = unit else {
        return failed;
    };
    if let Err(e) = client.cancel(node, unit).await {
        eprintln!(
            "could not cancel unit {unit} on {node}: {}",
            crate::terminal::sanitize(&e.to_string())
        );
    }
    release(client, node, unit).await;
    failed.context(format!("unit {unit} on {node} was cancelled"))
}

/// Asks `node` to cancel `unit` (after a first Ctrl-C), saying so.
async fn cancel(client: &WorkClient, node: &NodeId, unit: Option<UnitId>) {
    let Some(unit) = unit else {
        eprintln!("interrupted before the unit was created on {node}");
        return;
    };
    eprintln!("interrupted: cancelling unit {unit} on {node} (Ctrl-C again to stop waiting)");
    if let Err(e) = client.cancel(node, unit).await {
        eprintln!(
            "could not cancel: {}",
            crate::terminal::sanitize(&e.to_string())
        );
    }
}

/// A second Ctrl-C: the run ends as a cancelled one without waiting for the unit's end,
/// saying what may be left on the node.
fn stop_waiting(
    prepared: &Prepared,
    node: &NodeId,
    unit: Option<UnitId>,
) -> anyhow::Result<ProcessOutcome> {
    match unit {
        Some(unit) => eprintln!(
            "stopped waiting for unit {unit} on {node}; if the cancel did not reach it, it \
             may still be running there"
        ),
        None => eprintln!("stopped before the unit was created on {node}"),
    }
    super::canceled_outcome(&prepared.process)
}

/// Releases the unit on `node` (its files are no longer wanted there); a failure is only
/// noted, as the node's retention removes it in time.
async fn release(client: &WorkClient, node: &NodeId, unit: UnitId) {
    if let Err(e) = client.release(node, unit).await {
        eprintln!(
            "note: could not release unit {unit} on {node}: {}",
            crate::terminal::sanitize(&e.to_string())
        );
    }
}
