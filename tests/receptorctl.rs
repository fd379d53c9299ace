//! The real `receptorctl` (PyPI) and the AWX-style pipeline, unchanged, against Warren
//! nodes: controller -> relay -> node1, where node1 offers `cat` and `ansible-runner`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{Identity, Mesh, peer, trust, wait_for};

/// The project's venv `bin/` (`scripts/setup-python.sh` creates it, with receptorctl).
pub fn venv_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    assert!(
        bin.join("receptorctl").is_file() && bin.join("ansible-runner").is_file(),
        "{} has no receptorctl or ansible-runner; run scripts/setup-python.sh",
        bin.display()
    );
    bin.canonicalize().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command from the venv, with a PATH that finds the venv's ansible tools.
fn venv_command(program: &str) -> Command {
    let bin = venv_bin();
    let mut command = Command::new(bin.join(program));
    command
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("LANG", "C.UTF-8");
    command
}

struct Line {
    mesh: Mesh,
    controller: usize,
    node1: usize,
    /// The controller's config file (it runs with `--config` plus the test flags).
    config: PathBuf,
}

impl Line {
    fn socket(&self, index: usize) -> String {
        self.mesh.node(index).socket.display().to_string()
    }

    /// `receptorctl --socket <controller> ARGS`.
    fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with_stdin(args, Stdio::null())
    }

    fn ctl_with_stdin(&self, args: &[&str], stdin: Stdio) -> Output {
        venv_command("receptorctl")
            .arg("--socket")
            .arg(self.socket(self.controller))
            .args(args)
            .stdin(stdin)
            .output()
            .unwrap()
    }

    /// Like [`Line::ctl`], asserting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "receptorctl {args:?}: {out:?}\n{}",
            self.mesh.logs()
        );
        text(&out.stdout)
    }
}

/// controller -> relay -> node1; waits for node1's work types to reach the controller.
fn line() -> Line {
    let mut mesh = Mesh::new();
    let ids: Vec<Identity> = ["controller", "relay", "node1"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let runner = venv_bin().join("ansible-runner").display().to_string();
    // node1 lets the controller (pinned) submit anything and use its control service.
    let node1_extra: Vec<String> = [
        "--work-type",
        "cat=/bin/cat",
        "--ansible-runner",
        &runner,
        "--allow-work",
        "*=controller",
        "--allow-control",
        "controller",
    ]
    .map(str::to_owned)
    .to_vec();
    let node1 = mesh.start(&ids[2], &[trust(&all), node1_extra].concat());
    let addr = mesh.node(node1).addr().to_owned();
    let relay = mesh.start(&ids[1], &[trust(&all), peer(&addr)].concat());
    let addr = mesh.node(relay).addr().to_owned();
    let config = mesh.path("controller.toml");
    std::fs::write(&config, controller_toml(&mesh, &ids[0])).unwrap();
    let with_config = vec!["--config".to_owned(), config.display().to_string()];
    let controller = mesh.start(&ids[0], &[trust(&all), peer(&addr), with_config].concat());
    mesh.wait_route(controller, "node1", Some("relay"));
    wait_for("node1's work types at the controller", || {
        let status = mesh.status(controller)?;
        let ads = status["Advertisements"].as_array()?;
        let offered = ads.iter().any(|ad| {
            ad["NodeID"] == "node1" && ad["WorkCommands"].as_array().is_some_and(|w| w.len() == 2)
        });
        offered.then_some(())
    });
    Line {
        mesh,
        controller,
        node1,
        config,
    }
}

/// The controller's settings as a file; the test flags repeat them and add the rest.
fn controller_toml(mesh: &Mesh, id: &Identity) -> String {
    format!(
        "[node]\nid = \"{}\"\ndata-dir = \"{}\"\nkey-file = \"{}\"\n",
        id.id,
        mesh.path("controller-data").display(),
        id.key.display()
    )
}

/// The unit id in `Unit ID: X` (receptorctl's submit output without `-f`).
fn unit_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Unit ID: "))
        .unwrap_or_else(|| panic!("no unit id in {stdout}"))
        .to_owned()
}

