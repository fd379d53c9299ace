//! One control-socket session: greeting, then request lines answered in order until EOF.
//!
//! Owns the thin driver between a byte stream and the sans-IO parser and reply encoder,
//! and the [`Backend`] seam through which it asks the node for answers. It decides nothing
//! about the mesh itself.

mod connect;
mod work;

use crate::control::DeployFailure;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::io::{self, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::line::{LineEnd, LineReader};
use super::reply::{
    DeployReply, PingReply, ReloadReply, Reply, StatusReply, StatusReport, TraceHop,
    TracerouteReply, error_line, greeting,
};
use super::request::{Request, parse_request};
use crate::id::{NodeId, ServiceName};
use crate::work::{UnitId, UnitStatus, WorkError};

/// A byte stream both ways: what `connect` bridges the control connection to.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// What the control service needs from the node it serves.
///
/// The node implements this over its mesh handle; tests implement it with canned answers.
pub trait Backend: Send + Sync + 'static {
    /// The node's id, for the greeting.
    fn node_id(&self) -> NodeId;

    /// The node's current view of the mesh.
    fn status(&self) -> impl Future<Output = StatusReport> + Send;

    /// Pings `target` and returns the round-trip time, or the node that reported the
    /// failure (if any) and why. Only the reason reaches the client: Receptor's failure
    /// reply carries no `From`.
    fn ping(
        &self,
        target: NodeId,
    ) -> impl Future<Output = Result<Duration, (Option<NodeId>, String)>> + Send;

    /// Traces the route to `target`, one entry per hop.
    fn traceroute(&self, target: NodeId) -> impl Future<Output = Vec<TraceHop>> + Send;

    /// Deploys a signed component to `node` (this node for `localhost` or its own id).
    fn deploy(
        &self,
        node: String,
        signature: String,
        component: Vec<u8>,
    ) -> impl Future<Output = Result<DeployReply, DeployFailure>> + Send;

    /// Creates a work unit on this node for `request.node` (`localhost` or this node's id
    /// for local work; any other node for remote work, which this node mirrors) and returns
    /// its id; the unit waits for its payload.
    fn work_create(
        &self,
        request: WorkCreate,
    ) -> impl Future<Output = Result<UnitId, WorkError>> + Send;

    /// Reads `payload` to EOF into the unit's stdin, then starts the unit.
    fn work_start(
        &self,
        unit: UnitId,
        payload: &mut (dyn AsyncRead + Unpin + Send),
    ) -> impl Future<Output = Result<(), WorkError>> + Send;

    /// One unit's status.
    fn work_status(
        &self,
        unit: UnitId,
    ) -> impl Future<Output = Result<UnitStatus, WorkError>> + Send;

    /// Every unit on this node and its status.
    fn work_list(
        &self,
    ) -> impl Future<Output = Result<Vec<(UnitId, UnitStatus)>, WorkError>> + Send;

    /// The unit's output from byte `startpos`, following live output, ending once the unit
    /// is finished and everything was read.
    fn work_results(
        &self,
        unit: UnitId,
        startpos: u64,
    ) -> impl Future<Output = Result<Box<dyn AsyncRead + Send + Unpin>, WorkError>> + Send;

    /// Cancels the unit, keeping its files.
    fn work_cancel(&self, unit: UnitId) -> impl Future<Output = Result<(), WorkError>> + Send;

    /// Cancels the unit and deletes it; `force` deletes it even if a remote release fails.
    fn work_release(
        &self,
        unit: UnitId,
        force: bool,
    ) -> impl Future<Output = Result<(), WorkError>> + Send;

    /// Opens a stream to `service` on `node` for `connect`; the error is the `ERROR:` text.
    fn connect(
        &self,
        node: NodeId,
        service: ServiceName,
    ) -> impl Future<Output = Result<Box<dyn Duplex>, String>> + Send;

    /// Re-reads the node's config and applies what can change while it runs.
    fn reload(&self) -> impl Future<Output = ReloadReply> + Send;
}

/// A `work submit` as the session passes it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCreate {
    /// The node to run it on, as the client named it (`localhost` for here).
    pub node: String,
    /// The work type.
    pub work_type: String,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Remote work: how long the remote node may take to start it.
    pub ttl: Option<Duration>,
    /// Remote work: have this node sign the submission (`signwork`).
    pub sign_work: bool,
}

