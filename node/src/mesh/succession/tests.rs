//! The succession book's decisions: what a chain adds, what is refused, and the limits.

use super::*;
use crate::keys::succession::tests::{pair, step};
use crate::keys::{SignatureBytes, Succession};

fn key(b: u8) -> PublicKey {
    pair(b).public()
}

fn node() -> NodeId {
    NodeId::new("node1").unwrap()
}

fn learn(book: &mut Successions, pin: u8, chain: &[SignedSuccession]) -> LearnResult {
    let (accepted, refusal) = learn_as_shown(book, &node(), &[key(pin)], &BTreeSet::new(), chain);
    LearnResult {
        accepted: accepted.len(),
        refusal,
    }
}

/// Learns `chain` as presented with its last key (the pin's key for an empty chain).
fn learn_as_shown(
    book: &mut Successions,
    node: &NodeId,
    pins: &[PublicKey],
    in_use: &BTreeSet<PublicKey>,
    chain: &[SignedSuccession],
) -> (Vec<SignedSuccession>, Option<SuccessionRefusal>) {
    let presented = chain.last().map_or(pins[0], SignedSuccession::new_key);
    book.learn_chain(node, pins, in_use, chain, &presented)
}

#[derive(Debug)]
struct LearnResult {
    accepted: usize,
    refusal: Option<SuccessionRefusal>,
}

#[test]
fn a_chain_from_the_pinned_key_is_accepted_once() {
    let mut book = Successions::default();
    let r = learn(&mut book, 1, &[step(1, 2), step(2, 3)]);
    assert_eq!((r.accepted, r.refusal), (2, None));
    assert_eq!(book.current(&key(1)), key(3));
    assert!(book.is_retired(&key(1)) && book.is_retired(&key(2)));
    assert_eq!(book.path(&key(1)), [key(1), key(2), key(3)]);
    // Replayed: nothing new, nothing refused.
    let r = learn(&mut book, 1, &[step(1, 2), step(2, 3)]);
    assert_eq!((r.accepted, r.refusal), (0, None));
    // An old statement alone, replayed after the chain moved on: nothing changes.
    let r = learn(&mut book, 1, &[step(1, 2)]);
    assert_eq!((r.accepted, r.refusal), (0, None));
    assert_eq!(book.current(&key(1)), key(3));
}

#[test]
fn history_before_the_pin_is_skipped() {
    let mut book = Successions::default();
    // This node pinned key 2 directly; the chain starts at key 1.
    let r = learn(&mut book, 2, &[step(1, 2), step(2, 3)]);
    assert_eq!((r.accepted, r.refusal), (1, None));
    assert_eq!(book.current(&key(2)), key(3));
    assert!(!book.is_retired(&key(1)));
}

#[test]
fn a_forged_statement_is_refused() {
    let mut book = Successions::default();
    let forged = SignedSuccession {
        succession: Succession::new(key(1), key(9), 5),
        signature: SignatureBytes([7; 64]),
    };
    let r = learn(&mut book, 1, &[forged]);
    assert!(
        matches!(
            r.refusal,
            Some(SuccessionRefusal::Invalid(
                SuccessionError::BadSignature { .. }
            ))
        ),
        "{r:?}"
    );
    assert!(book.is_empty());
}

#[test]
fn a_succession_for_another_key_than_the_pin_is_refused() {
    let mut book = Successions::default();
    // node1 is pinned to key 1; the attacker rotates its own key 5.
    let r = learn(&mut book, 1, &[step(5, 6)]);
    assert!(
        matches!(r.refusal, Some(SuccessionRefusal::NotAnchored { .. })),
        "{r:?}"
    );
    assert!(book.is_empty());
}

#[test]
fn a_second_successor_for_a_key_is_a_refused_fork() {
    let mut book = Successions::default();
    learn(&mut book, 1, &[step(1, 2)]);
    // Whoever kept key 1 signs it over to their own key 9.
    let r = learn(&mut book, 1, &[step(1, 9)]);
    assert_eq!(
        r.refusal,
        Some(SuccessionRefusal::Fork {
            old: key(1),
            known: key(2),
            other: key(9)
        })
    );
    assert_eq!(book.current(&key(1)), key(2));
}

#[test]
fn a_chain_returning_to_a_retired_key_is_a_refused_loop() {
    let mut book = Successions::default();
    learn(&mut book, 1, &[step(1, 2)]);
    let r = learn(&mut book, 1, &[step(1, 2), step(2, 1)]);
    assert_eq!(r.refusal, Some(SuccessionRefusal::Loop(key(1))));
    assert_eq!(book.current(&key(1)), key(2));
    // A successor that is another peer's trusted key is refused too.
    let in_use = BTreeSet::from([key(7)]);
    let (accepted, refusal) = learn_as_shown(&mut book, &node(), &[key(1)], &in_use, &[step(2, 7)]);
    assert!(accepted.is_empty());
    assert_eq!(refusal, Some(SuccessionRefusal::Loop(key(7))));
}

#[test]
fn an_oversized_chain_is_refused_unread() {
    let mut book = Successions::default();
    let long: Vec<_> = (1..=MAX_CHAIN as u8 + 1).map(|i| step(i, i + 1)).collect();
    let r = learn(&mut book, 1, &long);
    assert_eq!(
        r.refusal,
        Some(SuccessionError::TooLong(MAX_CHAIN + 1).into())
    );
    assert!(book.is_empty());
}

