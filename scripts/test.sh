#!/usr/bin/env bash
# The project's whole test run: formatting, lints, then every test (unit, property,
# simulation and cross-process tests with real `warren` processes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
