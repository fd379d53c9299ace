//! Link transports: how a link's bytes reach the peer before Noise runs over them. Plain
//! TCP, or WebSocket (`ws://`, `wss://` over TLS) for sites behind HTTP proxies and
//! ingress controllers, dialled directly or through an `HTTP(S)_PROXY` with CONNECT.
//!
//! Every transport ends as a [`BoxedLink`], a byte stream the driver attaches as it would a
//! TCP socket: the Noise handshake, trust decisions and end-to-end encryption above it are
//! the same whatever carried the bytes. This module owns only connecting and upgrading; it
//! never reads or writes a link's frames.

pub mod proxy;
mod tcp;
pub mod tls;
mod ws;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use tcp::DIAL_TIMEOUT;

/// Longest an accepted connection may take to finish its TLS and WebSocket handshakes
/// before it is dropped (the Noise handshake has its own timeout after that).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections one listener upgrades at once. Past it, new connections are closed at
/// once: clients that never finish their handshakes cannot pile up sockets and tasks.
pub const MAX_PENDING_UPGRADES: usize = 128;

/// Counts a listener's upgrades in progress, up to [`MAX_PENDING_UPGRADES`].
#[derive(Debug, Clone)]
pub struct Upgrades(Arc<tokio::sync::Semaphore>);

impl Default for Upgrades {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_UPGRADES)))
    }
}

impl Upgrades {
    /// A slot for one more upgrade, held until the permit is dropped; `None` when full.
    #[must_use]
    pub fn try_start(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// A link's byte stream, whatever the transport.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkIo for T {}

/// A link's byte stream, boxed so that one driver serves every transport.
pub type BoxedLink = Box<dyn LinkIo>;

/// What an accepted connection goes through before it is a link.
#[derive(Clone)]
pub enum Accept {
    /// Nothing: the TCP connection is the link.
    Tcp,
    /// A WebSocket upgrade at `path`, after TLS when `tls` is set (`wss://`).
    Ws {
        /// The one path accepted; other paths get 404.
        path: String,
        /// The server's certificate and key.
        tls: Option<TlsAcceptor>,
    },
}

impl std::fmt::Debug for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("Tcp"),
            Self::Ws { path, tls } => write!(f, "Ws({path}, tls: {})", tls.is_some()),
        }
    }
}

/// A bound listener and how its connections become links.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// The upgrade each accepted connection goes through.
    pub accept: Accept,
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self {
            tcp,
            accept: Accept::Tcp,
        }
    }
}

/// How to dial a peer.
#[derive(Clone, Default)]
pub enum Dial {
    /// A TCP connection to the peer's host and port.
    #[default]
    Tcp,
    /// A WebSocket to `path` on the peer's host and port, through `HTTP(S)_PROXY` when the
    /// environment names one, over TLS when `tls` is set (`wss://`).
    Ws {
        /// The request path.
        path: String,
        /// Client TLS settings (trusted roots).
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("Tcp"),
            Self::Ws { path, tls } => write!(f, "Ws({path}, tls: {})", tls.is_some()),
        }
    }
}

/// Turns an accepted TCP connection into a link as `accept` says.
///
/// # Errors
/// The TLS or WebSocket handshake failed or took longer than [`UPGRADE_TIMEOUT`].
pub async fn upgrade_accepted(stream: TcpStream, accept: &Accept) -> io::Result<BoxedLink> {
    tcp::no_delay(&stream);
    let (path, tls) = match accept {
        Accept::Tcp => return Ok(Box::new(stream)),
        Accept::Ws { path, tls } => (path, tls),
    };
    let upgrade = async {
        match tls {
            Some(tls) => {
                let stream = tls.accept(stream).await?;
                ws::accept(stream, path).await
            }
            None => ws::accept(stream, path).await,
        }
    };
    tokio::time::timeout(UPGRADE_TIMEOUT, upgrade)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "WebSocket upgrade timed out"))?
}

/// Dials `host:port` as `dial` says.
///
/// # Errors
/// The connection, the proxy's CONNECT, or the TLS or WebSocket handshake failed.
pub async fn dial(host: &str, port: u16, dial: &Dial) -> io::Result<BoxedLink> {
    let (path, tls) = match dial {
        Dial::Tcp => return Ok(Box::new(tcp::connect(host, port).await?)),
        Dial::Ws { path, tls } => (path, tls),
    };
    let upgrade = async {
        let stream = match proxy::from_env(tls.is_some(), host)? {
            Some(proxy) => proxy.connect(host, port).await?,
            None => tcp::connect(host, port).await?,
        };
        match tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await?;
                ws::connect(stream, "wss", host, port, path).await
            }
            None => ws::connect(stream, "ws", host, port, path).await,
        }
    };
    tokio::time::timeout(UPGRADE_TIMEOUT + DIAL_TIMEOUT, upgrade)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "WebSocket dial timed out"))?
}

#[cfg(test)]
mod tests;
