//! A worker node that will not stop talking: the node a unit was sent to answers its
//! results with far more output than the submitter keeps of a mirrored unit. Real mesh
//! nodes over loopback TCP in one process; the worker is a fake that speaks the work
//! protocol by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::protocol::{self, RemoteStatus, Reply, Request, ResultsFrame, WORK_SERVICE};
use super::tests_remote::{id, trusting_mesh_config};
use super::{Requester, Submission, UnitId, UnitState, Work, WorkConfig, WorkSetup};
use crate::host::registry::Registry;
use crate::id::ServiceName;
use crate::mesh::driver::{self, DriverConfig, MeshHandle, MeshStream, PeerTarget};
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;

/// What the submitter keeps of a mirrored unit's results in these tests.
const CAP: u64 = 256 * 1024;

/// Bytes per results frame the fake worker sends.
const FRAME: usize = 64 * 1024;

fn mesh_config(name: &str, n: u8) -> MeshConfig {
    trusting_mesh_config(name, n, &[1, 2])
}

/// The fake worker `w`: takes any submission, then sends `flood` bytes of results and a
/// `Succeeded` end; counts the cancels it is asked for.
async fn fake_worker(flood: u64) -> (MeshHandle, Arc<AtomicUsize>, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mesh, _) = driver::start(
        mesh_config("w", 2),
        DriverConfig::default(),
        vec![(listener, Cost::DEFAULT)],
        vec![],
    );
    let cancels = Arc::new(AtomicUsize::new(0));
    let mut incoming = mesh
        .listen(&ServiceName::new(WORK_SERVICE).unwrap())
        .unwrap();
    let counted = cancels.clone();
    tokio::spawn(async move {
        while let Some(stream) = incoming.recv().await {
            tokio::spawn(answer(stream, flood, counted.clone()));
        }
    });
    (mesh, cancels, port)
}

/// One session of the fake worker.
async fn answer(mut stream: MeshStream, flood: u64, cancels: Arc<AtomicUsize>) {
    let Ok(request) = protocol::read::<Request, _>(&mut stream).await else {
        return;
    };
    match request {
        Request::Submit { .. } => {
            let unit = UnitId::random().unwrap();
            let _ = protocol::write(&mut stream, &Reply::Created { unit }).await;
            // The payload, up to the submitter's half-close.
            let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
            let _ = protocol::write(&mut stream, &Reply::Started).await;
            send_results(&mut stream, flood).await;
        }
        Request::Results { .. } => send_results(&mut stream, flood).await,
        Request::Cancel { .. } | Request::Release { .. } => {
            if matches!(request, Request::Cancel { .. }) {
                cancels.fetch_add(1, Ordering::SeqCst);
            }
            let _ = protocol::write(&mut stream, &Reply::Ok).await;
        }
        _ => {}
    }
}

/// `flood` bytes of results, then a `Succeeded` end; stops when the reader goes away.
async fn send_results(stream: &mut MeshStream, flood: u64) {
    let mut sent = 0u64;
    while sent < flood {
        let data = ResultsFrame::Data(bytes::Bytes::from(vec![b'x'; FRAME]));
        if protocol::write(stream, &data).await.is_err() {
            return;
        }
        sent += FRAME as u64;
    }
    let end = ResultsFrame::End(RemoteStatus {
        state: UnitState::Succeeded,
        detail: String::new(),
        stdout_size: sent,
    });
    let _ = protocol::write(stream, &end).await;
}

/// The submitting node `s`, linked to the worker on `port`, keeping `CAP` bytes of a
/// mirrored unit of a work type it does not offer itself.
async fn submitter(port: u16, data: &std::path::Path) -> (Work, MeshHandle) {
    let (mesh, _) = driver::start(
        mesh_config("s", 1),
        DriverConfig::default(),
        vec![],
        vec![PeerTarget {
            host: "127.0.0.1".into(),
            port,
            cost: Cost::DEFAULT,
        }],
    );
    assert!(
        mesh.wait_reachable(&id("w"), Duration::from_secs(10))
            .await
            .unwrap()
    );
    let (_keep, registry) = watch::channel(Arc::new(Registry::default()));
    let work = Work::open(WorkSetup {
        data_dir: data.to_owned(),
        node: id("s"),
        host: super::tests::shared_host(),
        registry,
        config: WorkConfig {
            mirror_output: CAP,
            free_space_floor: 0,
            ..WorkConfig::default()
        },
        mesh: Some(mesh.clone()),
        signing_key: None,
    })
    .unwrap();
    (work, mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sends_more_than_the_cap_fails_its_mirror_naming_the_cap_and_the_node() {
    let (_w, cancels, port) = fake_worker(16 * CAP).await;
    let data = tempfile::tempdir().unwrap();
    let (on_s, _s) = submitter(port, data.path()).await;
    let op = Requester::Operator;
    let unit = on_s
        .create(Submission {
            node: "w".into(),
            work_type: "anything".into(),
            params: Default::default(),
            submitter: (id("s"), None),
            ttl: None,
            sign_work: false,
        })
        .await
        .unwrap();
    on_s.start(unit, &mut &b"payload\n"[..]).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = on_s.status(unit, &op).await.unwrap();
        if status.state.is_terminal() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ended: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut results = Vec::new();
    on_s.results(unit, 0, &op)
        .await
        .unwrap()
        .read_to_end(&mut results)
        .await
        .unwrap();
    assert_eq!(
        (status.state, results.len() as u64),
        (UnitState::Failed, CAP),
        "the mirror stops at the cap and keeps what came up to it: {}",
        status.detail
    );
    assert_eq!(status.stdout_size, CAP);
    for named in ["on w", &format!("{CAP} bytes"), "mirror-output-mb"] {
        assert!(status.detail.contains(named), "{named}: {}", status.detail);
    }
    // The worker is told to stop producing what nobody keeps.
    while cancels.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never cancelled there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stays_within_the_cap_succeeds_with_all_of_its_results() {
    let (_w, cancels, port) = fake_worker(CAP).await;
    let data = tempfile::tempdir().unwrap();
    let (on_s, _s) = submitter(port, data.path()).await;
    let op = Requester::Operator;
    let unit = on_s
        .create(Submission {
            node: "w".into(),
            work_type: "anything".into(),
            params: Default::default(),
            submitter: (id("s"), None),
            ttl: None,
            sign_work: false,
        })
        .await
        .unwrap();
    on_s.start(unit, &mut &b"payload\n"[..]).await.unwrap();
    let mut results = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        on_s.results(unit, 0, &op)
            .await
            .unwrap()
            .read_to_end(&mut results),
    )
    .await
    .expect("the unit ends")
    .unwrap();
    let status = on_s.status(unit, &op).await.unwrap();
    assert_eq!(
        (status.state, results.len() as u64),
        (UnitState::Succeeded, CAP),
        "{}",
        status.detail
    );
    assert_eq!(cancels.load(Ordering::SeqCst), 0);
}
