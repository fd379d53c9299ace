//! The mesh's decoders and state machines: frames, messages, adverts in the link-state
//! database, a whole node on accepted links, and end-to-end sessions with sealed streams.

use std::time::Duration;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use warren::id::ServiceName;
use warren::mesh::frame::{FrameError, decode_frame, decode_noise, encode_frame, encode_noise};
use warren::mesh::lsdb::{Advert, AdvertOutcome, Lsdb, LsdbLimits, SummaryEntry};
use warren::mesh::message::{
    Hello, Message, Preamble, ResetReason, ResponderPayload, StreamKind, StreamPacket,
};
use warren::mesh::route::shortest_paths;
use warren::mesh::session::{InitPayload, SessionMsg};

use super::Reached;
use crate::mesh::{Clock, EPOCH_MS, Harness, advert, member, trust};
use crate::ops::{Fields, Ops};
use crate::session::SessionHarness;

/// Most ops one input may run on a node: inputs stay fast, and a finding stays short.
const MAX_OPS: usize = 256;

/// Both length-prefixed decoders over the input, fed whole and in two pieces cut where its
/// first byte says: they must agree, and re-encoding what came out must give back the bytes
/// it came from.
pub fn mesh_frame(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let noise = |buf: &mut BytesMut| decode_noise(buf).map(|m| m.map(BytesMut::freeze));
    let frame = |buf: &mut BytesMut| decode_frame(buf);
    let (whole, end) = decode_all(noise, &[data]);
    assert_eq!(
        (whole.clone(), end.clone()),
        decode_all(noise, &[&data[..cut], &data[cut..]])
    );
    let mut again = BytesMut::new();
    for message in &whole {
        encode_noise(message, &mut again).expect("a decoded noise message re-encodes");
    }
    assert_eq!(&again[..], &data[..again.len()]);
    if !whole.is_empty() {
        reached.push("noise");
    }
    let (whole, end) = decode_all(frame, &[data]);
    assert_eq!(
        (whole.clone(), end.clone()),
        decode_all(frame, &[&data[..cut], &data[cut..]])
    );
    let mut again = BytesMut::new();
    for f in &whole {
        encode_frame(f, &mut again).expect("a decoded frame re-encodes");
    }
    assert_eq!(&again[..], &data[..again.len()]);
    if !whole.is_empty() {
        reached.push("frame");
    }
    if matches!(end, Err(FrameError::TooLarge { .. })) {
        reached.push("too-large");
    }
    reached
}

/// Decodes everything `pieces` hold, fed one piece at a time; the frames and how it ended
/// (`Ok(leftover length)` when it needs more, or the error).
fn decode_all(
    decode: impl Fn(&mut BytesMut) -> Result<Option<bytes::Bytes>, FrameError>,
    pieces: &[&[u8]],
) -> (Vec<Vec<u8>>, Result<usize, FrameError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf) {
                Ok(Some(frame)) => out.push(frame.to_vec()),
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(buf.len()))
}

/// Every wire shape a peer sends, decoded from the input: what decodes must re-encode to
/// something that decodes to the same value, and adverts are checked as a receiver does.
pub fn mesh_message(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    // What a relay does with a received frame: decode it as a view of the frame. It must
    // agree with the plain decode on every input, accepted or not.
    let shared = Message::decode_shared(&bytes::Bytes::copy_from_slice(data));
    match (&shared, Message::decode(data)) {
        (Ok(view), Ok(plain)) => assert_eq!(view, &plain, "the shared decode differs"),
        (Err(_), Err(_)) => {}
        (view, plain) => panic!("the decodes disagree: shared {view:?}, plain {plain:?}"),
    }
    if let Ok(message) = Message::decode(data) {
        let again = Message::decode(&message.encode().expect("a decoded message encodes"))
            .expect("an encoded message decodes");
        assert_eq!(again, message);
        let _ = format!("{message:?}");
        if let Message::Advert(advert) = &message {
            judge_advert(advert);
        }
        reached.push(crate::mesh::kind(&message));
    }
    round_trip::<Hello>(data, &mut reached, "hello");
    round_trip::<Preamble>(data, &mut reached, "preamble");
    round_trip::<ResponderPayload>(data, &mut reached, "responder-payload");
    round_trip::<SessionMsg>(data, &mut reached, "session-msg");
    if let Some(init) = round_trip::<InitPayload>(data, &mut reached, "init-payload") {
        judge_advert(&init.advert);
    }
    if let Some(advert) = round_trip::<Advert>(data, &mut reached, "advert") {
        judge_advert(&advert);
    }
    round_trip::<Vec<SummaryEntry>>(data, &mut reached, "summary");
    round_trip::<StreamPacket>(data, &mut reached, "stream-packet");
    reached
}

