//! The bench's world: controller -> relay -> node1 from the release `warren` binary (node1
//! runs the venv's ansible-runner), the client identity the controller trusts, the front end
//! first on PATH, and the commands for a remote and a local run of a private data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;

use crate::job;

/// Deadline for nodes to start, link and advertise ansible-runner.
const DEADLINE: Duration = Duration::from_secs(30);

/// A release binary of this package, or an error naming the command that builds it.
fn binary(path: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(path);
    ensure!(
        path.exists(),
        "{} is missing; build it with: cargo build --release -p warren",
        path.display()
    );
    Ok(path)
}

/// The project's venv `bin/`, or an error naming the script that creates it.
fn venv_bin() -> anyhow::Result<PathBuf> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    ensure!(
        bin.join("ansible-runner").is_file(),
        "{} has no ansible-runner; run scripts/setup-python.sh",
        bin.display()
    );
    Ok(bin.canonicalize()?)
}

/// A `warren node` process, killed when dropped.
pub(crate) struct NodeProcess {
    pub(crate) name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The running mesh and everything a run needs. Nodes die when it is dropped.
pub(crate) struct Bench {
    /// controller, relay, node1 (dropped before `tmp`, which holds their data dirs).
    pub(crate) nodes: Vec<NodeProcess>,
    warren: PathBuf,
    venv: PathBuf,
    controller_addr: String,
    tmp: TempDir,
}

impl Bench {
    /// Starts the three nodes, waits until the controller routes to node1 via the relay and
    /// node1 offers ansible-runner, then warms up with one untimed remote run (the client
    /// learns the controller's key, node1 compiles its work handler).
    pub(crate) fn start() -> anyhow::Result<Self> {
        let warren = binary(env!("CARGO_BIN_EXE_warren"))?;
        let frontend = binary(env!("CARGO_BIN_EXE_ansible-runner"))?;
        let venv = venv_bin()?;
        let tmp = tempfile::Builder::new()
            .prefix("warren-runbench")
            .tempdir()?;
        for dir in ["home", "frontend", "out", "client"] {
            std::fs::create_dir(tmp.path().join(dir))?;
        }
        std::os::unix::fs::symlink(&frontend, tmp.path().join("frontend/ansible-runner"))?;
        let mut bench = Self {
            nodes: Vec::new(),
            warren,
            venv,
            controller_addr: String::new(),
            tmp,
        };
        bench.start_mesh()?;
        bench.warm_up()?;
        Ok(bench)
    }

    fn start_mesh(&mut self) -> anyhow::Result<()> {
        let client = self.keygen(&self.path("client/identity.key"))?;
        let names = ["controller", "relay", "node1"];
        let mut trust = Vec::new();
        for name in names {
            let token = self.keygen(&self.path(&format!("{name}.key")))?;
            trust.extend(["--trust".to_owned(), format!("{name}={token}")]);
        }
        let runner = self.venv.join("ansible-runner").display().to_string();
        // The client (the front end) and the controller's operator (receptorctl) may run
        // ansible-runner on node1.
        let allow = [
            "--allow-work".to_owned(),
            format!("ansible-runner={client}"),
            "--allow-work".to_owned(),
            "ansible-runner=controller".to_owned(),
        ];
        let node1 = [
            trust.clone(),
            vec!["--ansible-runner".into(), runner],
            allow.to_vec(),
        ]
        .concat();
        let addr = self.spawn_node("node1", &node1)?;
        // The relay's /metrics tell the bytes it forwarded to node1.
        let metrics = vec!["--metrics".into(), "127.0.0.1:0".into()];
        let relay = [trust.clone(), vec!["--peer".into(), addr], metrics].concat();
        let addr = self.spawn_node("relay", &relay)?;
        let controller = [trust, vec!["--peer".into(), addr, "--trust".into(), client]].concat();
        self.controller_addr = self.spawn_node("controller", &controller)?;
        self.wait_for(
            "controller to route to node1 via relay",
            "controller",
            |s| s["RoutingTable"]["node1"] == "relay",
        )?;
        self.wait_for("node1 to offer ansible-runner", "node1", |s| {
            s["WorkTypes"][0]["WorkType"] == "ansible-runner"
        })
    }

