//! Transports without a network: WebSocket upgrades over in-memory pipes, proxy settings.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::proxy::{ProxyUrlError, bypasses, parse};
use super::ws;

/// A connected pair of WebSocket links over an in-memory pipe, the server at `path`.
async fn pair(
    server_path: &str,
    client_path: &str,
) -> (
    std::io::Result<super::BoxedLink>,
    std::io::Result<super::BoxedLink>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_path = server_path.to_owned();
    let server = tokio::spawn(async move { ws::accept(a, &server_path).await });
    let client = ws::connect(b, "ws", "relay.example.com", 80, client_path).await;
    (server.await.unwrap(), client)
}

#[tokio::test]
async fn bytes_cross_a_websocket_both_ways_in_order_across_message_boundaries() {
    let (server, client) = pair("/warren", "/warren").await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    // Larger than one message, so writes are split and reads are joined.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&data).await.unwrap();
        client
    });
    let mut got = vec![0; expected.len()];
    server.read_exact(&mut got).await.unwrap();
    assert!(got == expected);
    let mut client = writer.await.unwrap();
    server.write_all(b"back").await.unwrap();
    let mut back = [0; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
    // A WebSocket close ends the stream on both sides (no half-close, unlike TCP).
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn an_upgrade_at_another_path_is_refused_with_404() {
    let (server, client) = pair("/warren", "/other").await;
    assert!(server.is_err());
    let err = client.err().unwrap().to_string();
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn a_peer_sending_an_oversized_message_is_cut_off_before_it_is_buffered() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { ws::accept(a, "/").await });
    // A client without limits sends one 8 MiB message.
    let (mut hostile, _) = tokio_tungstenite::client_async("ws://h/", b).await.unwrap();
    let mut server = server.await.unwrap().unwrap();
    let send = tokio::spawn(async move {
        let _ = hostile
            .send(Message::Binary(vec![0u8; 8 << 20].into()))
            .await;
    });
    let mut buf = vec![0; 1024];
    let result = server.read(&mut buf).await;
    assert!(result.is_err(), "{result:?}");
    send.abort();
}

#[tokio::test]
async fn upgrades_in_progress_are_capped_and_a_finished_one_frees_its_slot() {
    let upgrades = super::Upgrades::default();
    let held: Vec<_> = (0..super::MAX_PENDING_UPGRADES)
        .map(|_| upgrades.try_start().expect("a slot"))
        .collect();
    assert!(upgrades.try_start().is_none());
    drop(held);
    assert!(upgrades.try_start().is_some());
}

#[test]
fn proxy_urls_parse_with_default_port_and_credentials() {
    let p = parse("http://proxy.corp:3128/").unwrap();
    assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
    assert_eq!(parse("proxy.corp").unwrap().port, 80);
    assert_eq!(parse("http://[::1]:8080").unwrap().port, 8080);
    assert!(parse("http://u:p@proxy:1").is_ok());
    let err = parse("socks5://proxy:1080").unwrap_err();
    assert!(
        matches!(&err, ProxyUrlError::Scheme { scheme } if scheme == "socks5"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "proxy scheme \"socks5\" is not supported; use http://host:port"
    );
    let bad = parse("http://bad host:1");
    assert!(matches!(bad, Err(ProxyUrlError::Address(_))), "{bad:?}");
}

#[test]
fn no_proxy_matches_hosts_and_domains() {
    assert!(bypasses("localhost,.corp.example", "a.corp.example"));
    assert!(bypasses("corp.example", "corp.example"));
    assert!(bypasses("*", "anything"));
    assert!(!bypasses("corp.example", "notcorp.example"));
    assert!(!bypasses("", "x"));
}
