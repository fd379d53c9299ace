//! The content-addressed submission path on the node, driven over in-memory streams on a
//! paused clock: what a peer that stalls, floods or lies can hold, and for how long.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::io::{DuplexStream, ReadBuf};
use tokio::sync::watch;

use super::pace::{GRACE, IDLE};
use super::*;
use crate::ansible::transmit::manifest::ManifestEntry;
use crate::host::registry::Registry;
use crate::keys::{LinkKeypair, PublicKey};
use crate::mesh::trust::Binding;
use crate::work::cache::{ContentCache, MAX_SESSIONS_PER_SCOPE, PINNED_SHARE};
use crate::work::server::SignedWork;
use crate::work::signature::Verifier;
use crate::work::{UnitState, Work, WorkConfig, WorkSetup};

fn hashed(name: &str, content: &[u8]) -> ManifestEntry {
    ManifestEntry {
        name: name.into(),
        mode: 0o100_644,
        time: (0, 0),
        size: content.len() as u64,
        content: Content::Hashed(Sha256::digest(content).into()),
    }
}

fn manifest(entries: Vec<ManifestEntry>) -> Manifest {
    Manifest {
        kwargs_line: "{}\n".into(),
        entries,
    }
}

/// Puts `content` in `scope`'s part of `cache` (as an earlier submission would have).
fn cached(cache: &Arc<ContentCache>, scope: Scope, content: &[u8]) {
    let mut session = cache.session(scope).unwrap();
    let (temp, _) = session.temp_file().unwrap();
    std::fs::write(temp.path(), content).unwrap();
    let hash: ContentHash = Sha256::digest(content).into();
    session.commit(&hash, temp, content.len() as u64).unwrap();
}

fn scope() -> Scope {
    Scope::of(&PublicKey::from_bytes([3; 32]))
}

