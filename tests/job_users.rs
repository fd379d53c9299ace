//! `[work] job-users`, checked as an attacker with one job would check it: a real
//! `warren node` runs two `command` units; the second one's program tries to read the first
//! one's payload through `/proc/<pid>/fd/0` and through the unit's files under the data
//! dir, and to connect to the control socket. Run without job users (the node runs as
//! root here, so do its jobs) the attack gets the payload; with them every door says
//! "Permission denied" and the first job's output is intact.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use warren::host::contain::detached::Reattach;
use warren::host::contain::users::JobUsers;
use warren::host::contain::{ContainMode, Containment};
use warren::host::params::{JobParams, Task};
use warren::host::policy::{Limits, Policy};
use warren::host::runner::{Host, Job, JobIo, Outcome};

use crate::contain::{
    assert_all_gone, command_type, marked, marked_sleep, marker, node, script, text,
};
use crate::detached;
use crate::support::{Mesh, component_cache, wait_for, warren_bin, warren_exits};

/// uids the tests reserve (no account uses them on a test machine); the tests that need
/// few uids take their own below 3_910_010, so tests running at once do not wait on each
/// other's uids.
const RANGE: (u32, u32) = (3_910_100, 3_910_109);

fn job_users_line() -> String {
    format!("job-users = \"{}-{}\"\n", RANGE.0, RANGE.1)
}

