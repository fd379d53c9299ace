//! Faults on the links between hosts: controller, relay and node1 each in a network
//! namespace of their own, linked by wires the test impairs ([`crate::support::netns`]).
//! The seed's command, `ansible-runner run DIR -p test.yml --via-receptor node1
//! --receptor-peer <controller>`, runs a playbook long enough for the fault to land
//! mid-job, first on clean links, then with 100 ms delay, 2 % loss and reordering on both
//! links, with the relay cut off for 30 s and healed, or with the relay killed and started
//! again on its data dir. Each faulty run must print exactly the clean run's bytes and leave
//! the same artifacts (see [`normalise`] for what may differ between any two runs).
//!
//! The client runs in the controller's namespace, as a user on the controller's host would:
//! its own hop is loopback, and every fault sits on a link between hosts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::run::{copy_demo, venv_bin};
use crate::support::netns::{Role, Topology, skip};
use crate::support::wire::{Impairment, WireStats};
use crate::support::{Identity, peer, trust, wait_for};

/// `line K of TASKS` markers the playbook prints, one task each, a second apart.
const TASKS: usize = 10;

/// `row-NNNN` lines the playbook prints: the first half before the markers, the rest after.
const ROWS: usize = 2000;

/// The marker after which a fault is injected: the job is running, with more to come.
const MID_JOB: &str = "line 3 of 10";

/// The relay stays cut off this long.
const PARTITION: Duration = Duration::from_secs(30);

/// How long a run may take once its faults are over before it counts as hung.
const FINISH: Duration = Duration::from_secs(120);

/// The run's identifier, the same for the clean and the faulty run.
const IDENT: &str = "faults";

/// The long playbook: rows, then a marker and a one-second sleep per task, then rows again.
fn playbook() -> String {
    let half = ROWS / 2;
    let mut yaml = String::from("---\n- hosts: all\n  gather_facts: false\n  tasks:\n");
    let rows = |from: usize, to: usize| {
        format!(
            "    - name: rows {from} to {to}\n      command: seq -f 'row-%04g' {from} {to}\n      \
             register: rows\n    - debug: var=rows.stdout_lines\n"
        )
    };
    yaml += &rows(1, half);
    for k in 1..=TASKS {
        yaml += &format!(
            "    - debug: msg=\"line {k} of {TASKS}\"\n    - name: pause {k}\n      command: sleep 1\n"
        );
    }
    yaml += &rows(half + 1, ROWS);
    yaml
}

/// The namespaces, the three nodes, and the client's identity and PATH.
struct Setup {
    topo: Topology,
    relay: usize,
    node1: usize,
    identity: PathBuf,
    frontend: PathBuf,
}

/// controller <-> relay <-> node1 in their namespaces; node1 runs ansible-runner from the
/// venv for the client's key; `None` (after saying so) where namespaces are not permitted.
fn setup(test: &str) -> Option<Setup> {
    if skip(test) {
        return None;
    }
    let mut topo = Topology::new().expect("permitted() built one already");
    let identity = topo.mesh.path("client/identity.key");
    std::fs::create_dir_all(identity.parent().unwrap()).unwrap();
    let out = crate::support::warren(&["keygen", "--out", identity.to_str().unwrap()]);
    let client = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let ids: Vec<Identity> = ["controller", "relay", "node1"]
        .iter()
        .map(|n| topo.mesh.identity(n))
        .collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let runner = venv_bin().join("ansible-runner").display().to_string();
    let node1_extra = [
        "--ansible-runner".to_owned(),
        runner,
        "--allow-work".to_owned(),
        format!("ansible-runner={client}"),
    ];
    let node1 = topo.start(
        Role::Node1,
        &ids[2],
        &[trust(&all), node1_extra.to_vec()].concat(),
    );
    let relay_extra = [trust(&all), peer(&topo.addr(Role::Node1))].concat();
    let relay = topo.start(Role::Relay, &ids[1], &relay_extra);
    let controller_extra = [
        trust(&all),
        peer(&topo.addr(Role::Relay)),
        vec!["--trust".into(), client],
    ]
    .concat();
    let controller = topo.start(Role::Controller, &ids[0], &controller_extra);
    topo.mesh.wait_route(controller, "node1", Some("relay"));
    wait_for("node1 to offer ansible-runner", || {
        let status = topo.mesh.status(node1)?;
        (status["WorkTypes"][0]["WorkType"] == "ansible-runner").then_some(())
    });
    let frontend = topo.mesh.path("frontend");
    std::fs::create_dir_all(&frontend).unwrap();
    std::os::unix::fs::symlink(
        crate::support::frontend_bin(),
        frontend.join("ansible-runner"),
    )
    .unwrap();
    Some(Setup {
        topo,
        relay,
        node1,
        identity,
        frontend,
    })
}

