//! The seed inputs, built from the real thing wherever there is one: frames, hellos and
//! adverts the library itself encodes, a real handshake's first message, Receptor's
//! request lines, the demo's transmit stream packed by Warren and its worker stream made
//! by the real `ansible-runner worker`, the example mesh's configs and certificates — and
//! the hostile shapes a compromised peer or worker sends (zip slip, symlink swaps, bombs,
//! terminal escapes).
//!
//! `examples/seeds.rs` writes them to `seeds/<target>/` with the milestones each must
//! reach in `seeds/EXPECTED`, and checks them.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use warren::ca::{RevocationList, SignedCertificate};
use warren::id::{NodeId, ServiceName};
use warren::keys::SigningKeypair;
use warren::mesh::frame::{encode_frame, encode_noise};
use warren::mesh::lsdb::SummaryEntry;
use warren::mesh::message::{
    CircuitId, CloseReason, Message, PROTOCOL_VERSION, Packet, PacketBody, Preamble, ResetReason,
    ResponderPayload, StreamKind, StreamPacket, Unreachable,
};
use warren::mesh::noise::Handshake;
use warren::mesh::session::SessionMsg;
use warren::work::protocol::{self, RemoteStatus, Reply, Request, ResultsFrame};
use zip::write::SimpleFileOptions;

use crate::mesh::{Harness, advert, certificate, member};
use crate::ops::OpsWriter;
use crate::session::StreamInner;

/// One seed input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Its target.
    pub target: &'static str,
    /// Its file name.
    pub name: &'static str,
    /// The input.
    pub bytes: Vec<u8>,
    /// Milestones it must reach.
    pub expect: Vec<&'static str>,
}

fn seed(target: &'static str, name: &'static str, bytes: Vec<u8>, expect: &[&'static str]) -> Seed {
    Seed {
        target,
        name,
        bytes,
        expect: expect.to_vec(),
    }
}

/// Every seed. `repo` is the repository root; `worker_stream` the demo's real worker
/// stream (made by `ansible-runner worker`) when available.
pub fn all(repo: &Path, worker_stream: Option<&[u8]>) -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(mesh_frames());
    seeds.extend(mesh_messages());
    seeds.extend(link_handshakes());
    seeds.extend(lsdb_adverts());
    seeds.extend(mesh_nodes());
    seeds.extend(mesh_sessions());
    seeds.extend(control_requests());
    seeds.extend(work_protocol());
    seeds.extend(worker_streams(repo, worker_stream));
    seeds.extend(artifacts(worker_stream));
    seeds.extend(configs(repo));
    seeds.extend(components());
    seeds.extend(certificates(repo));
    seeds.extend(successions());
    seeds.extend(terminal());
    seeds
}

fn id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid id")
}

fn svc(name: &str) -> ServiceName {
    ServiceName::new(name).expect("valid service")
}

fn encode(message: &Message) -> Vec<u8> {
    message.encode().expect("messages encode")
}

fn framed(messages: &[Message]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in messages {
        encode_frame(&encode(m), &mut out).expect("fits");
    }
    out.to_vec()
}

fn packet(src: u8, dst: u8, body: PacketBody) -> Message {
    Message::Packet(Packet {
        src: member(src).0,
        dst: member(dst).0,
        hops_left: 30,
        body,
    })
}

fn stream(opener: u8, number: u64, kind: StreamKind) -> PacketBody {
    PacketBody::Stream(StreamPacket {
        circuit: CircuitId {
            opener: member(opener).0,
            number,
        },
        from_opener: true,
        kind,
    })
}

/// A real first handshake message of cast member 1, framed for the socket.
fn first_handshake_message() -> Vec<u8> {
    let (_, keys) = member(1);
    let (_, first) = Handshake::initiator(&keys).expect("handshake starts");
    let mut out = BytesMut::new();
    encode_noise(&first, &mut out).expect("fits");
    out.to_vec()
}

