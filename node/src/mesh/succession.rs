//! Which key successions this node has accepted, and whether to accept more.
//!
//! A node pins a peer's key (`--trust NODE=TOKEN`). When that peer rotates its key
//! (`warren keygen --rotate`), it shows the chain of statements signed by each retired key
//! in its hellos and adverts. This book records the statements accepted here — each one
//! anchored to a pin of this node at the time, checked with the key already trusted — so
//! that the pin resolves to the peer's current key and the retired keys are refused from
//! then on. Exactly one successor per key: a second, different statement for a key (a fork,
//! made by whoever else holds the old private key) is refused.
//!
//! The book only ever extends pins: a statement for a key nothing here pins is refused, and
//! with the pin removed from the config its recorded successions vouch for nothing. The
//! daemon persists accepted statements (see `mesh::driver`) so they outlive a restart. No
//! IO.
//!
//! One chain holds at most [`MAX_CHAIN`] statements, so that one pinned peer cannot fill
//! the book with keys of its own making: every statement accepted lies on a pin's chain, so
//! the book holds at most `MAX_CHAIN` per pin. A node rotates rarely, and carries only its
//! last `MAX_CHAIN` statements itself; a pin whose chain is full follows no further rotation
//! (the refusal names the key to pin by hand), and a chain read back longer than that (a
//! book of an older version) keeps its oldest statements, which still lead from the pin.

use std::collections::{BTreeMap, BTreeSet};

use crate::id::NodeId;
use crate::keys::PublicKey;
use crate::keys::succession::{MAX_CHAIN, SignedSuccession, SuccessionError};

/// Most statements a book holds: far more than the rotations of every pinned peer, and a
/// bound on memory whatever peers send.
pub const MAX_BOOK: usize = 4096;

/// Why a presented succession was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessionRefusal {
    /// The statement does not hold up on its own (forged, unknown version, same key).
    #[error(transparent)]
    Invalid(#[from] SuccessionError),
    /// No pin for the node names the chain's keys: a succession for a node whose pin is a
    /// different key (or that nothing here pins).
    #[error("node {node}'s pinned key {pinned} is not in the presented key succession")]
    NotAnchored {
        /// The node presenting it.
        node: NodeId,
        /// The key pinned here (resolved through accepted successions).
        pinned: PublicKey,
    },
    /// Another successor was already accepted for the key: someone else holds the old key.
    #[error(
        "second, different successor for {old}: {known} was accepted, {other} is refused \
         (someone else may hold the retired key)"
    )]
    Fork {
        /// The retired key.
        old: PublicKey,
        /// Its accepted successor.
        known: PublicKey,
        /// The successor now claimed.
        other: PublicKey,
    },
    /// The new key is a retired key, or one already trusted for something else.
    #[error("successor {0} is a retired key or already trusted here (a loop)")]
    Loop(PublicKey),
    /// The book is full.
    #[error("the key succession book is full ({MAX_BOOK} statements)")]
    Full,
    /// The chain through the statement's old key already holds [`MAX_CHAIN`] statements.
    #[error(
        "the key succession chain from {first} already holds {MAX_CHAIN} statements: no \
         further rotation of that node is followed; to trust its new key {new}, pin it \
         by hand (`--trust NODE={new}`)"
    )]
    ChainFull {
        /// The chain's oldest key.
        first: PublicKey,
        /// The successor refused.
        new: PublicKey,
    },
    /// The chain does not end at the key its presenter proved it holds (the link's
    /// handshake key, or the key that signed the advert).
    #[error(
        "the presented key succession ends at {last}, not at the presenter's own key {presented}"
    )]
    NotPresentersKey {
        /// The key the presenter proved it holds.
        presented: PublicKey,
        /// The chain's last key.
        last: PublicKey,
    },
    /// A successor in the chain already speaks for another node here.
    #[error("successor {key} already speaks for node {other} here (pinned or certified for it)")]
    KeyOfOtherNode {
        /// The successor refused.
        key: PublicKey,
        /// The node the key speaks for.
        other: NodeId,
    },
}