/// A running `ansible-runner run` in the controller's namespace, killed on drop.
struct Client {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    pdd: PathBuf,
}

/// A finished run.
struct Done {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    pdd: PathBuf,
}

impl Client {
    /// Starts the seed's command on a fresh copy of the demo (with the long playbook as
    /// its test.yml) named `name`.
    fn start(setup: &Setup, name: &str) -> Self {
        Self::start_with(setup, name, |_| ())
    }

    /// [`Client::start`], with `prepare` adding to the private data dir before the run.
    fn start_with(setup: &Setup, name: &str, prepare: impl FnOnce(&Path)) -> Self {
        let pdd = setup.topo.mesh.path(name);
        copy_demo(&pdd);
        std::fs::write(pdd.join("project/test.yml"), playbook()).unwrap();
        prepare(&pdd);
        let stdout = setup.topo.mesh.path(&format!("{name}.stdout"));
        let stderr = setup.topo.mesh.path(&format!("{name}.stderr"));
        let peer = format!("receptor://{}", setup.topo.addr(Role::Controller));
        let exec = setup.topo.exec(Role::Controller);
        let child = Command::new(&exec[0])
            .args(&exec[1..])
            .args(["ansible-runner", "run"])
            .arg(&pdd)
            .args(["-p", "test.yml", "--via-receptor", "node1"])
            .args(["--receptor-peer", &peer, "-i", IDENT])
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:{}:/usr/bin:/bin",
                    setup.frontend.display(),
                    venv_bin().display()
                ),
            )
            .env("HOME", setup.topo.mesh.path("client"))
            .env("WARREN_IDENTITY", &setup.identity)
            .env("WARREN_COMPONENT_CACHE", crate::support::component_cache())
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start ansible-runner in the controller's namespace");
        Self {
            child: Some(child),
            stdout,
            stderr,
            pdd,
        }
    }

    /// What it printed so far.
    fn printed(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until it has printed `text`; panics if it ends first.
    fn wait_printed(&mut self, text: &str) {
        wait_for(&format!("the job to print {text:?}"), || {
            if let Ok(Some(status)) = self.child.as_mut()?.try_wait() {
                panic!(
                    "the run ended ({status}) before printing {text:?}:\n{}\n{}",
                    self.printed(),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            self.printed().contains(text).then_some(())
        });
    }

    /// Sends `signal` to it (the front end itself: `ip netns exec` execs it).
    fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) with a valid pid and signal has no memory effects.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// Whether it is still running.
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the end, at most `limit`: a run still going then has hung.
    fn finish(mut self, setup: &Setup, limit: Duration) -> Done {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "the run hung: not finished after {limit:?}\nprinted:\n{}\nstderr:\n{}\n{}",
                self.printed(),
                std::fs::read_to_string(&self.stderr).unwrap_or_default(),
                setup.topo.mesh.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        self.child = None;
        Done {
            status,
            stdout: std::fs::read(&self.stdout).unwrap(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap(),
            pdd: self.pdd.clone(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The seed's command on clean links, to compare faulty runs with.
fn clean_run(setup: &Setup) -> Done {
    let done = Client::start(setup, "clean").finish(setup, FINISH);
    assert!(
        done.status.success(),
        "the clean run failed: {}\n{}",
        done.stderr,
        setup.topo.mesh.logs()
    );
    assert_complete(&done);
    done
}

/// Every marker and row printed exactly once, in order, and the recap at the end.
fn assert_complete(done: &Done) {
    let text = String::from_utf8_lossy(&done.stdout);
    let mut at = 0;
    let expected = (1..=ROWS / 2)
        .map(|r| format!("\"row-{r:04}\""))
        .chain((1..=TASKS).map(|k| format!("\"line {k} of {TASKS}\"")))
        .chain((ROWS / 2 + 1..=ROWS).map(|r| format!("\"row-{r:04}\"")));
    for want in expected {
        assert_eq!(
            text.matches(&want).count(),
            1,
            "{want} not printed once:\n{text}"
        );
        let found = text[at..]
            .find(&want)
            .unwrap_or_else(|| panic!("{want} out of order"));
        at += found + want.len();
    }
    assert!(
        text[at..].contains("PLAY RECAP"),
        "no recap after the output:\n{text}"
    );
}

/// What differs between any two runs of the same job, replaced by a placeholder: ids made
/// fresh per run (`uuid`, `parent_uuid`, `playbook_uuid`, `play_uuid`, `task_uuid`), the
/// worker's process id (`pid`), clock readings (`created`, `start`, `end`, `duration`, and
/// the `command` module's `delta`), and, wherever it appears in a string, the job's
/// directory on node1, which holds the unit's id (`task_path` names the playbook there).
fn normalise(value: &mut serde_json::Value, worker_dir: &str) {
    const PER_RUN: [&str; 11] = [
        "uuid",
        "parent_uuid",
        "playbook_uuid",
        "play_uuid",
        "task_uuid",
        "pid",
        "created",
        "start",
        "end",
        "duration",
        "delta",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if PER_RUN.contains(&key.as_str()) {
                    *v = serde_json::Value::String("<per-run>".into());
                } else {
                    normalise(v, worker_dir);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                normalise(v, worker_dir);
            }
        }
        serde_json::Value::String(s) if s.contains(worker_dir) => {
            *s = s.replace(worker_dir, "<worker-dir>");
        }
        _ => {}
    }
}

/// The run's job directory on node1 (`<data dir>/units/<unit>/job`), from the unit id the
/// client reported.
fn worker_dir(setup: &Setup, done: &Done) -> String {
    let unit = done
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("running as unit ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no unit id in the client's stderr:\n{}", done.stderr));
    let dir = setup
        .topo
        .mesh
        .path(&format!("node1-data/units/{unit}/job"));
    dir.display().to_string()
}

/// The run's events by counter, normalised.
fn events(setup: &Setup, done: &Done) -> BTreeMap<u64, serde_json::Value> {
    let worker_dir = worker_dir(setup, done);
    let dir = done.pdd.join(format!("artifacts/{IDENT}/job_events"));
    let mut events = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let counter: u64 = name.split('-').next().unwrap().parse().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut event: serde_json::Value = serde_json::from_str(&text).unwrap();
        normalise(&mut event, &worker_dir);
        assert!(
            events.insert(counter, event).is_none(),
            "counter {counter} twice"
        );
    }
    events
}

/// The artifact files of a run other than its events: name -> bytes.
fn artifact_files(pdd: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = pdd.join(format!("artifacts/{IDENT}"));
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The faulty run printed the clean run's bytes, exited alike and left the same artifacts.
fn assert_same_run(setup: &Setup, clean: &Done, faulty: &Done) {
    assert!(
        faulty.status.success(),
        "the faulty run failed ({}): {}\n{}",
        faulty.status,
        faulty.stderr,
        setup.topo.mesh.logs()
    );
    assert_complete(faulty);
    assert!(
        faulty.stdout == clean.stdout,
        "stdout differs from the clean run's\nclean:\n{}\nfaulty:\n{}",
        String::from_utf8_lossy(&clean.stdout),
        String::from_utf8_lossy(&faulty.stdout)
    );
    let (c, f) = (artifact_files(&clean.pdd), artifact_files(&faulty.pdd));
    assert_eq!(c.keys().collect::<Vec<_>>(), f.keys().collect::<Vec<_>>());
    for name in ["rc", "status", "stdout", "command"] {
        assert!(c.contains_key(name), "no {name} artifact");
    }
    let (clean_dir, faulty_dir) = (worker_dir(setup, clean), worker_dir(setup, faulty));
    for (name, bytes) in &c {
        if name == "command" {
            // The command line and environment ansible-runner used, naming the job's dir.
            let json = |bytes: &[u8], dir: &str| {
                let mut value = serde_json::from_slice(bytes).unwrap();
                normalise(&mut value, dir);
                value
            };
            let mut differs = Vec::new();
            let (a, b) = (json(bytes, &clean_dir), json(&f[name], &faulty_dir));
            differences(&a, &b, String::new(), &mut differs);
            assert!(differs.is_empty(), "artifact command differs: {differs:#?}");
        } else {
            assert!(bytes == &f[name], "artifact {name} differs");
        }
    }
    let (c, f) = (events(setup, clean), events(setup, faulty));
    assert_eq!(c.keys().collect::<Vec<_>>(), f.keys().collect::<Vec<_>>());
    for (counter, event) in &c {
        let mut differs = Vec::new();
        differences(event, &f[counter], String::new(), &mut differs);
        assert!(differs.is_empty(), "event {counter} differs: {differs:#?}");
    }
}

/// Where `a` and `b` differ, as `/key/index` paths with both values.
fn differences(a: &serde_json::Value, b: &serde_json::Value, at: String, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let null = serde_json::Value::Null;
                let (va, vb) = (x.get(key).unwrap_or(&null), y.get(key).unwrap_or(&null));
                differences(va, vb, format!("{at}/{key}"), out);
            }
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: {a} vs {b}")),
        _ => {}
    }
}

/// What a wire did between two readings.
fn since(before: WireStats, after: WireStats) -> WireStats {
    WireStats {
        delivered: after.delivered - before.delivered,
        dropped: after.dropped - before.dropped,
        reordered: after.reordered - before.reordered,
    }
}

#[test]
fn a_job_over_delayed_lossy_reordering_links_matches_a_clean_run() {
    let Some(setup) = setup("a_job_over_delayed_lossy_reordering_links_matches_a_clean_run") else {
        return;
    };
    let clean = clean_run(&setup);
    let before = setup.topo.wires.each_ref().map(|w| w.stats());
    setup.topo.impair(Impairment {
        delay: Duration::from_millis(100),
        loss: 0.02,
        reorder: 0.25,
        partitioned: false,
    });
    let faulty = Client::start(&setup, "impaired").finish(&setup, FINISH);
    setup.topo.impair(Impairment::default());
    // The run's own failure, if any, is the one to report.
    assert_same_run(&setup, &clean, &faulty);
    for (wire, before) in setup.topo.wires.iter().zip(before) {
        let did = since(before, wire.stats());
        eprintln!("impaired wire: {did:?}");
        assert!(
            did.dropped > 0 && did.reordered > 0,
            "the faults never happened: {did:?}"
        );
    }
}

#[test]
fn a_job_survives_the_relay_cut_off_for_30s_then_healed() {
    let Some(setup) = setup("a_job_survives_the_relay_cut_off_for_30s_then_healed") else {
        return;
    };
    let clean = clean_run(&setup);
    let mut client = Client::start(&setup, "partitioned");
    client.wait_printed(MID_JOB);
    setup.topo.partition_relay(true);
    // Packets already on their way when the cut came are through within a second.
    let settle = Duration::from_secs(1);
    std::thread::sleep(settle);
    let before = setup.topo.wires.each_ref().map(|w| w.stats());
    std::thread::sleep(PARTITION - settle);
    let cut_off = client.printed();
    let during: Vec<WireStats> = (setup.topo.wires.iter().zip(before))
        .map(|(w, before)| since(before, w.stats()))
        .collect();
    setup.topo.partition_relay(false);
    // The attack really happened: the job was still going, and nothing crossed the relay.
    assert!(client.is_running(), "the run ended during the partition");
    assert!(
        !cut_off.contains("PLAY RECAP"),
        "the output got through the partition"
    );
    for did in during {
        assert!(
            did.delivered == 0 && did.dropped > 0,
            "not a partition: {did:?}"
        );
    }
    let healed = Instant::now();
    let faulty = client.finish(&setup, FINISH);
    eprintln!(
        "relay healed after {PARTITION:?}; the run finished {:?} later",
        healed.elapsed()
    );
    assert_same_run(&setup, &clean, &faulty);
}

#[test]
fn a_job_survives_the_relay_killed_and_restarted_mid_job() {
    let Some(mut setup) = setup("a_job_survives_the_relay_killed_and_restarted_mid_job") else {
        return;
    };
    let clean = clean_run(&setup);
    let mut client = Client::start(&setup, "restarted");
    client.wait_printed(MID_JOB);
    let relay = setup.relay;
    setup.topo.mesh.node_mut(relay).kill();
    assert!(
        !client.printed().contains("PLAY RECAP"),
        "the job ended before the relay was killed"
    );
    setup.topo.mesh.restart(relay);
    let restarted = Instant::now();
    let faulty = client.finish(&setup, FINISH);
    eprintln!(
        "relay restarted; the run finished {:?} later",
        restarted.elapsed()
    );
    assert_same_run(&setup, &clean, &faulty);
}

/// Bytes of incompressible data added to the project for the upload test: enough that the
/// upload over the delayed links is still going when the cut lands.
const UPLOAD_BYTES: usize = 48 << 20;

/// Writes `len` bytes of seeded xorshift output (incompressible, no dependency) to `path`.
fn write_noise(path: &Path, len: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_run_cut_off_during_the_upload_ends_with_a_clear_error_and_leaves_nothing_running() {
    let test = "a_run_cut_off_during_the_upload_ends_with_a_clear_error_and_leaves_nothing_running";
    let Some(setup) = setup(test) else {
        return;
    };
    // Delay slows the upload to a few MB/s, so the cut lands inside it.
    setup.topo.impair(Impairment {
        delay: Duration::from_millis(50),
        ..Impairment::default()
    });
    let start = setup.topo.wires[0].stats();
    let mut client = Client::start_with(&setup, "upload", |pdd| {
        write_noise(&pdd.join("project/noise.bin"), UPLOAD_BYTES);
    });
    // Packing comes first (slow in a debug build), so this waits longer than `wait_for`.
    let packing = Instant::now();
    while since(start, setup.topo.wires[0].stats()).delivered < 4_000 {
        assert!(client.is_running(), "the run ended before the cut");
        assert!(
            packing.elapsed() < FINISH,
            "the upload did not start within {FINISH:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    setup.topo.partition_relay(true);
    let cut_at = since(start, setup.topo.wires[0].stats()).delivered;
    std::thread::sleep(PARTITION);
    setup.topo.impair(Impairment::default());
    // The cut really landed inside the upload: most of the payload was still to go.
    assert!(
        (cut_at as usize) < UPLOAD_BYTES / 1500 / 2,
        "the cut came too late ({cut_at} packets): not during the upload"
    );
    // It ended, during the cut or after it (it hung before: the packer waited on a pipe
    // nobody read), and said why.
    let done = client.finish(&setup, FINISH);
    assert!(!done.status.success(), "a cut-off upload reported success");
    assert!(
        done.stderr.contains("running the job on node1") && done.stderr.contains("went down"),
        "no clear reason:\n{}",
        done.stderr
    );
    // node1 holds no unit that still waits or runs.
    wait_for("node1 to end the half-uploaded unit", || {
        let out = setup
            .topo
            .mesh
            .ctl(setup.node1, &["work", "list", "--json"]);
        let units: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let live = units
            .as_object()?
            .values()
            .any(|u| matches!(u["StateName"].as_str(), Some("Pending" | "Running")));
        (!live).then_some(())
    });
}

#[test]
fn ctrl_c_twice_stops_a_run_cut_off_from_node1_with_a_clear_reason() {
    let Some(setup) = setup("ctrl_c_twice_stops_a_run_cut_off_from_node1_with_a_clear_reason")
    else {
        return;
    };
    let mut client = Client::start(&setup, "interrupted");
    client.wait_printed(MID_JOB);
    setup.topo.partition_relay(true);
    // The first Ctrl-C asks node1 to cancel, which cannot reach it; the second stops waiting.
    client.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_secs(1));
    client.signal(libc::SIGINT);
    let done = client.finish(&setup, Duration::from_secs(15));
    setup.topo.partition_relay(false);
    assert_eq!(done.status.code(), Some(254), "{}", done.stderr);
    assert!(
        done.stderr.contains("stopped waiting for unit") && done.stderr.contains("on node1"),
        "{}",
        done.stderr
    );
    let status = done.pdd.join(format!("artifacts/{IDENT}/status"));
    assert_eq!(std::fs::read_to_string(status).unwrap(), "canceled");
}