/// One of each message a link carries.
fn sample_messages() -> Vec<(&'static str, Message)> {
    let hello = Harness::hello(3, 5, true);
    vec![
        ("keepalive", Message::Keepalive),
        ("rekey", Message::Rekey),
        (
            "close",
            Message::Close(CloseReason::VersionMismatch {
                sender: 2,
                receiver: 1,
            }),
        ),
        ("hello", Message::Hello(Box::new(hello))),
        (
            "advert",
            Message::Advert(advert(6, 3, &[(0, 1000), (2, 2500)])),
        ),
        (
            "summary",
            Message::DbSummary {
                entries: vec![SummaryEntry {
                    origin: id("far5"),
                    epoch: crate::mesh::EPOCH_MS,
                    seq: 9,
                }],
                last: true,
            },
        ),
        ("request", Message::DbRequest(vec![id("far5"), id("p1")])),
        ("sent", Message::DbSent),
        ("echo", packet(1, 0, PacketBody::EchoRequest { probe: 77 })),
        (
            "unreachable",
            packet(
                1,
                0,
                PacketBody::Unreachable {
                    reason: Unreachable::HopLimit,
                    probe: Some(77),
                    target: id("far7"),
                },
            ),
        ),
        (
            "session-init",
            packet(
                1,
                0,
                PacketBody::Session(SessionMsg::Init {
                    session: 5,
                    noise: Bytes::from_static(&[1; 96]),
                }),
            ),
        ),
        (
            "stream-open",
            packet(
                1,
                2,
                stream(
                    1,
                    9,
                    StreamKind::Open {
                        session: 5,
                        sealed: Bytes::from_static(&[2; 40]),
                    },
                ),
            ),
        ),
        (
            "stream-reset",
            packet(
                1,
                2,
                stream(1, 9, StreamKind::Reset(ResetReason::PathBroken)),
            ),
        ),
    ]
}

fn mesh_frames() -> Vec<Seed> {
    let messages: Vec<Message> = sample_messages().into_iter().map(|(_, m)| m).collect();
    // A frame prefix announcing 2 MiB (its first byte, 0, is also the cut).
    let too_large = (2u32 << 20).to_be_bytes().to_vec();
    vec![
        seed("mesh_frame", "frames", framed(&messages), &["frame"]),
        seed(
            "mesh_frame",
            "handshake-1",
            first_handshake_message(),
            &["noise"],
        ),
        seed("mesh_frame", "too-large", too_large, &["too-large"]),
    ]
}

fn mesh_messages() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = sample_messages()
        .into_iter()
        .map(|(name, m)| {
            let expect = crate::mesh::kind(&m);
            seed("mesh_message", name, encode(&m), &[expect])
        })
        .collect();
    seeds.push(seed(
        "mesh_message",
        "preamble",
        pc(&Preamble {
            version: PROTOCOL_VERSION,
        }),
        &["preamble"],
    ));
    seeds.push(seed(
        "mesh_message",
        "responder-refuse",
        pc(&ResponderPayload::Refuse(CloseReason::UntrustedKey)),
        &["responder-payload"],
    ));
    seeds.push(seed(
        "mesh_message",
        "hello-cert",
        pc(&Harness::hello(3, 9, true)),
        &["hello"],
    ));
    seeds.push(seed(
        "mesh_message",
        "advert-bare",
        pc(&advert(3, 1, &[(0, 1000)])),
        &["advert"],
    ));
    seeds
}

fn pc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("seed values encode")
}

fn link_handshakes() -> Vec<Seed> {
    let t = "link_handshake";
    let preamble = pc(&Preamble {
        version: PROTOCOL_VERSION,
    });
    let hello = pc(&Harness::hello(1, 4, false));
    let advert_frame = framed(&[Message::Advert(advert(1, 2, &[(0, 1000)]))]);
    let responder_hello = framed(&[Message::Hello(Box::new(Harness::hello(1, 4, false)))]);
    // setup: low 2 bits = mode, bit 2 = refuse, bits 3.. = the hand's key (cast index).
    let hand = |mode: u8| mode | (1 << 3);
    vec![
        seed(
            t,
            "raw-responder-first-message",
            with_setup(0, OpsWriter::new().op(0, &first_handshake_message())),
            &[],
        ),
        seed(
            t,
            "raw-initiator-garbage",
            with_setup(1, OpsWriter::new().op(0, &[0, 4, 1, 2, 3, 4])),
            &["closed"],
        ),
        seed(
            t,
            "hand-initiator-hello-advert",
            with_setup(
                hand(2),
                OpsWriter::new()
                    .op(0, &preamble)
                    .op(0, &hello)
                    .op(0, &advert_frame)
                    .op(2, &[200, 0]),
            ),
            &["identified", "up", "advert"],
        ),
        seed(
            t,
            "hand-initiator-old-version",
            with_setup(
                hand(2),
                OpsWriter::new().op(0, &pc(&Preamble { version: 1 })),
            ),
            &["closed"],
        ),
        seed(
            t,
            "hand-initiator-refused",
            with_setup(hand(2) | 4, OpsWriter::new().op(0, &preamble).op(0, &hello)),
            &["identified", "closed"],
        ),
        seed(
            t,
            "hand-responder-hello",
            with_setup(
                hand(3),
                OpsWriter::new()
                    .op(0, &pc(&ResponderPayload::Continue))
                    .op(0, &responder_hello)
                    .op(0, &advert_frame),
            ),
            &["identified", "up", "advert"],
        ),
        seed(
            t,
            "hand-responder-refuses",
            with_setup(
                hand(3),
                OpsWriter::new().op(
                    0,
                    &pc(&ResponderPayload::Refuse(CloseReason::VersionMismatch {
                        sender: PROTOCOL_VERSION + 1,
                        receiver: PROTOCOL_VERSION,
                    })),
                ),
            ),
            &["closed"],
        ),
        seed(
            t,
            "timeout",
            with_setup(0, OpsWriter::new().op(2, &[0xff, 0xff])),
            &["closed"],
        ),
    ]
}

