//! Guest resource limits across real nodes: a component hoarding descriptors, a job filling
//! its directory, arguments a granted program may not be given, the free-space floor, the
//! units one submitter may hold, and absolute paths for children of a node started with a
//! relative data dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{Identity, Mesh, peer, trust, wait_for, warren, warren_bin};

/// The probe handler (built by node/build.rs): deployed as a hostile component.
const PROBE: &[u8] = include_bytes!(env!("WARREN_PROBE_HANDLER_WASM"));

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: Output, mesh: &Mesh) -> String {
    assert!(out.status.success(), "{out:?}\n{}", mesh.logs());
    text(&out.stdout)
}

/// A config file for `id` holding `work` (the flags give everything else).
fn config(mesh: &Mesh, id: &str, work: &str) -> Vec<String> {
    let path = mesh.path(&format!("{id}.toml"));
    let text = format!("[node]\nid = \"{id}\"\ndata-dir = \"d\"\nkey-file = \"k\"\n{work}");
    std::fs::write(&path, text).unwrap();
    vec!["--config".into(), s(&path).to_owned()]
}

struct Pair {
    mesh: Mesh,
    ids: Vec<Identity>,
    signer_key: PathBuf,
    controller: usize,
    node1: usize,
}

/// controller -> node1; node1 runs `work` (TOML) and `flags`, trusts one component signer,
/// lets the controller submit and deploy, and offers no ansible-runner; waits until node1
/// offers `offers` work types.
fn pair(work: &str, flags: &[&str], offers: usize) -> Pair {
    let mut mesh = Mesh::new();
    let signer_key = mesh.path("signer.key");
    let out = warren(&["component", "keygen", "--out", s(&signer_key)]);
    let signer = text(&out.stdout).trim().to_owned();
    let ids: Vec<Identity> = ["controller", "node1", "late"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let mut extra = config(&mesh, "node1", work);
    extra.extend(["--signer".into(), signer, "--no-ansible-runner".into()]);
    // The controller may submit anything here and deploy components.
    extra.extend(
        [
            "--allow-work",
            "*=controller",
            "--allow-deploy",
            "controller",
        ]
        .map(String::from),
    );
    extra.extend(flags.iter().map(|f| (*f).to_owned()));
    let node1 = mesh.start(&ids[1], &[trust(&all), extra].concat());
    let addr = mesh.node(node1).addr().to_owned();
    let controller = mesh.start(&ids[0], &[trust(&all), peer(&addr)].concat());
    mesh.wait_route(controller, "node1", None);
    wait_for("node1 to offer its work types", || {
        let status = mesh.status(node1)?;
        (status["WorkTypes"].as_array()?.len() == offers).then_some(())
    });
    Pair {
        mesh,
        ids,
        signer_key,
        controller,
        node1,
    }
}

impl Pair {
    fn ctl(&self, args: &[&str]) -> Output {
        self.mesh.ctl(self.controller, args)
    }

    /// Signs the probe handler for `work_type` with extra sign flags; returns its path.
    fn sign_probe(&self, name: &str, work_type: &str, flags: &[&str]) -> PathBuf {
        let path = self.mesh.path(name);
        std::fs::write(&path, PROBE).unwrap();
        let key = s(&self.signer_key);
        let mut args = vec!["component", "sign", "--key", key, s(&path)];
        args.extend(["--name", "probe", "--version", "1.0.0"]);
        args.extend(["--work-type", work_type, "--program", "*"]);
        args.extend(flags);
        let out = warren(&args);
        assert!(out.status.success(), "sign: {out:?}");
        path
    }

    fn deploy(&self, component: &Path) -> Output {
        self.ctl(&["component", "deploy", s(component), "--node", "node1"])
    }

    /// The JSON status of node1's unit `id` (asked at node1).
    fn unit(&self, id: &str) -> serde_json::Value {
        let out = self.mesh.ctl(self.node1, &["work", "status", id, "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// node1's unit ids, sorted.
    fn node1_units(&self) -> Vec<String> {
        let out = self.mesh.ctl(self.node1, &["work", "list", "--json"]);
        let units: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        units
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn node1_results(&self, unit: &str) -> String {
        let dir = self.mesh.path("node1-data/units").join(unit);
        std::fs::read_to_string(dir.join("stdout")).unwrap_or_default()
    }

    /// The limits node1 reports for `work_type`.
    fn limits(&self, work_type: &str) -> serde_json::Value {
        let status = self.mesh.status(self.node1).unwrap();
        let types = status["WorkTypes"].as_array().unwrap().clone();
        let entry = types.into_iter().find(|w| w["WorkType"] == work_type);
        entry.unwrap()["Limits"].clone()
    }
}

#[test]
fn a_guest_hoarding_descriptors_is_capped_while_the_node_serves_pings_links_and_jobs() {
    let mut pair = pair(
        "",
        &[
            "--work-type",
            "hold=/bin/cat",
            "--work-type",
            "cat=/bin/cat",
            "--allow-work",
            "cat=late",
        ],
        2,
    );
    let probe = pair.sign_probe("probe.wasm", "hold", &[]);
    ok(pair.deploy(&probe), &pair.mesh);
    let cap = pair.limits("hold")["Descriptors"].as_u64().unwrap();
    assert!((16..=1024).contains(&cap), "{cap}");

    // Open descriptors in a loop (up to 100,000) and hold them until cancelled.
    let submit = [
        "work",
        "submit",
        "hold",
        "--node",
        "node1",
        "-a",
        "probe=open-files",
        "-a",
        "hold=1",
    ];
    let unit = ok(pair.ctl(&submit), &pair.mesh).trim().to_owned();
    let (remote, report) = wait_for("the probe to report its descriptors", || {
        pair.node1_units().into_iter().find_map(|u| {
            let report = pair.node1_results(&u);
            report.starts_with("open-files").then_some((u, report))
        })
    });
    let opened = cap - 3;
    assert_eq!(
        report,
        format!("open-files {opened} err OutOfMemory: Out of memory (os error 48)\n"),
        "the guest got an error value at its cap"
    );
    assert_eq!(
        pair.unit(&remote)["StateName"],
        "Running",
        "still holding them"
    );

    // Meanwhile node1 answers pings, accepts a new mesh link and runs another job.
    let ping = ok(pair.ctl(&["ping", "node1", "--count", "1"]), &pair.mesh);
    assert!(ping.starts_with("Reply from node1"), "{ping}");
    let all: Vec<&Identity> = pair.ids.iter().collect();
    let addr = pair.mesh.node(pair.node1).addr().to_owned();
    let late_id = pair.ids[2].clone();
    let late = pair
        .mesh
        .start(&late_id, &[trust(&all), peer(&addr)].concat());
    pair.mesh.wait_route(late, "node1", None);
    let payload = pair.mesh.path("payload");
    std::fs::write(&payload, b"still serving\n").unwrap();
    let cat = [
        "work",
        "submit",
        "cat",
        "--node",
        "node1",
        "--payload",
        s(&payload),
        "-f",
    ];
    let out = pair.mesh.ctl(late, &cat);
    assert_eq!(ok(out, &pair.mesh), "still serving\n");

    ok(pair.ctl(&["work", "cancel", &unit]), &pair.mesh);
    wait_for("the hold unit to end", || {
        (pair.unit(&remote)["StateName"] == "Canceled").then_some(())
    });
}

#[test]
fn a_job_filling_its_directory_fails_with_the_reason_and_other_units_keep_results() {
    let work = r#"
[[work-type]]
name = "fill"
handler = "command"
program = "/bin/dd"
params = "if=/dev/zero of=fill bs=1M count=64"
disk-mb = 8
disk-inodes = 100
"#;
    let pair = pair(work, &["--work-type", "cat=/bin/cat"], 2);
    let limits = pair.limits("fill");
    assert_eq!(limits["DiskBytes"], 8 << 20);
    assert_eq!(limits["DiskInodes"], 100);
    let shown = ok(pair.mesh.ctl(pair.node1, &["status"]), &pair.mesh);
    assert!(shown.contains("Limits per job:"), "{shown}");
    assert!(shown.contains("8 MiB, 100 files"), "{shown}");

    let payload = pair.mesh.path("payload");
    std::fs::write(&payload, b"keep me\n").unwrap();
    let cat = [
        "work",
        "submit",
        "cat",
        "--node",
        "node1",
        "--payload",
        s(&payload),
        "-f",
    ];
    assert_eq!(ok(pair.ctl(&cat), &pair.mesh), "keep me\n");
    let kept = pair.node1_units();

    let out = pair.ctl(&["work", "submit", "fill", "--node", "node1", "-f"]);
    assert!(!out.status.success(), "{out:?}");
    let fill = pair
        .node1_units()
        .into_iter()
        .find(|u| !kept.contains(u))
        .unwrap();
    let status = wait_for("the fill unit to end", || {
        let status = pair.unit(&fill);
        (status["StateName"] == "Failed").then_some(status)
    });
    let detail = status["Detail"].as_str().unwrap();
    assert!(
        detail.starts_with("job directory exceeded its disk quota")
            && detail.contains("the quota is 8388608 bytes and 100 inodes"),
        "{detail}"
    );
    let job_dir = pair.mesh.path("node1-data/units").join(&fill).join("job");
    assert!(!job_dir.exists(), "its directory is freed");

    // The earlier unit's results are intact, and node1 runs the next job.
    let results = pair.mesh.ctl(pair.node1, &["work", "results", &kept[0]]);
    assert_eq!(ok(results, &pair.mesh), "keep me\n");
    assert_eq!(ok(pair.ctl(&cat), &pair.mesh), "keep me\n");
}

#[test]
fn arguments_beyond_the_policy_are_refused_at_spawn_and_at_deploy() {
    let work = r#"
[[work-type]]
name = "cat"
handler = "command"
program = "/bin/cat"
allow-runtime-params = true
args = ["{job-path}"]
"#;
    let pair = pair(work, &[], 1);
    let limits = pair.limits("cat");
    assert_eq!(limits["Arguments"]["cat"], "{job-path}");

    // guest-runner asked, through runtime params, to cat /etc/passwd: refused, named.
    let submit = [
        "work",
        "submit",
        "cat",
        "--node",
        "node1",
        "-a",
        "params=/etc/passwd",
        "-f",
    ];
    let out = pair.ctl(&submit);
    assert!(!text(&out.stdout).contains("root:"), "{out:?}");
    let unit = pair.node1_units().pop().unwrap();
    let detail = pair.unit(&unit)["Detail"].as_str().unwrap().to_owned();
    assert_eq!(
        detail,
        "cannot start cat: program \"cat\" may not be run with these arguments: argument 0 \
         \"/etc/passwd\" is not a path inside the job directory"
    );

    // A component whose manifest claims any arguments for cat: refused at deploy.
    let greedy = pair.sign_probe("greedy.wasm", "cat", &["--arg", "cat=*"]);
    let out = pair.deploy(&greedy);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("asks to run \"cat\" with arguments work type cat does not allow")
            && err.contains("it declares arguments `*`"),
        "{err}"
    );

    // One that claims job-dir paths is deployed, and its own `cat /etc/passwd` is refused
    // at spawn with a value; `cat` of a file in its job directory runs.
    let honest = pair.sign_probe("honest.wasm", "cat", &["--arg", "cat={job-path}"]);
    ok(pair.deploy(&honest), &pair.mesh);
    let ask = |arg: &str| {
        let probe_arg = format!("probe-arg={arg}");
        let args = [
            "work",
            "submit",
            "cat",
            "--node",
            "node1",
            "-a",
            "probe=spawn",
        ];
        ok(
            pair.ctl(&[&args[..], &["-a", &probe_arg, "-f"]].concat()),
            &pair.mesh,
        )
    };
    let refused = ask("/etc/passwd");
    assert!(
        refused.starts_with("spawn err SpawnError::NotAllowed(")
            && refused.contains("is not a path inside the job directory"),
        "{refused}"
    );
    assert_eq!(
        ask("."),
        "spawn exited 1\n",
        "cat of a directory: allowed, fails"
    );
}

#[test]
fn below_the_free_space_floor_new_work_is_refused_naming_floor_and_free_space() {
    // A floor no disk has: every new unit is refused, clearly.
    let pair = pair(
        "[work]\nfree-space-floor-mb = 1073741824\n",
        &["--work-type", "cat=/bin/cat"],
        1,
    );
    let out = pair.ctl(&["work", "submit", "cat", "--node", "node1", "-f"]);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("node node1 refuses new work")
            && err.contains("MiB free, below this node's free-space floor of 1073741824 MiB")
            && err.contains("[work] free-space-floor-mb"),
        "{err}"
    );
    assert!(
        pair.mesh.status(pair.node1).is_some(),
        "node1 keeps running"
    );
}

#[test]
fn a_submitter_holding_its_limit_of_units_is_refused_more_until_it_releases_one() {
    // Without the limit a peer could submit units and never release them, growing the
    // node's memory and disk until the free-space floor stops everyone's work.
    let pair = pair(
        "[work]\nmax-units-per-submitter = 2\n",
        &["--work-type", "cat=/bin/cat"],
        1,
    );
    let submit = || pair.ctl(&["work", "submit", "cat", "--node", "node1", "-f"]);
    ok(submit(), &pair.mesh);
    ok(submit(), &pair.mesh);
    let out = submit();
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("exceeds node node1's limit of 2")
            && err.contains("release finished units")
            && err.contains("[work] max-units-per-submitter"),
        "{err}"
    );
    assert_eq!(
        pair.node1_units().len(),
        2,
        "no unit made for the refused one"
    );
    // Releasing one of them (through the controller's mirror) makes room again.
    let out = pair.ctl(&["work", "list", "--json"]);
    let mirrors: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let succeeded = mirrors
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, s)| s["StateName"] == "Succeeded")
        .map(|(id, _)| id.clone())
        .unwrap();
    ok(pair.ctl(&["work", "release", &succeeded]), &pair.mesh);
    ok(submit(), &pair.mesh);
}