/// Accepted successions, by retired key.
///
/// Invariants: no key is the successor of two keys, no chain loops, and no chain holds more
/// than [`MAX_CHAIN`] statements, so walking a chain takes at most `MAX_CHAIN` steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Successions {
    by_old: BTreeMap<PublicKey, SignedSuccession>,
    /// The key each successor retired (the reverse of `by_old`).
    by_new: BTreeMap<PublicKey, PublicKey>,
}

impl Successions {
    /// Whether nothing was accepted.
    pub fn is_empty(&self) -> bool {
        self.by_old.is_empty()
    }

    /// Number of accepted statements.
    pub fn len(&self) -> usize {
        self.by_old.len()
    }

    /// Every accepted statement, by retired key.
    pub fn iter(&self) -> impl Iterator<Item = &SignedSuccession> {
        self.by_old.values()
    }

    /// The keys from `pinned` to its current successor, `pinned` first, current last: at
    /// most `MAX_CHAIN + 1` keys, found in as many look-ups.
    pub fn path(&self, pinned: &PublicKey) -> Vec<PublicKey> {
        let mut path = vec![*pinned];
        let mut key = *pinned;
        while let Some(next) = self.by_old.get(&key).map(SignedSuccession::new_key) {
            if path.len() > MAX_CHAIN {
                break;
            }
            path.push(next);
            key = next;
        }
        path
    }

    /// The oldest key of the chain through `key`, and how many statements lead to `key`.
    fn first_of(&self, key: &PublicKey) -> (PublicKey, usize) {
        let (mut first, mut steps) = (*key, 0);
        while let Some(older) = self.by_new.get(&first) {
            if steps > MAX_CHAIN {
                break;
            }
            first = *older;
            steps += 1;
        }
        (first, steps)
    }

    /// The current key of a peer pinned as `pinned`.
    pub fn current(&self, pinned: &PublicKey) -> PublicKey {
        self.path(pinned).last().copied().unwrap_or(*pinned)
    }

    /// Whether `key` was retired here.
    pub fn is_retired(&self, key: &PublicKey) -> bool {
        self.by_old.contains_key(key)
    }

    /// Adds a statement read back from this node's own store: verified, and refused when it
    /// would fork or loop, but not anchored (pins are applied when deciding).
    ///
    /// # Errors
    /// The [`SuccessionRefusal`].
    pub fn restore(&mut self, statement: SignedSuccession) -> Result<bool, SuccessionRefusal> {
        statement.verify()?;
        self.insert(statement, &BTreeSet::new())
    }