#[tokio::test]
async fn each_distinct_content_is_looked_up_and_pinned_once_off_the_async_worker() {
    // Found by an attacker's review: duplicates were found by scanning a Vec for each
    // entry, on the async worker: 200,000 entries over tens of thousands of cached
    // contents blocked it for seconds. A content the node lacked was looked up again for
    // every entry listing it.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    cached(&cache, scope(), b"held");
    let entries = (0..2_000)
        .map(|i| match i % 2 {
            0 => hashed(&format!("project/held{i}"), b"held"),
            _ => hashed(&format!("project/new{i}"), b"new"),
        })
        .collect();
    let session = cache.session(scope()).unwrap();
    let (plan, session) = look_up(manifest(entries), session).await.unwrap();
    assert_eq!(plan.lacking, vec![1], "the lacking content asked for once");
    assert_eq!(plan.lacking_bytes, 3);
    let held = plan.held.iter().filter(|h| matches!(h, Held::File(_)));
    assert_eq!(held.count(), 1_000);
    assert_eq!(
        session.lookups.len(),
        2,
        "one look-up (and pin) per content"
    );
    let here = std::thread::current().id();
    assert!(
        session.lookups.iter().all(|thread| *thread != here),
        "looked up on the async worker"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_that_declares_700_mib_lacking_is_given_up_within_the_grace_and_idle() {
    // Found by an attacker's review: the deadline grew with the sizes the peer declared,
    // 120 s + 1 s per 16 KiB: 700 MiB lacking bought 12.4 h without a byte sent.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let mut session = cache.session(scope()).unwrap();
    let mut big = hashed("project/big", b"never sent");
    big.size = 700 << 20;
    let mut plan = plan(manifest(vec![big]), &HashMap::new());
    assert_eq!(plan.lacking_bytes, 700 << 20);
    // The writing end stays open and silent.
    let (mut stalled, _writer) = tokio::io::duplex(64);
    let started = tokio::time::Instant::now();
    let mut paced = Paced::new(&mut stalled);
    paced.asked();
    let ended = receive(&mut paced, &mut plan, &mut session).await;
    assert!(matches!(ended, Err(ReceiveError::Stream(_))), "{ended:?}");
    assert!(paced.is_behind());
    assert!(started.elapsed() <= GRACE + IDLE, "{:?}", started.elapsed());
    let late = late(&paced).to_string();
    assert!(late.contains("fell behind: 0 bytes"), "{late}");
}

#[tokio::test(start_paused = true)]
async fn a_trickle_under_the_floor_rate_is_given_up_and_one_above_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 64 << 20).unwrap();
    let content = vec![7u8; 4 << 20];
    for (per_second, kept) in [(8 * 1024, false), (32 * 1024, true)] {
        let mut session = cache.session(scope()).unwrap();
        let mut plan = plan(
            manifest(vec![hashed("project/f", &content)]),
            &HashMap::new(),
        );
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        let bytes = content.clone();
        let trickle = tokio::spawn(async move {
            for chunk in bytes.chunks(per_second) {
                if theirs.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let _ = theirs.shutdown().await;
        });
        let mut paced = Paced::new(&mut ours);
        paced.asked();
        let ended = receive(&mut paced, &mut plan, &mut session).await;
        assert_eq!(ended.is_ok(), kept, "{per_second} B/s: {ended:?}");
        assert_eq!(paced.is_behind(), !kept);
        trickle.abort();
    }
}

/// A node `c` serving `cat` with a content cache of `cache_bytes`, and the peer allowed
/// to submit to it.
struct Node {
    server: Arc<Server>,
    cache: Arc<ContentCache>,
    peer: PeerIdentity,
    _data: tempfile::TempDir,
}

fn node(cache_bytes: u64) -> Node {
    let data = tempfile::tempdir().unwrap();
    let mut registry = Registry::default();
    registry.insert(crate::work::tests::command(
        "cat",
        "/bin/cat",
        &[],
        "1.0.0",
        false,
    ));
    let work = Work::open(WorkSetup {
        data_dir: data.path().to_owned(),
        node: crate::id::NodeId::new("c").unwrap(),
        host: crate::work::tests::shared_host(),
        registry: watch::channel(Arc::new(registry)).1,
        config: WorkConfig {
            free_space_floor: 0,
            ..WorkConfig::default()
        },
        mesh: None,
        signing_key: None,
    })
    .unwrap();
    let key = LinkKeypair::from_private([1; 32]).public();
    let policy = AccessPolicy {
        work: vec![format!("cat={key}").parse().unwrap()],
        ..AccessPolicy::default()
    };
    let cache = ContentCache::open(data.path(), cache_bytes).unwrap();
    let server = Arc::new(Server {
        work,
        results_in_flight: watch::channel(0).0,
        access: watch::channel(Arc::new(policy)).1,
        signed: watch::channel(SignedWork::default()).1,
        verifier: Mutex::new(Verifier::new(Vec::new())),
        contents: Some(cache.clone()),
    });
    let peer = PeerIdentity {
        node: crate::id::NodeId::new("a").unwrap(),
        key,
        binding: Binding::FirstSeen,
    };
    Node {
        server,
        cache,
        peer,
        _data: data,
    }
}

fn request() -> SubmitRequest {
    SubmitRequest {
        work_type: "cat".into(),
        params: BTreeMap::new(),
        signature: None,
        follow: None,
        nonce: None,
    }
}

impl Node {
    /// Starts a submission on the node whose peer end is returned (the `SubmitManifest`
    /// request itself already read).
    fn offer(
        &self,
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<Option<(UnitId, Reply)>>,
    ) {
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let (server, peer) = (self.server.clone(), self.peer.clone());
        let task = tokio::spawn(async move {
            let access = server.access.borrow().clone();
            let request = request();
            let taken = server.take_submission(&mut ours, &peer, &access, &request);
            taken.await.ok().flatten()
        });
        (theirs, task)
    }
}

#[tokio::test(start_paused = true)]
async fn offers_that_never_send_their_manifest_lose_their_slots_after_the_grace() {
    // Found by an attacker's review: the session slot was taken before the manifest was
    // read, with no deadline: four offers that sent only their request held the
    // submitter's share of slots for ever, and every later run was sent whole.
    let node = node(64 << 20);
    let stalled: Vec<_> = (0..MAX_SESSIONS_PER_SCOPE).map(|_| node.offer()).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listed = manifest(vec![hashed("project/x", b"good")]);
    let (mut fifth, task) = node.offer();
    protocol::write(&mut fifth, &listed).await.unwrap();
    let reply: Reply = protocol::read(&mut fifth).await.unwrap();
    assert!(
        matches!(reply, Reply::Refused(WorkRefusal::ContentCacheOff { .. })),
        "{reply:?}"
    );
    assert!(task.await.unwrap().is_none());

    tokio::time::sleep(GRACE).await;
    // The stalled offers are given up. The clock runs on from here: making the unit waits
    // on the store's thread, and a paused clock would jump to this offer's own deadline
    // while it waits.
    tokio::time::resume();
    let (mut fifth, task) = node.offer();
    protocol::write(&mut fifth, &listed).await.unwrap();
    let reply: Reply = protocol::read(&mut fifth).await.unwrap();
    assert!(
        matches!(reply, Reply::Lacking { ref lacking, .. } if lacking == &[0]),
        "{reply:?}"
    );
    for (_, stalled) in stalled {
        assert!(stalled.await.unwrap().is_none(), "given up");
    }
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_offer_answered_before_its_manifest_that_never_sends_it_is_given_up_after_the_linger() {
    // Noticed last stop: with the cache busy (or the submission refused), the manifest
    // frame was read away with no deadline, so a peer that sent only its request held
    // the node's task and stream for ever (no session slot, but no end either).
    let node = node(64 << 20);
    let scope = Scope::of(&node.peer.key);
    let busy: Vec<_> = (0..MAX_SESSIONS_PER_SCOPE)
        .map(|_| node.cache.session(scope).unwrap())
        .collect();
    let (silent, task) = node.offer();
    let ended = tokio::time::timeout(REPLY_LINGER + Duration::from_secs(1), task).await;
    let ended = ended.expect("the stalled offer was not given up");
    assert!(ended.unwrap().is_none(), "no unit for a refused offer");
    drop((silent, busy));
}

/// A stream whose peer never grants credit: reads work, writes wait for ever (a mesh
/// stream opened with a window of 0).
struct NoCredit(DuplexStream);

impl AsyncRead for NoCredit {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NoCredit {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_lacking_reply_the_peer_never_takes_fails_the_unit_and_frees_the_slot() {
    // Found by an attacker's review: the `Lacking` reply was written with the pins taken
    // and no deadline; a peer that granted no credit held them for ever.
    let node = node(64 << 20);
    cached(&node.cache, Scope::of(&node.peer.key), b"held");
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let mut ours = NoCredit(ours);
    let listed = manifest(vec![
        hashed("project/held", b"held"),
        hashed("project/x", b"x"),
    ]);
    protocol::write(&mut theirs, &listed).await.unwrap();
    let access = node.server.access.borrow().clone();
    let started = tokio::time::Instant::now();
    let taken = node
        .server
        .take_submission(&mut ours, &node.peer, &access, &request())
        .await;
    assert!(taken.is_err(), "{taken:?}");
    assert!(started.elapsed() <= GRACE + IDLE, "{:?}", started.elapsed());
    let scope = Scope::of(&node.peer.key);
    let sessions: Vec<_> = (0..MAX_SESSIONS_PER_SCOPE)
        .map(|_| node.cache.session(scope).expect("the slot is free"))
        .collect();
    drop(sessions);
    let by = Requester::Operator;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let units = node.server.work.list(&by).await.unwrap();
        assert_eq!(units.len(), 1);
        if units[0].1.state == UnitState::Failed {
            let detail = units[0].1.detail.clone();
            assert!(detail.contains("fell behind"), "{detail}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{units:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_submission_that_would_pin_over_its_scopes_share_is_told_to_send_whole() {
    // Pinned contents cannot be evicted: one submitter must not hold the cache against
    // everyone else.
    let node = node(1 << 20);
    let too_big = vec![1u8; (1 << 20) / PINNED_SHARE as usize + 1];
    let (mut theirs, task) = node.offer();
    protocol::write(
        &mut theirs,
        &manifest(vec![hashed("project/big", &too_big)]),
    )
    .await
    .unwrap();
    let reply: Reply = protocol::read(&mut theirs).await.unwrap();
    assert!(
        matches!(reply, Reply::Refused(WorkRefusal::ContentCacheOff { .. })),
        "{reply:?}"
    );
    assert!(task.await.unwrap().is_none());
    assert!(
        node.server
            .work
            .list(&Requester::Operator)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn a_manifest_of_many_tiny_contents_is_charged_what_they_would_pin_and_told_to_send_whole() {
    // Found by an attacker's review: the reservation counted 1 byte for a 1-byte
    // content that pins 4 KiB of the index once received, so 200,000 tiny files got
    // past the share and evicted every other submitter's contents.
    let node = node(1 << 20);
    let other = Scope::of(&PublicKey::from_bytes([9; 32]));
    cached(&node.cache, other, b"another submitter's playbook");
    // 100 one-byte contents pin 400 KiB: over the 256 KiB share of a 1 MiB cache.
    let tiny: Vec<ManifestEntry> = (0..100u8)
        .map(|n| hashed(&format!("project/{n}"), &[n]))
        .collect();
    let (mut theirs, task) = node.offer();
    protocol::write(&mut theirs, &manifest(tiny)).await.unwrap();
    let reply: Reply = protocol::read(&mut theirs).await.unwrap();
    assert!(
        matches!(reply, Reply::Refused(WorkRefusal::ContentCacheOff { .. })),
        "{reply:?}"
    );
    assert!(task.await.unwrap().is_none());
    let hash: ContentHash = Sha256::digest(b"another submitter's playbook").into();
    assert!(node.cache.session(other).unwrap().hit(&hash).is_some());
}

/// The temp files left in `cache`'s directories.
fn temp_files(cache: &ContentCache) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for scope in std::fs::read_dir(cache.root()).unwrap().flatten() {
        for file in std::fs::read_dir(scope.path()).unwrap().flatten() {
            if file.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(file.path());
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_content_cut_short_leaves_no_temp_file_when_given_up_or_when_dropped() {
    // Found by an attacker's review: the temp file was removed only when receiving
    // failed, not when the deadline dropped the receiving future: every stalled
    // submission left its partial content on disk.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    for given_up in [true, false] {
        let mut session = cache.session(scope()).unwrap();
        let mut plan = plan(
            manifest(vec![hashed("project/ten", b"0123456789")]),
            &HashMap::new(),
        );
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(b"01234").await.unwrap();
        let mut paced = Paced::new(&mut ours);
        paced.asked();
        let receiving = receive(&mut paced, &mut plan, &mut session);
        if given_up {
            let ended = receiving.await;
            assert!(matches!(ended, Err(ReceiveError::Stream(_))), "{ended:?}");
            assert!(paced.is_behind());
        } else {
            // Dropped mid-content, as a shutdown or an outer deadline would.
            let cut = tokio::time::timeout(Duration::from_secs(1), receiving).await;
            assert!(cut.is_err());
        }
        assert_eq!(
            temp_files(&cache),
            Vec::<PathBuf>::new(),
            "given up: {given_up}"
        );
    }
}

#[tokio::test]
async fn a_manifest_listing_one_cached_content_many_times_is_assembled_off_the_async_worker_with_one_stat()
 {
    // Found by an attacker's review: the stream was assembled on the async worker, one
    // `lstat` per entry: 200,000 entries listing one cached content held it for 0.6 s.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    cached(&cache, scope(), b"held");
    let entries = (0..2_000)
        .map(|i| hashed(&format!("project/held{i}"), b"held"))
        .collect();
    let session = cache.session(scope()).unwrap();
    let (plan, _session) = look_up(manifest(entries), session).await.unwrap();
    assert!(plan.lacking.is_empty());
    let transmit = assemble(plan).await.unwrap();
    assert_eq!(transmit.stat_threads.len(), 1, "one stat per distinct file");
    let here = std::thread::current().id();
    assert!(
        transmit.stat_threads.iter().all(|thread| *thread != here),
        "stated on the async worker"
    );
}

#[tokio::test]
async fn a_big_manifest_buys_no_time_for_the_contents_that_follow() {
    // Found by an attacker's review: the manifest's bytes counted toward the pace, so a
    // 32 MiB manifest earned 34 min at the floor, held with one byte every 59 s.
    let node = node(64 << 20);
    let mut entries: Vec<ManifestEntry> = (0..20_000)
        .map(|i| ManifestEntry {
            name: format!("project/{}{i}/", "d".repeat(200)),
            mode: 0o040_755,
            time: (0, 0),
            size: 0,
            content: Content::Dir,
        })
        .collect();
    entries.push(hashed("project/f", &[b'f'; 100]));
    let listed = manifest(entries);
    let started = tokio::time::Instant::now();
    let (mut theirs, task) = node.offer();
    protocol::write(&mut theirs, &listed).await.unwrap();
    let reply: Reply = protocol::read(&mut theirs).await.unwrap();
    assert!(matches!(reply, Reply::Lacking { .. }), "{reply:?}");
    // Paused only now: the unit's creation waits on the store's thread, which a paused
    // clock would not wait for.
    tokio::time::pause();
    let trickle = tokio::spawn(async move {
        loop {
            if theirs.write_all(b"f").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(59)).await;
        }
    });
    let ended = tokio::time::timeout(GRACE + IDLE + Duration::from_secs(1), task).await;
    assert!(ended.is_ok(), "still held at {:?}", started.elapsed());
    trickle.abort();
}
