//! The mission: `ansible-runner run demo/ -p test.yml --via-receptor node1 ...` through
//! Warren's front end, across controller -> relay -> node1, with real ansible-runner and
//! ansible-core from the project's venv, compared with a local `ansible-runner run`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{Identity, Mesh, peer, trust, wait_for};

/// The project's venv (`scripts/setup-python.sh` creates it).
pub fn venv_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    assert!(
        bin.join("ansible-runner").is_file(),
        "{} has no ansible-runner; run scripts/setup-python.sh",
        bin.display()
    );
    bin.canonicalize().unwrap()
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

/// `dst` becomes a copy of the demo private data dir.
pub fn copy_demo(dst: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(demo())
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A PATH with Warren's front end first, then the venv (real ansible-runner further down).
fn path_env(frontend_dir: &Path) -> String {
    format!(
        "{}:{}:/usr/bin:/bin",
        frontend_dir.display(),
        venv_bin().display()
    )
}

pub struct Setup {
    pub mesh: Mesh,
    pub controller_addr: String,
    /// The relay between controller and node1, if there is one.
    pub relay: Option<usize>,
    pub node1: usize,
    pub identity: PathBuf,
    pub frontend: PathBuf,
}

/// controller -> relay -> node1 (node1 runs ansible-runner from the venv); the client's
/// identity is trusted by the controller, pinned to `client_id` when given.
fn setup(client_id: Option<&str>, controller_listen: Option<&str>) -> Setup {
    setup_with(client_id, controller_listen, true, None)
}

/// As [`setup`]; node1 lets the client run ansible-runner only with `allow_client`, and the
/// client's identity (with its known keys) is copied from `identity_from` when given.
fn setup_with(
    client_id: Option<&str>,
    controller_listen: Option<&str>,
    allow_client: bool,
    identity_from: Option<&Path>,
) -> Setup {
    build(
        client_id,
        controller_listen,
        allow_client,
        identity_from,
        true,
        (None, &[]),
        None,
    )
}

/// controller -> relay -> node1 with extra flags for the relay and `[work]` lines for
/// node1's config file.
pub fn relayed_setup(relay_extra: &[String], node1_work: Option<&str>) -> Setup {
    build(
        None,
        None,
        true,
        None,
        true,
        (node1_work, relay_extra),
        None,
    )
}

/// controller -> node1, no relay (node1 runs ansible-runner from the venv and lets the
/// client run it).
pub fn direct_setup() -> Setup {
    build(None, None, true, None, false, (None, &[]), None)
}

/// [`direct_setup`] with node1's `[work] containment` set to `containment`.
pub fn direct_setup_contained(containment: &str) -> Setup {
    let work = format!("containment = {containment:?}");
    build(None, None, true, None, false, (Some(&work), &[]), None)
}

/// [`direct_setup_configured`] with node1 running `runner` as ansible-runner.
pub fn direct_setup_with_runner(config: &str, runner: &Path) -> Setup {
    build(
        None,
        None,
        true,
        None,
        false,
        (Some(config), &[]),
        Some(runner),
    )
}

/// [`direct_setup`] with `config` (TOML: `[work]` keys first, then any other tables) in
/// node1's config file.
pub fn direct_setup_configured(config: &str) -> Setup {
    build(None, None, true, None, false, (Some(config), &[]), None)
}

/// `--config` of a file giving node1 these `[work]` lines when some were asked for (the
/// flags still set its id, key and data dir).
fn work_config(mesh: &Mesh, node1: &Identity, work: Option<&str>) -> Vec<String> {
    let Some(work) = work else {
        return Vec::new();
    };
    let file = mesh.path("node1.toml");
    let text = format!(
        "[node]\nid = \"node1\"\ndata-dir = {:?}\nkey-file = {:?}\n[work]\n{work}\n",
        mesh.path("node1-data").display().to_string(),
        node1.key.display().to_string()
    );
    std::fs::write(&file, text).unwrap();
    vec!["--config".to_owned(), file.display().to_string()]
}

fn build(
    client_id: Option<&str>,
    controller_listen: Option<&str>,
    allow_client: bool,
    identity_from: Option<&Path>,
    with_relay: bool,
    (node1_work, relay_extra): (Option<&str>, &[String]),
    runner: Option<&Path>,
) -> Setup {
    let mut mesh = Mesh::new();
    let identity = mesh.path("client/identity.key");
    std::fs::create_dir_all(identity.parent().unwrap()).unwrap();
    let client_token = match identity_from {
        Some(from) => {
            for file in ["identity.key", "known_nodes"] {
                let _ = std::fs::copy(from.with_file_name(file), identity.with_file_name(file));
            }
            let out = crate::support::warren(&["keygen", "--show", identity.to_str().unwrap()]);
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
        None => {
            let out = crate::support::warren(&["keygen", "--out", identity.to_str().unwrap()]);
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let ids: Vec<Identity> = ["controller", "relay", "node1"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let runner = runner.map_or_else(|| venv_bin().join("ansible-runner"), Path::to_owned);
    // node1 lets the client's key (whatever node id it uses) run ansible-runner.
    let mut node1_extra = vec!["--ansible-runner".to_owned(), runner.display().to_string()];
    if allow_client {
        node1_extra.extend([
            "--allow-work".to_owned(),
            format!("ansible-runner={client_token}"),
        ]);
    }
    node1_extra.extend(work_config(&mesh, &ids[2], node1_work));
    let node1 = mesh.start(&ids[2], &[trust(&all), node1_extra].concat());
    let mut addr = mesh.node(node1).addr().to_owned();
    let relay = with_relay.then(|| {
        mesh.start(
            &ids[1],
            &[trust(&all), peer(&addr), relay_extra.to_vec()].concat(),
        )
    });
    if let Some(relay) = relay {
        addr = mesh.node(relay).addr().to_owned();
    }
    let client_trust = match client_id {
        Some(id) => format!("{id}={client_token}"),
        None => client_token,
    };
    let mut extra = [
        trust(&all),
        peer(&addr),
        vec!["--trust".into(), client_trust],
    ]
    .concat();
    if let Some(listen) = controller_listen {
        extra.extend(["--listen".to_owned(), listen.to_owned()]);
    }
    let controller = mesh.start(&ids[0], &extra);
    let controller_addr = mesh.node(controller).addr().to_owned();
    let via = if with_relay { "relay" } else { "node1" };
    mesh.wait_route(controller, "node1", Some(via));
    wait_for("node1 to offer ansible-runner", || {
        let status = mesh.status(node1)?;
        (status["WorkTypes"][0]["WorkType"] == "ansible-runner").then_some(())
    });
    let frontend = mesh.path("frontend");
    std::fs::create_dir_all(&frontend).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_ansible-runner"),
        frontend.join("ansible-runner"),
    )
    .unwrap();
    Setup {
        mesh,
        controller_addr,
        relay,
        node1,
        identity,
        frontend,
    }
}

/// The seed's command through this setup's controller, then `extra`:
/// `run PDD -p PLAYBOOK --via-receptor node1 --receptor-peer receptor://CONTROLLER EXTRA...`.
pub fn seed_args(setup: &Setup, pdd: &Path, playbook: &str, extra: &[&str]) -> Vec<String> {
    let peer = format!("receptor://{}", setup.controller_addr);
    let seed = [
        "run",
        pdd.to_str().unwrap(),
        "-p",
        playbook,
        "--via-receptor",
        "node1",
        "--receptor-peer",
        &peer,
    ];
    seed.iter().chain(extra).map(|&a| a.to_owned()).collect()
}

/// `ansible-runner ARGS` with the front end first on PATH.
pub fn ansible_runner(setup: &Setup, args: &[impl AsRef<OsStr>]) -> Output {
    frontend(setup, args).output().unwrap()
}

/// The front end with `args`, in the client's clean environment.
pub fn frontend(setup: &Setup, args: &[impl AsRef<OsStr>]) -> Command {
    let mut command = Command::new("ansible-runner");
    command
        .args(args)
        .env_clear()
        .env("PATH", path_env(&setup.frontend))
        .env("HOME", setup.mesh.path("client"))
        .env("WARREN_IDENTITY", &setup.identity)
        .env("WARREN_COMPONENT_CACHE", crate::support::component_cache())
        .env("LANG", "C.UTF-8");
    command
}

/// The real `ansible-runner run` of the same demo, locally.
pub fn local_run(setup: &Setup, pdd: &Path, ident: &str) -> Output {
    Command::new(venv_bin().join("ansible-runner"))
        .args(["run", pdd.to_str().unwrap(), "-p", "test.yml", "-i", ident])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", venv_bin().display()))
        .env("HOME", setup.mesh.path("client"))
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap()
}

pub fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Event counters from `job_events/<counter>-<uuid>.json`.
pub fn counters(dir: &Path) -> BTreeSet<u64> {
    files(&dir.join("job_events"))
        .iter()
        .filter_map(|f| f.split('-').next()?.parse().ok())
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_seed_command_runs_the_demo_on_node1_like_a_local_run() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let args = seed_args(&setup, &pdd, "test.yml", &["-i", "remote"]);
    let remote = ansible_runner(&setup, &args);
    assert!(remote.status.success(), "{remote:?}\n{}", setup.mesh.logs());
    let local = local_run(&setup, &pdd, "local");
    assert!(local.status.success(), "{local:?}");
    assert_eq!(
        text(&remote.stdout),
        text(&local.stdout),
        "stdout differs from a local run"
    );
    assert!(text(&remote.stdout).contains("\"msg\": \"Test!\""));
    let (r, l) = (pdd.join("artifacts/remote"), pdd.join("artifacts/local"));
    assert_eq!(files(&r), files(&l));
    assert_eq!(counters(&r), counters(&l));
    assert_eq!(
        std::fs::read_to_string(r.join("status")).unwrap(),
        "successful"
    );
    assert_eq!(std::fs::read_to_string(r.join("rc")).unwrap(), "0");
}

#[test]
fn a_failing_playbook_exits_non_zero_with_status_failed() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    std::fs::write(
        pdd.join("project/fail.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - fail:\n        msg: on purpose\n",
    )
    .unwrap();
    let args = seed_args(&setup, &pdd, "fail.yml", &["-i", "f"]);
    let out = ansible_runner(&setup, &args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(pdd.join("artifacts/f/status")).unwrap(),
        "failed"
    );
    assert!(text(&out.stdout).contains("on purpose"));
}

#[test]
fn receptor_node_id_is_the_submitter_seen_on_node1() {
    let setup = setup(Some("runner-node"), None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let args = seed_args(
        &setup,
        &pdd,
        "test.yml",
        &["--receptor-node-id", "runner-node"],
    );
    let out = ansible_runner(&setup, &args);
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    // node1 logged the submission with the submitter's proven identity...
    let log = std::fs::read_to_string(&setup.mesh.node(setup.node1).log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("work request")
            && l.contains("peer=runner-node")
            && l.contains("submit ansible-runner")),
        "{log}"
    );
    // ... and the run released its unit there once the artifacts were written: nothing
    // of the job (payload, events) stays on node1.
    let listed = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
    let units: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        units.as_object().map(serde_json::Map::len),
        Some(0),
        "{units}"
    );
    let units_dir = setup.mesh.path("node1-data/units");
    let left: Vec<_> = std::fs::read_dir(&units_dir).unwrap().collect();
    assert!(left.is_empty(), "unit files left on node1: {left:?}");

    // A second run with the same ident adds its events to the same artifacts dir, as
    // ansible-runner does.
    let same = seed_args(
        &setup,
        &pdd,
        "test.yml",
        &["--receptor-node-id", "runner-node", "-i", "same"],
    );
    let first = ansible_runner(&setup, &same);
    assert!(first.status.success(), "{first:?}");
    let events = counters(&pdd.join("artifacts/same")).len();
    let second = ansible_runner(&setup, &same);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        files(&pdd.join("artifacts/same/job_events")).len(),
        2 * events
    );
}

#[test]
fn a_client_node1_does_not_allow_is_told_the_exact_allow_work_flag() {
    let setup = setup_with(None, None, false, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let args = seed_args(&setup, &pdd, "test.yml", &[]);
    let out = ansible_runner(&setup, &args);
    assert!(!out.status.success(), "{out:?}");
    let token = crate::support::warren(&["keygen", "--show", setup.identity.to_str().unwrap()]);
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "start node1 with `--allow-work ansible-runner={token}`"
        )),
        "{said}"
    );
}

