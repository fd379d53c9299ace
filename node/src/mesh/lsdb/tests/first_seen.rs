//! First-seen origins (nothing configured here vouches for them) are capped, a pinned
//! origin evicts them instead of being refused as the database is full, and a neighbour's
//! flood of them cannot keep out a newcomer another neighbour brings.

use super::*;

/// `node`'s key pinned to it.
fn pin(node: &str, k: u8) -> TrustPolicy {
    TrustPolicy::from(vec![TrustEntry {
        key: key(k),
        node: Some(id(node)),
    }])
}

/// A database for `me` capped at `max_nodes` origins and `max_first_seen` first-seen ones.
fn limited(now: Instant, max_nodes: usize, max_first_seen: usize) -> Lsdb {
    let limits = LsdbLimits {
        max_nodes,
        max_first_seen,
        ..LsdbLimits::new(AGE)
    };
    let mut db = Lsdb::new(id("me"), key(0), limits);
    db.set_own(now, advert("me", 0, OWN_EPOCH, 5, &[]));
    db
}

/// Sends first-seen origins `fake1..=fake{n}` (keys 1..=n) to `db` under `policy`.
fn flood(db: &mut Lsdb, now: Instant, n: u8, policy: &TrustPolicy) {
    for i in 1..=n {
        let _ = db.handle_advert(now, WALL, advert(&format!("fake{i}"), i, 1, 1, &[]), policy);
    }
}

#[test]
fn a_pinned_origin_is_stored_after_first_seen_origins_filled_the_database() {
    let now = Instant::now();
    let mut db = Lsdb::new(
        id("me"),
        key(0),
        LsdbLimits {
            max_nodes: 10,
            ..LsdbLimits::new(AGE)
        },
    );
    db.set_own(now, advert("me", 0, OWN_EPOCH, 5, &[]));
    let pinned = pin("node1", 99);
    flood(&mut db, now, 30, &pinned);
    assert_eq!(db.len(), 10, "the made-up origins filled the database");
    assert_eq!(
        db.handle_advert(now, WALL, advert("node1", 99, 1, 1, &[]), &pinned),
        AdvertOutcome::Stored,
        "the pinned node is not refused as the database is full"
    );
    assert_eq!(db.len(), 10, "a first-seen origin made room for it");
    assert_eq!(
        db.binding(&id("node1")).unwrap(),
        (key(99), &Binding::Pinned { anchor: key(99) })
    );
    assert!(
        db.get(&id("fake9")).is_none(),
        "the last admitted was evicted"
    );
    assert!(db.get(&id("fake1")).is_some(), "the first admitted stays");
}

#[test]
fn first_seen_origins_are_capped_below_the_node_cap() {
    let now = Instant::now();
    let mut db = limited(now, 100, 5);
    let none = TrustPolicy::default();
    flood(&mut db, now, 5, &none);
    assert_eq!(
        db.handle_advert(now, WALL, advert("fake6", 6, 1, 1, &[]), &none),
        AdvertOutcome::Refused(AdvertRefusal::FirstSeenFull)
    );
    assert_eq!((db.len(), db.first_seen_len()), (6, 5));
    // A stored first-seen origin still refreshes, and a pinned one is still stored.
    assert_eq!(
        db.handle_advert(now, WALL, advert("fake1", 1, 1, 2, &[]), &none),
        AdvertOutcome::Stored
    );
    let pinned = pin("node1", 99);
    assert_eq!(
        db.handle_advert(now, WALL, advert("node1", 99, 1, 1, &[]), &pinned),
        AdvertOutcome::Stored
    );
    assert_eq!((db.len(), db.first_seen_len()), (7, 5));
}