    /// A [`Restore`] reading a stored book (in the order it was written) into this one.
    pub fn restorer(&mut self) -> Restore<'_> {
        Restore {
            book: self,
            cut: BTreeMap::new(),
        }
    }

    /// Adds every statement of `other` this book lacks (a reload keeps what was learned).
    pub fn merge(&mut self, other: &Self) {
        for statement in other.iter() {
            let _ = self.insert(statement.clone(), &BTreeSet::new());
        }
    }

    /// Records a verified statement; `Ok(false)` when it was already known.
    fn insert(
        &mut self,
        statement: SignedSuccession,
        in_use: &BTreeSet<PublicKey>,
    ) -> Result<bool, SuccessionRefusal> {
        let (old, new) = (statement.old(), statement.new_key());
        if let Some(known) = self.by_old.get(&old) {
            if *known == statement {
                return Ok(false);
            }
            return Err(SuccessionRefusal::Fork {
                old,
                known: known.new_key(),
                other: new,
            });
        }
        let taken = self.by_new.contains_key(&new);
        if taken || self.by_old.contains_key(&new) || in_use.contains(&new) {
            return Err(SuccessionRefusal::Loop(new));
        }
        // `new` retires nothing (checked above), so the chain grows by one at its end.
        let (first, before) = self.first_of(&old);
        if before >= MAX_CHAIN {
            return Err(SuccessionRefusal::ChainFull { first, new });
        }
        if self.by_old.len() >= MAX_BOOK {
            return Err(SuccessionRefusal::Full);
        }
        self.by_old.insert(old, statement);
        self.by_new.insert(new, old);
        Ok(true)
    }

    /// Judges the chain `node` presents (oldest first) with `presented`, the key it proved
    /// it holds, against `pins`, the keys this node pins for `node`, and `in_use`, every key
    /// trusted here for anything (no successor may be one of them). The chain must end at
    /// `presented`. Statements before the one retiring the pinned (current) key are history
    /// this node does not need; from there on each must connect, verify and not fork or
    /// loop. Returns the statements newly accepted (to persist and log) and the refusal
    /// that stopped it, if any.
    pub fn learn_chain(
        &mut self,
        node: &NodeId,
        pins: &[PublicKey],
        in_use: &BTreeSet<PublicKey>,
        chain: &[SignedSuccession],
        presented: &PublicKey,
    ) -> (Vec<SignedSuccession>, Option<SuccessionRefusal>) {
        let mut accepted = Vec::new();
        if chain.len() > MAX_CHAIN {
            return (accepted, Some(SuccessionError::TooLong(chain.len()).into()));
        }
        if let Some(last) = chain.last().map(SignedSuccession::new_key)
            && last != *presented
        {
            let presented = *presented;
            let refusal = SuccessionRefusal::NotPresentersKey { presented, last };
            return (accepted, Some(refusal));
        }
        if let Some(refusal) = self.find_fork(chain) {
            return (accepted, Some(refusal));
        }
        let currents: Vec<PublicKey> = pins.iter().map(|p| self.current(p)).collect();
        let Some(start) = chain.iter().position(|s| currents.contains(&s.old())) else {
            if chain.iter().all(|s| self.by_old.get(&s.old()) == Some(s)) {
                return (accepted, None);
            }
            let pinned = currents.first().copied();
            let refusal = pinned.map(|pinned| SuccessionRefusal::NotAnchored {
                node: node.clone(),
                pinned,
            });
            return (accepted, refusal);
        };
        let mut current = chain[start].old();
        for statement in &chain[start..] {
            if statement.old() != current {
                let broken = SuccessionError::Broken(current).into();
                return (accepted, Some(broken));
            }
            if let Err(e) = statement.verify() {
                return (accepted, Some(e.into()));
            }
            match self.insert(statement.clone(), in_use) {
                Ok(true) => accepted.push(statement.clone()),
                Ok(false) => {}
                Err(refusal) => return (accepted, Some(refusal)),
            }
            current = statement.new_key();
        }
        (accepted, None)
    }

    /// A statement of `chain` that contradicts one accepted here (a genuine one is a fork;
    /// a forged one says so).
    fn find_fork(&self, chain: &[SignedSuccession]) -> Option<SuccessionRefusal> {
        let statement = chain
            .iter()
            .find(|s| self.by_old.get(&s.old()).is_some_and(|known| known != *s))?;
        if let Err(e) = statement.verify() {
            return Some(e.into());
        }
        let known = self.by_old.get(&statement.old())?;
        Some(SuccessionRefusal::Fork {
            old: statement.old(),
            known: known.new_key(),
            other: statement.new_key(),
        })
    }
}

/// Reads a stored book back, statement by statement ([`Successions::restore`]), trimming a
/// chain longer than [`MAX_CHAIN`] (a book of an older version) to its oldest statements:
/// those beyond the limit are refused with [`SuccessionRefusal::ChainFull`], and so are the
/// statements that continue from them.
#[derive(Debug)]
pub struct Restore<'a> {
    book: &'a mut Successions,
    /// The successors of trimmed statements, with the first key of their chain.
    cut: BTreeMap<PublicKey, PublicKey>,
}

impl Restore<'_> {
    /// Adds the next stored statement; `Ok(false)` when it was already known.
    ///
    /// # Errors
    /// The [`SuccessionRefusal`]: `ChainFull` for a statement trimmed.
    pub fn add(&mut self, statement: SignedSuccession) -> Result<bool, SuccessionRefusal> {
        let new = statement.new_key();
        if let Some(&first) = self.cut.get(&statement.old()) {
            self.cut.insert(new, first);
            return Err(SuccessionRefusal::ChainFull { first, new });
        }
        let restored = self.book.restore(statement);
        if let Err(SuccessionRefusal::ChainFull { first, .. }) = &restored {
            self.cut.insert(new, *first);
        }
        restored
    }
}

#[cfg(test)]
mod tests;
