//! Builds the built-in work handler (`guest-runner/`), and the probe handler the tests use
//! (`examples/probe-handler/`), for `wasm32-wasip2` with a nested
//! cargo, into this package's `OUT_DIR`, so the host embeds it as
//! `host::builtin::GUEST_RUNNER`.
//!
//! The nested cargo has its own target dir (`$OUT_DIR/guest-target`), so it never waits on
//! the outer build's lock, and it shares the outer jobserver (`CARGO_MAKEFLAGS` is kept), so
//! `-j` still bounds the whole build.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The guest's target.
const TARGET: &str = "wasm32-wasip2";

/// Variables that describe the outer build and would change or break the nested one:
/// target dir and flags meant for the host, clippy's `clippy-driver` wrapper (the guest is
/// linted on its own), and an outer `--target`.
const OUTER_BUILD_VARS: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
];

fn main() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("node/ has no parent: not in the Warren workspace")?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    for input in [
        "guest-runner",
        "examples/probe-handler",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    // Without the node side (the Python package's client-only build) nothing embeds it.
    if env::var_os("CARGO_FEATURE_HOST").is_none() {
        return Ok(());
    }
    check_target_installed()?;
    let target_dir = out_dir.join("guest-target");
    build_guest(workspace, &target_dir)?;

    let release = target_dir.join(TARGET).join("release");
    for file in ["guest_runner.wasm", "probe_handler.wasm"] {
        let built = release.join(file);
        let copy = out_dir.join(file);
        std::fs::copy(&built, &copy)
            .with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
    }
    // The probe handler is for tests only: they find it through this variable, so the
    // shipped binary does not carry it.
    println!(
        "cargo:rustc-env=WARREN_PROBE_HANDLER_WASM={}",
        out_dir.join("probe_handler.wasm").display()
    );
    Ok(())
}

/// Fails with the fix when the `wasm32-wasip2` standard library is not installed.
fn check_target_installed() -> Result<()> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .with_context(|| format!("running {}", rustc.to_string_lossy()))?;
    let libdir = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !Path::new(libdir.trim()).is_dir() {
        bail!(
            "the {TARGET} target is not installed; the node embeds guest-runner built for it.\n\
             Install it with: rustup target add {TARGET}"
        );
    }
    Ok(())
}

/// Runs `cargo build -p guest-runner --target wasm32-wasip2 --release --locked` in
/// `workspace`, into `target_dir`.
fn build_guest(workspace: &Path, target_dir: &Path) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "-p",
            "guest-runner",
            "-p",
            "probe-handler",
            "--target",
            TARGET,
            "--release",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // Cargo reads `cargo:` directives from a build script's stdout; keep the nested
        // build's output on stderr.
        .stdout(Stdio::from(std::io::stderr()));
    for var in OUTER_BUILD_VARS {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!(
            "building guest-runner for {TARGET} failed ({status}); run \
             `cargo build -p guest-runner --target {TARGET} --release` to see why \
             (is the target installed? rustup target add {TARGET})"
        );
    }
    Ok(())
}
