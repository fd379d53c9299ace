use super::*;
use crate::ca::{Authorities, CERT_VERSION, CertError, Certificate, SignedCertificate};
use crate::keys::SignatureBytes;
use crate::keys::{LinkKeypair, SigningKeypair};
use crate::mesh::advert::AdvertLink;
use crate::mesh::advert::tests::signed;
use crate::mesh::route::Cost;
use crate::mesh::trust::TrustEntry;
use proptest::prelude::*;
use proptest::sample::Index;

const AGE: Duration = Duration::from_secs(60);
const OWN_EPOCH: u64 = 100;
/// Wall-clock "now" of the tests: well after every epoch used.
const WALL: u64 = 1_000_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn keys(b: u8) -> LinkKeypair {
    LinkKeypair::from_private([b; 32])
}

fn key(b: u8) -> PublicKey {
    keys(b).public()
}

fn advert(origin: &str, k: u8, epoch: u64, seq: u64, links: &[(&str, u32)]) -> Advert {
    signed(origin, &keys(k), epoch, seq, links)
}

fn open() -> TrustPolicy {
    TrustPolicy::default()
}

/// A database for `me` (key 0) holding its own advert with links to `links`.
fn db(links: &[(&str, u32)]) -> Lsdb {
    let mut db = Lsdb::new(id("me"), key(0), LsdbLimits::new(AGE));
    db.set_own(Instant::now(), advert("me", 0, OWN_EPOCH, 5, links));
    db
}

fn handle(db: &mut Lsdb, now: Instant, a: Advert) -> AdvertOutcome {
    db.handle_advert(now, WALL, a, &open())
}

#[test]
fn stores_newer_and_ignores_same_or_older() {
    let now = Instant::now();
    let mut db = db(&[]);
    let outcome = |db: &mut Lsdb, epoch, seq| handle(db, now, advert("a", 1, epoch, seq, &[]));
    assert_eq!(outcome(&mut db, 1, 5), AdvertOutcome::Stored);
    assert_eq!(outcome(&mut db, 1, 5), AdvertOutcome::Ignored);
    assert_eq!(outcome(&mut db, 1, 4), AdvertOutcome::Ignored);
    assert_eq!(outcome(&mut db, 1, 6), AdvertOutcome::Stored);
    assert_eq!(outcome(&mut db, 0, 99), AdvertOutcome::Ignored);
    // A restart starts a new epoch with a low seq, and wins.
    assert_eq!(outcome(&mut db, 2, 0), AdvertOutcome::Stored);
    let stored = db.get(&id("a")).unwrap();
    assert_eq!((stored.epoch, stored.seq), (2, 0));
    assert_eq!(db.len(), 2);
}

#[test]
fn refuses_a_forged_advert_for_a_known_node_with_its_key_and_a_huge_epoch() {
    // The attack: a leaf re-sends node1's advert with node1's key and u64::MAX epoch.
    let now = Instant::now();
    let mut db = db(&[]);
    assert_eq!(
        handle(&mut db, now, advert("node1", 1, 5, 1, &[])),
        AdvertOutcome::Stored
    );
    let mut forged = advert("node1", 1, 5, 1, &[]);
    forged.epoch = u64::MAX;
    assert_eq!(
        handle(&mut db, now, forged.clone()),
        AdvertOutcome::Refused(AdvertRefusal::FutureEpoch { epoch: u64::MAX })
    );
    forged.epoch = WALL;
    assert_eq!(
        handle(&mut db, now, forged),
        AdvertOutcome::Refused(AdvertRefusal::BadSignature)
    );
    assert_eq!(db.get(&id("node1")).unwrap().epoch, 5);
}

#[test]
fn refuses_an_epoch_from_the_far_future_even_when_signed() {
    let mut db = db(&[]);
    let far = WALL + MAX_CLOCK_SKEW.as_millis() as u64 + 1;
    assert!(matches!(
        handle(&mut db, Instant::now(), advert("a", 1, far, 1, &[])),
        AdvertOutcome::Refused(AdvertRefusal::FutureEpoch { .. })
    ));
    let near = WALL + 1000;
    assert_eq!(
        handle(&mut db, Instant::now(), advert("a", 1, near, 1, &[])),
        AdvertOutcome::Stored
    );
}

