//! The control-socket client behind the `warren status`, `warren ping` and
//! `warren traceroute` verbs.
//!
//! Owns connecting, checking the greeting, sending JSON requests and turning reply lines
//! into typed values. It also speaks to a real Receptor node. Rendering for people is
//! [`super::render`]'s. The `work` verbs are in `work`.

mod work;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::line::{LineEnd, LineReader};
use super::reply::{
    DeployReply, ERROR_PREFIX, GREETING_PREFIX, PingReply, StatusReport, TraceHop, TracerouteReply,
};
use super::request::Request;
use crate::id::NodeId;

/// Longest reply line the client accepts, in bytes.
///
/// A status reply grows with the mesh (every node, link and advert); 16 MiB covers meshes
/// far beyond the scale targets while still bounding a broken server.
pub const MAX_REPLY_LINE: usize = 16 * 1024 * 1024;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection.
    #[error(
        "cannot connect to the control socket {path:?}: {source}; is `warren node` running? \
         (use --socket or WARREN_SOCKET to pick another socket)"
    )]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket is served by a process of another user: nothing is sent to it.
    #[error(
        "the control socket {path:?} is served by uid {uid}, not by you (uid {me}) or root: \
         refusing to send it anything, as another user may have put it there to read what you \
         send; if that user's node is meant to serve you, pass --socket-owner {uid} \
         (or set WARREN_SOCKET_OWNER)"
    )]
    ForeignServer {
        /// The socket path.
        path: PathBuf,
        /// The uid of the process serving it.
        uid: u32,
        /// This client's uid.
        me: u32,
    },
    /// The server's credentials could not be read.
    #[error("cannot tell who serves the control socket {path:?}: {source}")]
    PeerCredentials {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server did not greet like a Receptor control service.
    #[error("not a Receptor control socket: unexpected greeting {line:?}")]
    BadGreeting {
        /// The line received instead.
        line: String,
    },
    /// The server answered `ERROR: <message>`.
    #[error("the node refused the request: {message}")]
    Remote {
        /// The message after `ERROR: `.
        message: String,
    },
    /// A reply line was not the JSON expected.
    #[error("unexpected reply {line:?}: {source}")]
    BadReply {
        /// The line received.
        line: String,
        /// Why it did not parse.
        source: serde_json::Error,
    },
    /// The server closed the connection before replying.
    #[error("the control socket closed before replying")]
    Closed,
    /// A status line was not the one the exchange expects.
    #[error("unexpected reply {line:?}: expected {expected}")]
    UnexpectedLine {
        /// What was expected.
        expected: &'static str,
        /// The line received.
        line: String,
    },
    /// A reply line exceeded [`MAX_REPLY_LINE`].
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    ReplyTooLong,
    /// Reading or writing the socket failed.
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A session with a node's control service. Requests share one connection.
#[derive(Debug)]
pub struct Client<S = UnixStream> {
    conn: LineReader<S>,
    node_id: String,
}

impl Client<UnixStream> {
    /// Connects to the control socket at `path` and reads the greeting, if the process
    /// serving it is this user's or root's (see [`Client::connect_served_by`]).
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming the path when nothing listens there;
    /// [`ClientError::ForeignServer`] when another user serves it;
    /// [`ClientError::BadGreeting`] when something else does.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        Self::connect_served_by(path, None).await
    }

    /// Connects to the control socket at `path`, checking with `SO_PEERCRED` who serves
    /// it before anything is read or sent: this user, root (who could read this client's
    /// memory anyway), or `also`, a uid the user named. A socket in a directory another
    /// user could create or swap is so never trusted by accident.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_served_by(path: &Path, also: Option<u32>) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let uid = stream
            .peer_cred()
            .map_err(|source| ClientError::PeerCredentials {
                path: path.to_owned(),
                source,
            })?
            .uid();
        let me = rustix::process::geteuid().as_raw();
        if !is_trusted_server(uid, me, also) {
            return Err(ClientError::ForeignServer {
                path: path.to_owned(),
                uid,
                me,
            });
        }
        Self::handshake(stream).await
    }
}

/// Whether a control socket served by `uid` may be used by a client running as `me`.
fn is_trusted_server(uid: u32, me: u32, also: Option<u32>) -> bool {
    uid == me || uid == 0 || also == Some(uid)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting from an already connected stream.
    ///
    /// # Errors
    /// [`ClientError::BadGreeting`], or an I/O error.
    pub async fn handshake(stream: S) -> Result<Self, ClientError> {
        let mut conn = LineReader::with_max_len(stream, MAX_REPLY_LINE);
        let line = read_reply_line(&mut conn).await?;
        let node_id = parse_greeting(&line)?.to_owned();
        Ok(Self { conn, node_id })
    }

    /// The id the node gave in its greeting (kept as text: a Receptor node may use ids
    /// Warren would not accept).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's full status.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        let request = Request::Status {
            requested_fields: None,
        };
        self.call(&request).await
    }

    /// Pings `target` once. A failed ping is `Ok(PingReply::Failure { .. })`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn ping(&mut self, target: &NodeId) -> Result<PingReply, ClientError> {
        let request = Request::Ping {
            target: target.clone(),
        };
        self.call(&request).await
    }

    /// Traces the route to `target`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn traceroute(&mut self, target: &NodeId) -> Result<Vec<TraceHop>, ClientError> {
        let request = Request::Traceroute {
            target: target.clone(),
        };
        let reply: TracerouteReply = self.call(&request).await?;
        Ok(reply.hops)
    }

    /// Deploys `component` with its signature file's text to `node` (`localhost` for the
    /// node behind the socket) and returns what is now active there.
    ///
    /// # Errors
    /// See [`ClientError`]; a refused deploy is [`ClientError::Remote`] with the reason.
    pub async fn deploy(
        &mut self,
        node: &str,
        signature: String,
        component: &[u8],
    ) -> Result<DeployReply, ClientError> {
        let request = Request::Deploy {
            node: node.to_owned(),
            signature,
            length: component.len() as u64,
        };
        let mut line = request.to_json();
        line.push('\n');
        let stream = self.conn.get_mut();
        stream.write_all(line.as_bytes()).await?;
        stream.write_all(component).await?;
        stream.flush().await?;
        let reply = read_reply_line(&mut self.conn).await?;
        parse_reply(&reply)
    }

    /// Sends `request` and decodes its one-line JSON reply as `T`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let mut line = request.to_json();
        line.push('\n');
        let stream = self.conn.get_mut();
        stream.write_all(line.as_bytes()).await?;
        stream.flush().await?;
        let reply = read_reply_line(&mut self.conn).await?;
        parse_reply(&reply)
    }
}

