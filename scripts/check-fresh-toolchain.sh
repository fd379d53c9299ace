#!/usr/bin/env bash
# Proves that rust-toolchain.toml is enough on a machine with rustup and nothing else: in a
# fresh clone of HEAD, with an empty RUSTUP_HOME, the first `cargo` installs the toolchain
# the file names with its wasm32-wasip2 target and rustfmt/clippy, and the guest builds.
#
# Then, with the target removed again, scripts/toolchain.sh (which .ci/run and the other
# scripts call) puts it back.
#
# Downloads the toolchain (about 200 MB from static.rust-lang.org), so it is not part of
# scripts/test.sh; run it by hand after changing rust-toolchain.toml.
#   scripts/check-fresh-toolchain.sh          # toolchain, target, tools, guest build
#   scripts/check-fresh-toolchain.sh --full   # also a whole `cargo build` (many minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
full=false
[[ "${1:-}" == "--full" ]] && full=true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/warren-toolchain.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
git clone -q . "$tmp/clone"
# The proxies (cargo, rustc, rustup) read these; nothing of this machine's rustup is used.
export RUSTUP_HOME=$tmp/rustup
export CARGO_TARGET_DIR=$tmp/target
# A fresh rustup installs a missing toolchain on first use (this machine may turn that off).
unset RUSTUP_TOOLCHAIN RUSTUP_AUTO_INSTALL RUSTC CARGO_BUILD_TARGET
cd "$tmp/clone"

fail() { echo "FAIL: $*" >&2; exit 1; }
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
[[ -n $channel ]] || fail "rust-toolchain.toml names no channel"

echo "==> cargo --version with an empty RUSTUP_HOME (rustup installs from rust-toolchain.toml)" >&2
cargo --version
active=$(rustup show active-toolchain)
[[ $active == "$channel"-* && $active == *rust-toolchain.toml* ]] \
    || fail "active toolchain is '$active', not $channel from rust-toolchain.toml"
rustup target list --installed | grep -qx wasm32-wasip2 || fail "wasm32-wasip2 was not installed"
cargo fmt --version >/dev/null || fail "rustfmt was not installed"
cargo clippy --version >/dev/null || fail "clippy was not installed"
libdir=$(rustc --print target-libdir --target wasm32-wasip2)
[[ -d $libdir ]] || fail "no wasm32-wasip2 standard library at $libdir"

echo "==> building the guest for wasm32-wasip2" >&2
cargo build -q -p probe-handler --target wasm32-wasip2 --release
[[ -f $CARGO_TARGET_DIR/wasm32-wasip2/release/probe_handler.wasm ]] || fail "no probe_handler.wasm"

if $full; then
    echo "==> cargo build (the node embeds guest-runner built by node/build.rs)" >&2
    cargo build -q
    [[ -x $CARGO_TARGET_DIR/debug/warren ]] || fail "no warren binary"
fi
echo "==> scripts/toolchain.sh has nothing left to do" >&2
[[ -z $(scripts/toolchain.sh 2>&1) ]] || fail "scripts/toolchain.sh still installed something"

# A machine whose toolchain lacks the target (rustup does not add targets to an installed
# toolchain by itself): the scripts' setup step installs it.
echo "==> without the wasm32-wasip2 target, scripts/toolchain.sh installs it" >&2
rustup target remove wasm32-wasip2
scripts/toolchain.sh
rustup target list --installed | grep -qx wasm32-wasip2 || fail "scripts/toolchain.sh did not install wasm32-wasip2"
echo "OK: $active, with wasm32-wasip2, rustfmt and clippy, installed by rustup on its own" >&2
