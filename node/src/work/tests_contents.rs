//! Content-addressed submissions between real mesh nodes in one process: clients `a` and
//! `d` (another identity) submit to `c`, whose `cat` work type echoes the payload it was
//! given, so the test sees exactly the transmit stream `c` assembled.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::cache::ContentCache;
use super::client::{ClientError, WorkClient};
use super::protocol::WorkRefusal;
use super::server::ServerSetup;
use super::tests_remote::{id, trusting_mesh_config};
use super::{Requester, UnitState, Work, WorkConfig, WorkSetup};
use crate::access::AccessPolicy;
use crate::ansible::kwargs::{Kwargs, RunOptions, cli_kwargs};
use crate::ansible::transmit::ContentPlan;
use crate::ansible::transmit::manifest::{Content, Manifest, ManifestEntry};
use crate::host::registry::Registry;
use crate::keys::LinkKeypair;
use crate::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;

fn mesh_config(name: &str, n: u8) -> MeshConfig {
    trusting_mesh_config(name, n, &[1, 3, 4])
}

/// The node that runs the work, its clients, and where its data lives.
struct Nodes {
    a: MeshHandle,
    d: MeshHandle,
    c: Work,
    data: tempfile::TempDir,
    /// Keep c's mesh and registry alive for the test.
    _keep: (MeshHandle, watch::Sender<Arc<Registry>>),
}

/// `c` (content cache of `cache_bytes`, payloads up to `max_payload`) with clients `a`
/// and `d`, both allowed to run `cat`.
async fn nodes(cache_bytes: u64, max_payload: u64) -> Nodes {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (c_mesh, _) = driver::start(
        mesh_config("c", 3),
        DriverConfig::default(),
        vec![(listener, Cost::DEFAULT)],
        vec![],
    );
    let dial = || PeerTarget {
        host: "127.0.0.1".into(),
        port,
        cost: Cost::DEFAULT,
    };
    let client = |name: &str, n| {
        driver::start(
            mesh_config(name, n),
            DriverConfig::default(),
            vec![],
            vec![dial()],
        )
        .0
    };
    let (a, d) = (client("a", 1), client("d", 4));
    for mesh in [&a, &d] {
        assert!(
            mesh.wait_reachable(&id("c"), Duration::from_secs(10))
                .await
                .unwrap()
        );
    }
    let data = tempfile::tempdir().unwrap();
    let mut registry = Registry::default();
    registry.insert(super::tests::command(
        "cat",
        "/bin/cat",
        &[],
        "1.0.0",
        false,
    ));
    let (keep, rx) = watch::channel(Arc::new(registry));
    let c = Work::open(WorkSetup {
        data_dir: data.path().to_owned(),
        node: id("c"),
        host: super::tests::shared_host(),
        registry: rx,
        config: WorkConfig {
            max_payload,
            free_space_floor: 0,
            ..WorkConfig::default()
        },
        mesh: Some(c_mesh.clone()),
        signing_key: None,
    })
    .unwrap();
    let allow = |k: u8| format!("cat={}", LinkKeypair::from_private([k; 32]).public());
    let policy = AccessPolicy {
        work: vec![allow(1).parse().unwrap(), allow(4).parse().unwrap()],
        ..AccessPolicy::default()
    };
    let contents = (cache_bytes > 0).then(|| ContentCache::open(data.path(), cache_bytes).unwrap());
    super::server::serve(
        c.clone(),
        &c_mesh,
        ServerSetup {
            access: watch::channel(Arc::new(policy)).1,
            signed: watch::channel(super::server::SignedWork::default()).1,
            contents,
        },
    );
    Nodes {
        a,
        d,
        c,
        data,
        _keep: (c_mesh, keep),
    }
}

fn kwargs(dir: &Path) -> Kwargs {
    let options = RunOptions {
        ident: Some("t".into()),
        playbook: Some("test.yml".into()),
        ..RunOptions::default()
    };
    cli_kwargs(dir, &options).unwrap()
}

