//! `relay`: throughput of payload → child stdin → child stdout → results through
//! guest-runner's `command` handler with `/bin/cat` (with the node's resource accounting on
//! and off), against a native pipe through `/bin/cat` (tokio, 64 KiB reads and writes),
//! interleaved round by round.
//!
//! The payload is generated as it is read and the results are only counted, so neither side
//! holds the stream in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use warren::host::builtin::GUEST_RUNNER;
use warren::host::params::{JobParams, Task};
use warren::host::policy::Policy;
use warren::host::runner::{Handler, Host, Job, JobIo, Outcome};

use crate::stats::{mb_per_s, median, runs};

/// Bytes relayed per measurement.
const PAYLOAD: u64 = 256 << 20;

/// Bytes relayed by each warm-up.
const WARM_UP: u64 = 16 << 20;

/// Rounds of (native, wasm with accounting, wasm without).
const ROUNDS: usize = 5;

/// Size of the native baseline's reads and writes: Linux's default pipe capacity.
const NATIVE_CHUNK: usize = 64 * 1024;

pub(crate) fn run() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let host = Host::new(cache.path())?.with_free_space_floor(crate::FREE_SPACE_FLOOR);
    let guest = host.load(GUEST_RUNNER).context("loading guest-runner")?;
    let job_dir = tempfile::tempdir()?;
    let policy = |accounting| {
        Arc::new(Policy {
            programs: BTreeMap::from([("cat".to_owned(), PathBuf::from("/bin/cat"))]),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            env_allow: BTreeSet::new(),
            args: BTreeMap::new(),
            limits: crate::limits(accounting),
            program_limits: Default::default(),
        })
    };
    let (on, off) = (policy(true), policy(false));
    let wasm = |policy, bytes| relay_wasm(&host, &guest, policy, job_dir.path().to_owned(), bytes);
    let runtime = crate::runtime()?;
    let (native, wasm, bare) = runtime.block_on(async {
        native_cat(WARM_UP).await?;
        wasm(&on, WARM_UP).await?;
        wasm(&off, WARM_UP).await?;
        let (mut native, mut wasm_runs, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            native.push(native_cat(PAYLOAD).await?);
            wasm_runs.push(wasm(&on, PAYLOAD).await?);
            bare.push(wasm(&off, PAYLOAD).await?);
        }
        anyhow::Ok((native, wasm_runs, bare))
    })?;
    let ratio: Vec<f64> = wasm.iter().zip(&native).map(|(w, n)| w / n).collect();
    let bare_ratio: Vec<f64> = bare.iter().zip(&native).map(|(w, n)| w / n).collect();
    let on_off: Vec<f64> = wasm.iter().zip(&bare).map(|(w, b)| w / b).collect();
    println!(
        "{} MiB payload through /bin/cat, MB/s (median of {ROUNDS}):",
        PAYLOAD >> 20
    );
    println!(
        "  native pipe            {:>8.0}   runs: {}",
        median(&native),
        runs(&native, 0)
    );
    println!(
        "  guest-runner command   {:>8.0}   runs: {}   (accounting on)",
        median(&wasm),
        runs(&wasm, 0)
    );
    println!(
        "  same, accounting off   {:>8.0}   runs: {}",
        median(&bare),
        runs(&bare, 0)
    );
    println!(
        "  guest / native         {:>7.0}%   runs: {}   (target >= 50%)",
        median(&ratio) * 100.0,
        runs(&ratio, 2)
    );
    println!(
        "  off / native           {:>7.0}%   runs: {}",
        median(&bare_ratio) * 100.0,
        runs(&bare_ratio, 2)
    );
    println!(
        "  on / off               {:>7.1}%   runs: {}   (target >= 95%)",
        median(&on_off) * 100.0,
        runs(&on_off, 3)
    );
    Ok(())
}

/// Relays `bytes` through guest-runner's `command` handler and `cat`; MB/s.
async fn relay_wasm(
    host: &Host,
    guest: &Handler,
    policy: &Arc<Policy>,
    job_dir: PathBuf,
    bytes: u64,
) -> anyhow::Result<f64> {
    let job = Job {
        id: "Bench002".into(),
        work_type: "cat".into(),
        task: Task::Command {
            program: "cat".into(),
            args: Vec::new(),
        },
        params: JobParams::default(),
    };
    let counted = Arc::new(AtomicU64::new(0));
    let io = JobIo {
        job_dir,
        payload: Box::new(Pattern::new(bytes)),
        results: Box::new(Counter(counted.clone())),
        files: None,
    };
    let (_cancel, cancelled) = watch::channel(false);
    let started = Instant::now();
    let outcome = host.run(guest, policy.clone(), job, io, cancelled).await;
    let secs = started.elapsed().as_secs_f64();
    ensure!(outcome == Outcome::Succeeded, "command job: {outcome:?}");
    let got = counted.load(Ordering::Relaxed);
    ensure!(got == bytes, "results had {got} of {bytes} bytes");
    Ok(mb_per_s(bytes, secs))
}

/// Pipes `bytes` through a native `cat`, writing and reading concurrently; MB/s.
async fn native_cat(bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new("/bin/cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning /bin/cat")?;
    let mut stdin = child.stdin.take().context("cat's stdin")?;
    let mut stdout = child.stdout.take().context("cat's stdout")?;
    let writer = async move {
        let mut source = Pattern::new(bytes);
        let mut buf = vec![0; NATIVE_CHUNK];
        loop {
            let n = source.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stdin.write_all(&buf[..n]).await?;
        }
        drop(stdin);
        std::io::Result::Ok(())
    };
    let reader = async move {
        let mut buf = vec![0; NATIVE_CHUNK];
        let mut total = 0u64;
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                return std::io::Result::Ok(total);
            }
            total += n as u64;
        }
    };
    let (written, read) = tokio::join!(tokio::spawn(writer), tokio::spawn(reader));
    written??;
    let got = read??;
    let status = child.wait().await?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(status.success(), "cat: {status}");
    ensure!(got == bytes, "cat gave {got} of {bytes} bytes");
    Ok(mb_per_s(bytes, secs))
}

/// The byte pattern a [`Pattern`] repeats: 64 KiB, a length the reads do not divide into
/// lines or words.
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| (0..64 * 1024u32).map(|i| (i * 7 % 253) as u8).collect())
}

/// Reads as `len` bytes of a repeating pattern, generated as it goes.
struct Pattern {
    at: u64,
    len: u64,
}

impl Pattern {
    fn new(len: u64) -> Self {
        Self { at: 0, len }
    }
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let pattern = pattern();
        while buf.remaining() > 0 && self.at < self.len {
            let offset = (self.at % pattern.len() as u64) as usize;
            let left = usize::try_from(self.len - self.at).unwrap_or(usize::MAX);
            let n = buf.remaining().min(pattern.len() - offset).min(left);
            buf.put_slice(&pattern[offset..offset + n]);
            self.at += n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

/// A sink that counts what is written to it.
struct Counter(Arc<AtomicU64>);

impl AsyncWrite for Counter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
