//! Helpers for cross-process tests: locating the binary, temp dirs and keys, node processes
//! that die with the test, waiting for conditions with deadlines, and dumping node logs
//! when something fails.

pub mod netns;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `$WARREN_TEST_BIN_DIR/NAME` when that is set (worktrees sharing one target dir
/// overwrite each other's `target/debug/NAME`; point it at a private copy), else `built`.
fn bin(name: &str, built: &str) -> PathBuf {
    match std::env::var_os("WARREN_TEST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(built),
    }
}

/// Warren's `ansible-runner` front end under test.
pub fn frontend_bin() -> PathBuf {
    bin("ansible-runner", env!("CARGO_BIN_EXE_ansible-runner"))
}

/// The `warren` binary under test.
pub fn warren_bin() -> PathBuf {
    let path = bin("warren", env!("CARGO_BIN_EXE_warren"));
    assert!(
        path.exists(),
        "{} is missing; build it with `cargo build -p warren`",
        path.display()
    );
    path
}

/// Runs `warren ARGS` to completion.
pub fn warren(args: &[&str]) -> Output {
    Command::new(warren_bin())
        .args(args)
        .env_remove("WARREN_SOCKET")
        .output()
        .expect("run warren")
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One compiled-component cache for every node of the test run: cranelift compiles each
/// component once, not once per node.
pub fn component_cache() -> PathBuf {
    std::env::temp_dir().join(format!("warren-test-components-{}", std::process::id()))
}

/// A node's identity: key file and public token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub key: PathBuf,
    pub token: String,
}

/// A temp dir holding a test mesh's files; its logs are printed if the test panics.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// One running `warren node` process, killed on drop.
pub struct Node {
    pub identity: Identity,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub addr: Option<String>,
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Words run before the binary, such as `ip netns exec NS` (empty: run it directly).
    wrap: Vec<String>,
    /// `RLIMIT_NOFILE` (soft and hard) the process starts with, when set.
    nofile: Option<u64>,
}

impl Mesh {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("warren-test")
            .tempdir()
            .expect("temp dir");
        // Traversable, not listable: a node with `[work] job-users` refuses a data dir
        // whose parents its jobs' uids cannot pass through.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("temp dir mode");
        Self {
            dir,
            nodes: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates a key for node `id` with `warren keygen`.
    pub fn identity(&self, id: &str) -> Identity {
        let key = self.path(&format!("{id}.key"));
        let out = warren(&["keygen", "--out", key.to_str().unwrap()]);
        assert!(out.status.success(), "keygen failed: {out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Identity {
            id: id.to_owned(),
            key,
            token,
        }
    }

    /// Starts `warren node` for `identity`, listening on 127.0.0.1:0, with extra flags;
    /// waits for its ready file. Returns the node's index.
    pub fn start(&mut self, identity: &Identity, extra: &[String]) -> usize {
        self.start_env(identity, extra, &[])
    }

    /// [`Mesh::start`] with extra environment variables for the node process.
    pub fn start_env(
        &mut self,
        identity: &Identity,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> usize {
        self.launch(identity, "127.0.0.1:0", &[], extra, env, None)
    }

    /// Like [`Mesh::start`], with the node's open files limit (soft and hard, so the node
    /// cannot raise it) set to `nofile`.
    pub fn start_with_nofile(
        &mut self,
        identity: &Identity,
        extra: &[String],
        nofile: u64,
    ) -> usize {
        self.launch(identity, "127.0.0.1:0", &[], extra, &[], Some(nofile))
    }

    /// Starts `warren node` for `identity` listening on `listen`, run through the command
    /// prefix `wrap` (such as `ip netns exec NS`), with extra flags and environment; waits
    /// for its ready file. Returns the node's index.
    pub fn start_wrapped(
        &mut self,
        identity: &Identity,
        listen: &str,
        wrap: &[String],
        extra: &[String],
        env: &[(&str, &str)],
    ) -> usize {
        self.launch(identity, listen, wrap, extra, env, None)
    }

    fn launch(
        &mut self,
        identity: &Identity,
        listen: &str,
        wrap: &[String],
        extra: &[String],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> usize {
        let name = &identity.id;
        let socket = self.path(&format!("{name}.sock"));
        let log = self.path(&format!("{name}.log"));
        let mut args: Vec<String> = vec![
            "node".into(),
            "--id".into(),
            name.clone(),
            "--key".into(),
            identity.key.display().to_string(),
            "--data-dir".into(),
            self.path(&format!("{name}-data")).display().to_string(),
            "--control-socket".into(),
            socket.display().to_string(),
            "--listen".into(),
            listen.into(),
        ];
        args.extend(extra.iter().cloned());
        let mut node = Node {
            identity: identity.clone(),
            socket,
            log,
            addr: None,
            child: None,
            args,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            wrap: wrap.to_vec(),
            nofile,
        };
        node.spawn(&self.path(&format!("{name}.ready")));
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Restarts a killed node on the address it had (so its peers can dial it again).
    pub fn restart(&mut self, index: usize) {
        let dir = self.dir.path().to_owned();
        let node = &mut self.nodes[index];
        let addr = node.addr().to_owned();
        if let Some(listen) = node.args.iter().position(|a| a == "127.0.0.1:0") {
            node.args[listen] = addr;
        }
        let ready = dir.join(format!("{}.ready", node.identity.id));
        node.spawn(&ready);
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index]
    }

    /// Runs a client verb against node `index`'s socket.
    pub fn ctl(&self, index: usize, args: &[&str]) -> Output {
        let socket = self.nodes[index].socket.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--socket", &socket]);
        warren(&all)
    }

    /// Node `index`'s status as Receptor JSON.
    pub fn status(&self, index: usize) -> Option<serde_json::Value> {
        let out = self.ctl(index, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until node `index` routes to `dst` via `via` (any route when `via` is None).
    pub fn wait_route(&self, index: usize, dst: &str, via: Option<&str>) {
        let what = format!(
            "{} to route to {dst} via {via:?}",
            self.nodes[index].identity.id
        );
        wait_for(&what, || {
            let status = self.status(index)?;
            let hop = status["RoutingTable"][dst].as_str()?.to_owned();
            via.is_none_or(|v| v == hop).then_some(())
        });
    }

    /// Everything the nodes logged, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                format!("===== {} log =====\n{text}", n.identity.id)
            })
            .collect()
    }
}

/// How long the nodes of a test's mesh get to stop on SIGTERM before they are killed.
const NODE_STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for Mesh {
    /// SIGTERM first, SIGKILL for what is still up after [`NODE_STOP_GRACE`]: a node stopped
    /// with SIGTERM stops its jobs, whereas a SIGKILLed one leaves its detached jobs
    /// (ansible-runner's) running on purpose, to re-attach them. A test must not leave a
    /// job behind.
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                // SAFETY: kill(2) with a valid pid and signal has no memory effects.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + NODE_STOP_GRACE;
        for node in &mut self.nodes {
            node.reap_by(deadline);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

impl Node {
    fn spawn(&mut self, ready: &Path) {
        let _ = std::fs::remove_file(ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut args = self.args.clone();
        args.extend(["--ready-file".into(), ready.display().to_string()]);
        let (program, words) = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut words = rest.to_vec();
                words.push(warren_bin().display().to_string());
                (PathBuf::from(first), words)
            }
            None => (warren_bin(), Vec::new()),
        };
        let mut command = Command::new(program);
        if let Some(nofile) = self.nofile {
            limit_open_files(&mut command, nofile);
        }
        let child = command
            .args(&words)
            .args(&args)
            .env("RUST_LOG", "warren=debug")
            .env("WARREN_COMPONENT_CACHE", component_cache())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn warren node");
        self.child = Some(child);
        let addr = wait_for(&format!("{} ready file", self.identity.id), || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("node {} exited early ({status}):\n{log}", self.identity.id);
            }
            let text = std::fs::read_to_string(ready).ok()?;
            text.lines().next().map(str::to_owned)
        });
        self.addr = Some(addr);
    }

    /// The node's bound listen address, as `host:port`.
    pub fn addr(&self) -> &str {
        self.addr.as_deref().expect("node is running")
    }

    /// Kills the process (SIGKILL: no goodbye to peers).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the node to exit until `deadline`, then kills it.
    fn reap_by(&mut self, deadline: Instant) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("node is running");
        // SAFETY: kill(2) with a valid pid and signal has no memory effects.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait for node")
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` and returns at once.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("node is running");
        // SAFETY: kill(2) with a valid pid and signal has no memory effects.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// The exit status once the process has exited, waiting at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The lock on 127.0.0.1:8888, Warren's default port, shared with `scripts/demo.sh` (whose
/// controller holds it while it runs): an exclusive `flock` on
/// `$TMPDIR/warren-port-8888.lock`, released when the returned file is dropped.
pub fn default_port_lock() -> std::fs::File {
    let path = default_port_lock_path();
    let lock = std::fs::File::create(&path).expect("create the port 8888 lock file");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    let start = Instant::now();
    // SAFETY: flock on a descriptor this function owns.
    while unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "port 8888 stayed locked ({}): are demo nodes running? `scripts/demo.sh --stop`",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lock
}

/// Where [`default_port_lock`] and `scripts/demo.sh` lock port 8888.
pub fn default_port_lock_path() -> PathBuf {
    std::env::temp_dir().join("warren-port-8888.lock")
}

/// Makes `command`'s process start with at most `nofile` open files (soft and hard limit).
pub fn limit_open_files(command: &mut Command, nofile: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: setrlimit is async-signal-safe and only reads `limit`, a copy owned by the
    // closure; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Runs `warren ARGS` that must exit by itself (such as a node that refuses to start),
/// killing it and failing the test if it is still running after [`DEADLINE`].
pub fn warren_exits(args: &[&str]) -> Output {
    let mut child = Command::new(warren_bin())
        .args(args)
        .env_remove("WARREN_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warren");
    let start = Instant::now();
    while child.try_wait().expect("wait for warren").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("warren output");
            panic!("warren {args:?} still running after {DEADLINE:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("warren output")
}

/// `--trust NODE=TOKEN` flags for `peers`.
pub fn trust(peers: &[&Identity]) -> Vec<String> {
    peers
        .iter()
        .flat_map(|p| ["--trust".to_owned(), format!("{}={}", p.id, p.token)])
        .collect()
}

/// `--peer ADDR` flags.
pub fn peer(addr: &str) -> Vec<String> {
    vec!["--peer".to_owned(), format!("receptor://{addr}")]
}
