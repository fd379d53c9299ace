//! Remote work across real mesh nodes in one process: a -> b -> c over loopback TCP.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::server::ServerSetup;
use super::{Requester, Submission, UnitState, Work, WorkConfig, WorkSetup};
use crate::access::AccessPolicy;
use crate::host::registry::Registry;
use crate::keys::LinkKeypair;
use crate::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;
use crate::mesh::trust::TrustEntry;

pub(super) fn id(s: &str) -> crate::id::NodeId {
    crate::id::NodeId::new(s).unwrap()
}

/// Node `name` with the test key `[n; 32]`, trusting the test keys `[k; 32]` of `trusted`
/// (as any id) — the work layer's mesh tests share it.
pub(super) fn trusting_mesh_config(name: &str, n: u8, trusted: &[u8]) -> MeshConfig {
    let trust = trusted
        .iter()
        .map(|&k| TrustEntry {
            key: LinkKeypair::from_private([k; 32]).public(),
            node: None,
        })
        .collect::<Vec<_>>();
    MeshConfig::new(
        id(name),
        LinkKeypair::from_private([n; 32]),
        trust.into(),
        u64::from(n) * 1000,
    )
}

fn mesh_config(name: &str, n: u8) -> MeshConfig {
    trusting_mesh_config(name, n, &[1, 2, 3])
}

fn peer(port: u16) -> PeerTarget {
    PeerTarget {
        host: "127.0.0.1".into(),
        port,
        cost: Cost::DEFAULT,
    }
}

async fn relay(port: u16) -> MeshHandle {
    // The port was free a moment ago; another test may hold it briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => break listener,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind the relay's port {port}: {e}"),
        }
    };
    let (handle, _) = driver::start(
        mesh_config("b", 2),
        DriverConfig::default(),
        vec![(listener, Cost::DEFAULT)],
        vec![],
    );
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_output_survives_a_relay_restart_and_a_submission_sent_twice_runs_once() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b = relay(port).await;
    let (a, _) = driver::start(
        mesh_config("a", 1),
        DriverConfig::default(),
        vec![],
        vec![peer(port)],
    );
    let (c, _) = driver::start(
        mesh_config("c", 3),
        DriverConfig::default(),
        vec![],
        vec![peer(port)],
    );
    assert!(
        a.wait_reachable(&id("c"), Duration::from_secs(10))
            .await
            .unwrap()
    );

    // c runs `talk`: echo the payload, wait, say done.
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::default();
    registry.insert(super::tests::command(
        "talk",
        "/bin/sh",
        &["-c", "cat; sleep 2; echo done"],
        "1.0.0",
        false,
    ));
    let (_keep, rx) = watch::channel(Arc::new(registry));
    let host = super::tests::shared_host();
    let setup = |name: &str, registry, mesh: &MeshHandle| WorkSetup {
        data_dir: dir.path().join(name),
        node: id(name),
        host: host.clone(),
        registry,
        config: WorkConfig::default(),
        mesh: Some(mesh.clone()),
        signing_key: None,
    };
    let on_c = Work::open(setup("c", rx, &c)).unwrap();
    // c lets a (whose key the test knows) run `talk`, and nothing else.
    let allow: AccessPolicy = AccessPolicy {
        work: vec![
            format!("talk={}", LinkKeypair::from_private([1; 32]).public())
                .parse()
                .unwrap(),
        ],
        ..AccessPolicy::default()
    };
    let (_access, access) = watch::channel(Arc::new(allow));
    super::server::serve(
        on_c.clone(),
        &c,
        ServerSetup {
            access,
            signed: watch::channel(super::server::SignedWork::default()).1,
            contents: None,
        },
    );
    let (_none, empty) = watch::channel(Arc::new(Registry::default()));
    let on_a = Work::open(setup("a", empty, &a)).unwrap();
    let to_c = |work_type: &str| Submission {
        node: "c".into(),
        work_type: work_type.into(),
        params: Default::default(),
        submitter: (id("a"), None),
        ttl: None,
        sign_work: false,
    };
    let op = Requester::Operator;

    let unit = on_a.create(to_c("talk")).await.unwrap();
    on_a.start(unit, &mut &b"payload\n"[..]).await.unwrap();
    let mut results = on_a.results(unit, 0, &op).await.unwrap();
    let mut first = vec![0u8; 8];
    results.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"payload\n");

    // The relay dies mid-job and comes back on the same port.
    b.shutdown().await;
    let _b = relay(port).await;

    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), results.read_to_end(&mut rest))
        .await
        .expect("the mirror resumes after the relay is back")
        .unwrap();
    assert_eq!(rest, b"done\n");
    let status = on_a.status(unit, &op).await.unwrap();
    assert_eq!(status.state, UnitState::Succeeded, "{status:?}");
    assert!(status.remote_unit_id.is_some());
    // Asking c for a work type it does not allow a: the refusal names the flag.
    let refused = on_a.create(to_c("ansible-runner")).await.unwrap();
    let err = on_a.start(refused, &mut &b""[..]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("start c with `--allow-work ansible-runner=x25519:"),
        "{err}"
    );

    // A submission sent twice under one nonce (its submitter restarted after sending it):
    // c makes one unit, and the second submission finds it and reads all of its output.
    let client = crate::work::client::WorkClient::new(a.clone());
    let nonce = Some(crate::work::SubmitNonce([9; 16]));
    let request = || crate::work::client::SubmitRequest {
        work_type: "talk".into(),
        params: Default::default(),
        signature: None,
    };
    let mut first = client
        .submit_following(
            &id("c"),
            (request(), nonce),
            0,
            &mut &b"twice\n"[..],
            |_| {},
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    client.keep_following(&mut first, &mut out).await.unwrap();
    assert_eq!(out, b"twice\ndone\n");
    let mut again = client
        .submit_following(
            &id("c"),
            (request(), nonce),
            0,
            &mut &b"other\n"[..],
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(again.unit, first.unit, "the same unit, not a second one");
    let mut again_out = Vec::new();
    let end = client
        .keep_following(&mut again, &mut again_out)
        .await
        .unwrap();
    assert_eq!(
        again_out, out,
        "its output, not a run of the second payload"
    );
    assert_eq!(end.state, UnitState::Succeeded);
    let units = on_c.list(&op).await.unwrap();
    let named = units
        .iter()
        .filter(|(_, s)| s.submit_nonce == nonce)
        .count();
    assert_eq!(named, 1, "{units:?}");
}
