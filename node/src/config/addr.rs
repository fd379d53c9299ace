//! Endpoint addresses: where a node listens and which peers it dials.
//!
//! Receptor writes peers as `receptor://host:port` or `host:port`; Warren accepts both, a
//! bare `host` (port [`DEFAULT_PORT`]) and bracketed IPv6 (`[::1]:8888`), all over TCP, and
//! WebSocket links as `ws://host[:port][/path]` and `wss://host[:port][/path]` (ports 80 and
//! 443 by default, path `/`), for sites behind HTTP proxies and ingress controllers. No IO:
//! names are resolved when the driver dials or binds.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Port used when an address names only a host: Receptor's default, so existing peer
/// strings keep working.
pub const DEFAULT_PORT: u16 = 8888;

/// The TCP scheme accepted in front of an address, for Receptor compatibility.
const SCHEME: &str = "receptor";

/// Longest WebSocket path accepted.
const MAX_PATH_LEN: usize = 256;

/// How a link's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scheme {
    /// Plain TCP (`host:port`, `receptor://host:port`).
    #[default]
    Tcp,
    /// WebSocket over TCP (`ws://`).
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
}

impl Scheme {
    /// Whether links of this scheme are WebSocket (and so have a path).
    #[must_use]
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Tcp => DEFAULT_PORT,
            Self::Ws => 80,
            Self::Wss => 443,
        }
    }
}

/// Why a string is not an endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The string was empty.
    #[error("the address is empty; use host:port, receptor://host:port or host")]
    Empty,
    /// A URL scheme other than `receptor://`, `ws://` or `wss://` was given.
    #[error(
        "scheme {scheme:?} is not supported; use host:port, receptor://host:port or host \
         (default port {DEFAULT_PORT}), or ws://host[:port][/path] or wss://host[:port][/path]"
    )]
    UnsupportedScheme {
        /// The scheme as written, without `://`.
        scheme: String,
    },
    /// Something follows the port (a URL path or query) of a TCP address.
    #[error(
        "a TCP address has no path; use host:port or receptor://host:port (paths are for ws:// and wss://)"
    )]
    HasPath,
    /// A WebSocket path with a query, fragment or characters outside a plain URL path.
    #[error("{path:?} is not a plain URL path (letters, digits and - . _ ~ / only, at most 256)")]
    BadPath {
        /// The path as written.
        path: String,
    },
    /// The host part is empty.
    #[error("the host is empty; use host:port, receptor://host:port or host")]
    EmptyHost,
    /// The host holds characters no host name or IP address has.
    #[error("{host:?} is not a host name or IP address")]
    BadHost {
        /// The host as written.
        host: String,
    },
    /// An IPv6 address was written without brackets, so its port cannot be told apart.
    #[error("write IPv6 addresses in brackets, as in [::1]:{DEFAULT_PORT}")]
    UnbracketedIpv6,
    /// The port is not a number from 0 to 65535.
    #[error("port {port:?} is not a number from 0 to 65535")]
    BadPort {
        /// The port as written.
        port: String,
    },
    /// Port 0 was given where a real port is needed (peers are dialled, not bound).
    #[error("port 0 is only allowed for listen addresses")]
    ZeroPort,
}

/// A host and port to listen on or dial, and how. `Display` writes `host:port`
/// (`[v6]:port`) for TCP and `ws://host:port/path` or `wss://...` for WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointAddr {
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    /// TCP port; 0 only for listen addresses (the OS picks one).
    pub port: u16,
    /// TCP or WebSocket.
    pub scheme: Scheme,
    /// The WebSocket path (`/` by default); empty for TCP.
    pub path: String,
}

impl EndpointAddr {
    /// Parses an address to dial: like [`FromStr`], but port 0 is refused.
    ///
    /// # Errors
    /// Any [`AddrError`], including [`AddrError::ZeroPort`].
    pub fn parse_peer(s: &str) -> Result<Self, AddrError> {
        let addr: Self = s.parse()?;
        if addr.port == 0 {
            return Err(AddrError::ZeroPort);
        }
        Ok(addr)
    }
}

impl EndpointAddr {
    /// `host:port` (`[v6]:port`), without scheme or path: what to bind or dial over TCP.
    #[must_use]
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Tcp => f.write_str(&self.host_port()),
            Scheme::Ws => write!(f, "ws://{}{}", self.host_port(), self.path),
            Scheme::Wss => write!(f, "wss://{}{}", self.host_port(), self.path),
        }
    }
}

impl FromStr for EndpointAddr {
    type Err = AddrError;

    /// Accepts `host:port`, `receptor://host:port`, `host` and `[v6]:port` (TCP), and
    /// `ws://` or `wss://` with `host[:port][/path]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        let (scheme, rest) = strip_scheme(s)?;
        let (authority, path) = match scheme {
            Scheme::Tcp if rest.contains(['/', '?', '#']) => return Err(AddrError::HasPath),
            Scheme::Tcp => (rest, String::new()),
            Scheme::Ws | Scheme::Wss => match rest.find('/') {
                Some(at) => (&rest[..at], check_path(&rest[at..])?),
                None if rest.contains(['?', '#']) => {
                    return Err(AddrError::BadPath { path: rest.into() });
                }
                None => (rest, "/".to_owned()),
            },
        };
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse()
                .map_err(|_| AddrError::BadPort { port: p.into() })?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            scheme,
            path,
        })
    }
}