fn round_trip<T>(data: &[u8], reached: &mut Reached, name: &'static str) -> Option<T>
where
    T: DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = postcard::from_bytes(data).ok()?;
    let again: T = postcard::from_bytes(&postcard::to_stdvec(&value).expect("encodes"))
        .expect("an encoded value decodes");
    assert_eq!(again, value);
    reached.push(name);
    Some(value)
}

/// What a receiver asks of an advert before anything else.
fn judge_advert(advert: &Advert) {
    let _ = advert.check_shape();
    let _ = advert.has_valid_signature();
    let _ = advert.is_newer_than(advert);
}

/// Adverts from the input, bent and re-signed by cast members so they pass the signature
/// check, into a link-state database with small caps; time moves, entries expire, and the
/// routing table is computed from what was stored.
pub fn lsdb_advert(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let Some((&setup, rest)) = data.split_first() else {
        return reached;
    };
    let policy = trust(setup & 1 == 1);
    let limits = LsdbLimits {
        max_age: Duration::from_secs(95),
        max_nodes: 2 + usize::from(setup >> 1 & 7),
        max_bytes: 256 << (setup >> 4),
        // Below max_nodes for some inputs, so both the first-seen cap and eviction run.
        max_first_seen: 1 + usize::from(setup >> 2 & 3),
    };
    let (me, keys) = member(0);
    let mut clock = Clock::new();
    let mut lsdb = Lsdb::new(me.clone(), keys.public(), limits.clone());
    let own = advert(0, 1, &[(1, 1000)]);
    let own_size = postcard::to_stdvec(&own).expect("adverts encode").len();
    lsdb.set_own(clock.now(), own);
    for op in Ops::new(rest).take(MAX_OPS) {
        let now = clock.now();
        let wall_ms = EPOCH_MS + u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut f = Fields::new(op.data);
        match op.tag % 6 {
            0 | 1 => {
                let (signer, flags) = (f.u8(), f.u8());
                let Some(advert) = bent_advert(signer, flags, f.rest()) else {
                    continue;
                };
                let origin = advert.origin.clone();
                let outcome = lsdb.handle_advert(now, wall_ms, advert.clone(), &policy);
                if outcome == AdvertOutcome::Stored {
                    assert_eq!(lsdb.get(&origin), Some(&advert), "a stored advert is kept");
                    reached.push("stored");
                }
            }
            2 => {
                let (signer, seq, links) = (f.u8(), f.u64(), f.rest());
                let links: Vec<(u8, u32)> = links
                    .chunks(3)
                    .map(|c| (c[0], u32::from(*c.get(1).unwrap_or(&1)) * 100))
                    .collect();
                let outcome =
                    lsdb.handle_advert(now, wall_ms, advert(signer, seq, &links), &policy);
                if outcome == AdvertOutcome::Stored {
                    reached.push("stored");
                }
            }
            3 => clock.advance(Duration::from_millis(u64::from(f.u16()) * 16)),
            4 => {
                let expired = lsdb.expire(now);
                if !expired.is_empty() {
                    reached.push("expired");
                }
                assert!(lsdb.next_expiry().is_none_or(|t| t > now));
            }
            _ => {
                if let Ok(summary) = postcard::from_bytes::<Vec<SummaryEntry>>(op.data) {
                    let _ = lsdb.lacking(&summary);
                }
                let _ = lsdb.summary();
                let routes = shortest_paths(&lsdb.topology(), &me);
                let _ = lsdb.reachable();
                if !routes.is_empty() {
                    reached.push("routes");
                }
            }
        }
        assert!(lsdb.len() <= limits.max_nodes.max(1), "the node cap holds");
        assert!(
            lsdb.bytes() <= limits.max_bytes.max(own_size),
            "the byte cap holds: {} stored, cap {}",
            lsdb.bytes(),
            limits.max_bytes
        );
    }
    reached
}