#[test]
fn receptorctl_cli_drives_a_warren_mesh() {
    let line = line();
    let status = line.ok(&["status"]);
    assert!(status.contains("Node ID: controller"), "{status}");
    assert!(status.contains("Work Types"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("node1") && l.contains("ansible-runner") && l.contains("cat")),
        "{status}"
    );
    // node1's own status carries Warren's work types with their job limits; receptorctl
    // still parses it and shows them as additional data.
    let out = venv_command("receptorctl")
        .args(["--socket", &line.socket(line.node1), "status"])
        .output()
        .unwrap();
    let node1_status = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        node1_status.contains("Additional data returned from Receptor:")
            && node1_status.contains("\"Descriptors\"")
            && node1_status.contains("\"DiskBytes\""),
        "{node1_status}"
    );
    let ping = line.ok(&["ping", "node1", "--count", "1"]);
    assert!(ping.starts_with("Reply from node1 in "), "{ping}");
    let trace = line.ok(&["traceroute", "node1"]);
    assert!(trace.starts_with("0: relay in "), "{trace}");
    assert!(trace.contains("\n1: node1 in "), "{trace}");

    let out = line.ok(&[
        "work", "submit", "cat", "--node", "node1", "-l", "hello", "-f",
    ]);
    assert_eq!(out, "hello\n");

    // A unit with a secret parameter: the value never shows, nor in any log.
    let submitted = line.ok(&[
        "work",
        "submit",
        "cat",
        "--node",
        "node1",
        "-l",
        "again",
        "-a",
        "secret_token=hunter2",
    ]);
    let id = unit_id(&submitted);
    wait_for("the unit to succeed", || {
        // receptorctl 1.6 has no `work status` verb; `work list --unit_id` sends `work list X`.
        let list: serde_json::Value =
            serde_json::from_str(&line.ok(&["work", "list", "--unit_id", &id])).ok()?;
        (list[&id]["StateName"] == "Succeeded").then_some(())
    });
    let list: serde_json::Value = serde_json::from_str(&line.ok(&["work", "list"])).unwrap();
    assert_eq!(list.as_object().unwrap().len(), 2, "{list}");
    assert_eq!(list[&id]["WorkType"], "cat");
    assert_eq!(line.ok(&["work", "results", &id]), "again\n");
    let remote: serde_json::Value =
        serde_json::from_str(&line.ok(&["work", "list", "--node", "node1"])).unwrap();
    let remote = remote.as_object().unwrap();
    assert_eq!(remote.len(), 2, "{remote:?}");
    assert!(
        remote.values().all(|u| u["WorkType"] == "cat"),
        "{remote:?}"
    );
    for shown in [
        line.ok(&["work", "list"]),
        line.ok(&["work", "list", "--node", "node1"]),
    ] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    assert_eq!(
        line.ok(&["work", "cancel", &id]),
        format!("Cancelled:\n({id}, cancelled)\n")
    );
    assert_eq!(
        line.ok(&["work", "release", &id]),
        format!("Released:\n({id}, released)\n")
    );
    let out = line.ctl(&["work", "results", &id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("unknown work unit {id}")),
        "{out:?}"
    );
    assert!(
        !line.mesh.logs().contains("hunter2"),
        "a secret reached a log"
    );
}

