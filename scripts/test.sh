#!/usr/bin/env bash
# The project's whole test run: formatting, lints, then every test (unit, property,
# simulation, wasm host, and cross-process tests with real `warren` processes on 127.0.0.1,
# real ansible-runner and receptorctl), then the Python package's tests (python/tests:
# pytest against real `warren node` processes, with the binary cargo test built). Sets up
# what the tests need first: the toolchain of rust-toolchain.toml with its wasm32-wasip2
# target (the node embeds its guest) and .venv/ with the Python package in it
# (scripts/toolchain.sh, scripts/setup-python.sh; both quick when done).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/toolchain.sh
scripts/setup-python.sh >/dev/null
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The guests as they ship: wasm32-wasip2 (the line above lints their host builds).
cargo clippy -p guest-runner -p probe-handler --target wasm32-wasip2 -- -D warnings
# The fuzz targets (fuzz/, its own workspace) must keep building against the node's APIs:
# formatted, linted and type-checked on stable without libFuzzer, never run here
# (scripts/fuzz.sh runs them).
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --manifest-path fuzz/Cargo.toml --no-default-features --all-targets --locked \
    -- -D warnings
# The API docs build without a broken or private link (`cargo doc` warnings are errors here).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace
.venv/bin/python -m pytest -q python/tests