/// An advert decoded from `bytes`, then (by `flags`) given cast member `signer`'s origin
/// and key and signed, so that what follows the signature check is reached.
fn bent_advert(signer: u8, flags: u8, bytes: &[u8]) -> Option<Advert> {
    let mut advert: Advert = postcard::from_bytes(bytes).ok()?;
    let (id, keys) = member(signer);
    if flags & 1 == 1 {
        advert.origin = id;
    }
    if flags & 2 == 2 {
        advert.epoch = EPOCH_MS.saturating_add(advert.epoch % 10_000_000);
    }
    if flags & 4 == 0 {
        advert = advert.sign(&keys, &[flags; 64]);
    }
    Some(advert)
}

/// A whole node on accepted connections: raw bytes before any handshake, real handshakes
/// by trusted, pinned, certified and stranger peers claiming any cast id, then frames,
/// messages, re-signed adverts, packets to relay, probes, stream opens and time.
pub fn mesh_node(data: &[u8]) -> Reached {
    let Some((&setup, rest)) = data.split_first() else {
        return Reached::new();
    };
    let mut h = Harness::new(setup & 1 == 1);
    for op in Ops::new(rest).take(MAX_OPS) {
        let mut f = Fields::new(op.data);
        match op.tag % 12 {
            0 => {
                h.accept(f.u8());
            }
            1 => {
                let link = f.u8();
                if let Some(l) = h.link(link) {
                    let id = l.id;
                    let index = h.links.iter().position(|x| x.id == id).unwrap_or(0);
                    h.bytes(index, f.rest());
                }
            }
            2 => {
                let (speaker, claim, cert, epoch) = (f.u8(), f.u8(), f.u8(), f.u64());
                h.connect(speaker, Harness::hello(claim, epoch, cert & 1 == 1));
            }
            3 => {
                let link = index(&h, f.u8());
                h.frame(link, f.rest());
            }
            4 => {
                let link = index(&h, f.u8());
                h.plain(link, f.rest());
            }
            5 => {
                let (link, signer, flags) = (index(&h, f.u8()), f.u8(), f.u8());
                if let Some(advert) = bent_advert(signer, flags, f.rest()) {
                    h.message(link, &Message::Advert(advert));
                }
            }
            6 => h.advance(Duration::from_millis(u64::from(f.u16()) * 8)),
            7 => {
                let link = index(&h, f.u8());
                if let Some(l) = h.links.get(link) {
                    let (id, now) = (l.id, h.clock.now());
                    h.node
                        .handle_link_socket_closed(now, id, "fuzz: socket closed");
                    h.drain();
                }
            }
            8 => {
                let (dst, hops) = (member(f.u8()).0, f.u8());
                let now = h.clock.now();
                let _ = h.node.probe(now, &dst, (hops > 0).then_some(hops));
                h.drain();
            }
            9 => {
                let dst = member(f.u8()).0;
                let now = h.clock.now();
                let svc = ServiceName::new(crate::mesh::SERVICE).expect("valid service");
                let _ = h.node.open_stream(now, &dst, svc.clone(), svc);
                h.drain();
            }
            10 => {
                let link = index(&h, f.u8());
                let (src, dst, hops) = (member(f.u8()).0, member(f.u8()).0, f.u8());
                if let Ok(body) = postcard::from_bytes(f.rest()) {
                    let packet = warren::mesh::message::Packet {
                        src,
                        dst,
                        hops_left: hops,
                        body,
                    };
                    h.message(link, &Message::Packet(packet));
                }
            }
            _ => {
                let _ = h.node.status();
                let target = member(f.u8()).0;
                let _ = h.node.is_reachable(&target);
            }
        }
    }
    report_milestones(h.finish())
}

