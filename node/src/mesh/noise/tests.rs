//! The handshake and the in-place transport against snow's own Noise, across rekeys; what
//! each side shows before message three; versions named; garbage and tampering refused.

use super::*;
use crate::id::NodeId;
use bytes::Buf;

fn hello(id: &str) -> Hello {
    Hello {
        node: NodeId::new(id).unwrap(),
        epoch: 1,
        cert: None,
        successions: Vec::new(),
    }
}

fn pair() -> (LinkKeypair, LinkKeypair) {
    (
        LinkKeypair::from_private([1; 32]),
        LinkKeypair::from_private([2; 32]),
    )
}

/// Runs a full handshake and returns both transports.
fn handshake(a: &LinkKeypair, b: &LinkKeypair) -> (Transport, Transport) {
    let (mut ini, m1) = Handshake::initiator(a).unwrap();
    let mut res = Handshake::responder(b).unwrap();
    let HandshakeOutput::Reply(m2) = res.read(&m1).unwrap() else {
        panic!("responder must reply to message 1")
    };
    let HandshakeOutput::ResponderKey(key) = ini.read(&m2).unwrap() else {
        panic!("initiator must learn the responder's key")
    };
    assert_eq!(key, b.public());
    let (m3, ta) = ini.finish_initiator(&hello("a")).unwrap();
    let HandshakeOutput::Identified { key, hello: h } = res.read(&m3).unwrap() else {
        panic!("responder must identify the initiator")
    };
    assert_eq!(key, a.public());
    assert_eq!(*h, hello("a"));
    (ta, res.into_transport().unwrap())
}

#[test]
fn handshake_then_transport_both_ways_with_rekey() {
    let (a, b) = pair();
    let (mut ta, mut tb) = handshake(&a, &b);
    let mut wire = BytesMut::new();
    ta.encrypt(b"ping", &mut wire).unwrap();
    let msg = super::super::frame::decode_noise(&mut wire)
        .unwrap()
        .unwrap();
    let mut out = BytesMut::new();
    tb.decrypt(&msg, &mut out).unwrap();
    assert_eq!(&out[..], b"ping");
    ta.rekey_outgoing();
    tb.rekey_incoming();
    ta.encrypt(b"after", &mut wire).unwrap();
    let msg = super::super::frame::decode_noise(&mut wire)
        .unwrap()
        .unwrap();
    out.clear();
    tb.decrypt(&msg, &mut out).unwrap();
    assert_eq!(&out[..], b"after");
}

#[test]
fn a_message_sealed_in_place_opens_like_one_encrypted_from_a_copy() {
    let (a, b) = pair();
    let (mut ta, mut tb) = handshake(&a, &b);
    for len in [0usize, 1, 1000, MAX_PLAINTEXT_LEN] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut wire = BytesMut::from(&b"before"[..]);
        wire.extend_from_slice(&[0, 0]);
        wire.extend_from_slice(&plaintext);
        ta.seal_tail(&mut wire, 6).unwrap();
        // Counters stay in step across both ways of sealing.
        ta.encrypt(b"next", &mut wire).unwrap();
        assert_eq!(&wire[..6], b"before");
        wire.advance(6);
        for expected in [&plaintext[..], b"next"] {
            let msg = super::super::frame::decode_noise(&mut wire)
                .unwrap()
                .unwrap();
            let mut out = BytesMut::new();
            tb.decrypt(&msg, &mut out).unwrap();
            assert_eq!(&out[..], expected, "{len} bytes");
        }
        assert!(wire.is_empty());
    }
}

/// A bare XX handshake between our state builder's two roles: (initiator, responder).
fn raw_pair() -> (HandshakeState, HandshakeState) {
    let (a, b) = pair();
    let mut ini = build(&a, Role::Initiator).unwrap();
    let mut res = build(&b, Role::Responder).unwrap();
    let (mut buf, mut scratch) = (vec![0u8; 1024], vec![0u8; 1024]);
    for turn in 0..3 {
        let (from, to) = if turn % 2 == 0 {
            (&mut ini, &mut res)
        } else {
            (&mut res, &mut ini)
        };
        let n = from.write_message(&[], &mut buf).unwrap();
        to.read_message(&buf[..n], &mut scratch).unwrap();
    }
    (ini, res)
}

