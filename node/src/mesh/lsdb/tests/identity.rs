//! Who may speak for a node id in the database: a node that rotated its key keeps its id
//! (a fork does not), our own advert under a retired key, successions that do not end at
//! the advert's key, and certificates (a forged one never binds, a revocation still bites).

use super::*;

/// `origin`'s advert under key `k`, carrying `chain`, signed by `k`.
fn rotated(origin: &str, k: u8, seq: u64, chain: Vec<crate::keys::SignedSuccession>) -> Advert {
    let mut a = advert(origin, k, 1, seq, &[]);
    a.successions = chain;
    a.sign(&keys(k), &[0; 64])
}

#[test]
fn a_first_seen_node_that_rotated_keeps_its_id_and_a_fork_does_not() {
    use crate::keys::succession::tests::step;
    let now = Instant::now();
    let mut db = db(&[]);
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    // a rotated 1 -> 2: its advert carries the statement signed by key 1.
    assert_eq!(
        handle(&mut db, now, rotated("a", 2, 2, vec![step(1, 2)])),
        AdvertOutcome::Stored
    );
    assert_eq!(db.get(&id("a")).unwrap().key, key(2));
    // A late copy of its advert under the retired key is from before the rotation.
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 9, &[])),
        AdvertOutcome::Ignored
    );
    // Whoever kept key 1 signs it over to key 3: the stored key is 2 now, so no chain
    // leads there, and the id is not taken.
    assert!(matches!(
        handle(&mut db, now, rotated("a", 3, 10, vec![step(1, 3)])),
        AdvertOutcome::DuplicateId { .. }
    ));
    // A statement not signed by the retired key does not carry another key in either.
    let mut forged = step(2, 4);
    forged.succession.new = key(5);
    assert!(matches!(
        handle(&mut db, now, rotated("a", 5, 11, vec![forged])),
        AdvertOutcome::DuplicateId { .. }
    ));
    assert_eq!(db.get(&id("a")).unwrap().key, key(2));
}

#[test]
fn our_own_advert_under_a_retired_key_is_not_a_duplicate() {
    let mut db = db(&[]);
    db.set_key(key(7), [key(0)]);
    assert_eq!(
        handle(&mut db, Instant::now(), advert("me", 0, OWN_EPOCH, 4, &[])),
        AdvertOutcome::Ignored
    );
    assert!(matches!(
        handle(&mut db, Instant::now(), advert("me", 8, OWN_EPOCH, 4, &[])),
        AdvertOutcome::DuplicateOfMe { .. }
    ));
}

#[test]
fn adverts_with_a_chain_not_ending_at_their_key_are_misshapen() {
    use crate::keys::succession::tests::step;
    let mut db = db(&[]);
    assert_eq!(
        handle(
            &mut db,
            Instant::now(),
            rotated("a", 3, 1, vec![step(1, 2)])
        ),
        AdvertOutcome::Refused(AdvertRefusal::Shape(ShapeError::SuccessionMismatch))
    );
}

#[test]
fn a_forged_certificate_riding_on_a_trusted_key_never_becomes_a_certified_binding() {
    // The origin's key is trusted by itself, so its first advert is stored although the
    // certificate it carries (claiming the `admin` group) has a forged signature. Its next
    // advert with the same certificate must not be taken as certified on the strength of
    // the first: that certificate never passed a check.
    let now = Instant::now();
    let ca = SigningKeypair::from_private([9; 32]);
    let policy = TrustPolicy {
        entries: vec![TrustEntry {
            key: key(1),
            node: None,
        }],
        authorities: Authorities::new([ca.public()]),
        successions: Default::default(),
    };
    let mut forged = cert_for(&ca, "w1", 1, 7, &["admin"]);
    forged.cert.groups.push("root".parse().unwrap());
    let mut db = db(&[]);
    for seq in 1..=3 {
        let outcome = db.handle_advert(now, WALL, with_cert("w1", 1, seq, &forged), &policy);
        assert_eq!(outcome, AdvertOutcome::Stored);
        assert_eq!(
            db.binding(&id("w1")).unwrap().1,
            &Binding::TrustedKey,
            "advert {seq}"
        );
    }
}

#[test]
fn a_certified_origin_stays_certified_and_a_revocation_still_bites_on_its_next_advert() {
    let now = Instant::now();
    let ca = SigningKeypair::from_private([9; 32]);
    let mut policy = TrustPolicy {
        entries: Vec::new(),
        authorities: Authorities::new([ca.public()]),
        successions: Default::default(),
    };
    let cert = cert_for(&ca, "w1", 1, 3, &["ops"]);
    let mut db = db(&[]);
    for seq in 1..=2 {
        let outcome = db.handle_advert(now, WALL, with_cert("w1", 1, seq, &cert), &policy);
        assert_eq!(outcome, AdvertOutcome::Stored);
        assert!(matches!(
            db.binding(&id("w1")).unwrap().1,
            Binding::Certified { serial: 3, groups } if groups.len() == 1
        ));
    }
    let list = crate::ca::RevocationList {
        issuer: ca.public(),
        issued_at_ms: 1,
        serials: [3].into(),
    }
    .sign(&ca);
    policy.authorities.revoke(&list).unwrap();
    assert!(matches!(
        db.handle_advert(now, WALL, with_cert("w1", 1, 3, &cert), &policy),
        AdvertOutcome::Refused(AdvertRefusal::Untrusted(TrustDecision::BadCertificate(
            CertError::Revoked { serial: 3 }
        )))
    ));
    // Expiry is judged again too.
    let later = WALL * 2;
    policy.authorities = Authorities::new([ca.public()]);
    assert!(matches!(
        db.handle_advert(now, later, with_cert("w1", 1, 4, &cert), &policy),
        AdvertOutcome::Refused(AdvertRefusal::Untrusted(TrustDecision::BadCertificate(
            CertError::Expired { serial: 3, .. }
        )))
    ));
}