async fn read_reply_line<S: AsyncRead + Unpin>(
    conn: &mut LineReader<S>,
) -> Result<String, ClientError> {
    let mut line = Vec::new();
    loop {
        match conn.read_line(&mut line).await? {
            LineEnd::TooLong => return Err(ClientError::ReplyTooLong),
            LineEnd::Eof if line.is_empty() => return Err(ClientError::Closed),
            // Servers never send empty lines; skip them rather than fail.
            LineEnd::Newline if line.is_empty() => {}
            LineEnd::Eof | LineEnd::Newline => {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }
}

/// The node id in a greeting line (without its newline).
///
/// # Errors
/// [`ClientError::BadGreeting`] unless the line is `Receptor Control, node <id>`.
pub fn parse_greeting(line: &str) -> Result<&str, ClientError> {
    match line.strip_prefix(GREETING_PREFIX) {
        Some(id) if !id.is_empty() => Ok(id),
        _ => Err(ClientError::BadGreeting {
            line: line.to_owned(),
        }),
    }
}

/// Decodes one reply line (without its newline): `ERROR: ...` becomes
/// [`ClientError::Remote`], anything else must be JSON for `T`.
///
/// # Errors
/// [`ClientError::Remote`] or [`ClientError::BadReply`].
pub fn parse_reply<T: DeserializeOwned>(line: &str) -> Result<T, ClientError> {
    if let Some(message) = line.strip_prefix(ERROR_PREFIX) {
        return Err(ClientError::Remote {
            message: message.to_owned(),
        });
    }
    serde_json::from_str(line).map_err(|source| ClientError::BadReply {
        line: line.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::control::fake::{FakeBackend, sample_report};
    use crate::control::listener::{ControlSocket, DEFAULT_PERMISSIONS};

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn trusts_only_its_own_user_root_or_the_named_owner() {
        assert!(is_trusted_server(1000, 1000, None));
        assert!(is_trusted_server(0, 1000, None));
        assert!(!is_trusted_server(65534, 1000, None));
        assert!(is_trusted_server(65534, 1000, Some(65534)));
        assert!(!is_trusted_server(1001, 1000, Some(65534)));
    }

    #[test]
    fn parses_greeting_and_errors() {
        assert_eq!(parse_greeting("Receptor Control, node n1").unwrap(), "n1");
        assert!(matches!(
            parse_greeting("SSH-2.0-OpenSSH"),
            Err(ClientError::BadGreeting { .. })
        ));
        match parse_reply::<StatusReport>("ERROR: Unknown command") {
            Err(ClientError::Remote { message }) => assert_eq!(message, "Unknown command"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_reply::<StatusReport>("{\"NodeID\":1}"),
            Err(ClientError::BadReply { .. })
        ));
    }

    #[tokio::test]
    async fn connect_failure_names_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let err = Client::connect(&path).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing.sock"), "{text}");
        assert!(text.contains("warren node"), "{text}");
        assert!(text.contains("WARREN_SOCKET"), "{text}");
    }

    #[tokio::test]
    async fn round_trips_against_the_served_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let socket = ControlSocket::bind(&path, DEFAULT_PERMISSIONS)
            .await
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(socket.serve(Arc::new(FakeBackend::new()), shutdown));

        let mut client = Client::connect(&path).await.unwrap();
        assert_eq!(client.node_id(), "a");
        assert_eq!(client.status().await.unwrap(), sample_report());
        assert_eq!(
            client.ping(&node("b")).await.unwrap(),
            PingReply::Success {
                from: node("b"),
                time: Duration::from_micros(1500),
            }
        );
        assert_eq!(
            client.ping(&node("zz")).await.unwrap(),
            PingReply::Failure {
                error: "no route to node".into()
            }
        );
        let hops = client.traceroute(&node("zz")).await.unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].from, None);
        assert_eq!(hops[0].error.as_deref(), Some("no route to node"));
        let fields: serde_json::Value = client
            .call(&Request::Status {
                requested_fields: Some(vec!["Version".into()]),
            })
            .await
            .unwrap();
        assert_eq!(fields, serde_json::json!({"Version": "0.1.0"}));

        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn remote_errors_are_typed() {
        let (client_end, mut server_end) = tokio::io::duplex(1024);
        server_end
            .write_all(b"Receptor Control, node r1\nERROR: no ping target\n")
            .await
            .unwrap();
        let mut client = Client::handshake(client_end).await.unwrap();
        assert_eq!(client.node_id(), "r1");
        match client.ping(&node("x")).await {
            Err(ClientError::Remote { message }) => assert_eq!(message, "no ping target"),
            other => panic!("{other:?}"),
        }
        drop(server_end);
        assert!(matches!(
            client.ping(&node("x")).await,
            Err(ClientError::Closed | ClientError::Io(_))
        ));
    }
}