/// The index of link `choice` (wrapping), or 0.
fn index(h: &Harness, choice: u8) -> usize {
    if h.links.is_empty() {
        0
    } else {
        usize::from(choice) % h.links.len()
    }
}

fn report_milestones(report: crate::mesh::Report) -> Reached {
    let mut reached = Reached::new();
    if report.links_up > 0 {
        reached.push("link-up");
    }
    if report.links_up > 1 {
        reached.push("two-links");
    }
    for kind in report.stream_events.keys() {
        reached.push(kind);
    }
    for kind in report.sent.keys() {
        reached.push(kind);
    }
    if report.links_closed > 0 {
        reached.push("link-closed");
    }
    if report.adverts > 1 {
        reached.push("adverts-stored");
    }
    if report.routes > 0 {
        reached.push("routes");
    }
    reached
}

/// A neighbour with an end-to-end session: circuit opens, sealed traffic of any content
/// under real keys, forged stream packets and session messages, the node's own side
/// (sending, finishing, resetting streams; opening towards the neighbour) and time.
pub fn mesh_session(data: &[u8]) -> Reached {
    let mut s = SessionHarness::new();
    for op in Ops::new(data).take(MAX_OPS) {
        let mut f = Fields::new(op.data);
        match op.tag % 12 {
            0 => {
                let number = u64::from(f.u8());
                if let Some(index) = s.new_circuit(number) {
                    s.open_sealed(index, f.rest());
                }
            }
            1 => {
                let circuit = f.u8();
                s.sealed(circuit, f.rest());
            }
            2 => {
                let circuit = f.u8();
                s.send_stream(circuit, StreamKind::Close);
            }
            3 => {
                let circuit = f.u8();
                if let Ok(reason) = postcard::from_bytes::<ResetReason>(f.rest()) {
                    s.send_stream(circuit, StreamKind::Reset(reason));
                }
            }
            4 => {
                if let Ok(packet) = postcard::from_bytes::<StreamPacket>(op.data) {
                    s.send_body(warren::mesh::message::PacketBody::Stream(packet));
                }
            }
            5 => {
                if let Ok(msg) = postcard::from_bytes::<SessionMsg>(op.data) {
                    s.send_body(warren::mesh::message::PacketBody::Session(msg));
                }
            }
            6 => {
                s.harness.frame(0, op.data);
                s.answer();
            }
            7 => {
                s.harness
                    .advance(Duration::from_millis(u64::from(f.u16()) * 64));
                s.answer();
            }
            8 => app_step(&mut s, f.u8(), f.u16()),
            9 => s.start_session(f.u64()),
            10 => {
                let now = s.harness.clock.now();
                let svc = ServiceName::new(crate::mesh::SERVICE).expect("valid service");
                let peer = member(crate::session::SPEAKER).0;
                let _ = s.harness.node.open_stream(now, &peer, svc.clone(), svc);
                s.harness.drain();
                s.answer();
            }
            _ => {
                let (number, seq) = (u64::from(f.u8()), u64::from(f.u8()));
                s.open(number, crate::mesh::SERVICE, seq);
            }
        }
    }
    report_milestones(s.harness.finish())
}

/// What the node's application does on one of its streams: send, finish or reset.
fn app_step(s: &mut SessionHarness, choice: u8, len: u16) {
    let h = &mut s.harness;
    if h.streams.is_empty() {
        return;
    }
    let id = h.streams[usize::from(choice) % h.streams.len()];
    let now = h.clock.now();
    match len % 4 {
        0 => h.node.stream_finish(now, id),
        1 => h.node.stream_reset(now, id, ResetReason::Cancelled),
        _ => {
            let _ = h
                .node
                .stream_send(now, id, bytes::Bytes::from(vec![0x5A; usize::from(len)]));
        }
    }
    h.drain();
    s.answer();
}
