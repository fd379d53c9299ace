//! Mixed protocol versions: a node refuses an initiator that speaks another version in
//! handshake message 2, naming both versions, and logs it where an operator looks; a node
//! refused by a newer peer says so too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use warren::keys::LinkKeypair;
use warren::mesh::frame::encode_noise;
use warren::mesh::message::{CloseReason, PROTOCOL_VERSION, Preamble, ResponderPayload};
use warren::mesh::noise::{Handshake, HandshakeError, NOISE_PARAMS};

use crate::support::{Mesh, peer, wait_for};

/// The version a future node would speak.
const NEWER: u16 = PROTOCOL_VERSION + 1;

/// Reads one 2-byte-length-prefixed Noise message.
fn read_noise(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("message length");
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).expect("message body");
    message
}

fn write_noise(stream: &mut TcpStream, message: &[u8]) {
    let mut out = BytesMut::new();
    encode_noise(message, &mut out).unwrap();
    stream.write_all(&out).unwrap();
}

/// The log line holding `needle`, which must exist.
fn log_line(log: &str, needle: &str) -> Option<String> {
    log.lines().find(|l| l.contains(needle)).map(str::to_owned)
}

#[test]
fn node_refuses_an_initiator_of_a_newer_version_naming_both() {
    let mut mesh = Mesh::new();
    let a = mesh.identity("a");
    let ia = mesh.start(&a, &[]);
    let mut stream = TcpStream::connect(mesh.node(ia).addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let keys = LinkKeypair::generate().unwrap();
    let (mut handshake, first) = Handshake::initiator_speaking(&keys, NEWER).unwrap();
    write_noise(&mut stream, &first);

    let reply = read_noise(&mut stream);
    match handshake.read(&reply) {
        Err(HandshakeError::Refused(reason)) => assert_eq!(
            reason,
            CloseReason::VersionMismatch {
                sender: PROTOCOL_VERSION,
                receiver: NEWER
            }
        ),
        other => panic!("expected a version refusal, got {other:?}"),
    }
    let mut rest = [0u8; 1];
    assert_eq!(
        stream.read(&mut rest).unwrap_or(0),
        0,
        "the node closes the connection after refusing it"
    );
    let needle = format!("this node speaks mesh protocol v{PROTOCOL_VERSION}, the peer v{NEWER}");
    let line = wait_for("a to log the version refusal", || {
        log_line(&mesh.node(ia).log_text(), &needle)
    });
    assert!(line.contains("WARN"), "refusals are warnings: {line}");
    assert!(mesh.status(ia).is_some(), "a still answers");
}

#[test]
fn node_refused_by_a_newer_peer_logs_both_versions() {
    let mut mesh = Mesh::new();
    let a = mesh.identity("a");
    // A node of the next version, just far enough to read message 1 and refuse.
    let newer = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = newer.local_addr().unwrap().to_string();
    let ia = mesh.start(&a, &peer(&addr));
    let (mut stream, _) = newer.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut private = [0u8; 32];
    getrandom::fill(&mut private).unwrap();
    let mut responder = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(&private)
        .unwrap()
        // The link prologue (`noise.rs`): it names no version, so versions can talk this far.
        .prologue(b"warren mesh")
        .unwrap()
        .build_responder()
        .unwrap();
    let first = read_noise(&mut stream);
    let mut payload = vec![0u8; first.len()];
    let n = responder.read_message(&first, &mut payload).unwrap();
    let preamble: Preamble = postcard::from_bytes(&payload[..n]).unwrap();
    assert_eq!(
        preamble.version, PROTOCOL_VERSION,
        "message 1 states a's version"
    );
    let refusal = ResponderPayload::Refuse(CloseReason::VersionMismatch {
        sender: NEWER,
        receiver: PROTOCOL_VERSION,
    });
    let mut reply = vec![0u8; 1024];
    let n = responder
        .write_message(&postcard::to_stdvec(&refusal).unwrap(), &mut reply)
        .unwrap();
    write_noise(&mut stream, &reply[..n]);

    let needle = format!("the peer speaks mesh protocol v{NEWER}, this node v{PROTOCOL_VERSION}");
    let line = wait_for("a to log that the newer peer refused it", || {
        log_line(&mesh.node(ia).log_text(), &needle)
    });
    assert!(line.contains("WARN"), "refusals are warnings: {line}");
    assert!(mesh.status(ia).is_some(), "a still answers");
}