    fn warm_up(&self) -> anyhow::Result<()> {
        let pdd = self.copy_demo("warmup")?;
        let remote = self.remote(&pdd, "test.yml", "warmup");
        job::run(remote, &self.out("warmup"))?.check("warm-up remote run")
    }

    /// A path in the bench's temp dir.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Where a job's output files go: `out/<name>.stdout` and `.stderr`.
    pub(crate) fn out(&self, name: &str) -> PathBuf {
        self.path(&format!("out/{name}"))
    }

    /// A fresh copy of the demo private data dir, named `name` in the temp dir.
    pub(crate) fn copy_demo(&self, name: &str) -> anyhow::Result<PathBuf> {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
        let dst = self.path(name);
        let status = Command::new("cp").arg("-r").arg(demo).arg(&dst).status()?;
        ensure!(status.success(), "cp -r demo {}: {status}", dst.display());
        Ok(dst)
    }

    /// `ansible-runner run PDD -p PLAYBOOK --via-receptor node1` through the front end.
    pub(crate) fn remote(&self, pdd: &Path, playbook: &str, ident: &str) -> Command {
        let peer = format!("receptor://{}", self.controller_addr);
        let path = format!(
            "{}:{}:/usr/bin:/bin",
            self.path("frontend").display(),
            self.venv.display()
        );
        let mut cmd = Command::new("ansible-runner");
        cmd.arg("run")
            .arg(pdd)
            .args(["-p", playbook, "-i", ident, "--via-receptor", "node1"])
            .args(["--receptor-peer", &peer]);
        self.env(&mut cmd, path);
        cmd.env("WARREN_IDENTITY", self.path("client/identity.key"));
        cmd
    }

    /// The real `ansible-runner run PDD -p test.yml` on this machine.
    pub(crate) fn local(&self, pdd: &Path, ident: &str) -> Command {
        let path = format!("{}:/usr/bin:/bin", self.venv.display());
        let mut cmd = Command::new(self.venv.join("ansible-runner"));
        cmd.arg("run")
            .arg(pdd)
            .args(["-p", "test.yml", "-i", ident]);
        self.env(&mut cmd, path);
        cmd
    }

    /// AWX's pipeline over the controller's control socket, all real ansible-runner and
    /// receptorctl: `ansible-runner transmit PDD | receptorctl work submit ansible-runner
    /// --node node1 -f | ansible-runner process PDD`. Its status is `process`'s: receptorctl
    /// may hit the pipe that `process` left after the eof line.
    pub(crate) fn awx(&self, pdd: &Path, ident: &str) -> Command {
        let path = format!("{}:/usr/bin:/bin", self.venv.display());
        let script = "ansible-runner transmit \"$1\" -p test.yml -i \"$2\" \
             | receptorctl --socket \"$3\" work submit ansible-runner --node node1 \
               --payload - -f \
             | ansible-runner process \"$1\" -i \"$2\"";
        let mut cmd = Command::new("bash");
        cmd.args(["-c", script, "awx"])
            .arg(pdd)
            .arg(ident)
            .arg(self.path("controller.sock"));
        self.env(&mut cmd, path);
        cmd
    }

    /// The environment every process of the bench gets: the same HOME (ansible's cache),
    /// one compiled-component cache, and the bench's TMPDIR (the front end spools the packed
    /// payload there; `TMPDIR=/dev/shm` keeps `large` off a full disk).
    fn env(&self, cmd: &mut Command, path: String) {
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", std::env::temp_dir())
            .env("WARREN_COMPONENT_CACHE", self.path("components"))
            .env("RUST_LOG", "warren=info");
    }

    fn keygen(&self, out: &Path) -> anyhow::Result<String> {
        let run = Command::new(&self.warren)
            .arg("keygen")
            .arg("--out")
            .arg(out)
            .output()?;
        ensure!(run.status.success(), "warren keygen failed: {run:?}");
        let stdout = String::from_utf8(run.stdout)?;
        Ok(stdout
            .lines()
            .last()
            .context("keygen printed nothing")?
            .to_owned())
    }