#[test]
fn reload_rereads_the_config_and_refuses_what_needs_a_restart() {
    let line = line();
    assert_eq!(line.ok(&["reload"]), "Reload successful\n");
    let original = std::fs::read_to_string(&line.config).unwrap();
    let with_tuning = format!("{original}\n[mesh]\nmax-hops = 9\n");
    std::fs::write(&line.config, with_tuning).unwrap();
    let out = line.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text(&out.stderr).contains("(mesh)"), "{out:?}");
    assert!(text(&out.stderr).contains("ERRORCODE 3"), "{out:?}");
    std::fs::write(&line.config, "[node\nid = ").unwrap();
    let out = line.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    std::fs::write(&line.config, original).unwrap();
    assert_eq!(line.ok(&["reload"]), "Reload successful\n");
    // node1 was started from flags only: nothing to re-read.
    let out = venv_command("receptorctl")
        .args(["--socket", &line.socket(line.node1), "reload"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The Python library as AWX uses it, including the `--worker-info` health check.
const LIBRARY_SCRIPT: &str = r#"
import sys, time
from receptorctl.socket_interface import ReceptorControl
rc = ReceptorControl(sys.argv[1])
status = rc.simple_command("status")
assert status["NodeID"] == "controller", status
rc.close()
rc = ReceptorControl(sys.argv[1])
work = rc.submit_work(worktype="cat", payload=b"from python\n", node="node1")
assert work["result"] == "Job Started", work
out = rc.get_work_results(work["unitid"], return_sockfile=True).read()
assert out == b"from python\n", out
rc = ReceptorControl(sys.argv[1])
work = rc.submit_work(worktype="ansible-runner", payload="", node="node1",
                      params={"params": "--worker-info"}, ttl="20s")
unit = work["unitid"]
for _ in range(60):
    status = rc.simple_command(f"work status {unit}")
    if status["State"] in (2, 3):
        break
    time.sleep(0.5)
assert status["StateName"] == "Succeeded", status
out = rc.get_work_results(unit, return_sockfile=True).read().decode()
print(out)
"#;

#[test]
fn python_library_submits_and_reads_results() {
    let line = line();
    let out = venv_command("python")
        .args(["-c", LIBRARY_SCRIPT, &line.socket(line.controller)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", line.mesh.logs());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("runner_version"), "{stdout}");
    assert!(stdout.contains("cpu_count"), "{stdout}");
}

#[test]
fn awx_pipeline_runs_the_demo_across_two_hops() {
    let line = line();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let (sent, processed, local) = (
        line.mesh.path("sent"),
        line.mesh.path("processed"),
        line.mesh.path("local"),
    );
    for dst in [&sent, &processed, &local] {
        let ok = Command::new("cp").arg("-r").arg(&demo).arg(dst).status();
        assert!(ok.unwrap().success());
    }
    let mut transmit = venv_command("ansible-runner")
        .args([
            "transmit",
            sent.to_str().unwrap(),
            "-p",
            "test.yml",
            "-i",
            "awx",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut submit = venv_command("receptorctl")
        .args(["--socket", &line.socket(line.controller)])
        .args(["work", "submit", "ansible-runner", "--node", "node1"])
        .args(["--payload", "-", "-f"])
        .stdin(transmit.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let process = venv_command("ansible-runner")
        .args(["process", processed.to_str().unwrap(), "-i", "awx"])
        .stdin(submit.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(transmit.wait().unwrap().success());
    assert!(submit.wait().unwrap().success(), "{}", line.mesh.logs());
    assert!(
        process.status.success(),
        "{process:?}\n{}",
        line.mesh.logs()
    );
    assert!(
        text(&process.stdout).contains("\"msg\": \"Test!\""),
        "{process:?}"
    );
    let local_run = venv_command("ansible-runner")
        .args([
            "run",
            local.to_str().unwrap(),
            "-p",
            "test.yml",
            "-i",
            "awx",
        ])
        .output()
        .unwrap();
    assert!(local_run.status.success(), "{local_run:?}");
    let (remote, local) = (processed.join("artifacts/awx"), local.join("artifacts/awx"));
    assert_eq!(files(&remote), files(&local));
    assert_eq!(
        files(&remote.join("job_events")).len(),
        files(&local.join("job_events")).len()
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("status")).unwrap(),
        "successful"
    );
    assert_eq!(std::fs::read_to_string(remote.join("rc")).unwrap(), "0");
}

fn files(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn malformed_requests_get_receptor_errors_and_the_session_goes_on() {
    let line = line();
    let mut stream = UnixStream::connect(&line.mesh.node(line.controller).socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut read_line = || {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        l
    };
    assert_eq!(read_line(), "Receptor Control, node controller\n");
    let requests = concat!(
        "{\"command\":\n",
        "frobnicate\n",
        "{\"command\":\"work\",\"subcommand\":\"submit\",\"node\":\"node1\",\"worktype\":\"cat\",\"count\":3}\n",
        "work status Zz0Zz0Zz\n",
        "work results Zz0Zz0Zz\n",
        "connect nowhere control \n",
        "{\"command\":\"status\",\"requested_fields\":[\"NodeID\"]}\n",
    );
    stream.write_all(requests.as_bytes()).unwrap();
    assert!(read_line().starts_with("ERROR: EOF while parsing"));
    assert_eq!(read_line(), "ERROR: Unknown command\n");
    assert_eq!(read_line(), "ERROR: Unknown command\n");
    assert_eq!(
        read_line(),
        "ERROR: submit parameters must all be strings and count is not\n"
    );
    assert_eq!(read_line(), "ERROR: unknown work unit Zz0Zz0Zz\n");
    assert_eq!(read_line(), "ERROR: unknown work unit Zz0Zz0Zz\n");
    assert!(read_line().starts_with("ERROR: "));
    assert_eq!(read_line(), "{\"NodeID\":\"controller\"}\n");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
}
