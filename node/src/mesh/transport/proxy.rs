//! HTTP proxies for WebSocket links: `ws://` peers are dialled through `HTTP_PROXY`
//! (`http_proxy`), `wss://` peers through `HTTPS_PROXY` (`https_proxy`), both with an HTTP
//! `CONNECT` tunnel, unless `NO_PROXY` (`no_proxy`) names the host. TCP links never use a
//! proxy.
//!
//! The proxy's reply is read up to `MAX_REPLY` bytes and only its status line is used.

use std::io;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest CONNECT reply head read from a proxy.
const MAX_REPLY: usize = 8 * 1024;

/// An HTTP proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's host.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// `Proxy-Authorization: Basic ...` credentials, from `http://user:pass@host`.
    basic_auth: Option<String>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn env(upper: &str) -> Option<String> {
    let lower = upper.to_ascii_lowercase();
    [lower.as_str(), upper]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The proxy the environment names for a `wss://` (`tls`) or `ws://` link to `host`.
///
/// # Errors
/// The variable is set but is not an `http://` proxy URL.
pub fn from_env(tls: bool, host: &str) -> io::Result<Option<Proxy>> {
    let var = if tls { "HTTPS_PROXY" } else { "HTTP_PROXY" };
    let Some(url) = env(var) else {
        return Ok(None);
    };
    if env("NO_PROXY").is_some_and(|list| bypasses(&list, host)) {
        return Ok(None);
    }
    parse(&url)
        .map(Some)
        .map_err(|why| invalid(format!("{var}={url}: {why}")))
}

/// Whether `NO_PROXY`'s comma-separated `list` covers `host`: `*`, the host itself, or a
/// domain it is under (`example.com` and `.example.com` both cover `a.example.com`).
pub fn bypasses(list: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    list.split(',')
        .map(|entry| entry.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .any(|entry| entry == "*" || host == entry || host.ends_with(&format!(".{entry}")))
}

/// Why a proxy URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyUrlError {
    /// A scheme other than `http://`.
    #[error("proxy scheme {scheme:?} is not supported; use http://host:port")]
    Scheme {
        /// The scheme given.
        scheme: String,
    },
    /// What follows the scheme (and credentials) is not `host[:port]`.
    #[error("not host:port: {0}")]
    Address(#[source] crate::config::AddrError),
}

/// Parses `http://[user:pass@]host[:port][/]` (port 80 by default).
///
/// # Errors
/// [`ProxyUrlError`]: an unsupported scheme, or no `host[:port]`.
pub fn parse(url: &str) -> Result<Proxy, ProxyUrlError> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(ProxyUrlError::Scheme {
                scheme: scheme.to_owned(),
            });
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let (credentials, authority) = match rest.rsplit_once('@') {
        Some((credentials, authority)) => (Some(credentials), authority),
        None => (None, rest),
    };
    let addr: crate::config::EndpointAddr = authority.parse().map_err(ProxyUrlError::Address)?;
    let port = if authority.contains(':') && !authority.ends_with(']') {
        addr.port
    } else {
        80
    };
    let basic_auth =
        credentials.map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_bytes()));
    Ok(Proxy {
        host: addr.host,
        port,
        basic_auth,
    })
}

impl Proxy {
    /// Connects to the proxy and opens a tunnel to `host:port`.
    ///
    /// # Errors
    /// The proxy cannot be reached, or it refused the tunnel (its status line says why).
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let mut stream = super::tcp::connect(&self.host, self.port).await?;
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.basic_auth {
            request.push_str(&format!("Proxy-Authorization: Basic {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let head = read_head(&mut stream).await?;
        let status = head.lines().next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if !status.starts_with("HTTP/1.") || code != "200" {
            let shown: String = status
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "proxy {}:{} refused CONNECT {target}: {shown}",
                    self.host, self.port
                ),
            ));
        }
        Ok(stream)
    }
}

/// Reads the reply head, byte by byte so that nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("proxy reply head longer than {MAX_REPLY} bytes"),
            ));
        }
        let byte = stream.read_u8().await?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