fn with_setup(setup: u8, ops: OpsWriter) -> Vec<u8> {
    let mut bytes = vec![setup];
    bytes.extend(ops.finish());
    bytes
}

fn lsdb_adverts() -> Vec<Seed> {
    let t = "lsdb_advert";
    // op 2: signer, seq (8 bytes), then (peer, cost/100, pad) triples.
    let advert_op2 = |signer: u8, seq: u8, links: &[(u8, u8)]| {
        let mut data = vec![signer, seq, 0, 0, 0, 0, 0, 0, 0];
        for &(peer, cost) in links {
            data.extend([peer, cost, 0]);
        }
        data
    };
    let ring = OpsWriter::new()
        .op(2, &advert_op2(1, 1, &[(0, 10), (2, 10)]))
        .op(2, &advert_op2(2, 1, &[(1, 10), (6, 10)]))
        .op(2, &advert_op2(6, 1, &[(2, 10), (0, 30)]))
        .op(5, &[]);
    let mut bent = vec![1, 1];
    bent.extend(pc(&advert(2, 5, &[(0, 1000)])));
    let expire = OpsWriter::new()
        .op(2, &advert_op2(1, 1, &[(0, 10)]))
        .op(3, &[0xff, 0x40])
        .op(4, &[]);
    vec![
        seed(t, "ring", with_setup(0xf8, ring), &["stored", "routes"]),
        seed(
            t,
            "bent-advert",
            with_setup(0xf8, OpsWriter::new().op(0, &bent)),
            &["stored"],
        ),
        seed(
            t,
            "expire",
            with_setup(0xf8, expire),
            &["stored", "expired"],
        ),
        seed(
            t,
            "certified-far",
            with_setup(0xf9, OpsWriter::new().op(2, &advert_op2(7, 3, &[(0, 10)]))),
            &["stored"],
        ),
    ]
}

/// mesh_node op 2: speaker, claim, cert, epoch.
fn connect(speaker: u8, claim: u8, cert: u8) -> Vec<u8> {
    vec![speaker, claim, cert, 1, 0, 0, 0, 0, 0, 0, 0]
}

/// mesh_node op 5: link, signer, flags (1 = take the signer's origin), advert.
fn advert_op(link: u8, signer: u8, links: &[(u8, u32)]) -> Vec<u8> {
    let mut data = vec![link, signer, 1];
    data.extend(pc(&advert(signer, 2, links)));
    data
}

