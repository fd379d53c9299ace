//! The session side of `connect`: open a mesh stream, say `Connecting`, then move raw
//! bytes both ways until both directions have ended.
//!
//! Bytes the client sent after the `connect` line (and that the line reader already
//! buffered) go to the stream first: receptorctl may send its next request right away.

use tokio::io::{self, AsyncRead, AsyncWrite};

use super::{Backend, LineReader, Outcome, send};
use crate::control::reply::{CONNECTING_LINE, Reply};
use crate::control::request::ConnectRequest;

/// Runs one `connect` request. A stream that cannot be opened is an `ERROR:` line and the
/// session goes on; once bridged, the session ends with the bridge.
///
/// # Errors
/// Write errors on the connection before the bridge starts.
pub(super) async fn bridge<B: Backend, S: AsyncRead + AsyncWrite + Unpin + Send>(
    request: ConnectRequest,
    backend: &B,
    conn: &mut LineReader<S>,
) -> io::Result<Outcome> {
    if let Some(tls) = request.tls {
        // Mesh streams ride on Noise-encrypted links; Warren has no TLS client configs
        // (and advertises ConnType 1, so clients do not ask for one).
        return Ok(Outcome::Reply(Reply::Error(format!(
            "unknown TLS config {tls}"
        ))));
    }
    let mut stream = match backend
        .connect(request.node.clone(), request.service.clone())
        .await
    {
        Ok(stream) => stream,
        Err(message) => {
            tracing::debug!(node = %request.node, service = %request.service, error = %message, "connect failed");
            return Ok(Outcome::Reply(Reply::Error(message)));
        }
    };
    send(conn, CONNECTING_LINE).await?;
    // The buffered reader hands out what it already read before reading the socket again,
    // and passes writes straight through.
    match io::copy_bidirectional(conn.reader(), &mut stream).await {
        Ok((up, down)) => {
            tracing::debug!(node = %request.node, service = %request.service, up, down, "connect bridge closed");
        }
        Err(e) => {
            tracing::debug!(node = %request.node, service = %request.service, error = %e, "connect bridge broke");
        }
    }
    Ok(Outcome::End)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::control::fake::FakeBackend;
    use crate::control::serve_session;
    use crate::control::session::LineReader;

    #[tokio::test]
    async fn bridges_bytes_both_ways_buffered_ones_first() {
        let backend = FakeBackend::new();
        let (client, server) = tokio::io::duplex(4096);
        let session = tokio::spawn(async move { serve_session(server, &backend).await });
        let mut client = LineReader::new(client);
        let mut line = Vec::new();
        client.read_line(&mut line).await.unwrap();
        // The request after `connect` arrives in the same write as it.
        client
            .get_mut()
            .write_all(b"connect b echo \nhello ")
            .await
            .unwrap();
        client.read_line(&mut line).await.unwrap();
        assert_eq!(line, b"Connecting");
        client.get_mut().write_all(b"world").await.unwrap();
        client.get_mut().shutdown().await.unwrap();
        let mut echoed = Vec::new();
        client.reader().read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"hello world");
        session.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refusals_are_error_lines_and_the_session_goes_on() {
        let backend = FakeBackend::new();
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"connect nowhere control \nconnect b echo tlsname\nconnect b\nstatus\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        serve_session(server, &backend).await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "ERROR: no route to node nowhere");
        assert_eq!(lines[2], "ERROR: unknown TLS config tlsname");
        assert_eq!(lines[3], "ERROR: no connect target");
        assert!(lines[4].starts_with(r#"{"Advertisements""#), "{out}");
    }
}
