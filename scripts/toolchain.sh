#!/usr/bin/env bash
# Makes sure the toolchain rust-toolchain.toml names is installed with everything the file
# lists (the wasm32-wasip2 target, rustfmt, clippy). Quick and offline when it is; otherwise
# `rustup toolchain install` installs exactly what the file says. The other scripts call
# this; rustup alone does the same on first use unless RUSTUP_AUTO_INSTALL=0.
set -euo pipefail
cd "$(dirname "$0")/.."
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 \
    && cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
    exit 0
fi
echo "==> installing the toolchain rust-toolchain.toml names" >&2
rustup toolchain install