    /// Starts `warren node --id name` with `extra` flags; returns its listen address.
    fn spawn_node(&mut self, name: &'static str, extra: &[String]) -> anyhow::Result<String> {
        let log = self.path(&format!("{name}.log"));
        let ready = self.path(&format!("{name}.ready"));
        let mut cmd = Command::new(&self.warren);
        cmd.arg("node")
            .args(["--id", name, "--listen", "127.0.0.1:0"])
            .arg("--key")
            .arg(self.path(&format!("{name}.key")))
            .arg("--data-dir")
            .arg(self.path(&format!("{name}-data")))
            .arg("--control-socket")
            .arg(self.path(&format!("{name}.sock")))
            .arg("--ready-file")
            .arg(&ready)
            .args(extra);
        self.env(&mut cmd, format!("{}:/usr/bin:/bin", self.venv.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.warren.display()))?;
        self.nodes.push(NodeProcess { name, child, log });
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Some(addr) = text.lines().next()
            {
                return Ok(addr.to_owned());
            }
            if start.elapsed() > DEADLINE {
                bail!("{name} not ready after {DEADLINE:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `warren status --json` of node `name` until `done` holds.
    fn wait_for(
        &self,
        what: &str,
        name: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let out = Command::new(&self.warren)
                .args(["status", "--json", "--socket"])
                .arg(self.path(&format!("{name}.sock")))
                .output()?;
            if out.status.success()
                && let Ok(status) = serde_json::from_slice(&out.stdout)
                && done(&status)
            {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                bail!(
                    "timed out after {DEADLINE:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How long `unit` ran on node1, payload stored to end: from its log, the time from
    /// `unit started unit=U` to `unit finished unit=U`, seconds.
    pub(crate) fn unit_secs(&self, unit: &str) -> anyhow::Result<f64> {
        let log = std::fs::read_to_string(self.path("node1.log"))?;
        let at = |needle: String| {
            log.lines()
                .find(|l| l.contains(&needle))
                .and_then(time_of_day)
                .with_context(|| format!("no {needle:?} in node1's log"))
        };
        Ok(at(format!("unit finished unit={unit} "))? - at(format!("unit started unit={unit} "))?)
    }

    /// How long node1's ansible-runner worker ran for `unit`: from its log, the time from
    /// `spawned child unit=U` (or `spawned detached child unit=U`, as ansible-runner jobs
    /// are started) to `unit finished unit=U`, seconds.
    pub(crate) fn worker_secs(&self, unit: &str) -> anyhow::Result<f64> {
        let log = std::fs::read_to_string(self.path("node1.log"))?;
        let at = |needle: String| {
            log.lines()
                .find(|l| l.contains(&needle))
                .and_then(time_of_day)
                .with_context(|| format!("no {needle:?} in node1's log"))
        };
        let spawned = at(format!("spawned detached child unit={unit} "))
            .or_else(|_| at(format!("spawned child unit={unit} ")))?;
        let finished = at(format!("unit finished unit={unit} "))?;
        Ok(finished - spawned)
    }

    /// Bytes the relay has sent to node1 so far (its `/metrics`).
    pub(crate) fn relay_sent_to_node1(&self) -> anyhow::Result<f64> {
        use std::io::{Read, Write};
        let log = std::fs::read_to_string(self.path("relay.log"))?;
        let at = log
            .find("metrics=Some(")
            .context("the relay logged no metrics address")?;
        let rest = &log[at + "metrics=Some(".len()..];
        let addr = &rest[..rest.find(')').context("metrics address unterminated")?];
        let mut socket = std::net::TcpStream::connect(addr)?;
        write!(
            socket,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        socket.read_to_string(&mut text)?;
        let series = "warren_link_sent_bytes_total{peer=\"node1\"} ";
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .context("no bytes sent to node1 in the relay's metrics")?;
        Ok(value.trim().parse()?)
    }

    /// Every node's log, for failure messages.
    pub(crate) fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                format!("===== {} log =====\n{text}", n.name)
            })
            .collect()
    }
}

/// Seconds since midnight of a log line's `YYYY-MM-DDTHH:MM:SS.ffffffZ` timestamp.
fn time_of_day(line: &str) -> Option<f64> {
    let clock = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = clock.trim_end_matches('Z').split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}
