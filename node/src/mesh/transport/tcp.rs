//! Plain TCP: resolve, connect with a timeout, and turn off Nagle's algorithm.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long a dial may take before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the first address of `host:port` that answers.
pub(super) async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let addrs = tokio::net::lookup_host((host, port)).await?;
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host}:{port} resolves to no address"),
    );
    for addr in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                no_delay(&stream);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: timed out")),
        }
    }
    Err(last)
}

/// Links carry small latency-sensitive messages (pings, credit) between bulk data; Nagle's
/// algorithm would hold them back for a delayed ACK.
pub(super) fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}