/// A key pair for any `n` (the `u8` test keys run out).
fn wide_pair(n: u16) -> crate::keys::LinkKeypair {
    let mut private = [0x5a; 32];
    private[8..10].copy_from_slice(&n.to_le_bytes());
    crate::keys::LinkKeypair::from_private(private)
}

/// The statement retiring wide key `a` for wide key `b`.
fn wide_step(a: u16, b: u16) -> SignedSuccession {
    Succession::new(wide_pair(a).public(), wide_pair(b).public(), 1)
        .sign(&wide_pair(a), &[3; 64])
        .unwrap()
}

#[test]
fn one_pin_cannot_fill_the_book_nor_starve_another_pins_rotation() {
    let mut book = Successions::default();
    let attacker = wide_pair(0).public();
    // The pinned attacker presents 520 chains of fresh keys of its own, each from its
    // current key here (more than the whole book used to hold).
    let mut current = 0u16;
    for round in 0..520u16 {
        let mut from = current;
        let chain: Vec<_> = (0..MAX_CHAIN as u16)
            .map(|i| {
                let to = 1 + round * MAX_CHAIN as u16 + i;
                let statement = wide_step(from, to);
                from = to;
                statement
            })
            .collect();
        let (accepted, refusal) =
            learn_as_shown(&mut book, &node(), &[attacker], &BTreeSet::new(), &chain);
        if let Some(last) = accepted.last() {
            current = 1 + round * MAX_CHAIN as u16 + accepted.len() as u16 - 1;
            assert_eq!(last.new_key(), wide_pair(current).public());
        }
        if round > 0 {
            assert!(
                matches!(refusal, Some(SuccessionRefusal::ChainFull { first, .. }) if first == attacker),
                "{refusal:?}"
            );
        }
    }
    // Another pinned node's genuine rotation is still accepted.
    let other = NodeId::new("node2").unwrap();
    let (accepted, refusal) = learn_as_shown(
        &mut book,
        &other,
        &[key(1)],
        &BTreeSet::new(),
        &[step(1, 2)],
    );
    assert_eq!((accepted.len(), refusal), (1, None));
    assert_eq!(book.current(&key(1)), key(2));
    assert_eq!(
        book.len(),
        MAX_CHAIN + 1,
        "the attacker's first chain and node2's"
    );
    assert!(book.path(&attacker).len() <= MAX_CHAIN + 1);
}

#[test]
fn a_stored_chain_longer_than_the_cap_is_restored_trimmed_to_its_oldest_statements() {
    let mut book = Successions::default();
    let mut restore = book.restorer();
    let mut trimmed = 0;
    for k in 0..20u16 {
        match restore.add(wide_step(k, k + 1)) {
            Ok(_) => {}
            Err(SuccessionRefusal::ChainFull { .. }) => trimmed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((book.len(), trimmed), (MAX_CHAIN, 20 - MAX_CHAIN));
    let path = book.path(&wide_pair(0).public());
    assert_eq!(path.len(), MAX_CHAIN + 1);
    assert_eq!(book.current(&wide_pair(0).public()), wide_pair(8).public());
}

#[test]
fn a_node_that_rotates_past_the_cap_is_told_to_be_pinned_by_hand() {
    let mut book = Successions::default();
    // The node rotates MAX_CHAIN times, this node following each rotation.
    for k in 0..MAX_CHAIN as u16 {
        let r = learn_as_shown(
            &mut book,
            &node(),
            &[wide_pair(0).public()],
            &BTreeSet::new(),
            &[wide_step(k, k + 1)],
        );
        assert_eq!((r.0.len(), r.1), (1, None));
    }
    // Once more: it presents its last MAX_CHAIN statements, as a node does.
    let last = MAX_CHAIN as u16 + 1;
    let chain: Vec<_> = (1..last).map(|k| wide_step(k, k + 1)).collect();
    let (accepted, refusal) = learn_as_shown(
        &mut book,
        &node(),
        &[wide_pair(0).public()],
        &BTreeSet::new(),
        &chain,
    );
    assert!(accepted.is_empty());
    let refusal = refusal.unwrap();
    assert_eq!(
        refusal,
        SuccessionRefusal::ChainFull {
            first: wide_pair(0).public(),
            new: wide_pair(last).public()
        }
    );
    assert!(
        refusal
            .to_string()
            .contains(&format!("--trust NODE={}", wide_pair(last).public())),
        "{refusal}"
    );
    assert_eq!(
        book.current(&wide_pair(0).public()),
        wide_pair(MAX_CHAIN as u16).public()
    );
}

#[test]
fn a_chain_that_does_not_end_at_the_presenters_key_is_refused() {
    let mut book = Successions::default();
    // Pinned as key 1, the node signs key 1 over to key 3 (someone else's, public) and
    // shows it under its own key 9.
    let (accepted, refusal) =
        book.learn_chain(&node(), &[key(1)], &BTreeSet::new(), &[step(1, 3)], &key(9));
    assert!(accepted.is_empty());
    assert_eq!(
        refusal,
        Some(SuccessionRefusal::NotPresentersKey {
            presented: key(9),
            last: key(3)
        })
    );
    assert!(book.is_empty());
}

#[test]
fn restore_verifies_and_refuses_forks() {
    let mut book = Successions::default();
    assert_eq!(book.restore(step(1, 2)), Ok(true));
    assert_eq!(book.restore(step(1, 2)), Ok(false));
    assert!(matches!(
        book.restore(step(1, 3)),
        Err(SuccessionRefusal::Fork { .. })
    ));
    let mut bad = step(4, 5);
    bad.succession.new = key(6);
    assert!(book.restore(bad).is_err());
}