/// A private data dir: a project file, a big file, and a password under env/.
fn private_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("project/roles")).unwrap();
    std::fs::create_dir_all(dir.path().join("env")).unwrap();
    std::fs::write(dir.path().join("project/test.yml"), "- hosts: all\n").unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(dir.path().join("project/big.bin"), big).unwrap();
    std::fs::write(dir.path().join("project/copy.bin"), "same").unwrap();
    std::fs::write(dir.path().join("project/roles/also.bin"), "same").unwrap();
    std::fs::write(dir.path().join("env/password"), "hunter2-never-cached").unwrap();
    dir
}

/// The content plan of the private data dir `pdd` for the demo's kwargs.
async fn plan_of(pdd: &Path) -> ContentPlan {
    ContentPlan::prepare(pdd, &kwargs(pdd)).await.unwrap()
}

/// What a run of `plan` did: the lacking list, the bytes sent, and the unit's echo.
struct Ran {
    lacking: Vec<u32>,
    sent: u64,
    result: Result<(super::UnitId, super::protocol::RemoteStatus), ClientError>,
    output: Vec<u8>,
}

async fn run(mesh: &MeshHandle, plan: ContentPlan) -> Ran {
    let client = WorkClient::new(mesh.clone());
    let offered = client
        .offer_manifest(
            &id("c"),
            ("cat".into(), Default::default()),
            plan.manifest(),
        )
        .await
        .unwrap();
    let lacking = offered.lacking.clone();
    let indices = plan.to_send(&lacking);
    let sent = plan.send_len(&indices);
    let (mut rx, tx) = tokio::io::duplex(64 * 1024);
    let mut output = Vec::new();
    let (_, result) = tokio::join!(
        plan.send(indices, tx),
        client.finish_offer(offered, &mut rx, &mut output)
    );
    Ran {
        lacking,
        sent,
        result,
        output,
    }
}

