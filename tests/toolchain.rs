//! rust-toolchain.toml: it names the workspace's Rust version with the wasm32-wasip2 target
//! and the tools CI runs, and rustup, asked from inside the repository, honours it.
//!
//! What this cannot show without downloading a toolchain: that a machine with an empty
//! rustup installs all of it on first use. `scripts/check-fresh-toolchain.sh` does that
//! (about 200 MB from static.rust-lang.org), by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The `[toolchain]` table of rust-toolchain.toml.
fn toolchain_file() -> toml::Table {
    let text = std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap();
    let mut file: toml::Table = toml::from_str(&text).unwrap();
    match file.remove("toolchain") {
        Some(toml::Value::Table(table)) => table,
        other => panic!("rust-toolchain.toml has no [toolchain] table: {other:?}"),
    }
}

fn strings(table: &toml::Table, key: &str) -> Vec<String> {
    table[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not a list"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// `rustup ARGS` run in `dir` as a user's shell would: no toolchain forced by the
/// environment (cargo's rustup proxy sets RUSTUP_TOOLCHAIN for the tests it runs).
fn rustup(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("rustup")
        .args(args)
        .current_dir(dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .expect("rustup is on PATH (the toolchain file is for rustup)");
    assert!(out.status.success(), "rustup {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_toolchain_file_names_the_workspace_rust_version_with_the_wasm_target_and_ci_tools() {
    let toolchain = toolchain_file();
    let channel = toolchain["channel"].as_str().unwrap();
    let workspace: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let rust_version = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    assert!(
        channel == rust_version || channel.starts_with(&format!("{rust_version}.")),
        "rust-toolchain.toml's channel {channel} is not rust-version {rust_version}"
    );
    assert!(strings(&toolchain, "targets").contains(&"wasm32-wasip2".to_owned()));
    let components = strings(&toolchain, "components");
    for tool in ["rustfmt", "clippy"] {
        assert!(components.contains(&tool.to_owned()), "{components:?}");
    }
}

#[test]
fn rustup_inside_the_repository_uses_the_toolchain_the_file_names_and_it_has_the_target() {
    let channel = toolchain_file()["channel"].as_str().unwrap().to_owned();
    // From the root and from a subdirectory, as rustup searches upwards.
    for dir in [repo(), repo().join("node/src")] {
        let active = rustup(&dir, &["show", "active-toolchain"]);
        assert!(
            active.starts_with(&format!("{channel}-"))
                && active.contains(&repo().join("rust-toolchain.toml").display().to_string()),
            "in {}: {active}",
            dir.display()
        );
    }
    let targets = rustup(&repo(), &["target", "list", "--installed"]);
    assert!(targets.lines().any(|t| t == "wasm32-wasip2"), "{targets}");
    let components = rustup(&repo(), &["component", "list", "--installed"]);
    for tool in ["rustfmt-", "clippy-"] {
        assert!(
            components.lines().any(|c| c.starts_with(tool)),
            "{components}"
        );
    }
}