#[test]
fn another_key_cannot_take_a_live_id_unless_a_pin_vouches_for_it() {
    let now = Instant::now();
    let mut db = db(&[]);
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    let expected = AdvertOutcome::DuplicateId {
        id: id("a"),
        known: key(1),
        other: key(2),
    };
    assert_eq!(handle(&mut db, now, advert("a", 2, 1, 1, &[])), expected);
    assert_eq!(handle(&mut db, now, advert("a", 2, 9, 9, &[])), expected);
    assert_eq!(db.get(&id("a")).unwrap().key, key(1));
    // A pin for key 2 outranks a first-seen key 1.
    let pinned = TrustPolicy {
        entries: vec![TrustEntry {
            key: key(2),
            node: Some(id("a")),
        }],
        authorities: Authorities::default(),
        successions: Default::default(),
    };
    assert_eq!(
        db.handle_advert(now, WALL, advert("a", 2, 9, 9, &[]), &pinned),
        AdvertOutcome::Stored
    );
    assert_eq!(
        db.binding(&id("a")).unwrap(),
        (key(2), &Binding::Pinned { anchor: key(2) })
    );
    // And a pinned id refuses any other key outright.
    assert!(matches!(
        db.handle_advert(now, WALL, advert("a", 1, 10, 1, &[]), &pinned),
        AdvertOutcome::Refused(AdvertRefusal::Untrusted(TrustDecision::IdPinnedToOtherKey))
    ));
}

#[test]
fn with_an_authority_only_certified_nodes_are_stored() {
    let now = Instant::now();
    let ca = SigningKeypair::from_private([9; 32]);
    let policy = TrustPolicy {
        entries: Vec::new(),
        authorities: Authorities::new([ca.public()]),
        successions: Default::default(),
    };
    let mut db = db(&[]);
    assert!(matches!(
        db.handle_advert(now, WALL, advert("w1", 1, 1, 1, &[]), &policy),
        AdvertOutcome::Refused(AdvertRefusal::Untrusted(TrustDecision::Untrusted))
    ));
    let certified = with_cert("w1", 1, 1, &cert_for(&ca, "w1", 1, 1, &[]));
    assert_eq!(
        db.handle_advert(now, WALL, certified, &policy),
        AdvertOutcome::Stored
    );
    assert!(matches!(
        db.binding(&id("w1")).unwrap().1,
        Binding::Certified { serial: 1, .. }
    ));
}

#[test]
fn a_revocation_applied_by_rejudging_removes_the_revoked_node_only() {
    let now = Instant::now();
    let ca = SigningKeypair::from_private([9; 32]);
    let mut policy = TrustPolicy {
        entries: Vec::new(),
        authorities: Authorities::new([ca.public()]),
        successions: Default::default(),
    };
    let mut db = db(&[]);
    for (name, k, serial) in [("w1", 1, 1), ("w2", 2, 2)] {
        let certified = with_cert(name, k, 1, &cert_for(&ca, name, k, serial, &[]));
        assert_eq!(
            db.handle_advert(now, WALL, certified, &policy),
            AdvertOutcome::Stored
        );
    }
    let list = crate::ca::RevocationList {
        issuer: ca.public(),
        issued_at_ms: 1,
        serials: [2].into(),
    }
    .sign(&ca);
    policy.authorities.revoke(&list).unwrap();
    assert_eq!(db.rejudge(WALL, &policy), [id("w2")]);
    assert!(db.get(&id("w2")).is_none());
    assert!(db.get(&id("w1")).is_some());
    assert!(db.get(&id("me")).is_some(), "our own advert stays");
    assert!(db.next_expiry().is_some(), "w1 still expires");
}

