//! The two request protocols a node serves: Receptor's control protocol (lines from a
//! local client, or from a mesh peer allowed to use it) and the node-to-node work protocol.

use std::collections::BTreeMap;

use warren::control::line::{LineEnd, LineReader};
use warren::control::parse_request;
use warren::id::NodeId;
use warren::work::protocol::{self, Reply, Request, ResultsFrame};
use warren::work::signature::{Submission, Verifier, check_payload};

use super::Reached;

/// The input as a control connection: split into lines by the session's own line reader
/// (with a limit the first byte picks), each line parsed. The reader must lose no byte, and
/// every request that parses must survive its client's JSON form (`to_json`) unchanged.
pub fn control_request(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let Some((&setup, input)) = data.split_first() else {
        return reached;
    };
    let max_len = 8usize << (setup % 14);
    let lines = crate::runtime().block_on(read_lines(input, max_len));
    let mut rebuilt = Vec::new();
    let mut too_long = false;
    for (line, end) in &lines {
        match end {
            LineEnd::Newline => {
                rebuilt.extend_from_slice(line);
                rebuilt.push(b'\n');
            }
            LineEnd::Eof => rebuilt.extend_from_slice(line),
            LineEnd::TooLong => {
                too_long = true;
                reached.push("too-long");
                continue;
            }
        }
        match parse_request(line) {
            Ok(request) => {
                let json = request.to_json();
                let again = parse_request(json.as_bytes());
                assert_eq!(
                    again.as_ref(),
                    Ok(&request),
                    "a request must survive its JSON form {json}"
                );
                reached.push(if line.first() == Some(&b'{') {
                    "json"
                } else {
                    "text"
                });
            }
            Err(error) => {
                let _ = error.to_string();
                let _ = error.is_followed_by_unknown_command();
            }
        }
    }
    if !too_long {
        let sent: Vec<u8> = input.iter().copied().filter(|&b| b != b'\r').collect();
        assert_eq!(rebuilt, sent, "the line reader lost or added bytes");
    }
    reached
}

async fn read_lines(input: &[u8], max_len: usize) -> Vec<(Vec<u8>, LineEnd)> {
    let mut reader = LineReader::with_max_len(input, max_len);
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let Ok(end) = reader.read_line(&mut line).await else {
            break;
        };
        let stop = end != LineEnd::Newline;
        if !(end == LineEnd::Eof && line.is_empty()) {
            lines.push((line, end));
        }
        if stop {
            break;
        }
    }
    lines
}

/// The input as a work-protocol stream, read as requests, as replies and as results
/// frames: each message read must write back to one that reads the same; a signed submit
/// is checked as a node requiring signed work does.
pub fn work_protocol(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    crate::runtime().block_on(async {
        for request in read_all::<Request>(data).await {
            if let Request::Submit {
                work_type,
                params,
                signature: Some(signature),
                ..
            } = &request
            {
                check_signature(work_type, params, signature);
                reached.push("signed-submit");
            }
            reached.push("request");
        }
        for reply in read_all::<Reply>(data).await {
            if let Reply::Refused(refusal) = &reply {
                let _ = refusal.to_string();
            }
            reached.push("reply");
        }
        for frame in read_all::<ResultsFrame>(data).await {
            let _ = frame;
            reached.push("results");
        }
    });
    reached
}

/// Every message of type `T` on `data`, each checked to write back to itself.
async fn read_all<T>(data: &[u8]) -> Vec<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut input = data;
    let mut out = Vec::new();
    loop {
        match protocol::read::<T, _>(&mut input).await {
            Ok(message) => {
                let mut written = Vec::new();
                protocol::write(&mut written, &message)
                    .await
                    .expect("writing to memory works");
                let again: T = protocol::read(&mut &written[..])
                    .await
                    .expect("a written message reads back");
                assert_eq!(again, message);
                out.push(message);
            }
            Err(error) => {
                let _ = error.to_string();
                return out;
            }
        }
    }
}

fn check_signature(
    work_type: &str,
    params: &BTreeMap<String, String>,
    signature: &warren::work::signature::WorkSignature,
) {
    let target = NodeId::new("target").expect("valid id");
    let submitter = NodeId::new("p0").expect("valid id");
    let submission = Submission {
        target: &target,
        submitter: &submitter,
        work_type,
        params,
    };
    let mut verifier = Verifier::new(vec![signature.signer]);
    let now = crate::mesh::EPOCH_MS;
    if let Err(error) = verifier.check(&submission, signature, now) {
        let _ = error.to_string();
    }
    let _ = check_payload(signature, &[0; 32]);
}