/// The files of the zip in a transmit stream, after checking its lines.
fn unzip(stream: &[u8], kwargs_line: &str) -> Vec<(String, Vec<u8>)> {
    let text = std::str::from_utf8(stream).unwrap();
    let rest = text
        .strip_prefix(kwargs_line)
        .expect("the kwargs line first");
    let (head, rest) = rest.split_once('\n').unwrap();
    let len: usize = head
        .strip_prefix("{\"zipfile\": ")
        .and_then(|h| h.strip_suffix('}'))
        .unwrap()
        .parse()
        .unwrap();
    let encoded = rest.strip_suffix("{\"eof\": true}\n").expect("eof last");
    let zip = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(zip.len(), len);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).unwrap();
            (file.name().unwrap().to_string(), bytes)
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_submission_sends_only_inline_bytes_and_the_node_assembles_the_same_stream() {
    let nodes = nodes(64 << 20, 1 << 30).await;
    let pdd = private_data_dir();
    let first = run(&nodes.a, plan_of(pdd.path()).await).await;
    let (unit, status) = first.result.as_ref().unwrap();
    assert_eq!(status.state, UnitState::Succeeded, "{status:?}");
    // Everything but the duplicate "same" and the inline password was asked for.
    assert_eq!(first.lacking.len(), 3, "{:?}", first.lacking);
    let kwargs_line = kwargs(pdd.path()).to_line();
    let files = unzip(&first.output, &kwargs_line);
    let disk = |name: &str| std::fs::read(pdd.path().join(name)).unwrap();
    for (name, bytes) in &files {
        if !name.ends_with('/') {
            assert_eq!(bytes, &disk(name), "{name}");
        }
    }
    assert!(files.iter().any(|(n, _)| n == "env/password"));
    assert!(files.iter().any(|(n, _)| n == "project/roles/also.bin"));
    nodes
        .c
        .release(*unit, true, &Requester::Operator)
        .await
        .unwrap();

    let second = run(&nodes.a, plan_of(pdd.path()).await).await;
    assert!(second.lacking.is_empty(), "{:?}", second.lacking);
    assert_eq!(second.sent, "hunter2-never-cached".len() as u64);
    assert_eq!(
        second.output, first.output,
        "the same stream, byte for byte"
    );

    // The password is nowhere in the cache; the big file is.
    let cached = files_under(&nodes.data.path().join("content-cache"));
    assert!(
        cached
            .iter()
            .any(|p| std::fs::metadata(p).unwrap().len() == 3 << 20)
    );
    for path in cached {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "{}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identity_gets_no_cache_hit() {
    let nodes = nodes(64 << 20, 1 << 30).await;
    let pdd = private_data_dir();
    let mine = run(&nodes.a, plan_of(pdd.path()).await).await;
    assert!(mine.result.is_ok());
    let theirs = run(&nodes.d, plan_of(pdd.path()).await).await;
    assert_eq!(
        theirs.lacking, mine.lacking,
        "d must send everything a sent"
    );
    assert!(theirs.sent > 3 << 20);
    assert_eq!(theirs.output, mine.output);
}

/// A manifest of one file `name` with the hash of `claimed`.
fn one_file(name: &str, claimed: &[u8], size: u64) -> Manifest {
    use sha2::Digest;
    Manifest {
        kwargs_line: "{}\n".into(),
        entries: vec![ManifestEntry {
            name: name.into(),
            mode: 0o100_644,
            time: (0, 0),
            size,
            content: Content::Hashed(sha2::Sha256::digest(claimed).into()),
        }],
    }
}

async fn offer(mesh: &MeshHandle, manifest: &Manifest, bytes: &[u8]) -> Result<(), ClientError> {
    let client = WorkClient::new(mesh.clone());
    let offered = client
        .offer_manifest(&id("c"), ("cat".into(), Default::default()), manifest)
        .await?;
    let mut sink = Vec::new();
    client
        .finish_offer(offered, &mut &bytes[..], &mut sink)
        .await
        .map(drop)
}

fn manifest_refusal(result: Result<(), ClientError>) -> String {
    match result {
        Err(ClientError::Refused(WorkRefusal::Manifest { reason, .. })) => reason,
        other => panic!("not a manifest refusal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_that_does_not_match_its_hash_is_refused_and_not_cached() {
    let nodes = nodes(64 << 20, 1 << 30).await;
    let manifest = one_file("project/x", b"good", 4);
    let reason = manifest_refusal(offer(&nodes.a, &manifest, b"evil").await);
    assert!(
        reason.contains("project/x") && reason.contains("SHA-256"),
        "{reason}"
    );
    assert!(files_under(&nodes.data.path().join("content-cache")).is_empty());
    let units = nodes.c.list(&Requester::Operator).await.unwrap();
    assert!(
        units.iter().all(|(_, s)| s.state == UnitState::Failed),
        "{units:?}"
    );
    // Still serving: the right bytes go through and are cached.
    offer(&nodes.a, &manifest, b"good").await.unwrap();
    assert_eq!(
        files_under(&nodes.data.path().join("content-cache")).len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_names_and_payloads_over_the_limit_are_refused_before_anything_is_written() {
    let nodes = nodes(64 << 20, 1 << 20).await;
    let reason = manifest_refusal(offer(&nodes.a, &one_file("../escape", b"x", 1), b"x").await);
    assert!(
        reason.contains("\"../escape\"") && reason.contains(".."),
        "{reason}"
    );
    let reason = manifest_refusal(offer(&nodes.a, &one_file("/etc/x", b"x", 1), b"x").await);
    assert!(reason.contains("absolute"), "{reason}");
    let big = one_file("project/big", b"whatever", 2 << 20);
    let reason = manifest_refusal(offer(&nodes.a, &big, b"").await);
    assert!(reason.contains("max-payload-mb"), "{reason}");
    assert!(files_under(&nodes.data.path().join("content-cache")).is_empty());
    assert!(
        nodes.c.list(&Requester::Operator).await.unwrap().is_empty(),
        "no unit made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_cache_says_so_before_making_a_unit() {
    let nodes = nodes(0, 1 << 30).await;
    let client = WorkClient::new(nodes.a.clone());
    let refused = client
        .offer_manifest(
            &id("c"),
            ("cat".into(), Default::default()),
            &one_file("a", b"a", 1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Refused(WorkRefusal::ContentCacheOff { .. })
        ),
        "{refused:?}"
    );
    assert!(nodes.c.list(&Requester::Operator).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_file_changed_or_removed_on_disk_is_asked_for_again_and_never_used() {
    // Found by an attacker's review: a job running as the node's user rewrote a cached
    // playbook with bytes of the same length, and the next run of its owner assembled
    // and ran it; a removed cached file failed every later run of that submitter.
    let nodes = nodes(64 << 20, 1 << 30).await;
    let pdd = private_data_dir();
    let first = run(&nodes.a, plan_of(pdd.path()).await).await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    let cached = files_under(&nodes.data.path().join("content-cache"));
    let size = |p: &std::path::PathBuf| std::fs::metadata(p).unwrap().len();
    let big = cached.iter().find(|p| size(p) == 3 << 20).unwrap();
    let poison = b"POISON!".repeat((3 << 20) / 7 + 1);
    std::fs::write(big, &poison[..3 << 20]).unwrap();
    let small = cached.iter().find(|p| size(p) == 4).unwrap();
    std::fs::remove_file(small).unwrap();

    let second = run(&nodes.a, plan_of(pdd.path()).await).await;
    assert!(second.result.is_ok(), "{:?}", second.result);
    assert_eq!(
        second.lacking.len(),
        2,
        "both asked for again: {:?}",
        second.lacking
    );
    assert_eq!(
        second.output, first.output,
        "the same stream, byte for byte"
    );
    assert!(!second.output.windows(7).any(|w| w == b"POISON!"));
    let third = run(&nodes.a, plan_of(pdd.path()).await).await;
    assert!(
        third.lacking.is_empty(),
        "cached again: {:?}",
        third.lacking
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_over_its_share_of_assemblies_is_told_to_send_whole_and_others_are_not() {
    use super::cache::MAX_SESSIONS_PER_SCOPE;
    let nodes = nodes(64 << 20, 1 << 30).await;
    let client = WorkClient::new(nodes.a.clone());
    let request = || ("cat".to_owned(), Default::default());
    let manifest = one_file("project/x", b"good", 4);
    // Offers whose contents never come hold their slots.
    let mut stalled = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_SCOPE {
        stalled.push(
            client
                .offer_manifest(&id("c"), request(), &manifest)
                .await
                .unwrap(),
        );
    }
    let refused = client
        .offer_manifest(&id("c"), request(), &manifest)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Refused(WorkRefusal::ContentCacheOff { .. })
        ),
        "{refused:?}"
    );
    offer(&nodes.d, &manifest, b"good").await.unwrap();
    // Given up, they free their slots.
    drop(stalled);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match offer(&nodes.a, &manifest, b"good").await {
            Ok(()) => break,
            Err(ClientError::Refused(WorkRefusal::ContentCacheOff { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_planted_at_a_cached_path_is_forgotten_and_the_repeat_run_completes() {
    // Found by an attacker's review: the check opened a cached file with a plain open, so
    // a FIFO planted at its path (by a job running as the node's user) blocked a thread,
    // with the submission's slot and pins, for ever.
    let nodes = nodes(64 << 20, 1 << 30).await;
    let pdd = private_data_dir();
    let first = run(&nodes.a, plan_of(pdd.path()).await).await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    let cached = files_under(&nodes.data.path().join("content-cache"));
    let small = cached
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 4)
        .unwrap();
    std::fs::remove_file(small).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(small)
        .status()
        .unwrap();
    assert!(fifo.success());

    let plan = plan_of(pdd.path()).await;
    let second = tokio::time::timeout(Duration::from_secs(30), run(&nodes.a, plan))
        .await
        .expect("the repeat run completes");
    assert!(second.result.is_ok(), "{:?}", second.result);
    assert_eq!(second.lacking.len(), 1, "{:?}", second.lacking);
    assert_eq!(
        second.output, first.output,
        "the same stream, byte for byte"
    );
    assert!(
        std::fs::metadata(small).unwrap().is_file(),
        "the FIFO replaced"
    );
}
