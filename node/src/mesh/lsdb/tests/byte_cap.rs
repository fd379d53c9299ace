//! The database's byte cap: it holds for every advert stored, new origins leave room for
//! known origins' adverts to grow, and an advert that does not grow is always taken.

use super::*;

/// `n` links, to `peer-00`...
fn links(n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("peer-{i:02}"), 1)).collect()
}

fn as_links(links: &[(String, u32)]) -> Vec<(&str, u32)> {
    links.iter().map(|(p, c)| (p.as_str(), *c)).collect()
}

/// A database for `me` holding only its own advert, capped at `max_bytes`.
fn capped(now: Instant, max_bytes: usize) -> Lsdb {
    let limits = LsdbLimits {
        max_bytes,
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

#[test]
fn strangers_filling_the_database_cannot_get_a_known_origins_growing_advert_refused() {
    // An insider floods made-up origins until the database refuses new ones. Before the
    // growth reserve, the next advert of a known origin that had grown by a link was
    // refused too, and that origin expired from the mesh.
    let now = Instant::now();
    let mut db = capped(now, 4096);
    assert_eq!(
        handle(&mut db, now, advert("a", 1, 1, 1, &[])),
        AdvertOutcome::Stored
    );
    let mut strangers = 0u8;
    loop {
        strangers += 1;
        let origin = format!("stranger-{strangers}");
        let flood = advert(&origin, 100 + strangers, 1, 1, &as_links(&links(3)));
        match handle(&mut db, now, flood) {
            AdvertOutcome::Stored => continue,
            refused => {
                assert_eq!(refused, AdvertOutcome::Refused(AdvertRefusal::Full));
                break;
            }
        }
    }
    assert!(strangers > 3, "the flood filled the database");
    let grown = advert("a", 1, 1, 2, &as_links(&links(3)));
    assert_eq!(handle(&mut db, now, grown), AdvertOutcome::Stored);
    assert!(db.bytes() <= 4096);
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