/// A directory other users can read programs from (a temp dir is 0700).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Submits a unit of `work_type` with `payload`; returns its id.
fn submit(mesh: &Mesh, work_type: &str, payload: &str) -> String {
    let file = mesh.path(&format!("payload-{}", marker()));
    std::fs::write(&file, payload).unwrap();
    let out = mesh.ctl(
        0,
        &[
            "work",
            "submit",
            work_type,
            "--payload",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", mesh.logs());
    text(&out.stdout).trim().to_owned()
}

fn status(mesh: &Mesh, unit: &str) -> serde_json::Value {
    let out = mesh.ctl(0, &["work", "status", unit, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn wait_done(mesh: &Mesh, unit: &str) -> serde_json::Value {
    wait_for(&format!("unit {unit} to end"), || {
        let status = status(mesh, unit);
        let state = status["StateName"].as_str()?;
        (state != "Running" && state != "Pending").then_some(status)
    })
}

fn results(mesh: &Mesh, unit: &str) -> String {
    let out = mesh.ctl(0, &["work", "results", unit]);
    text(&out.stdout)
}

/// The victim: leaves its payload in its stdin pipe, held open by a sleep whose command
/// line carries `mark`, until the file `go` appears; then prints the payload. (The sleep
/// gets the pipe through fd 3: `sh` gives a background command `/dev/null` as stdin before
/// its own redirections.)
fn victim(dir: &Path, mark: &str) -> PathBuf {
    let sleep = marked_sleep(dir, mark);
    script(
        dir,
        "victim.sh",
        &format!(
            "exec 3<&0\n\
             {} 120 <&3 3<&- &\n\
             echo waiting\n\
             while [ ! -e {go} ]; do sleep 0.05; done\n\
             kill $!\n\
             printf 'victim read: '; cat\n",
            sleep.display(),
            go = dir.join("go").display()
        ),
    )
}

/// The attacker: opens the victim's stdin read-write (a read-only open of a pipe whose
/// writer is gone blocks); its payload names the victim's marker, unit directory and the control
/// socket; it reports what each door gave.
fn attacker(dir: &Path) -> PathBuf {
    script(
        dir,
        "attacker.sh",
        "read mark unit sock\n\
         for p in /proc/[0-9]*; do\n\
           if tr '\\0' ' ' 2>/dev/null < $p/cmdline | grep -q \"[s]leep-$mark\"; then pid=${p#/proc/}; fi\n\
         done\n\
         echo \"victim pid: $pid\"\n\
         echo \"fd0: $(timeout 2 cat 2>&1 0<>/proc/$pid/fd/0)\"\n\
         echo \"unit stdin: $(cat $unit/stdin 2>&1)\"\n\
         echo \"unit dir: $(ls $unit 2>&1 | tr '\\n' ' ')\"\n\
         echo \"socket: $(/usr/bin/python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')\" $sock 2>&1 | tail -1)\"\n\
         echo \"kill node: $(kill -0 $PPID 2>&1 && echo allowed)\"\n\
         echo \"uid: $(id -u)\"\n",
    )
}

/// What the attacker printed and what the victim printed, on a node with `work` lines.
fn attack(work: &str) -> (String, String, String) {
    let dir = open_dir();
    let mark = marker();
    let secret = format!("secret-{mark}");
    let config = format!(
        "[work]\n{work}\n{}{}",
        command_type("victim", &victim(dir.path(), &mark), ""),
        command_type("attacker", &attacker(dir.path()), "")
    );
    let mesh = node(&config);
    let victim_unit = submit(&mesh, "victim", &format!("{secret}\n"));
    wait_for("the victim to run", || {
        (status(&mesh, &victim_unit)["StdoutSize"].as_u64()? > 0).then_some(())
    });
    wait_for("the victim's sleep to hold its stdin", || {
        (!marked(&format!("sleep-{mark}")).is_empty()).then_some(())
    });
    let unit_dir = mesh.path("n1-data").join("units").join(&victim_unit);
    let line = format!(
        "{mark} {} {}\n",
        unit_dir.display(),
        mesh.node(0).socket.display()
    );
    let attacker_unit = submit(&mesh, "attacker", &line);
    wait_done(&mesh, &attacker_unit);
    let stolen = results(&mesh, &attacker_unit);
    let found = stolen
        .lines()
        .find_map(|l| l.strip_prefix("victim pid: "))
        .and_then(|p| p.trim().parse::<i32>().ok());
    let sleeps = marked(&format!("sleep-{mark}"));
    assert!(
        found.is_some_and(|pid| sleeps.contains(&pid)),
        "the attacker did not find the victim's sleep {sleeps:?}: {stolen}"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    let status = wait_done(&mesh, &victim_unit);
    assert_eq!(
        status["StateName"],
        "Succeeded",
        "{status}\n{}",
        mesh.logs()
    );
    (stolen, results(&mesh, &victim_unit), secret)
}

#[test]
fn without_job_users_one_job_reads_anothers_payload_and_reaches_the_control_socket() {
    let (stolen, _, secret) = attack("");
    assert!(stolen.contains(&format!("fd0: {secret}")), "{stolen}");
    assert!(
        stolen.contains(&format!("unit stdin: {secret}")),
        "{stolen}"
    );
    assert!(stolen.contains("socket: connected"), "{stolen}");
    assert!(stolen.contains("uid: 0"), "{stolen}");
}

#[test]
fn with_job_users_every_door_to_another_job_is_closed_and_its_output_is_intact() {
    let (stolen, victim_output, secret) = attack(&job_users_line());
    assert!(!stolen.contains(&secret), "{stolen}");
    for door in ["fd0: ", "unit stdin: ", "unit dir: ", "socket: "] {
        let line = stolen
            .lines()
            .find(|l| l.starts_with(door))
            .unwrap_or_else(|| panic!("no {door:?} line in {stolen}"));
        assert!(line.contains("Permission denied"), "{line}\n{stolen}");
    }
    assert!(
        stolen.contains("kill node: ") && !stolen.contains("allowed"),
        "{stolen}"
    );
    let uid: u32 = stolen
        .lines()
        .find_map(|l| l.strip_prefix("uid: "))
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or_else(|| panic!("no uid in {stolen}"));
    assert!((RANGE.0..=RANGE.1).contains(&uid), "{stolen}");
    assert_eq!(victim_output, format!("waiting\nvictim read: {secret}\n"));
}

/// Prints its uid, then waits for `go`.
fn uid_printer(dir: &Path) -> PathBuf {
    script(
        dir,
        "uid.sh",
        &format!(
            "id -u\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
            dir.join("go").display()
        ),
    )
}

#[test]
fn concurrent_jobs_never_share_a_uid_and_a_full_range_fails_the_next_clearly() {
    let dir = open_dir();
    let config = format!(
        "[work]\njob-users = \"{}-{}\"\n{}",
        3_910_005,
        3_910_007,
        command_type("uid", &uid_printer(dir.path()), "")
    );
    let mesh = node(&config);
    let units: Vec<String> = (0..3).map(|_| submit(&mesh, "uid", "")).collect();
    let mut uids: Vec<String> = units
        .iter()
        .map(|u| {
            // Read the results file itself: `work results` follows until the unit ends.
            let file = mesh.path("n1-data").join("units").join(u).join("stdout");
            wait_for("the job to print its uid", || {
                let out = std::fs::read_to_string(&file).ok()?;
                out.ends_with('\n').then_some(out)
            })
        })
        .collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "{uids:?}");
    let fourth = submit(&mesh, "uid", "");
    let status = wait_done(&mesh, &fourth);
    let detail = status["Detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("every uid of [work] job-users (3910005-3910007) is held by a running job"),
        "{status}"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    for unit in &units {
        assert_eq!(wait_done(&mesh, unit)["StateName"], "Succeeded");
    }
}

#[test]
fn a_job_directory_belongs_to_the_jobs_uid_and_home_and_tmpdir_are_in_it() {
    let dir = open_dir();
    let program = script(
        dir.path(),
        "where.sh",
        "echo \"home=$HOME tmp=$TMPDIR pwd=$(pwd)\"\n\
         stat -c '%u %a' .\n\
         touch \"$TMPDIR/x\" && echo writable\n\
         grep -E '^(Groups|NoNewPrivs|CapEff):' /proc/self/status | tr -s '\\t ' ' '\n",
    );
    let mesh = node(&format!(
        "[work]\n{}{}",
        job_users_line(),
        command_type("where", &program, "")
    ));
    let unit = submit(&mesh, "where", "");
    let status = wait_done(&mesh, &unit);
    let out = results(&mesh, &unit);
    assert_eq!(status["StateName"], "Succeeded", "{status} {out}");
    let job_dir = mesh.path("n1-data").join("units").join(&unit).join("job");
    let home = format!("home={0} tmp={0} pwd={0}", job_dir.display());
    assert!(out.contains(&home), "{out}");
    let mut lines = out.lines().skip(1);
    let owner = lines.next().unwrap_or_default();
    let uid: u32 = owner
        .split(' ')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    assert!(
        (RANGE.0..=RANGE.1).contains(&uid) && owner.ends_with(" 700"),
        "{out}"
    );
    assert_eq!(lines.next(), Some("writable"), "{out}");
    assert!(
        out.contains("Groups: \n") || out.contains("Groups:\n"),
        "{out}"
    );
    assert!(out.contains("NoNewPrivs: 1"), "{out}");
    assert!(out.contains("CapEff: 0000000000000000"), "{out}");
    let data = mesh.path("n1-data");
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o711);
}

#[test]
fn a_bad_job_users_range_stops_the_node_with_what_to_do() {
    let mesh = Mesh::new();
    let id = mesh.identity("n1");
    let cases = [
        (
            "0-10",
            "[work] job-users: 0-10 holds uid 0 (root): jobs would run as root",
        ),
        (
            "9-3",
            "9-3 is empty: the first uid must not be above the last",
        ),
        ("lots", "\"lots\" is not a uid range: write FIRST-LAST"),
    ];
    for (range, expected) in cases {
        let file = mesh.path("bad.toml");
        std::fs::write(
            &file,
            format!(
                "[node]\nid = \"n1\"\ndata-dir = {:?}\nkey-file = {:?}\n[work]\njob-users = {range:?}\n",
                mesh.path("n1-data").display().to_string(),
                id.key.display().to_string()
            ),
        )
        .unwrap();
        let out = warren_exits(&["node", "--config", file.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{range}: {out:?}");
        assert!(err.contains(expected), "{range}: {err}");
    }
}

/// Set in the re-executed test process that plays the node: the unit directory.
const NODE_ROLE: &str = "WARREN_JOB_USERS_NODE";

/// The uids of the re-attach test (two: a new job must get the other one).
const REATTACH_RANGE: &str = "3910008-3910009";

/// A host whose containment runs jobs as uids of [`REATTACH_RANGE`], data dir `data`.
fn users_host(data: &Path) -> Host {
    let range = REATTACH_RANGE.parse().unwrap();
    let users = JobUsers::new(range, data).unwrap();
    let containment = Containment::detect(ContainMode::Auto, Some(warren_bin()))
        .unwrap()
        .with_job_users(users);
    Host::with_containment(&component_cache(), containment).unwrap()
}

/// In the re-executed process: be the node with job users, start the detached job, wait
/// to be killed. Returns false in the test process itself.
fn play_node() -> bool {
    let Some(dir) = std::env::var_os(NODE_ROLE) else {
        return false;
    };
    let dir = PathBuf::from(dir);
    let runner = PathBuf::from(std::env::var_os("WARREN_DETACHED_RUNNER").unwrap());
    detached::runtime().block_on(async {
        let host = users_host(dir.parent().unwrap());
        let (_cancel, rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = detached::run(&host, &dir, &runner, rx).await;
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    true
}

/// The real uid of process `pid`.
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_restarted_node_reattaches_a_job_users_job_and_does_not_hand_its_uid_out() {
    if play_node() {
        return;
    }
    let unit = detached::Unit::new();
    let data = unit.path().parent().unwrap().to_owned();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut node = Command::new(std::env::current_exe().unwrap())
        .args([
            "job_users::a_restarted_node_reattaches_a_job_users_job_and_does_not_hand_its_uid_out",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NODE_ROLE, unit.path())
        .env("WARREN_DETACHED_RUNNER", &unit.runner)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let record = wait_for("the node to start the detached job", || {
        let record = unit.record()?;
        record.program?;
        (unit.results().lines().count() >= 5).then_some(record)
    });
    node.kill().unwrap();
    node.wait().unwrap();
    let uid = record.job_user.expect("the job record names the job's uid");
    assert!((3_910_008..=3_910_009).contains(&uid), "{uid}");
    let program = record.program.unwrap();
    assert_eq!(
        uid_of(program.pid),
        Some(uid),
        "the program runs as the job's uid"
    );
    let supervisor = record.supervisor.unwrap();
    assert_eq!(
        uid_of(supervisor.pid),
        Some(0),
        "the supervisor stays the node's user"
    );
    let extra = Arc::new(Mutex::new(Vec::new()));
    let outcome = detached::runtime().block_on(async {
        let host = users_host(&data);
        let Reattach::Running(job) = host.reattach(detached::files(unit.path(), extra)) else {
            panic!("the running job was not found");
        };
        assert_eq!(job.job_user(), Some(uid));
        let users = host.containment().job_users().unwrap();
        assert_eq!(
            users.held(),
            vec![uid],
            "the re-attached job's uid is taken"
        );
        let other = users.take().expect("the other uid is free");
        assert_ne!(other.uid(), uid);
        assert!(
            users.take().is_none(),
            "the re-attached job's uid is not handed out"
        );
        drop(other);
        let (_cancel, rx) = watch::channel(false);
        job.finish(rx).await
    });
    assert_eq!(
        outcome,
        Outcome::Failed {
            detail: "ansible-runner worker exited with code 3".into(),
            exit_code: Some(3)
        }
    );
    assert!(
        unit.results().starts_with("payload:hello\nline 1\n"),
        "{}",
        unit.results()
    );
    assert!(unit.results().ends_with("line 100\n"), "{}", unit.results());
    assert_all_gone(&unit.marker, "the re-attached job's end");
}

/// `ansible-runner` and `ansible-playbook` that the job uids can run, in `dir`: the venv's
/// interpreter lives under `/root` (mode 0700) on the test machine, so these run the
/// system's `python3.11` on the venv's packages.
fn reachable_ansible(dir: &Path) -> PathBuf {
    let venv = crate::run::venv_bin();
    let site = venv.parent().unwrap().join("lib/python3.11/site-packages");
    for (name, module) in [
        ("ansible-runner", "ansible_runner.__main__"),
        ("ansible-playbook", "ansible.cli.playbook"),
    ] {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/usr/bin/python3.11\nimport site, sys\nsite.addsitedir({:?})\nfrom {module} import main\nsys.exit(main())\n",
                site.display().to_string()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.join("ansible-runner")
}

#[test]
fn the_seed_command_under_job_users_prints_what_a_local_run_prints() {
    let bin = open_dir();
    let runner = reachable_ansible(bin.path());
    let setup = crate::run::direct_setup_with_runner(&job_users_line(), &runner);
    let pdd = setup.mesh.path("demo");
    crate::run::copy_demo(&pdd);
    let args = crate::run::seed_args(&setup, &pdd, "test.yml", &["-i", "remote"]);
    let remote = crate::run::ansible_runner(&setup, &args);
    assert!(remote.status.success(), "{remote:?}\n{}", setup.mesh.logs());
    let local = crate::run::local_run(&setup, &pdd, "local");
    assert!(local.status.success(), "{local:?}");
    assert_eq!(
        text(&remote.stdout),
        text(&local.stdout),
        "stdout differs from a local run"
    );
    assert!(text(&remote.stdout).contains("\"msg\": \"Test!\""));
    let (r, l) = (pdd.join("artifacts/remote"), pdd.join("artifacts/local"));
    assert_eq!(crate::run::files(&r), crate::run::files(&l));
    assert_eq!(crate::run::counters(&r), crate::run::counters(&l));
    assert_eq!(
        std::fs::read_to_string(r.join("status")).unwrap(),
        "successful"
    );
    let log = setup.mesh.logs();
    assert!(log.contains("each job runs as a uid of its own"), "{log}");
}

/// One uid, two jobs one after the other: the first leaves a daemon (`setsid`) of its uid
/// behind; the second, which gets the same uid, finds no process of the first alive.
fn a_uid_comes_back_only_without_the_last_jobs_processes(containment: &str, uid: u32) {
    let dir = open_dir();
    let mark = marker();
    let sleep = marked_sleep(dir.path(), &mark);
    let leaver = script(
        dir.path(),
        "leave.sh",
        &format!("setsid {} 300 &\nid -u\n", sleep.display()),
    );
    let counter = script(
        dir.path(),
        "count.sh",
        &format!(
            "id -u\nn=0\nfor p in /proc/[0-9]*; do\n\
               if tr '\\0' ' ' 2>/dev/null < $p/cmdline | grep -q \"[s]leep-{mark}\"; then n=$((n+1)); fi\n\
             done\necho \"left: $n\"\n"
        ),
    );
    let config = format!(
        "[work]\ncontainment = {containment:?}\njob-users = \"{uid}-{uid}\"\n{0}{1}",
        command_type("leave", &leaver, ""),
        command_type("count", &counter, "")
    );
    let mesh = node(&config);
    let first = submit(&mesh, "leave", "");
    let status = wait_done(&mesh, &first);
    assert_eq!(
        status["StateName"],
        "Succeeded",
        "{status}\n{}",
        mesh.logs()
    );
    let second = submit(&mesh, "count", "");
    let status = wait_done(&mesh, &second);
    let out = results(&mesh, &second);
    assert_eq!(
        status["StateName"],
        "Succeeded",
        "{status}\n{out}\n{}",
        mesh.logs()
    );
    let uid = uid.to_string();
    assert_eq!(results(&mesh, &first), format!("{uid}\n"));
    assert_eq!(out, format!("{uid}\nleft: 0\n"), "{}", mesh.logs());
}

#[test]
fn a_uid_is_handed_out_again_only_once_the_daemon_its_job_left_is_gone_in_cgroups() {
    a_uid_comes_back_only_without_the_last_jobs_processes("cgroup", 3_910_004);
}

#[test]
fn a_uid_is_handed_out_again_only_once_the_daemon_its_job_left_is_gone_under_the_subreaper() {
    a_uid_comes_back_only_without_the_last_jobs_processes("subreaper", 3_910_003);
}

/// A host containing programs by process group only (no cgroups, no supervisor: what a
/// node falls back to on a host with neither, and what no config can ask for), running
/// jobs as uids of `range`, data dir `data`.
fn process_group_host(range: &str, data: &Path) -> Host {
    let users = JobUsers::new(range.parse().unwrap(), data).unwrap();
    let containment = Containment::process_groups().with_job_users(users);
    Host::with_containment(&component_cache(), containment).unwrap()
}

/// Runs `program` as command work type `name` on `host`, in unit directory `unit` (job
/// directory `unit/job`), as the work layer would; `cancel` cancels it.
async fn run_command(
    host: Arc<Host>,
    unit: PathBuf,
    name: &'static str,
    program: PathBuf,
    cancel: watch::Receiver<bool>,
) -> Outcome {
    let guest = host.load(warren::host::builtin::GUEST_RUNNER).unwrap();
    let limits = Limits {
        deadline: Duration::from_secs(120),
        cancel_grace: Duration::from_millis(200),
        ..Limits::default()
    };
    let policy = Arc::new(Policy::for_command(name, &program, &[], |_| None, limits));
    let job = Job {
        id: unit.file_name().unwrap().to_str().unwrap().into(),
        work_type: name.into(),
        task: Task::Command {
            program: name.into(),
            args: Vec::new(),
        },
        params: JobParams::default(),
    };
    std::fs::create_dir_all(unit.join("job")).unwrap();
    std::fs::write(unit.join("stdin"), "").unwrap();
    std::fs::write(unit.join("stdout"), "").unwrap();
    let io = JobIo {
        job_dir: unit.join("job"),
        payload: Box::new(tokio::fs::File::open(unit.join("stdin")).await.unwrap()),
        results: Box::new(
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(unit.join("stdout"))
                .await
                .unwrap(),
        ),
        files: None,
    };
    host.run(&guest, policy, job, io, cancel).await
}

#[test]
fn under_process_group_containment_a_setsid_double_forked_daemon_dies_at_cancel_and_its_uid_comes_back()
 {
    // This stop's review: a process group does not hold a `setsid` daemon, so it outlived
    // its job, kept the job's uid out of the pool for good, and enough of them used the
    // pool up. The job's uid is its alone: every process of it dies with the job.
    let uid = 3_910_002;
    let dir = open_dir();
    let mark = marker();
    let sleep = marked_sleep(dir.path(), &mark);
    let program = script(
        dir.path(),
        "daemon.sh",
        &format!(
            "setsid sh -c '({} 300 &) ; exit 0' </dev/null >/dev/null 2>&1 &\n\
             echo started\n\
             exec sleep 300\n",
            sleep.display()
        ),
    );
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let unit = data.path().join("units").join("PGroup01");
    let runtime = detached::runtime();
    let host = Arc::new(
        runtime.block_on(async { process_group_host(&format!("{uid}-{uid}"), data.path()) }),
    );
    let (cancel, rx) = watch::channel(false);
    let job = runtime.spawn(run_command(host.clone(), unit, "daemon", program, rx));
    let daemon = wait_for("the job's daemon to run", || {
        let pids = marked(&mark);
        (!pids.is_empty()).then_some(pids)
    });
    assert_eq!(daemon.len(), 1, "{daemon:?}");
    assert_eq!(
        uid_of(daemon[0]),
        Some(uid),
        "the daemon runs as the job's uid"
    );
    let own_session = std::fs::read_to_string(format!("/proc/{}/stat", daemon[0])).unwrap();
    cancel.send(true).unwrap();
    let outcome = runtime.block_on(job).unwrap();
    assert!(matches!(outcome, Outcome::Canceled { .. }), "{outcome:?}");
    assert_eq!(
        marked(&mark),
        Vec::<i32>::new(),
        "the daemon ({own_session}) outlived its cancelled job"
    );
    // Gone, or a zombie that runs nothing (its parent, this machine's init, reaps it
    // when it gets to it): such a zombie does not hold the uid.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon[0]));
    assert!(
        status.as_ref().map_or(true, |s| s.contains("State:\tZ")
            && s.contains("Threads:\t1\n")),
        "pid {} is still there: {status:?}",
        daemon[0]
    );
    let users = host.containment().job_users().unwrap();
    assert_eq!(users.held(), Vec::<u32>::new());
    assert_eq!(
        users.take().map(|u| u.uid()),
        Some(uid),
        "the uid is handed out again"
    );
}

/// A stand-in for a `warren-supervisor` of a release before job users: the real supervisor
/// (`warren`), handed the spec without its `job_user` field, which is what an older one
/// makes of it (it does not know the field, and ignores it). The node's ids travel in that
/// field with a job user, so the spec it is left with is short of them, as an older
/// supervisor finds it.
fn old_supervisor(dir: &Path) -> PathBuf {
    script(
        dir,
        "old-warren-supervisor",
        &format!(
            "exec /usr/bin/python3 -c '\n\
             import json, os, sys\n\
             exe = sys.argv[1]\n\
             if not os.path.exists(\"/proc/self/fd/3\"): os.execv(exe, [exe, \"__warren-supervise\"])\n\
             raw = os.fdopen(3, \"rb\", closefd=False).read()\n\
             spec = json.loads(raw) if raw.strip() else None\n\
             if spec: spec[\"setup\"].pop(\"job_user\", None); raw = json.dumps(spec).encode()\n\
             r, w = os.pipe()\n\
             os.write(w, raw)\n\
             os.close(w)\n\
             os.dup2(r, 3)\n\
             os.execv(exe, [exe, \"__warren-supervise\"])\n\
             ' {:?}\n",
            warren_bin().display().to_string()
        ),
    )
}

#[test]
fn a_job_on_a_supervisor_that_ignores_the_job_uid_fails_saying_which_binary_to_install() {
    // This stop's review: an old warren-supervisor beside a new warren ran every job as the
    // node's user (root here), silently.
    let uid = 3_910_001;
    let dir = open_dir();
    let program = script(dir.path(), "uid.sh", "echo \"uid $(id -u)\"\n");
    let supervisor = old_supervisor(dir.path());
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let unit = data.path().join("units").join("OldSup01");
    let runtime = detached::runtime();
    let host = Arc::new(runtime.block_on(async {
        let users = JobUsers::new(format!("{uid}-{uid}").parse().unwrap(), data.path()).unwrap();
        let containment = Containment::detect(ContainMode::Subreaper, Some(supervisor.clone()))
            .unwrap()
            .with_job_users(users);
        Host::with_containment(&component_cache(), containment).unwrap()
    }));
    let (_cancel, rx) = watch::channel(false);
    let outcome = runtime.block_on(run_command(host, unit.clone(), "uid", program, rx));
    let results = std::fs::read_to_string(unit.join("stdout")).unwrap_or_default();
    assert!(!results.contains("uid"), "the job ran: {results}");
    let Outcome::Failed { detail, .. } = &outcome else {
        panic!("the job was not refused: {outcome:?}, printed {results:?}");
    };
    assert!(
        detail.contains(&format!(
            "{} does not run programs as job users (asked for uid {uid}, it could not read the spec: ",
            supervisor.display()
        )) && detail.contains("install the warren-supervisor of the same release beside warren"),
        "{detail}"
    );
}

/// Leaves a 0600 shared memory segment holding its payload (the secret) in System V IPC,
/// as its job's uid, and exits.
const LEAVE_SHM: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
secret = sys.stdin.read().strip().encode()
shm = libc.shmget(0, 4096, 0o1600)
assert shm >= 0, ctypes.get_errno()
ctypes.memmove(libc.shmat(shm, None, 0), secret, len(secret))
print("left", shm)
"#;

/// Prints what it reads from every shared memory segment its uid owns, then shows that
/// Python's multiprocessing (POSIX semaphores and shared memory in /dev/shm, which Ansible
/// relies on) works in the job.
const FIND_SHM: &str = r#"
import ctypes, os, multiprocessing
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
lines = open("/proc/sysvipc/shm").read().splitlines()
head = lines[0].split()
for line in lines[1:]:
    row = dict(zip(head, line.split()))
    if int(row["uid"]) == os.getuid():
        addr = libc.shmat(int(row["shmid"]), None, 0o10000)
        print("found:", ctypes.string_at(addr, 64).rstrip(b"\0").decode())
def square(n):
    return n * n
if __name__ == "__main__":
    lock = multiprocessing.Lock()
    with lock, multiprocessing.Pool(2) as pool:
        print("pool:", pool.map(square, [1, 2, 3]))
"#;

#[test]
fn the_next_job_of_a_uid_cannot_read_the_shared_memory_its_last_job_left() {
    let uid = 3_910_011;
    let dir = open_dir();
    let (leave, find) = (dir.path().join("leave.py"), dir.path().join("find.py"));
    std::fs::write(&leave, LEAVE_SHM).unwrap();
    std::fs::write(&find, FIND_SHM).unwrap();
    let leaver = script(
        dir.path(),
        "leave.sh",
        &format!("exec /usr/bin/python3 {}\n", leave.display()),
    );
    let finder = script(
        dir.path(),
        "find.sh",
        &format!("exec /usr/bin/python3 {}\n", find.display()),
    );
    let config = format!(
        "[work]\njob-users = \"{uid}-{uid}\"\n{}{}",
        command_type("leave", &leaver, ""),
        command_type("find", &finder, "")
    );
    let mesh = node(&config);
    let secret = format!("shm-secret-{}", marker());
    let first = submit(&mesh, "leave", &format!("{secret}\n"));
    let status = wait_done(&mesh, &first);
    let left = results(&mesh, &first);
    assert_eq!(status["StateName"], "Succeeded", "{status}\n{left}");
    assert!(left.starts_with("left "), "{left}");
    let second = submit(&mesh, "find", "");
    let status = wait_done(&mesh, &second);
    let found = results(&mesh, &second);
    assert_eq!(status["StateName"], "Succeeded", "{status}\n{found}");
    assert_eq!(found, "pool: [1, 4, 9]\n", "{}", mesh.logs());
}

/// Adds its payload (the secret) as a `user` key to its uid's user keyring and to its
/// uid's persistent keyring, which the kernel keeps after the uid's last process has
/// exited (the user keyring for as long as the user namespace, the persistent one three
/// days), and says what each call gave: `added` or the errno's name.
#[cfg(target_arch = "x86_64")]
const LEAVE_KEY: &str = r#"
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_add_key, SYS_keyctl = 248, 250
USER_KEYRING, GET_PERSISTENT = -4, 22
secret = sys.stdin.read().strip().encode()
def said(rc):
    return "added" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
def add(keyring):
    return libc.syscall(SYS_add_key, b"user", b"warren-left", secret, len(secret), keyring)
print("user keyring:", said(add(USER_KEYRING)))
persistent = libc.syscall(SYS_keyctl, GET_PERSISTENT, -1, USER_KEYRING)
print("persistent keyring:", said(add(persistent) if persistent >= 0 else persistent))
"#;

/// Looks for the key `warren-left` in its uid's user keyring and persistent keyring and
/// prints what it reads, or the errno's name of the call that failed.
#[cfg(target_arch = "x86_64")]
const FIND_KEY: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_keyctl = 250
USER_KEYRING, GET_PERSISTENT, SEARCH, READ = -4, 22, 10, 11
def look(where, keyring):
    key = libc.syscall(SYS_keyctl, SEARCH, keyring, b"user", b"warren-left", 0)
    if key < 0:
        print(where + ":", errno.errorcode[ctypes.get_errno()])
        return
    buf = ctypes.create_string_buffer(256)
    n = libc.syscall(SYS_keyctl, READ, key, buf, 256)
    print(where + ": found", buf.raw[:n].decode())
look("user keyring", USER_KEYRING)
persistent = libc.syscall(SYS_keyctl, GET_PERSISTENT, -1, USER_KEYRING)
if persistent < 0:
    print("persistent keyring:", errno.errorcode[ctypes.get_errno()])
else:
    look("persistent keyring", persistent)
"#;

/// Kernel keyrings are not namespaced: the user keyring and the persistent keyring of a
/// uid outlive its job and would hand the next job of the uid, often another submitter's,
/// what the last one left there. Job users' programs may not use them at all (seccomp:
/// `add_key`, `keyctl`, `request_key` fail with EPERM, as under Docker's default profile),
/// whether the node starts them itself (cgroups) or a supervisor does (subreaper).
#[cfg(target_arch = "x86_64")]
fn a_key_a_job_leaves_in_its_uids_keyrings_is_not_read_by_the_next_job(
    containment: &str,
    uid: u32,
) {
    let dir = open_dir();
    let (leave, find) = (dir.path().join("leave.py"), dir.path().join("find.py"));
    std::fs::write(&leave, LEAVE_KEY).unwrap();
    std::fs::write(&find, FIND_KEY).unwrap();
    let leaver = script(
        dir.path(),
        "leave.sh",
        &format!("exec /usr/bin/python3 {}\n", leave.display()),
    );
    let finder = script(
        dir.path(),
        "find.sh",
        &format!("exec /usr/bin/python3 {}\n", find.display()),
    );
    let config = format!(
        "[work]\ncontainment = {containment:?}\njob-users = \"{uid}-{uid}\"\n{}{}",
        command_type("leave", &leaver, ""),
        command_type("find", &finder, "")
    );
    let mesh = node(&config);
    let secret = format!("key-secret-{}", marker());
    let first = submit(&mesh, "leave", &format!("{secret}\n"));
    let status = wait_done(&mesh, &first);
    let left = results(&mesh, &first);
    assert_eq!(status["StateName"], "Succeeded", "{status}\n{left}");
    let second = submit(&mesh, "find", "");
    let status = wait_done(&mesh, &second);
    let found = results(&mesh, &second);
    assert_eq!(status["StateName"], "Succeeded", "{status}\n{found}");
    assert!(
        !found.contains(&secret),
        "the next job of the uid read what the last one left: {found}"
    );
    assert_eq!(
        left,
        "user keyring: EPERM\npersistent keyring: EPERM\n",
        "{}",
        mesh.logs()
    );
    assert_eq!(
        found,
        "user keyring: EPERM\npersistent keyring: EPERM\n",
        "{}",
        mesh.logs()
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_next_job_of_a_uid_cannot_read_a_key_its_last_job_left_in_the_uids_keyrings_in_cgroups() {
    a_key_a_job_leaves_in_its_uids_keyrings_is_not_read_by_the_next_job("cgroup", 3_910_012);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_next_job_of_a_uid_cannot_read_a_key_its_last_job_left_in_the_uids_keyrings_under_the_subreaper()
 {
    a_key_a_job_leaves_in_its_uids_keyrings_is_not_read_by_the_next_job("subreaper", 3_910_013);
}
