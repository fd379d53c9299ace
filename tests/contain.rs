//! Job containment, checked as an operator would: real `warren node` processes running
//! `command` work types whose programs daemonise, fork too much, eat memory, print their
//! limits or their network; the process table is read from `/proc`, never inferred from
//! unit states.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::{Mesh, wait_for};

/// A string no other process on the machine has in its command line.
pub fn marker() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("wrnmark{}x{n}", std::process::id())
}

/// Pids of live processes whose command line contains `marker` (zombies have none).
pub fn marked(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Live processes whose working directory is inside `dir`, with their command lines (how
/// to find a job's processes when their arguments carry no marker: each works in the
/// unit's job directory).
pub fn working_in(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (!cmd.is_empty()).then_some((pid, cmd))
        })
        .collect()
}

/// Waits until no process carries `marker`; fails naming the survivors.
pub fn assert_all_gone(marker: &str, after: &str) {
    let start = std::time::Instant::now();
    loop {
        let left = marked(marker);
        if left.is_empty() {
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            let lines: Vec<String> = left
                .iter()
                .map(|pid| {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    format!(
                        "{pid}: {}",
                        String::from_utf8_lossy(&cmd).replace('\0', " ")
                    )
                })
                .collect();
            panic!(
                "processes of the job survived {after}:\n{}",
                lines.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An executable shell script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A copy of `sleep` whose path (so its command line) carries `marker`.
pub fn marked_sleep(dir: &Path, marker: &str) -> PathBuf {
    let path = dir.join(format!("sleep-{marker}"));
    std::fs::copy("/bin/sleep", &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A script that daemonises three ways (`setsid`, a double fork, `nohup`) and then keeps
/// running: every process it leaves carries `marker`.
fn escaping_script(dir: &Path, marker: &str) -> PathBuf {
    let sleep = marked_sleep(dir, marker);
    let s = sleep.display();
    script(
        dir,
        &format!("escape-{marker}.sh"),
        &format!(
            "setsid {s} 300 &\n\
             ( {s} 301 & ) &\n\
             nohup {s} 302 >/dev/null 2>&1 &\n\
             sh -c '{s} 303 & exit 0' &\n\
             echo started\n\
             exec {s} 304\n"
        ),
    )
}

/// Starts one node `n1` with `config` (TOML after `[node]`) and returns the mesh.
pub fn node(config: &str) -> Mesh {
    let mut mesh = Mesh::new();
    let id = mesh.identity("n1");
    let file = mesh.path("n1.toml");
    let text = format!(
        "[node]\nid = \"n1\"\ndata-dir = {:?}\nkey-file = {:?}\n{config}",
        mesh.path("n1-data").display().to_string(),
        id.key.display().to_string()
    );
    std::fs::write(&file, text).unwrap();
    mesh.start(&id, &["--config".into(), file.display().to_string()]);
    let types = config.matches("[[work-type]]").count();
    wait_for("the work types to be offered", || {
        let report = mesh.status(0)?;
        (report["WorkTypes"].as_array()?.len() == types).then_some(())
    });
    mesh
}

pub fn command_type(name: &str, program: &Path, extra: &str) -> String {
    format!(
        "[[work-type]]\nname = \"{name}\"\nhandler = \"command\"\nprogram = {:?}\n{extra}\n",
        program.display().to_string()
    )
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Submits a unit of `work_type` with no payload; returns its id.
fn submit(mesh: &Mesh, work_type: &str) -> String {
    let out = mesh.ctl(0, &["work", "submit", work_type]);
    assert!(out.status.success(), "{out:?}\n{}", mesh.logs());
    text(&out.stdout).trim().to_owned()
}

/// The unit's status JSON.
fn status(mesh: &Mesh, unit: &str) -> serde_json::Value {
    let out = mesh.ctl(0, &["work", "status", unit, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Waits for the unit to reach `state`; returns its status.
fn wait_state(mesh: &Mesh, unit: &str, state: &str) -> serde_json::Value {
    wait_for(&format!("unit {unit} to be {state}"), || {
        let status = status(mesh, unit);
        (status["StateName"] == state).then_some(status)
    })
}

/// Waits until the unit has printed something (the script got going).
fn wait_output(mesh: &Mesh, unit: &str) {
    wait_for(&format!("unit {unit} to print"), || {
        (status(mesh, unit)["StdoutSize"].as_u64()? > 0).then_some(())
    });
}

/// The daemonising job, then `work cancel`: the unit is Canceled and nothing it started is
/// left, whatever the containment.
fn cancel_leaves_nothing(containment: &str) {
    let marker = marker();
    let dir = tempfile::tempdir().unwrap();
    let program = escaping_script(dir.path(), &marker);
    let config = format!(
        "[work]\ncontainment = \"{containment}\"\n{}",
        command_type("escape", &program, "")
    );
    let mesh = node(&config);
    let unit = submit(&mesh, "escape");
    wait_output(&mesh, &unit);
    wait_for("all five sleeps to run", || {
        (marked(&marker).len() >= 5).then_some(())
    });
    let out = mesh.ctl(0, &["work", "cancel", &unit]);
    assert!(out.status.success(), "{out:?}");
    wait_state(&mesh, &unit, "Canceled");
    assert_all_gone(&marker, "work cancel");
}

#[test]
fn setsid_double_fork_and_nohup_children_die_on_cancel_in_cgroups() {
    cancel_leaves_nothing("cgroup");
}

#[test]
fn setsid_double_fork_and_nohup_children_die_on_cancel_under_the_subreaper() {
    cancel_leaves_nothing("subreaper");
}

#[test]
fn setsid_double_fork_and_nohup_children_die_at_the_deadline() {
    let marker = marker();
    let dir = tempfile::tempdir().unwrap();
    let program = escaping_script(dir.path(), &marker);
    let mesh = node(&command_type("escape", &program, "deadline-seconds = 2"));
    let unit = submit(&mesh, "escape");
    wait_for("all five sleeps to run", || {
        (marked(&marker).len() >= 5).then_some(())
    });
    let status = wait_state(&mesh, &unit, "Failed");
    assert_eq!(status["Detail"], "job deadline of 2s exceeded", "{status}");
    assert_all_gone(&marker, "the deadline");
}

#[test]
fn background_children_die_when_the_program_exits() {
    let marker = marker();
    let dir = tempfile::tempdir().unwrap();
    let sleep = marked_sleep(dir.path(), &marker);
    let program = script(
        dir.path(),
        "bg.sh",
        &format!("setsid {} 300 &\necho done\n", sleep.display()),
    );
    let mesh = node(&command_type("bg", &program, ""));
    let unit = submit(&mesh, "bg");
    let status = wait_state(&mesh, &unit, "Succeeded");
    assert_eq!(status["Detail"], "exit status 0");
    assert_all_gone(&marker, "the job's end");
}

#[test]
fn a_job_over_its_pids_cap_is_stopped_with_that_reason() {
    let marker = marker();
    let dir = tempfile::tempdir().unwrap();
    let sleep = marked_sleep(dir.path(), &marker);
    let program = script(
        dir.path(),
        "forks.sh",
        &format!(
            "i=0\nwhile [ $i -lt 40 ]; do {} 300 & i=$((i+1)); done\nwait\n",
            sleep.display()
        ),
    );
    let mesh = node(&command_type("forks", &program, "program-pids = 16"));
    let unit = submit(&mesh, "forks");
    let status = wait_state(&mesh, &unit, "Failed");
    let detail = status["Detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("stopped: the job's programs reached their limit of 16 processes"),
        "{status}\n{}",
        mesh.logs()
    );
    let recorded = &status["ExtraData"]["Containment"];
    assert_eq!(recorded["Limits"]["Pids"], 16, "{status}");
    assert!(
        recorded["Stopped"]
            .as_str()
            .unwrap_or_default()
            .contains("16 processes"),
        "{status}"
    );
    assert_all_gone(&marker, "the pids cap");
}

#[test]
fn a_job_over_its_memory_cap_is_stopped_with_that_reason() {
    let dir = tempfile::tempdir().unwrap();
    // 256 MiB written byte by byte into a string, against a 32 MiB cap.
    let program = script(
        dir.path(),
        "eat.sh",
        "exec python3 -c 'import time; b = b\"x\" * (256 << 20); time.sleep(30)'\n",
    );
    let mesh = node(&command_type("eat", &program, "program-memory-mb = 32"));
    let unit = submit(&mesh, "eat");
    let status = wait_state(&mesh, &unit, "Failed");
    let detail = status["Detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(
            "stopped: the job's programs exceeded their memory limit of 32 MiB (out-of-memory kill)"
        ),
        "{status}\n{}",
        mesh.logs()
    );
    assert_eq!(
        status["ExtraData"]["Containment"]["Limits"]["MemoryBytes"],
        32 << 20
    );
}

#[test]
fn programs_see_their_rlimits() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "limits.sh", "ulimit -n; ulimit -c; ulimit -f\n");
    let extra = "program-open-files = 123\nprogram-file-size-mb = 1";
    let mesh = node(&command_type("limits", &program, extra));
    let unit = submit(&mesh, "limits");
    wait_state(&mesh, &unit, "Succeeded");
    let out = mesh.ctl(0, &["work", "results", &unit]);
    // `ulimit -f` counts 512-byte blocks: 1 MiB is 2048.
    assert_eq!(text(&out.stdout), "123\n0\n2048\n");
}

#[test]
fn network_none_gives_the_program_only_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "net.sh", "cat /proc/net/dev\n");
    let config = [
        command_type("private", &program, "network = \"none\""),
        command_type("shared", &program, ""),
    ]
    .concat();
    let mesh = node(&config);
    let interfaces = |unit: &str| -> Vec<String> {
        wait_state(&mesh, unit, "Succeeded");
        let out = mesh.ctl(0, &["work", "results", unit]);
        text(&out.stdout)
            .lines()
            .filter_map(|l| Some(l.split_once(':')?.0.trim().to_owned()))
            .collect()
    };
    let private = submit(&mesh, "private");
    assert_eq!(interfaces(&private), ["lo"]);
    let host: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_owned()))
        .collect();
    let shared = submit(&mesh, "shared");
    assert_eq!(
        interfaces(&shared),
        host,
        "network = \"host\" is the node's own"
    );
}

#[test]
fn status_and_extra_data_name_the_containment_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "ok.sh", "echo ok\n");
    let mesh = node(&command_type("ok", &program, "program-pids = 99"));
    let report = wait_for("the work type to be offered", || {
        let report = mesh.status(0)?;
        (report["WorkTypes"][0]["WorkType"] == "ok").then_some(report)
    });
    let kind = report["Containment"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(kind.contains("cgroup"), "{report}");
    assert!(
        report["WorkTypes"][0]["ProgramLimits"]
            .as_str()
            .unwrap_or_default()
            .contains("99 pids"),
        "{report}"
    );
    let out = mesh.ctl(0, &["status"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("Job containment: {kind}")),
        "{shown}"
    );
    assert!(shown.contains("99 pids"), "{shown}");
    let unit = submit(&mesh, "ok");
    let status = wait_state(&mesh, &unit, "Succeeded");
    let recorded = &status["ExtraData"]["Containment"];
    assert_eq!(recorded["Kind"], kind.as_str(), "{status}");
    assert_eq!(recorded["Limits"]["Pids"], 99);
    assert_eq!(recorded["Detached"], false);
    let cgroups = recorded["Cgroups"].as_array().cloned().unwrap_or_default();
    assert!(!cgroups.is_empty(), "{status}");
    for dir in cgroups {
        let dir = PathBuf::from(dir.as_str().unwrap_or_default());
        wait_for("the job's cgroups to be removed", || {
            (!dir.exists()).then_some(())
        });
    }
}

#[test]
fn what_a_sigkilled_node_left_running_is_killed_when_a_node_starts() {
    let marker = marker();
    let dir = tempfile::tempdir().unwrap();
    let program = escaping_script(dir.path(), &marker);
    let mut mesh = node(&command_type("escape", &program, ""));
    let unit = submit(&mesh, "escape");
    wait_for("all five sleeps to run", || {
        (marked(&marker).len() >= 5).then_some(())
    });
    mesh.node_mut(0).kill();
    // Nothing could clean up: the job's processes outlive their node...
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        marked(&marker).len() >= 5,
        "the job's processes died with the node"
    );
    // ...until a node starts and sweeps the cgroups of vanished nodes.
    mesh.restart(0);
    assert_all_gone(
        &marker,
        "a node's start after its predecessor was SIGKILLed",
    );
    let _ = unit;
}

#[test]
fn a_node_stopped_with_sigterm_leaves_no_process_of_its_jobs() {
    let marker = marker();
    let dir = tempfile::tempdir().unwrap();
    let program = escaping_script(dir.path(), &marker);
    let mut mesh = node(&command_type("escape", &program, ""));
    submit(&mesh, "escape");
    wait_for("all five sleeps to run", || {
        (marked(&marker).len() >= 5).then_some(())
    });
    let status = mesh.node_mut(0).terminate();
    assert!(status.success(), "{status}");
    assert_all_gone(&marker, "the node's shutdown");
}