/// Ours encrypts, snow's transport decrypts, and back, across a rekey each way: the
/// bytes on the wire are Noise's, so nodes of earlier builds still understand us.
#[test]
fn the_in_place_transport_speaks_snows_noise_both_ways_and_across_rekeys() {
    let (ini, res) = raw_pair();
    let mut ours = Transport::new(ini).unwrap();
    let mut theirs = res.into_transport_mode().unwrap();
    let mut scratch = vec![0u8; super::super::frame::MAX_NOISE_MESSAGE_LEN];
    for round in 0..3u8 {
        let text = vec![round; 1000 + usize::from(round)];
        let mut wire = BytesMut::new();
        ours.encrypt(&text, &mut wire).unwrap();
        let msg = super::super::frame::decode_noise(&mut wire)
            .unwrap()
            .unwrap();
        let n = theirs.read_message(&msg, &mut scratch).unwrap();
        assert_eq!(&scratch[..n], &text[..], "ours -> snow, round {round}");

        let n = theirs.write_message(&text, &mut scratch).unwrap();
        let mut message = BytesMut::from(&scratch[..n]);
        ours.decrypt_in_place(&mut message).unwrap();
        assert_eq!(
            &message[..],
            &text[..],
            "snow -> ours in place, round {round}"
        );
        let n = theirs.write_message(b"appended", &mut scratch).unwrap();
        let mut out = BytesMut::from(&b"kept"[..]);
        ours.decrypt(&scratch[..n], &mut out).unwrap();
        assert_eq!(
            &out[..],
            b"keptappended",
            "snow -> ours appended, round {round}"
        );

        ours.rekey_outgoing();
        theirs.rekey_incoming();
        ours.rekey_incoming();
        theirs.rekey_outgoing();
    }
}

#[test]
fn a_message_failing_authentication_leaves_the_buffer_as_it_was() {
    let (ini, res) = raw_pair();
    let mut ours = Transport::new(res).unwrap();
    let mut theirs = ini.into_transport_mode().unwrap();
    let mut scratch = vec![0u8; 256];
    let n = theirs.write_message(b"one", &mut scratch).unwrap();
    scratch[0] ^= 1;
    let mut out = BytesMut::from(&b"kept"[..]);
    assert_eq!(
        ours.decrypt(&scratch[..n], &mut out),
        Err(CipherError::Decrypt)
    );
    assert_eq!(&out[..], b"kept");
    // Nor did the counter move: the next genuine message still opens.
    scratch[0] ^= 1;
    ours.decrypt(&scratch[..n], &mut out).unwrap();
    assert_eq!(&out[..], b"keptone");
    assert_eq!(
        ours.decrypt(&scratch[..8], &mut out),
        Err(CipherError::Decrypt),
        "shorter than a tag"
    );
}

#[test]
fn an_unfinished_handshake_gives_no_transport() {
    let (a, _) = pair();
    let state = build(&a, Role::Initiator).unwrap();
    assert!(matches!(
        Transport::new(state),
        Err(HandshakeError::Unexpected)
    ));
}

#[test]
fn a_responder_of_another_version_refuses_naming_both() {
    let (a, b) = pair();
    let (mut ini, m1) = Handshake::initiator_speaking(&a, PROTOCOL_VERSION + 1).unwrap();
    let mut res = Handshake::responder(&b).unwrap();
    let Err(HandshakeError::Version { theirs }) = res.read(&m1) else {
        panic!("responder must see the version")
    };
    assert_eq!(theirs, PROTOCOL_VERSION + 1);
    let m2 = res.refuse_version(theirs).unwrap();
    let Err(HandshakeError::Refused(reason)) = ini.read(&m2) else {
        panic!("initiator must learn the refusal")
    };
    assert_eq!(
        reason,
        CloseReason::VersionMismatch {
            sender: PROTOCOL_VERSION,
            receiver: PROTOCOL_VERSION + 1
        }
    );
}

#[test]
fn the_responder_shows_no_identity_before_message_three() {
    let (a, b) = pair();
    let (_, m1) = Handshake::initiator(&a).unwrap();
    let mut res = Handshake::responder(&b).unwrap();
    let HandshakeOutput::Reply(m2) = res.read(&m1).unwrap() else {
        panic!()
    };
    // Message 2 carries the static key (encrypted) and an empty "continue": no node id.
    let continue_len = encode_payload(&ResponderPayload::Continue).len();
    assert_eq!(m2.len(), 32 + (32 + 16) + (continue_len + 16));
}

#[test]
fn a_version_one_initiator_is_named() {
    let (_, b) = pair();
    let mut res = Handshake::responder(&b).unwrap();
    // A v1 node's message 1 is its bare ephemeral key.
    assert!(matches!(
        res.read(&[9; 32]),
        Err(HandshakeError::NoPreamble)
    ));
}

#[test]
fn garbage_fails_cleanly() {
    let (_, b) = pair();
    let mut res = Handshake::responder(&b).unwrap();
    assert!(res.read(&[1, 2, 3]).is_err());
}

#[test]
fn tampered_transport_message_is_rejected() {
    let (a, b) = pair();
    let (mut ta, mut tb) = handshake(&a, &b);
    let mut wire = BytesMut::new();
    ta.encrypt(b"secret", &mut wire).unwrap();
    let mut msg = super::super::frame::decode_noise(&mut wire)
        .unwrap()
        .unwrap()
        .to_vec();
    msg[0] ^= 1;
    assert!(tb.decrypt(&msg, &mut BytesMut::new()).is_err());
}