/// Removes a `receptor://`, `ws://` or `wss://` prefix; refuses any other scheme.
fn strip_scheme(s: &str) -> Result<(Scheme, &str), AddrError> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok((Scheme::Tcp, s));
    };
    match scheme.to_ascii_lowercase().as_str() {
        SCHEME => Ok((Scheme::Tcp, rest)),
        "ws" => Ok((Scheme::Ws, rest)),
        "wss" => Ok((Scheme::Wss, rest)),
        _ => Err(AddrError::UnsupportedScheme {
            scheme: scheme.to_owned(),
        }),
    }
}

/// A WebSocket path: plain, short, no query or fragment (it is matched exactly).
fn check_path(path: &str) -> Result<String, AddrError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '~');
    if path.len() > MAX_PATH_LEN || !path.chars().all(plain) {
        return Err(AddrError::BadPath { path: path.into() });
    }
    Ok(path.to_owned())
}

/// Splits `host[:port]` or `[v6][:port]` and checks the host.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), AddrError> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| AddrError::BadHost { host: s.to_owned() })?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(AddrError::BadHost {
                host: host.to_owned(),
            });
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(AddrError::BadHost { host: s.to_owned() }),
            },
        };
    }
    let (host, port) = match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    if port.is_some_and(|p| p.contains(':')) {
        return Err(AddrError::UnbracketedIpv6);
    }
    check_host(host)?;
    Ok((host, port))
}

fn check_host(host: &str) -> Result<(), AddrError> {
    if host.is_empty() {
        return Err(AddrError::EmptyHost);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if !host.chars().all(allowed) {
        return Err(AddrError::BadHost {
            host: host.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> EndpointAddr {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_the_three_forms_and_ipv6() {
        assert_eq!(addr("0.0.0.0:8888").to_string(), "0.0.0.0:8888");
        assert_eq!(
            addr("receptor://relay.example.com:9000").to_string(),
            "relay.example.com:9000"
        );
        assert_eq!(addr("relay").to_string(), "relay:8888");
        assert_eq!(addr("receptor://relay").port, DEFAULT_PORT);
        let v6 = addr("[::1]:7000");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 7000));
        assert_eq!(v6.to_string(), "[::1]:7000");
        assert_eq!(addr("[::1]").port, DEFAULT_PORT);
    }

    #[test]
    fn display_round_trips() {
        for s in ["h:1", "[fe80::1]:2", "10.0.0.1:65535", "a-b_c.d:0"] {
            assert_eq!(addr(s).to_string(), s);
            assert_eq!(addr(&addr(s).to_string()), addr(s));
        }
    }

    #[test]
    fn rejects_other_schemes_naming_accepted_forms() {
        let err = "tcp://x:1".parse::<EndpointAddr>().unwrap_err();
        assert_eq!(
            err,
            AddrError::UnsupportedScheme {
                scheme: "tcp".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("host:port")
                && msg.contains("receptor://host:port")
                && msg.contains("wss://"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        let bad = |s: &str| s.parse::<EndpointAddr>().unwrap_err();
        assert_eq!(bad(""), AddrError::Empty);
        assert_eq!(bad(":80"), AddrError::EmptyHost);
        assert_eq!(bad("receptor://"), AddrError::EmptyHost);
        assert!(matches!(bad("h:99999"), AddrError::BadPort { .. }));
        assert!(matches!(bad("h:"), AddrError::BadPort { .. }));
        assert!(matches!(bad("h:x"), AddrError::BadPort { .. }));
        assert_eq!(bad("::1"), AddrError::UnbracketedIpv6);
        assert!(matches!(bad("[zz]:1"), AddrError::BadHost { .. }));
        assert!(matches!(bad("[::1]x"), AddrError::BadHost { .. }));
        assert!(matches!(bad("a b:1"), AddrError::BadHost { .. }));
        assert_eq!(bad("receptor://h:1/path"), AddrError::HasPath);
    }

    #[test]
    fn websocket_addresses_have_default_ports_and_paths() {
        let ws = addr("ws://relay.example.com/warren");
        assert_eq!(
            (ws.scheme, ws.port, ws.path.as_str()),
            (Scheme::Ws, 80, "/warren")
        );
        assert_eq!(ws.to_string(), "ws://relay.example.com:80/warren");
        let wss = addr("WSS://[::1]");
        assert_eq!(
            (wss.scheme, wss.port, wss.path.as_str()),
            (Scheme::Wss, 443, "/")
        );
        assert_eq!(addr("ws://h:0/a/b-c_d.e~f").port, 0);
        for s in ["ws://h:1/x", "wss://[fe80::1]:2/", "ws://h:3/a/b"] {
            assert_eq!(addr(s).to_string(), s);
            assert_eq!(addr(&addr(s).to_string()), addr(s));
        }
        assert_eq!(addr("receptor://h:1").scheme, Scheme::Tcp);
    }

    #[test]
    fn websocket_paths_are_plain_and_bounded() {
        let bad = |s: &str| s.parse::<EndpointAddr>().unwrap_err();
        for s in [
            "ws://h/a?b=1",
            "ws://h/a#f",
            "ws://h/a b",
            "ws://h/%2e%2e",
            "ws://h?x",
        ] {
            assert!(matches!(bad(s), AddrError::BadPath { .. }), "{s}");
        }
        let long = format!("ws://h/{}", "a".repeat(300));
        assert!(matches!(bad(&long), AddrError::BadPath { .. }));
        assert_eq!(bad("ws:///x"), AddrError::EmptyHost);
    }

    #[test]
    fn port_zero_only_for_listening() {
        assert_eq!(addr("127.0.0.1:0").port, 0);
        assert_eq!(
            EndpointAddr::parse_peer("127.0.0.1:0"),
            Err(AddrError::ZeroPort)
        );
        assert_eq!(EndpointAddr::parse_peer("h").unwrap().port, DEFAULT_PORT);
    }
}