/// What running one request left the session to do.
#[derive(Debug)]
enum Outcome {
    /// Send the reply and read the next request.
    Reply(Reply),
    /// Send the reply, then end the session: the request consumed the rest of the input
    /// (`work submit` reads its payload to EOF).
    ReplyAndEnd(Reply),
    /// End the session now: the request already wrote everything and closed its side
    /// (`work results`).
    End,
}

/// Runs one session on `stream` until the client closes it.
///
/// Writes the greeting, then answers each non-empty request line in order. A final line
/// without a newline is still answered. A line longer than
/// [`super::line::MAX_REQUEST_LINE`] is answered with `ERROR: request line too long` and
/// ends the session.
///
/// # Errors
/// Read or write errors on `stream`.
pub async fn serve_session<S, B>(stream: S, backend: &B) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    B: Backend,
{
    serve(stream, backend, None).await
}

/// [`serve_session`] for a session a mesh peer opened: each request it makes is logged at
/// info with `peer` (its proven node id and key, as text) and what it asks
/// ([`Request::audit_line`]: no parameter's value, so no secret; logged quoted and escaped,
/// as its names are the peer's text and a newline in them must not forge a log line),
/// because it acts with this node's own rights.
///
/// # Errors
/// Read or write errors on `stream`.
pub async fn serve_peer_session<S, B>(stream: S, backend: &B, peer: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    B: Backend,
{
    serve(stream, backend, Some(peer)).await
}

async fn serve<S, B>(stream: S, backend: &B, peer: Option<&str>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    B: Backend,
{
    let mut conn = LineReader::new(stream);
    send(&mut conn, &greeting(&backend.node_id())).await?;
    let mut line = Vec::new();
    loop {
        let end = conn.read_line(&mut line).await?;
        if end == LineEnd::TooLong {
            tracing::debug!(len = line.len(), "control request line too long");
            return send(&mut conn, &error_line("request line too long")).await;
        }
        if !line.is_empty() {
            let outcome = match parse_request(&line) {
                Ok(request) => {
                    if let Some(peer) = peer {
                        tracing::info!(peer, request = ?request.audit_line(), "mesh control request");
                    }
                    handle(request, backend, &mut conn).await?
                }
                Err(rejected) => {
                    tracing::debug!(error = %rejected, "control request refused");
                    Outcome::Reply(Reply::Rejected(rejected))
                }
            };
            match outcome {
                Outcome::Reply(reply) => send(&mut conn, &reply.encode()).await?,
                Outcome::ReplyAndEnd(reply) => return send(&mut conn, &reply.encode()).await,
                Outcome::End => return Ok(()),
            }
        }
        if end == LineEnd::Eof {
            return Ok(());
        }
    }
}

/// Reads the component that follows a `deploy` line and hands it to the backend.
async fn deploy<S: AsyncRead + AsyncWrite + Unpin, B: Backend>(
    conn: &mut LineReader<S>,
    backend: &B,
    node: String,
    signature: String,
    length: u64,
) -> io::Result<Reply> {
    if length > MAX_DEPLOY_LEN {
        return Ok(Reply::Error(format!(
            "component of {length} bytes exceeds the limit of {MAX_DEPLOY_LEN} bytes"
        )));
    }
    let mut component = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    (&mut *conn.reader())
        .take(length)
        .read_to_end(&mut component)
        .await?;
    if component.len() as u64 != length {
        return Ok(Reply::Error(format!(
            "connection closed after {} of {length} component bytes",
            component.len()
        )));
    }
    Ok(match backend.deploy(node, signature, component).await {
        Ok(deployed) => Reply::Deploy(deployed),
        Err(failure) => Reply::Error(failure.to_string()),
    })
}

/// Largest component a `deploy` request may carry.
pub const MAX_DEPLOY_LEN: u64 = 64 << 20;

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut LineReader<S>,
    text: &str,
) -> io::Result<()> {
    let stream = conn.get_mut();
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

/// Runs one request against the backend. New commands add an arm here.
async fn handle<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send>(
    request: Request,
    backend: &B,
    conn: &mut LineReader<S>,
) -> io::Result<Outcome> {
    Ok(Outcome::Reply(match request {
        Request::Status { requested_fields } => status(backend, requested_fields).await,
        Request::Ping { target } => ping(backend, target).await,
        Request::Traceroute { target } => traceroute(backend, target).await,
        Request::Deploy {
            node,
            signature,
            length,
        } => deploy(conn, backend, node, signature, length).await?,
        Request::Work(request) => return work::handle(request, backend, conn).await,
        Request::Connect(request) => return connect::bridge(request, backend, conn).await,
        Request::Reload => Reply::Reload(backend.reload().await),
    }))
}

async fn status<B: Backend>(backend: &B, requested_fields: Option<Vec<String>>) -> Reply {
    Reply::Status(StatusReply {
        report: backend.status().await,
        requested_fields,
    })
}

async fn ping<B: Backend>(backend: &B, target: NodeId) -> Reply {
    Reply::Ping(match backend.ping(target.clone()).await {
        Ok(time) => PingReply::Success { from: target, time },
        Err((_from, error)) => PingReply::Failure { error },
    })
}

async fn traceroute<B: Backend>(backend: &B, target: NodeId) -> Reply {
    Reply::Traceroute(TracerouteReply {
        hops: backend.traceroute(target).await,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::control::fake::FakeBackend;

    async fn run(input: &[u8]) -> String {
        let (mut client, server) = io::duplex(1 << 20);
        let backend = FakeBackend::new();
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        serve_session(server, &backend).await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_several_commands_on_one_connection() {
        let input = [
            &b"ping b\n"[..],
            b"\r\n",
            b"\x00\xff garbage\n",
            b"{\"command\":\n",
            br#"{"command":"status","requested_fields":["NodeID","Version"]}"#,
            b"\r\n",
            b"ping nowhere\n",
            b"traceroute b\n",
            b"status",
        ]
        .concat();
        let out = run(&input).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Receptor Control, node a");
        assert_eq!(
            lines[1],
            r#"{"From":"b","Success":true,"Time":1500000,"TimeStr":"1.5ms"}"#
        );
        assert_eq!(lines[2], "ERROR: Unknown command");
        assert!(
            lines[3].starts_with("ERROR: EOF while parsing"),
            "{}",
            lines[3]
        );
        assert_eq!(lines[4], "ERROR: Unknown command");
        assert_eq!(lines[5], r#"{"NodeID":"a","Version":"0.1.0"}"#);
        assert_eq!(lines[6], r#"{"Error":"no route to node","Success":false}"#);
        assert_eq!(
            lines[7],
            r#"{"0":{"From":"b","Time":1500000,"TimeStr":"1.5ms"}}"#
        );
        assert!(lines[8].starts_with(r#"{"Advertisements":[{"NodeID":"a""#));
        assert_eq!(lines.len(), 9);
        assert!(out.ends_with('\n'));
    }

    #[tokio::test]
    async fn greets_then_stops_at_eof() {
        assert_eq!(run(b"").await, "Receptor Control, node a\n");
        assert_eq!(run(b"\n\r\n\n").await, "Receptor Control, node a\n");
    }

    #[tokio::test]
    async fn closes_after_overlong_line() {
        let mut input = vec![b'x'; super::super::line::MAX_REQUEST_LINE + 10];
        input.extend_from_slice(b"\nstatus\n");
        let out = run(&input).await;
        assert_eq!(
            out,
            "Receptor Control, node a\nERROR: request line too long\n"
        );
    }

    #[tokio::test]
    async fn replies_are_written_before_the_next_line_arrives() {
        let (client, server) = io::duplex(4096);
        let backend = FakeBackend::new();
        let session = tokio::spawn(async move { serve_session(server, &backend).await });
        let mut client = LineReader::new(client);
        let mut line = Vec::new();
        client.read_line(&mut line).await.unwrap();
        assert_eq!(line, b"Receptor Control, node a");
        for _ in 0..3 {
            client.get_mut().write_all(b"ping b\n").await.unwrap();
            client.read_line(&mut line).await.unwrap();
            assert!(line.starts_with(br#"{"From":"b","Success":true"#));
        }
        drop(client);
        session.await.unwrap().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let out = rt.block_on(run(&input));
            prop_assert!(out.starts_with("Receptor Control, node a\n"));
        }
    }
}