#[test]
fn a_pin_added_by_a_reload_frees_the_origins_first_seen_place() {
    let now = Instant::now();
    let mut db = limited(now, 100, 2);
    let none = TrustPolicy::default();
    flood(&mut db, now, 2, &none);
    assert_eq!(db.first_seen_len(), 2);
    let pinned = pin("fake1", 1);
    assert!(db.rejudge(WALL, &pinned).is_empty());
    assert_eq!(db.first_seen_len(), 1, "fake1 is pinned now");
    assert_eq!(
        db.handle_advert(now, WALL, advert("fake3", 3, 1, 1, &[]), &pinned),
        AdvertOutcome::Stored
    );
    // Expiry frees the places too.
    db.expire(now + AGE);
    assert_eq!((db.len(), db.first_seen_len()), (1, 0));
}

#[test]
fn a_vouched_for_origin_too_large_to_fit_evicts_nothing() {
    let now = Instant::now();
    let none = TrustPolicy::default();
    let fake = advert("fake1", 1, 1, 1, &[]);
    let names: Vec<String> = (0..40).map(|i| format!("peer{i}")).collect();
    let links: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let large = advert("node1", 99, 1, 1, &links);
    let own = limited(now, 100, 10).bytes();
    // Room under the reserve line for the first-seen origin and little more.
    let line = own + encoded_len(&fake) + 8;
    assert!(own + encoded_len(&large) > line);
    let mut db = Lsdb::new(
        id("me"),
        key(0),
        LsdbLimits {
            max_bytes: line * GROWTH_RESERVE / (GROWTH_RESERVE - 1) + 1,
            ..LsdbLimits::new(AGE)
        },
    );
    db.set_own(now, advert("me", 0, OWN_EPOCH, 5, &[]));
    assert_eq!(
        db.handle_advert(now, WALL, fake, &none),
        AdvertOutcome::Stored
    );
    assert_eq!(
        db.handle_advert(now, WALL, large, &pin("node1", 99)),
        AdvertOutcome::Refused(AdvertRefusal::Full)
    );
    assert!(
        db.get(&id("fake1")).is_some(),
        "nothing was evicted in vain"
    );
}

/// Sends first-seen origins `{name}1..={name}{n}` (keys `first..`) to `db` through `via`;
/// returns how many were stored.
fn flood_via(db: &mut Lsdb, now: Instant, via: &str, name: &str, first: u8, n: u8) -> usize {
    let none = TrustPolicy::default();
    (0..n)
        .filter(|i| {
            let advert = advert(&format!("{name}{}", i + 1), first + i, 1, 1, &[]);
            db.handle_advert_via(now, WALL, advert, &none, Some(&id(via))) == AdvertOutcome::Stored
        })
        .count()
}

#[test]
fn a_newcomer_through_another_neighbour_takes_the_place_of_the_floods_latest_origin() {
    let now = Instant::now();
    let mut db = limited(now, 100, 5);
    assert_eq!(flood_via(&mut db, now, "x", "fake", 1, 30), 5);
    assert_eq!(flood_via(&mut db, now, "n1", "new", 100, 1), 1, "stored");
    assert_eq!(db.first_seen_len(), 5);
    assert!(db.get(&id("new1")).is_some());
    assert!(
        db.get(&id("fake5")).is_none(),
        "the flood's latest made room"
    );
    assert!(db.get(&id("fake1")).is_some(), "its first stays");
    // The flooding neighbour cannot take the place back.
    assert_eq!(flood_via(&mut db, now, "x", "more", 150, 30), 0);
    assert!(db.get(&id("new1")).is_some());
}

#[test]
fn two_neighbours_flooding_first_seen_origins_end_with_half_the_places_each() {
    let now = Instant::now();
    let mut db = limited(now, 100, 10);
    assert_eq!(flood_via(&mut db, now, "x", "fake", 1, 40), 10);
    assert_eq!(flood_via(&mut db, now, "y", "other", 100, 40), 5);
    let from = |prefix: &str| {
        db.adverts()
            .filter(|a| a.origin.as_str().starts_with(prefix))
            .count()
    };
    assert_eq!((from("fake"), from("other")), (5, 5));
    // Neither can take the other's places now.
    assert_eq!(flood_via(&mut db, now, "x", "again", 200, 10), 0);
}
