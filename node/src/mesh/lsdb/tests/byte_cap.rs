//! The database's byte cap: it holds for every advert stored, new origins leave room for
//! known origins' adverts to grow, and an advert that does not grow is always taken.

use super::*;

/// `n` links, to `peer-00`...
fn links(n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("peer-{i:03}"), 1)).collect()
}

fn as_links(links: &[(String, u32)]) -> Vec<(&str, u32)> {
    links.iter().map(|(p, c)| (p.as_str(), *c)).collect()
}

/// A database for `me` holding only its own advert, capped at `max_bytes`.
fn capped(now: Instant, max_bytes: usize) -> Lsdb {
    capped_to(now, max_bytes, LsdbLimits::new(AGE).max_nodes)
}

/// A database for `me` holding only its own advert, capped at `max_bytes` and `max_nodes`.
fn capped_to(now: Instant, max_bytes: usize, max_nodes: usize) -> Lsdb {
    let limits = LsdbLimits {
        max_bytes,
        max_nodes,
        ..LsdbLimits::new(AGE)
    };
    let mut db = Lsdb::new(id("me"), key(0), limits);
    db.set_own(now, advert("me", 0, OWN_EPOCH, 5, &[]));
    db
}

#[test]
fn a_known_origin_cannot_grow_the_database_past_its_byte_cap() {
    // Found by the lsdb_advert fuzz target: the cap was checked only for new origins, so an
    // origin admitted with a small advert could replace it with a large one past the cap.
    let now = Instant::now();
    let small = advert("a", 1, 1, 1, &[]);
    let large = advert("a", 1, 1, 2, &as_links(&links(40)));
    let own = capped(now, usize::MAX).bytes();
    let (small_len, large_len) = (encoded_len(&small), encoded_len(&large));
    let cap = (own + small_len) * 8 / 7 + 8;
    assert!(own + large_len > cap);
    let mut db = capped(now, cap);
    assert_eq!(handle(&mut db, now, small), AdvertOutcome::Stored);
    assert_eq!(
        handle(&mut db, now, large),
        AdvertOutcome::Refused(AdvertRefusal::Full)
    );
    assert!(db.bytes() <= cap);
    assert_eq!(db.get(&id("a")).unwrap().seq, 1, "the stored advert stays");
}

/// The byte cap of the reserve tests, and their node cap: the reserve (an eighth, 8 KiB)
/// gives each of 64 origins 128 bytes, room for a few more links.
const RESERVE_CAP: usize = 64 << 10;
const RESERVE_NODES: usize = 64;

/// Links in each stranger's first advert: enough that strangers reach the reserve line
/// before the node cap.
fn flood_links() -> usize {
    let bare = encoded_len(&advert("stranger-00", 100, 1, 1, &[]));
    let per_link = encoded_len(&advert("stranger-00", 100, 1, 1, &as_links(&links(1)))) - bare;
    let line = RESERVE_CAP - RESERVE_CAP / 8;
    (line / (RESERVE_NODES - 8) - bare) / per_link + 1
}

/// Floods made-up origins until the database refuses a new one; returns the strangers
/// stored.
fn flood_strangers(db: &mut Lsdb, now: Instant) -> Vec<String> {
    let mut strangers = Vec::new();
    loop {
        let origin = format!("stranger-{:02}", strangers.len());
        let seed = u8::try_from(100 + strangers.len()).unwrap();
        let flood = advert(&origin, seed, 1, 1, &as_links(&links(flood_links())));
        match handle(db, now, flood) {
            AdvertOutcome::Stored => strangers.push(origin),
            refused => {
                assert_eq!(refused, AdvertOutcome::Refused(AdvertRefusal::Full));
                return strangers;
            }
        }
    }
}

/// A reserve-capped database holding the known origin `a` (two links), then flooded with
/// strangers until it refuses a new one; returns it and the strangers stored.
fn known_then_flooded(now: Instant) -> (Lsdb, Vec<String>) {
    let mut db = capped_to(now, RESERVE_CAP, RESERVE_NODES);
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 1, &as_links(&links(2)))),
        AdvertOutcome::Stored
    );
    let strangers = flood_strangers(&mut db, now);
    (db, strangers)
}

#[test]
fn strangers_filling_the_database_cannot_get_a_known_origins_growing_advert_refused() {
    // An insider floods made-up origins until the database refuses new ones. Before the
    // growth reserve, the next advert of a known origin that had grown by a link was
    // refused too, and that origin expired from the mesh.
    let now = Instant::now();
    let (mut db, strangers) = known_then_flooded(now);
    assert!(strangers.len() > 3, "the flood filled the database");
    let grown = advert("a", 1, 1, 2, &as_links(&links(3)));
    assert_eq!(handle(&mut db, now, grown), AdvertOutcome::Stored);
    assert!(db.bytes() <= RESERVE_CAP);
}

#[test]
fn strangers_growing_into_the_reserve_cannot_use_up_a_known_origins_share_of_it() {
    // The reserve taken in two steps: made-up origins fill the database to the line, then
    // each grows, one link per advert, until the database refuses. Before each origin had
    // its own share of the reserve, they used it all up, and a known node's next advert,
    // grown by one link, was refused.
    let now = Instant::now();
    let (mut db, strangers) = known_then_flooded(now);
    let mut grown = 0;
    for (i, origin) in strangers.iter().enumerate() {
        let seed = u8::try_from(100 + i).unwrap();
        for seq in 2..19 {
            let n = flood_links() + usize::try_from(seq).unwrap();
            let growth = advert(origin, seed, 1, seq, &as_links(&links(n)));
            match handle(&mut db, now, growth) {
                AdvertOutcome::Stored => grown += 1,
                refused => {
                    assert_eq!(refused, AdvertOutcome::Refused(AdvertRefusal::Full));
                    break;
                }
            }
        }
    }
    assert!(
        grown > strangers.len(),
        "the strangers grew into the reserve"
    );
    let a_grown = advert("a", 1, 1, 2, &as_links(&links(3)));
    assert_eq!(handle(&mut db, now, a_grown), AdvertOutcome::Stored);
    assert!(db.bytes() <= RESERVE_CAP);
}

#[test]
fn an_advert_that_does_not_grow_is_taken_even_when_our_own_has_passed_the_cap() {
    // Our own advert is never refused: when it grows it may push the total past the cap.
    // A known origin's same-sized refresh must still be taken, or every origin would
    // expire from the mesh within one advert age.
    let now = Instant::now();
    let a = advert("a", 1, 1, 1, &[]);
    let own = capped(now, usize::MAX).bytes();
    let cap = (own + encoded_len(&a)) * 8 / 7 + 8;
    let mut db = capped(now, cap);
    assert_eq!(handle(&mut db, now, a), AdvertOutcome::Stored);
    db.set_own(now, advert("me", 0, OWN_EPOCH, 6, &as_links(&links(10))));
    assert!(db.bytes() > cap, "our own advert passed the cap");
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 2, &[])),
        AdvertOutcome::Stored
    );
    assert_eq!(db.get(&id("a")).unwrap().seq, 2);
}