#[test]
fn a_node_with_a_relative_data_dir_gives_children_an_absolute_home() {
    let dir = tempfile::Builder::new()
        .prefix("warren-test")
        .tempdir()
        .unwrap();
    let key = dir.path().join("n.key");
    assert!(warren(&["keygen", "--out", s(&key)]).status.success());
    // Prints HOME, and whether it is a directory while the job runs (the job directory is
    // removed when the unit ends).
    let home_script = dir.path().join("home.sh");
    std::fs::write(
        &home_script,
        "#!/bin/sh\necho \"HOME=$HOME\"\n[ -d \"$HOME\" ] && echo 'HOME is a directory'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &home_script,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let socket = dir.path().join("n.sock");
    let ready = dir.path().join("n.ready");
    let log = std::fs::File::create(dir.path().join("n.log")).unwrap();
    let mut node = Command::new(warren_bin())
        .current_dir(dir.path())
        .args(["node", "--id", "n", "--key", "n.key", "--data-dir", "data"])
        .args(["--control-socket", s(&socket), "--listen", "127.0.0.1:0"])
        .args(["--ready-file", s(&ready), "--no-ansible-runner"])
        .args(["--work-type", &format!("env={}", s(&home_script))])
        .env("WARREN_COMPONENT_CACHE", crate::support::component_cache())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut node);
    wait_for("the node to be ready", || ready.exists().then_some(()));
    let socket_arg = ["--socket", s(&socket)];
    let env = wait_for("the env work type", || {
        let out = warren(&[&["work", "submit", "env", "-f"][..], &socket_arg].concat());
        out.status.success().then(|| text(&out.stdout))
    });
    let home = env
        .lines()
        .find_map(|l| l.strip_prefix("HOME="))
        .unwrap_or_else(|| panic!("{env}"));
    let home = Path::new(home);
    assert!(home.is_absolute(), "{env}");
    assert!(env.contains("HOME is a directory"), "{env}");
    let data = dir.path().join("data").canonicalize().unwrap();
    assert!(
        home.starts_with(&data),
        "{} not in {}",
        home.display(),
        data.display()
    );
}
