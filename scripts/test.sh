#!/usr/bin/env bash
# The project's whole test run: formatting, lints, then every test (unit, property,
# simulation and cross-process tests with real `warren` processes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The guests as they ship: wasm32-wasip2 (the line above lints their host builds).
cargo clippy -p guest-runner -p probe-handler --target wasm32-wasip2 -- -D warnings
cargo test --workspace
