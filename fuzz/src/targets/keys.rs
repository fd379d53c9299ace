//! Key succession statements (`warren keygen --rotate`): the text lines of a node's
//! `<key>.succession` file and of a peer's `key-successions` store, and the postcard
//! statements and chains peers show in hellos and adverts, judged as a node judges them
//! against a pin of its own.

use std::collections::BTreeSet;

use warren::id::NodeId;
use warren::keys::succession::{SignedSuccession, check_chain, parse_lines};
use warren::keys::{LinkKeypair, PublicKey};
use warren::mesh::succession::Successions;

use super::Reached;
use crate::ops::Ops;

/// The pinned key the seeds' statements start from.
pub fn pinned() -> LinkKeypair {
    LinkKeypair::from_private([41; 32])
}

/// Ops: 0 parses text lines and checks them as a chain; 1 offers one postcard statement,
/// 2 a postcard chain, to a book whose pin for `n1` is [`pinned`].
pub fn key_succession(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let node = NodeId::new("n1").expect("valid id");
    let anchors: Vec<PublicKey> = vec![pinned().public()];
    let mut book = Successions::default();
    for op in Ops::new(data).take(16) {
        let chain = match op.tag % 3 {
            0 => {
                let text = String::from_utf8_lossy(op.data);
                match parse_lines(&text) {
                    Ok(chain) => {
                        reached.push(match check_chain(&chain) {
                            Ok(_) => "chain-valid",
                            Err(_) => "chain-refused",
                        });
                        chain
                    }
                    Err(_) => {
                        reached.push("line-refused");
                        continue;
                    }
                }
            }
            1 => match postcard::from_bytes::<SignedSuccession>(op.data) {
                Ok(statement) => vec![statement],
                Err(_) => continue,
            },
            _ => match postcard::from_bytes::<Vec<SignedSuccession>>(op.data) {
                Ok(chain) => chain,
                Err(_) => continue,
            },
        };
        // Presented under the chain's last key (a hello or an advert of that key): the
        // case where a chain can be accepted at all.
        let Some(presented) = chain.last().map(|s| s.succession.new) else {
            continue;
        };
        let (accepted, refusal) =
            book.learn_chain(&node, &anchors, &BTreeSet::new(), &chain, &presented);
        if !accepted.is_empty() {
            reached.push("accepted");
        }
        if let Some(refusal) = refusal {
            let _ = refusal.to_string();
            reached.push("refused");
        }
        assert!(book.len() <= warren::mesh::succession::MAX_BOOK);
    }
    reached
}