#[test]
fn caps_the_number_of_nodes_and_the_rate_of_one_origin() {
    let now = Instant::now();
    let mut db = Lsdb::new(
        id("me"),
        key(0),
        LsdbLimits {
            max_nodes: 3,
            ..LsdbLimits::new(AGE)
        },
    );
    db.set_own(now, advert("me", 0, OWN_EPOCH, 1, &[]));
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    assert_eq!(
        handle(&mut db, now, advert("b", 2, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    assert_eq!(
        handle(&mut db, now, advert("c", 3, 1, 1, &[])),
        AdvertOutcome::Refused(AdvertRefusal::Full)
    );
    // One origin re-advertising in a tight loop is cut off after its burst...
    let mut stored = 0;
    let mut limited = 0;
    for seq in 2..200 {
        match handle(&mut db, now, advert("a", 1, 1, seq, &[])) {
            AdvertOutcome::Stored => stored += 1,
            AdvertOutcome::Refused(AdvertRefusal::RateLimited) => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stored, RATE_BURST as usize - 1);
    assert_eq!(limited, 198 - stored);
    // ... and may go on at the sustained rate.
    let later = now + RATE_REFILL;
    assert_eq!(
        handle(&mut db, later, advert("a", 1, 1, 500, &[])),
        AdvertOutcome::Stored
    );
}

#[test]
fn summaries_name_what_a_neighbour_lacks() {
    let now = Instant::now();
    let mut ours = db(&[]);
    handle(&mut ours, now, advert("a", 1, 1, 5, &[]));
    handle(&mut ours, now, advert("b", 2, 1, 1, &[]));
    let mut theirs = Lsdb::new(id("x"), key(7), LsdbLimits::new(AGE));
    theirs.set_own(now, advert("x", 7, 1, 1, &[]));
    theirs.handle_advert(now, WALL, advert("a", 1, 1, 3, &[]), &open());
    let summary = ours.summary();
    let lacking: Vec<&NodeId> = theirs.lacking(&summary);
    assert_eq!(lacking, vec![&id("a"), &id("b"), &id("me")]);
    assert!(ours.lacking(&ours.summary()).is_empty());
    // Another version of our own advert is worth a look (a duplicate of us, or our past).
    let mut odd = ours.summary();
    odd.retain(|e| e.origin == id("me"));
    odd[0].seq += 1;
    assert_eq!(ours.lacking(&odd), vec![&id("me")]);
}

#[test]
fn expires_after_max_age_unless_refreshed() {
    let t0 = Instant::now();
    let secs = |s| t0 + Duration::from_secs(s);
    let mut db = db(&[]);
    assert_eq!(db.next_expiry(), None, "our own advert never expires");
    handle(&mut db, t0, advert("a", 1, 1, 1, &[]));
    handle(&mut db, secs(10), advert("b", 2, 1, 1, &[]));
    assert_eq!(db.next_expiry(), Some(t0 + AGE));
    // Hearing the same advert again does not refresh it; a newer one does.
    assert_eq!(
        handle(&mut db, secs(30), advert("a", 1, 1, 1, &[])),
        AdvertOutcome::Ignored
    );
    assert_eq!(db.next_expiry(), Some(t0 + AGE));
    handle(&mut db, secs(30), advert("a", 1, 1, 2, &[]));
    assert_eq!(db.next_expiry(), Some(secs(10) + AGE));

    assert!(
        db.expire(secs(10) + AGE - Duration::from_nanos(1))
            .is_empty()
    );
    assert_eq!(db.expire(secs(10) + AGE), [id("b")]);
    assert_eq!(db.next_expiry(), Some(secs(30) + AGE));
    assert_eq!(db.expire(secs(1000)), [id("a")]);
    assert_eq!(db.next_expiry(), None);
    assert_eq!(
        db.adverts().map(|a| &a.origin).collect::<Vec<_>>(),
        [&id("me")]
    );
    assert_eq!(db.bytes(), encoded_len(db.get(&id("me")).unwrap()));
}

#[test]
fn detects_duplicate_of_me_by_key_only_when_signed() {
    let mut db = db(&[]);
    let outcome = handle(&mut db, Instant::now(), advert("me", 9, 1, 1, &[]));
    assert_eq!(outcome, AdvertOutcome::DuplicateOfMe { key: key(9) });
    let mut unsigned = advert("me", 9, 1, 1, &[]);
    unsigned.seq = 2;
    assert_eq!(
        handle(&mut db, Instant::now(), unsigned),
        AdvertOutcome::Refused(AdvertRefusal::BadSignature)
    );
    assert_eq!(db.get(&id("me")).unwrap().key, key(0));
}

#[test]
fn detects_duplicate_of_me_by_newer_epoch() {
    let mut db = db(&[]);
    let outcome = handle(
        &mut db,
        Instant::now(),
        advert("me", 0, OWN_EPOCH + 1, 0, &[]),
    );
    assert_eq!(outcome, AdvertOutcome::DuplicateOfMe { key: key(0) });
    assert_eq!(db.get(&id("me")).unwrap().epoch, OWN_EPOCH);
}

#[test]
fn reports_own_stale_seq_from_earlier_life() {
    let now = Instant::now();
    let mut db = db(&[]);
    let own = |epoch, seq| advert("me", 0, epoch, seq, &[]);
    assert_eq!(
        handle(&mut db, now, own(OWN_EPOCH, 7)),
        AdvertOutcome::OwnStale { seq: 7 }
    );
    assert_eq!(
        handle(&mut db, now, own(OWN_EPOCH, 5)),
        AdvertOutcome::Ignored
    );
    assert_eq!(
        handle(&mut db, now, own(OWN_EPOCH - 1, 50)),
        AdvertOutcome::Ignored
    );
    assert_eq!(db.get(&id("me")).unwrap().seq, 5);
}

#[test]
fn accepts_new_key_once_old_advert_expired() {
    let t0 = Instant::now();
    let mut db = db(&[]);
    handle(&mut db, t0, advert("a", 1, 5, 5, &[]));
    // Expired but not yet purged: the new key takes over, even with an older epoch.
    let later = t0 + AGE;
    assert_eq!(
        handle(&mut db, later, advert("a", 2, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    assert_eq!(db.get(&id("a")).unwrap().key, key(2));
    assert!(db.expire(later).is_empty(), "old deadline was dropped");
    assert_eq!(db.next_expiry(), Some(later + AGE));
}

#[test]
fn topology_uses_only_links_both_ends_advertise() {
    let now = Instant::now();
    let mut db = db(&[("a", 1000), ("b", 1000), ("dead", 1000)]);
    handle(
        &mut db,
        now,
        advert("a", 1, 1, 1, &[("c", 1000), ("me", 3000)]),
    );
    handle(&mut db, now, advert("b", 2, 1, 1, &[]));
    // A dead node's stale advert: its neighbours no longer list it.
    handle(
        &mut db,
        now,
        advert("dead", 3, 1, 1, &[("b", 1000), ("me", 1000)]),
    );
    let mut only_me_a = Topology::new();
    let cost = Cost::from_millis;
    only_me_a.add_link(&id("me"), &id("a"), cost(3000));
    only_me_a.add_link(&id("me"), &id("dead"), cost(1000));
    assert_eq!(db.topology(), only_me_a);

    // Once we drop our link to it, the dead node is unreachable though still stored.
    db.set_own(
        now,
        advert("me", 0, OWN_EPOCH, 6, &[("a", 1000), ("b", 1000)]),
    );
    assert_eq!(db.reachable(), BTreeSet::from([id("me"), id("a")]));
    handle(&mut db, now, advert("c", 4, 1, 1, &[("a", 1000)]));
    assert_eq!(db.reachable(), BTreeSet::from([id("me"), id("a"), id("c")]));
    assert!(db.get(&id("dead")).is_some());
}

const NAMES: [&str; 5] = ["me", "o1", "o2", "o3", "o4"];

/// Adverts from `NAMES` (origin i always has key i, so index 0 is us), at most one per
/// (origin, epoch, seq) as a real origin never reuses a version for other content.
fn arb_adverts() -> impl Strategy<Value = Vec<Advert>> {
    let links = proptest::collection::btree_map(0..NAMES.len(), 1u32..4, 0..4);
    let one = (0..NAMES.len(), 0u64..3, 0u64..4, links);
    proptest::collection::vec(one, 0..24).prop_map(|raw| {
        let mut by_version = BTreeMap::new();
        for (origin, epoch, seq, links) in raw {
            by_version.entry((origin, epoch, seq)).or_insert(links);
        }
        by_version
            .into_iter()
            .map(|((origin, epoch, seq), links)| {
                let links: Vec<_> = links.into_iter().map(|(p, c)| (NAMES[p], c)).collect();
                let k = u8::try_from(origin).unwrap();
                advert(NAMES[origin], k, epoch, seq, &links)
            })
            .collect()
    })
}

fn apply(adverts: impl IntoIterator<Item = Advert>, now: Instant) -> Lsdb {
    let mut db = Lsdb::new(id("me"), key(0), LsdbLimits::new(AGE));
    db.set_own(
        now,
        advert("me", 0, 1, 1, &[("o1", 1), ("o2", 2), ("o3", 3)]),
    );
    for a in adverts {
        db.handle_advert(now, WALL, a, &open());
    }
    db
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn same_database_whatever_the_order(
        (adverts, mut mixed) in arb_adverts()
            .prop_flat_map(|a| (Just(a.clone()), Just(a).prop_shuffle())),
        repeats in proptest::collection::vec((any::<Index>(), any::<Index>()), 0..12),
    ) {
        if !adverts.is_empty() {
            for (which, at) in &repeats {
                let again = which.get(&adverts).clone();
                mixed.insert(at.index(mixed.len() + 1), again);
            }
        }
        let now = Instant::now();
        let sorted = apply(adverts.clone(), now);
        let shuffled = apply(mixed, now);
        prop_assert!(sorted.adverts().eq(shuffled.adverts()));
        prop_assert_eq!(sorted.topology(), shuffled.topology());
        // And what is stored is each other origin's newest advert.
        for name in &NAMES[1..] {
            let newest = adverts
                .iter()
                .filter(|a| a.origin.as_str() == *name)
                .max_by_key(|a| (a.epoch, a.seq));
            prop_assert_eq!(sorted.get(&id(name)), newest);
        }
    }
}

#[test]
fn a_known_origins_next_advert_is_still_checked_against_its_signature() {
    // The origin's key is kept ready from its first advert; a later advert under that key
    // with a signature that does not verify is refused all the same.
    let now = Instant::now();
    let mut db = db(&[]);
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    let mut tampered = advert("a", 1, 1, 2, &[]);
    tampered.links.push(AdvertLink {
        peer: id("evil"),
        cost: Cost::DEFAULT,
    });
    assert_eq!(
        handle(&mut db, now, tampered),
        AdvertOutcome::Refused(AdvertRefusal::BadSignature)
    );
    assert_eq!(db.get(&id("a")).unwrap().seq, 1);
}

#[test]
fn an_origin_out_of_tokens_is_refused_before_its_signature_is_checked() {
    // Once an origin has spent its burst, its next adverts cost a count, not a signature
    // check: a bad signature then reads as rate-limited.
    let now = Instant::now();
    let mut db = db(&[]);
    for seq in 1..=u64::from(RATE_BURST) {
        assert_eq!(
            handle(&mut db, now, advert("a", 1, 1, seq, &[])),
            AdvertOutcome::Stored
        );
    }
    let mut bad = advert("a", 1, 1, 100, &[]);
    bad.signature = SignatureBytes([7; 64]);
    assert_eq!(
        handle(&mut db, now, bad.clone()),
        AdvertOutcome::Refused(AdvertRefusal::RateLimited)
    );
    // Once tokens are back, the same advert is judged on its signature.
    assert_eq!(
        handle(&mut db, now + RATE_REFILL, bad),
        AdvertOutcome::Refused(AdvertRefusal::BadSignature)
    );
}

/// A certificate for `node` (key `k`) in `groups`, issued by `ca`.
fn cert_for(
    ca: &SigningKeypair,
    node: &str,
    k: u8,
    serial: u64,
    groups: &[&str],
) -> SignedCertificate {
    Certificate {
        version: CERT_VERSION,
        serial,
        node: id(node),
        key: key(k),
        groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
        not_before_ms: 0,
        not_after_ms: WALL * 2,
        issuer: ca.public(),
    }
    .sign(ca)
}

/// `origin`'s advert (key `k`) at `seq`, carrying `cert`.
fn with_cert(origin: &str, k: u8, seq: u64, cert: &SignedCertificate) -> Advert {
    let mut advert = advert(origin, k, 1, seq, &[]);
    advert.cert = Some(Box::new(cert.clone()));
    advert.sign(&keys(k), &[0; 64])
}

mod byte_cap;
mod first_seen;
mod identity;