#[test]
fn a_target_whose_key_changed_since_the_last_run_is_refused() {
    let first = setup(None, None);
    let pdd = first.mesh.path("demo");
    copy_demo(&pdd);
    let args = |setup: &Setup| seed_args(setup, &pdd, "test.yml", &[]);
    let out = ansible_runner(&first, &args(&first));
    assert!(out.status.success(), "{out:?}");
    let known = std::fs::read_to_string(first.identity.with_file_name("known_nodes")).unwrap();
    assert!(known.starts_with("node1 x25519:"), "{known}");
    // Another mesh where something else answers as node1, with another key.
    let second = setup_with(None, None, true, Some(&first.identity));
    let out = ansible_runner(&second, &args(&second));
    assert!(!out.status.success(), "{out:?}");
    let said = text(&out.stderr);
    assert!(
        said.contains("node node1 now has key") && said.contains("possible impostor"),
        "{said}"
    );
}

#[test]
fn the_default_peer_is_localhost_8888() {
    // Binds the default port; the lock keeps other runs and the demo off it.
    let lock = crate::support::default_port_lock();
    let setup = setup(None, Some("127.0.0.1:8888"));
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let out = ansible_runner(
        &setup,
        &[
            "run",
            pdd.to_str().unwrap(),
            "-p",
            "test.yml",
            "--via-receptor",
            "node1",
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    assert!(text(&out.stdout).contains("PLAY RECAP"));
    drop(lock);
}

#[test]
fn bad_submissions_fail_before_anything_is_sent() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let peer = format!("receptor://{}", setup.controller_addr);
    let pdd_s = pdd.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "run",
                pdd_s,
                "--via-receptor",
                "node1",
                "--receptor-peer",
                &peer,
            ],
            "The -p option must be specified",
        ),
        (
            &[
                "run",
                "/nonexistent/pdd",
                "-p",
                "test.yml",
                "--via-receptor",
                "node1",
            ],
            "does not exist",
        ),
        (
            &[
                "run",
                pdd_s,
                "-p",
                "missing.yml",
                "--via-receptor",
                "node1",
                "--receptor-peer",
                &peer,
            ],
            "missing.yml not found",
        ),
        (
            &[
                "run",
                pdd_s,
                "-p",
                "test.yml",
                "--via-receptor",
                "nowhere",
                "--receptor-peer",
                &peer,
                "--receptor-timeout",
                "1",
            ],
            "nowhere is not reachable from",
        ),
    ];
    for (args, expected) in cases {
        let out = ansible_runner(&setup, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // The real ansible-runner further down PATH still serves what the front end does not.
    let version = ansible_runner(&setup, &["--version"]);
    assert_eq!(text(&version.stdout).trim(), "2.4.3");
}

/// A playbook that prints, waits `secs` seconds, and prints again.
pub fn slow_playbook(pdd: &Path, secs: u32) {
    let play = format!(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n        msg: before\n    - pause:\n        seconds: {secs}\n    - debug:\n        msg: after\n"
    );
    std::fs::write(pdd.join("project/slow.yml"), play).unwrap();
}

pub fn spawn_run(setup: &Setup, args: &[impl AsRef<OsStr>]) -> std::process::Child {
    frontend(setup, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until node1 runs a unit.
pub fn wait_running(setup: &Setup) {
    wait_for("the unit to run on node1", || {
        let out = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
        let units: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let running = units
            .as_object()?
            .values()
            .any(|u| u["StateName"] == "Running");
        running.then_some(())
    });
}

#[test]
fn the_relay_dies_and_returns_mid_job_and_the_output_is_complete() {
    let mut setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    slow_playbook(&pdd, 4);
    let args = seed_args(&setup, &pdd, "slow.yml", &["-i", "r"]);
    let child = spawn_run(&setup, &args);
    wait_running(&setup);
    let relay = setup.relay.expect("a relay");
    setup.mesh.node_mut(relay).kill();
    setup.mesh.restart(relay);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    let printed = text(&out.stdout);
    assert!(
        printed.contains("\"msg\": \"before\"") && printed.contains("\"msg\": \"after\""),
        "{printed}"
    );
    assert!(printed.contains("PLAY RECAP"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(pdd.join("artifacts/r/status")).unwrap(),
        "successful"
    );
}

#[test]
fn ctrl_c_cancels_the_remote_unit_and_leaves_no_process_of_the_job() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    slow_playbook(&pdd, 60);
    let args = seed_args(&setup, &pdd, "slow.yml", &["-i", "c"]);
    let child = spawn_run(&setup, &args);
    wait_running(&setup);
    wait_for("the job's first output on node1", || {
        let out = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
        let units: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let started = (units.as_object()?.values()).any(|u| u["StdoutSize"].as_u64() > Some(2000));
        started.then_some(())
    });
    // The job's processes work in its unit's directory on node1: ansible-runner worker,
    // and ansible-playbook in a session of its own.
    let node1_data = setup.mesh.path("node1-data");
    let running = wait_for("ansible-playbook to run on node1", || {
        let procs = crate::contain::working_in(&node1_data);
        procs
            .iter()
            .any(|(_, cmd)| cmd.contains("ansible-playbook"))
            .then_some(procs)
    });
    assert!(running.len() >= 2, "{running:?}");
    // The running unit records its program's containment.
    let listed = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
    let units: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let unit = units.as_object().unwrap().values().next().unwrap();
    assert_eq!(unit["ExtraData"]["Containment"]["Detached"], true, "{unit}");
    // SAFETY: kill(2) with the child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(254),
        "{out:?}\n{}",
        setup.mesh.logs()
    );
    assert_eq!(
        std::fs::read_to_string(pdd.join("artifacts/c/status")).unwrap(),
        "canceled"
    );
    // The run released its unit once it read the end: nothing is left running there.
    let listed = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
    let units: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        (units.as_object().unwrap().values()).all(|u| u["StateName"] != "Running"),
        "{units}"
    );
    let start = std::time::Instant::now();
    loop {
        let left = crate::contain::working_in(&node1_data);
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < crate::support::DEADLINE,
            "processes of the job survived the cancel: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `len` bytes of a xorshift stream (deflate cannot shrink them).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn a_big_payload_streams_without_any_temp_file_and_arrives_whole() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let blob = random_bytes(12 << 20, 42);
    std::fs::write(pdd.join("project/blob.bin"), &blob).unwrap();
    std::fs::write(
        pdd.join("project/blob.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - stat:\n        path: \
         \"{{ playbook_dir }}/blob.bin\"\n        checksum_algorithm: sha256\n      \
         register: blob\n    - debug:\n        msg: \"blob {{ blob.stat.checksum }} \
         {{ blob.stat.size }}\"\n",
    )
    .unwrap();
    let want = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&blob);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("blob {hex} {}", blob.len())
    };
    let args = seed_args(&setup, &pdd, "blob.yml", &["-i", "blob"]);
    // The front end may write no file over 4 MiB (RLIMIT_FSIZE; SIGXFSZ ignored, so such a
    // write fails with EFBIG): the old transmit spooled the 12 MiB zip into a temp file
    // first and failed here.
    let mut command = frontend(&setup, &args);
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let limit = libc::rlimit {
                rlim_cur: 4 << 20,
                rlim_max: 4 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    assert!(text(&out.stdout).contains(&want), "{}", text(&out.stdout));
    // Standard error is not a terminal: no progress lines.
    assert!(!text(&out.stderr).contains('\r'), "{}", text(&out.stderr));
}

#[test]
fn a_file_written_to_during_the_run_fails_it_and_no_job_runs_on_half_a_dir() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    let growing = pdd.join("project/growing.log");
    std::fs::write(&growing, "start\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, growing) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&growing)
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all(b"another line\n").unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let args = seed_args(&setup, &pdd, "test.yml", &["-i", "moving"]);
    let out = ansible_runner(&setup, &args);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("growing.log changed while it was being sent"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("Test!"), "{out:?}");
    // Whatever unit node1 made never ran the job: none succeeded, none is left running.
    wait_for("node1's units to end", || {
        let list = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
        let units: serde_json::Value = serde_json::from_slice(&list.stdout).ok()?;
        let states: Vec<String> = units
            .as_object()?
            .values()
            .map(|u| u["StateName"].as_str().unwrap_or("").to_owned())
            .collect();
        assert!(
            !states.iter().any(|s| s == "Succeeded"),
            "a unit ran: {units}"
        );
        states
            .iter()
            .all(|s| s != "Running" && s != "Pending")
            .then_some(())
    });
}

/// `ansible-runner ARGS` (the front end) on a pseudo-terminal (`script`), as a user types
/// it: what the terminal showed.
fn on_terminal(setup: &Setup, args: &[String]) -> String {
    let line: Vec<String> = std::iter::once("ansible-runner".to_owned())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect();
    let env = frontend(setup, &[] as &[&str]);
    let out = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env_clear()
        .envs(env.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    text(&out.stdout)
}

#[test]
fn a_big_payload_shows_its_progress_on_a_terminal_unless_quiet() {
    let setup = setup(None, None);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    std::fs::write(pdd.join("project/blob.bin"), random_bytes(12 << 20, 7)).unwrap();
    let shown = seed_args(&setup, &pdd, "test.yml", &["-i", "shown"]);
    let screen = on_terminal(&setup, &shown);
    // node1's content cache has none of it: the files' 12.6 MB go raw (the bytes really
    // sent; the node assembles the base64 transmit stream itself).
    let total = " of 12.6 MB (";
    assert!(screen.contains("\r\x1b[Ksent "), "{screen:?}");
    assert!(screen.contains(total), "{screen:?}");
    assert!(screen.contains("\r\x1b[Ksent 12.6 MB in "), "{screen:?}");
    assert!(screen.contains("Test!"), "{screen:?}");
    let quiet = seed_args(&setup, &pdd, "test.yml", &["-i", "quiet", "-q"]);
    let screen = on_terminal(&setup, &quiet);
    assert!(!screen.contains("sent "), "{screen}");
}