fn mesh_nodes() -> Vec<Seed> {
    let t = "mesh_node";
    let two_links = || {
        OpsWriter::new()
            .op(2, &connect(1, 1, 0))
            .op(5, &advert_op(0, 1, &[(0, 1000)]))
            .op(2, &connect(2, 2, 0))
            .op(5, &advert_op(1, 2, &[(0, 1000)]))
    };
    // The frame op takes the framed message's body, not its length prefix.
    let relay_body = relay_frame_body();
    let summary = Message::DbSummary {
        entries: vec![SummaryEntry {
            origin: id("far5"),
            epoch: crate::mesh::EPOCH_MS,
            seq: 4,
        }],
        last: true,
    };
    let mut summary_op = vec![0u8];
    summary_op.extend(encode(&summary));
    vec![
        seed(
            t,
            "two-links-adverts",
            with_setup(0, two_links().op(11, &[2])),
            &[
                "link-up",
                "two-links",
                "adverts-stored",
                "routes",
                "advert",
                "summary",
            ],
        ),
        seed(
            t,
            "relay-stream-open",
            with_setup(0, two_links().op(3, &relay_body)),
            &["two-links", "packet"],
        ),
        seed(
            t,
            "certified-peer",
            // The node's link is up once the peer's first frame proves it took the hello.
            with_setup(
                1,
                OpsWriter::new()
                    .op(2, &connect(3, 3, 1))
                    .op(5, &advert_op(0, 3, &[(0, 1000)])),
            ),
            &["link-up", "hello"],
        ),
        seed(
            t,
            "stranger-refused",
            with_setup(0, OpsWriter::new().op(2, &connect(5, 5, 0))),
            &["link-closed"],
        ),
        seed(
            t,
            "impostor-refused",
            with_setup(0, OpsWriter::new().op(2, &connect(4, 1, 0))),
            &["link-closed"],
        ),
        seed(
            t,
            "raw-http",
            with_setup(
                0,
                OpsWriter::new()
                    .op(0, &[9])
                    .op(1, b"\0GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ),
            &[],
        ),
        seed(
            t,
            "db-sync-request",
            with_setup(
                0,
                OpsWriter::new().op(2, &connect(1, 1, 0)).op(3, &summary_op),
            ),
            &["link-up", "request"],
        ),
        seed(
            t,
            "probe-and-idle",
            with_setup(
                0,
                two_links()
                    .op(8, &[2, 0])
                    .op(6, &[0xdc, 0x05])
                    .op(6, &[0xdc, 0x05])
                    .op(6, &[0xff, 0xff]),
            ),
            &["two-links", "packet", "keepalive", "link-closed"],
        ),
    ]
}

/// Link 0, then a stream open from p1 to p2 (relayed by the node).
fn relay_frame_body() -> Vec<u8> {
    let mut data = vec![0u8];
    data.extend(encode(&packet(
        1,
        2,
        stream(
            1,
            4,
            StreamKind::Open {
                session: 1,
                sealed: Bytes::from_static(&[9; 48]),
            },
        ),
    )));
    data
}

fn mesh_sessions() -> Vec<Seed> {
    let t = "mesh_session";
    let inner = |m: StreamInner| m.encode();
    let open = |number: u8, seq: u8| OpsWriter::new().op(11, &[number, seq]);
    let data = inner(StreamInner::Data(Bytes::from_static(
        b"hello over the circuit",
    )));
    let mut data_op = vec![0u8];
    data_op.extend(&data);
    let mut fin_op = vec![0u8];
    fin_op.extend(inner(StreamInner::Fin));
    let mut raw_open = vec![7u8];
    raw_open.extend(inner(StreamInner::Open {
        from_service: svc("client"),
        service: svc(crate::mesh::SERVICE),
        window: 1 << 16,
        seq: 3,
    }));
    let mut credit_op = vec![0u8];
    credit_op.extend(inner(StreamInner::Credit(1 << 30)));
    vec![
        seed(
            t,
            "open-data-fin",
            open(1, 0).op(1, &data_op).op(1, &fin_op).finish(),
            &["incoming", "credit", "data", "finished", "packet"],
        ),
        seed(
            t,
            "open-sealed-by-hand",
            OpsWriter::new().op(0, &raw_open).finish(),
            &["incoming"],
        ),
        seed(
            t,
            "replayed-open",
            open(1, 0).op(11, &[2, 0]).finish(),
            &["incoming"],
        ),
        seed(
            t,
            "app-sends-and-resets",
            open(1, 0)
                .op(1, &credit_op)
                .op(8, &[0, 0x00, 0x10])
                .op(8, &[0, 1, 0])
                .finish(),
            &["incoming", "packet"],
        ),
        seed(
            t,
            "node-opens-back",
            OpsWriter::new().op(10, &[]).finish(),
            &["opened"],
        ),
        seed(
            t,
            "reset-and-new-session",
            open(1, 0)
                .op(3, &[0, 3])
                .op(9, &[9, 9, 9, 9, 0, 0, 0, 0])
                .op(11, &[2, 0])
                .finish(),
            &["incoming", "reset"],
        ),
        seed(
            t,
            "idle",
            open(1, 0)
                .op(7, &[0xff, 0xff])
                .op(7, &[0xff, 0xff])
                .finish(),
            &["incoming"],
        ),
    ]
}

fn control_requests() -> Vec<Seed> {
    let t = "control_request";
    let lines = |setup: u8, text: &str| {
        let mut bytes = vec![setup];
        bytes.extend_from_slice(text.as_bytes());
        bytes
    };
    vec![
        seed(
            t,
            "text-forms",
            lines(
                13,
                "status\nping node1\ntraceroute node1\nwork list\nwork submit node1 cat -n x\r\n\
                 work results Ab3xYz09 10\nwork force-release Ab3xYz09\nconnect node1 control\nreload\n",
            ),
            &["text"],
        ),
        seed(
            t,
            "json-forms",
            lines(
                13,
                "{\"command\":\"status\",\"requested_fields\":[\"NodeID\"]}\n\
                 {\"command\":\"work\",\"subcommand\":\"submit\",\"node\":\"node1\",\"worktype\":\"ansible-runner\",\"params\":\"--x\",\"ttl\":\"20s\",\"signwork\":\"true\"}\n\
                 {\"command\":\"work\",\"subcommand\":\"results\",\"unitid\":\"Ab3xYz09\",\"startpos\":5}\n\
                 {\"command\":\"deploy\",\"node\":\"localhost\",\"signature\":\"{}\",\"length\":\"10\"}\n\
                 {\"command\":\"connect\",\"node\":\"n\",\"service\":\"s\",\"tls\":\"t\"}\n",
            ),
            &["json"],
        ),
        seed(
            t,
            "too-long",
            lines(0, "work submit node1 cat a very long line past the limit\n"),
            &["too-long"],
        ),
    ]
}

fn work_protocol() -> Vec<Seed> {
    let t = "work_protocol";
    let unit: warren::work::UnitId = "Ab3xYz09".parse().expect("valid unit id");
    let key = SigningKeypair::from_private([0x33; 32]);
    let params = BTreeMap::from([("params".to_owned(), "-n".to_owned())]);
    let (target, submitter) = (id("target"), id("p0"));
    let submission = warren::work::signature::Submission {
        target: &target,
        submitter: &submitter,
        work_type: "cat",
        params: &params,
    };
    let signature = submission.sign(&key, [7; 32], crate::mesh::EPOCH_MS, [1; 16]);
    let requests = vec![
        Request::Submit {
            work_type: "cat".into(),
            params: params.clone(),
            signature: Some(Box::new(signature)),
            follow: Some(0),
            nonce: Some(warren::work::SubmitNonce([5; 16])),
        },
        Request::Results { unit, offset: 42 },
        Request::Status { unit },
        Request::Cancel { unit },
        Request::Release { unit },
    ];
    let status = RemoteStatus {
        state: warren::work::UnitState::Succeeded,
        detail: "exit 0".into(),
        stdout_size: 12,
    };
    let replies = vec![
        Reply::Created { unit },
        Reply::Existing { unit },
        Reply::Started,
        Reply::Status(status.clone()),
        Reply::Ok,
        Reply::Refused(protocol::WorkRefusal::Draining { node: id("target") }),
    ];
    let frames = vec![
        ResultsFrame::Data(Bytes::from_static(b"output\n")),
        ResultsFrame::End(status),
    ];
    vec![
        seed(
            t,
            "requests",
            written(&requests),
            &["request", "signed-submit"],
        ),
        seed(t, "replies", written(&replies), &["reply"]),
        seed(t, "results", written(&frames), &["results"]),
    ]
}

fn written<T: serde::Serialize>(messages: &[T]) -> Vec<u8> {
    crate::runtime().block_on(async {
        let mut out = Vec::new();
        for m in messages {
            protocol::write(&mut out, m)
                .await
                .expect("writes to memory");
        }
        out
    })
}

/// A zip of `(name, content, mode)` files, `(name, target)` symlinks and directories
/// (names ending in `/`), links first, deflated, as Python's zipfile writes one.
fn zip_of(files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // Links first, so that files can be written through them.
    for &(name, target) in links {
        zip.add_symlink(name, target, SimpleFileOptions::default())
            .expect("zip link");
    }
    for &(name, content, mode) in files {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        if name.ends_with('/') {
            zip.add_directory(name, options).expect("zip dir");
        } else {
            zip.start_file(name, options).expect("zip file");
            zip.write_all(content).expect("zip write");
        }
    }
    zip.finish().expect("zip finishes").into_inner()
}

/// A worker stream of `lines` then the zip and eof, as `ansible-runner worker` writes one.
fn worker(lines: &[&str], zip: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(format!("{{\"zipfile\": {}}}\n", zip.len()).as_bytes());
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(zip)
            .as_bytes(),
    );
    out.extend_from_slice(b"{\"eof\": true}\n");
    out
}

fn with_byte(setup: u8, rest: &[u8]) -> Vec<u8> {
    let mut bytes = vec![setup];
    bytes.extend_from_slice(rest);
    bytes
}

const STARTING: &str = r#"{"status": "starting", "runner_ident": "ident", "command": ["ansible-playbook", "test.yml"], "cwd": "/runner/project", "env": {"SECRET": "s"}}"#;
const EVENT: &str = r#"{"uuid": "4f1c0d2e", "counter": 1, "stdout": "\u001b[0;32mok: [localhost]\u001b[0m", "event": "runner_on_ok"}"#;
const OSC_EVENT: &str = r#"{"uuid": "5a", "counter": 2, "stdout": "\u001b]0;pwned\u0007title \u001b[2Jcleared \u009b31m", "event": "verbose"}"#;
const SUCCESSFUL: &str = r#"{"status": "successful", "runner_ident": "ident"}"#;

/// Two megabytes of zeros: a bomb at the small caps (ratio 100:1 over 1 MiB, 256 KiB).
fn zeros() -> Vec<u8> {
    vec![0u8; 2 << 20]
}

fn worker_streams(repo: &Path, real: Option<&[u8]>) -> Vec<Seed> {
    let t = "worker_stream";
    let plain = zip_of(
        &[("rc", b"0", 0o644), ("status", b"successful", 0o644)],
        &[],
    );
    let symlink_swap = zip_of(
        &[("rc", b"0", 0o644)],
        &[("job_events/1-pwn.json", "../../../victim")],
    );
    let slip = zip_of(
        &[("../../../victim", b"pwned", 0o644), ("rc", b"1", 0o644)],
        &[],
    );
    let bomb = zip_of(&[("stdout", &zeros(), 0o644), ("rc", b"0", 0o644)], &[]);
    let pwn_event = r#"{"uuid": "pwn", "counter": 1, "stdout": "x"}"#;
    let mut seeds = vec![
        seed(
            t,
            "small-successful",
            with_byte(
                0,
                &worker(&[STARTING, EVENT, OSC_EVENT, SUCCESSFUL], &plain),
            ),
            &["eof", "events", "rc"],
        ),
        seed(
            t,
            "json-mode",
            with_byte(2, &worker(&[STARTING, EVENT, OSC_EVENT], &plain)),
            &["eof", "events"],
        ),
        seed(
            t,
            "symlink-swap",
            with_byte(
                0,
                &worker(&[STARTING], &symlink_swap)
                    .into_iter()
                    .chain(format!("{pwn_event}\n").into_bytes())
                    .collect::<Vec<u8>>(),
            ),
            &[],
        ),
        seed(
            t,
            "zip-slip",
            with_byte(0, &worker(&[STARTING], &slip)),
            &["bad-artifacts"],
        ),
        seed(
            t,
            "bomb-small-caps",
            with_byte(8, &worker(&[STARTING, SUCCESSFUL], &bomb)),
            &["over-limit"],
        ),
        seed(
            t,
            "event-name-escape",
            with_byte(0, br#"{"uuid": "../../victim", "counter": 1}"#),
            &["error"],
        ),
        seed(
            t,
            "zipfile-over-cap",
            with_byte(8, b"{\"zipfile\": 99999999999}\nAAAA\n{\"eof\": true}\n"),
            &["over-limit"],
        ),
    ];
    if let Some(stream) = real {
        seeds.push(seed(
            t,
            "demo-real",
            with_byte(0, stream),
            &["eof", "events", "rc"],
        ));
        seeds.push(seed(
            t,
            "demo-real-small-caps",
            with_byte(8, stream),
            &["eof", "rc"],
        ));
    }
    if let Some(transmit) = demo_transmit(repo) {
        seeds.push(seed(
            t,
            "demo-transmit-stream",
            with_byte(1, &transmit),
            &["eof"],
        ));
    }
    seeds
}

/// The demo's transmit stream, packed by Warren as `warren run` sends it.
fn demo_transmit(repo: &Path) -> Option<Vec<u8>> {
    use warren::ansible::kwargs::{RunOptions, cli_kwargs};
    let demo = repo.join("examples/demo");
    let options = RunOptions {
        ident: Some("demo".into()),
        playbook: Some("test.yml".into()),
        ..RunOptions::default()
    };
    let kwargs = cli_kwargs(&demo, &options).ok()?;
    crate::runtime().block_on(async {
        let mut out = Vec::new();
        warren::ansible::transmit::transmit(&demo, &kwargs, &mut out)
            .await
            .ok()?;
        Some(out)
    })
}

/// The artifacts zip inside a worker stream.
fn zip_in(stream: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(stream).ok()?;
    let start = text.find("{\"zipfile\": ")?;
    let line_end = start + text[start..].find('\n')?;
    let len: usize = text[start + 12..line_end]
        .trim_end_matches('}')
        .trim()
        .parse()
        .ok()?;
    let encoded_len = len.div_ceil(3) * 4;
    let encoded = &text[line_end + 1..line_end + 1 + encoded_len];
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

fn artifacts(real: Option<&[u8]>) -> Vec<Seed> {
    let t = "artifacts_unpack";
    let mut seeds = vec![
        seed(
            t,
            "files-dirs-modes",
            with_byte(
                0,
                &zip_of(
                    &[
                        ("job_events/", b"", 0o755),
                        ("job_events/1-a.json", b"{}", 0o600),
                        ("fact_cache/", b"", 0o700),
                        ("rc", b"0", 0o4755),
                        ("stdout", b"ok\n", 0o644),
                    ],
                    &[("latest", "stdout")],
                ),
            ),
            &["unpacked"],
        ),
        seed(
            t,
            "slip",
            with_byte(0, &zip_of(&[("../../victim", b"pwned", 0o644)], &[])),
            &["escapes"],
        ),
        seed(
            t,
            "absolute",
            with_byte(
                0,
                &zip_of(&[("/tmp/warren-fuzz-absolute", b"pwned", 0o644)], &[]),
            ),
            &["escapes"],
        ),
        seed(
            t,
            "escaping-link",
            with_byte(0, &zip_of(&[], &[("up", "../../outside")])),
            &["unsafe-symlink"],
        ),
        seed(
            t,
            "link-then-write-through",
            with_byte(0, &zip_of(&[("sub/x", b"pwned", 0o644)], &[("sub", "x")])),
            &[],
        ),
        seed(
            t,
            "bomb",
            with_byte(1, &zip_of(&[("stdout", &zeros(), 0o644)], &[])),
            &["over-limit"],
        ),
    ];
    if let Some(zip) = real.and_then(zip_in) {
        seeds.push(seed(t, "demo-real", with_byte(0, &zip), &["unpacked"]));
    }
    seeds
}

fn configs(repo: &Path) -> Vec<Seed> {
    let t = "config_toml";
    let mut seeds = Vec::new();
    for (name, path) in [
        ("controller", "examples/mesh/controller.toml"),
        ("relay", "examples/mesh/relay.toml"),
        ("node1", "examples/mesh/node1.toml"),
        ("deb-package", "packaging/deb/warren.toml"),
    ] {
        if let Ok(text) = std::fs::read(repo.join(path)) {
            let expect: &[&str] = if name == "deb-package" {
                &[]
            } else {
                &["loaded"]
            };
            seeds.push(seed(t, name, text, expect));
        }
    }
    seeds.push(seed(
        t,
        "every-section",
        EVERY_SECTION.as_bytes().to_vec(),
        &["loaded"],
    ));
    seeds
}

/// A config with every section the module documents.
const EVERY_SECTION: &str = r#"[node]
id = "node1"
data-dir = "/var/lib/warren/node1"
key-file = "node1.key"

[[listen]]
address = "0.0.0.0:8888"
cost = 1.5

[[listen]]
address = "ws://0.0.0.0:8080"

[[peer]]
address = "receptor://relay.example.com:8888"

[[trust]]
key = "x25519:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
node = "relay"

[link-costs]
relay = 2.5

[control]
socket = "/run/warren/control.sock"
permissions = "0660"

[work]
max-running = 4
max-payload-mb = 1024
keep-finished-hours = 24
require-signed = false
drain-on-stop = true

[mesh]
keepalive-seconds = 10
idle-timeout-seconds = 30
rekey-minutes = 60
max-hops = 30

[[work-type]]
name = "cat"
handler = "command"
program = "/bin/cat"
params = "-n"
allow-runtime-params = false
env = ["LANG"]
memory-mb = 64
deadline-seconds = 600
output-mb = 16

[[signer]]
key = "ed25519:sLuIwOn0JLKbqJOZI6PDOo5UwtWQjB3wojRovlYrB98"

[[allow]]
who = "group:controllers"
work-types = ["ansible-runner", "cat"]
control = true
deploy = false

[certificates]
authorities = ["ed25519:sLuIwOn0JLKbqJOZI6PDOo5UwtWQjB3wojRovlYrB98"]

[ansible-runner]
path = "/opt/venv/bin/ansible-runner"
enabled = true
env = ["ANSIBLE_FORCE_COLOR"]
"#;

/// A core wasm module with a `warren-manifest` custom section holding `json`.
fn wasm_with_manifest(json: &str) -> Vec<u8> {
    let name = b"warren-manifest";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(json.as_bytes());
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.push(0);
    leb128(section.len(), &mut wasm);
    wasm.extend(section);
    wasm
}

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn components() -> Vec<Seed> {
    use warren::host::signing::{EmbeddedManifest, Manifest, sign};
    let t = "component_signature";
    let about_json = r#"{"name":"probe","version":"1.2.0","work_types":["command"],"capabilities":{"programs":["ansible-runner"],"env":["ANSIBLE_FORCE_COLOR"]}}"#;
    let component = wasm_with_manifest(about_json);
    let about: EmbeddedManifest = serde_json::from_str(about_json).expect("valid manifest");
    let now = crate::mesh::EPOCH_MS / 1000;
    let manifest = Manifest::for_component(&component, about, now - 10, now + 3600);
    let foreign = sign(&SigningKeypair::from_private([0x77; 32]), manifest.clone());
    let manifest_json = serde_json::to_vec(&manifest).expect("manifest JSON");
    let mut bind = vec![1u8];
    bind.extend(&manifest_json);
    vec![
        seed(
            t,
            "signed-by-its-signer",
            OpsWriter::new()
                .op(1, &component)
                .op(0, foreign.to_json().as_bytes())
                .finish(),
            &["verified"],
        ),
        seed(
            t,
            "manifest-resigned",
            OpsWriter::new().op(1, &component).op(2, &bind).finish(),
            &["verified"],
        ),
        seed(
            t,
            "embedded-manifest",
            OpsWriter::new().op(1, &component).op(3, &[]).finish(),
            &["embedded"],
        ),
        seed(
            t,
            "tampered",
            OpsWriter::new()
                .op(1, b"\0asm\x01\0\0\0")
                .op(0, foreign.to_json().as_bytes())
                .finish(),
            &["refused"],
        ),
    ]
}

fn certificates(repo: &Path) -> Vec<Seed> {
    let t = "ca_armor";
    let ca = crate::mesh::authority();
    let list = RevocationList {
        issuer: ca.public(),
        issued_at_ms: crate::mesh::EPOCH_MS,
        serials: [103, 7].into(),
    }
    .sign(&ca);
    let cert: SignedCertificate = certificate(3);
    let mut seeds = vec![
        seed(
            t,
            "cert-then-revoked",
            OpsWriter::new()
                .op(0, cert.to_armored().as_bytes())
                .op(1, list.to_armored().as_bytes())
                .op(0, cert.to_armored().as_bytes())
                .finish(),
            &["cert-valid", "revoked", "cert-refused"],
        ),
        seed(
            t,
            "bodies-signed",
            OpsWriter::new()
                .op(2, &pc(&cert.cert))
                .op(3, &pc(&list.list))
                .finish(),
            &["cert-valid", "revoked"],
        ),
    ];
    for name in ["controller", "relay", "node1"] {
        let path = repo.join(format!("examples/mesh/certs/{name}.cert"));
        if let Ok(text) = std::fs::read(path) {
            let leaked: &'static str = Box::leak(format!("mesh-{name}").into_boxed_str());
            seeds.push(seed(
                t,
                leaked,
                OpsWriter::new().op(0, &text).finish(),
                &["cert-refused"],
            ));
        }
    }
    seeds
}

fn successions() -> Vec<Seed> {
    use warren::keys::{LinkKeypair, Succession};
    let t = "key_succession";
    let old = crate::targets::pinned();
    let new = LinkKeypair::from_private([42; 32]);
    let next = LinkKeypair::from_private([43; 32]);
    let step = |from: &LinkKeypair, to: &LinkKeypair| {
        Succession::new(from.public(), to.public(), crate::mesh::EPOCH_MS)
            .sign(from, &[9; 64])
            .expect("signs")
    };
    let genuine = step(&old, &new);
    let mut forged = step(&old, &new);
    forged.succession.new = next.public();
    let fork = step(&old, &next);
    vec![
        seed(
            t,
            "file-chain",
            OpsWriter::new()
                .op(
                    0,
                    format!(
                        "# chain\n{}\n{}\n",
                        genuine.to_line(),
                        step(&new, &next).to_line()
                    )
                    .as_bytes(),
                )
                .finish(),
            &["chain-valid", "accepted"],
        ),
        seed(
            t,
            "forged-then-fork",
            OpsWriter::new()
                .op(1, &pc(&forged))
                .op(1, &pc(&genuine))
                .op(2, &pc(&vec![fork]))
                .finish(),
            &["refused", "accepted", "refused"],
        ),
        seed(
            t,
            "bad-line",
            OpsWriter::new()
                .op(0, b"warren-key-succession-v1 !!!\n")
                .finish(),
            &["line-refused"],
        ),
    ]
}

fn terminal() -> Vec<Seed> {
    let t = "terminal_filter";
    let text = |setup: u8, cut: u8, s: &str| {
        let mut bytes = vec![setup, cut];
        bytes.extend_from_slice(s.as_bytes());
        bytes
    };
    vec![
        seed(
            t,
            "colour",
            text(
                0,
                5,
                "\x1b[1;31mred\x1b[0m and \x1b[38;2;1;2;3mtrue colour\x1b[m\n",
            ),
            &["sgr"],
        ),
        seed(
            t,
            "osc-csi-dcs",
            text(
                0,
                9,
                "\x1b]0;title\x07\x1b[2J\x1bP1$r\x1b\\\x1b[6n\u{9b}31m\x1b_apc\x1b\\x",
            ),
            &["dropped"],
        ),
        seed(
            t,
            "one-line",
            text(1, 3, "a\tb\r\nc\x1b[31md"),
            &["dropped"],
        ),
    ]
}
