#!/usr/bin/env bash
# Runs one fuzz target of fuzz/ (cargo-fuzz, libFuzzer) with its generated seeds and its
# dictionary. See --help.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
Usage:
  scripts/fuzz.sh                     list the fuzz targets
  scripts/fuzz.sh TARGET [SECONDS]    fuzz TARGET for SECONDS (default 300), one process
  scripts/fuzz.sh --seeds             (re)generate fuzz/seeds/ and check every seed
  scripts/fuzz.sh --help              this text

Each run starts from fuzz/seeds/TARGET (generated from real encodings by
fuzz/examples/seeds.rs: frames, handshakes, adverts and requests the library encodes, the
demo's worker stream from the real ansible-runner in .venv/ when it is there), from
fuzz/regressions/TARGET (inputs that once found a bug, kept in git) and from the corpus it
grows in fuzz/corpus/TARGET (not in git), with fuzz/dict/TARGET.dict when there is one.
A finding is written to fuzz/artifacts/TARGET/; replay it with
  cargo fuzz run -s none --target-dir "$FUZZ_TARGET_DIR" TARGET fuzz/artifacts/TARGET/<file>
then fix the node, add a unit test, and copy the input to fuzz/regressions/TARGET/.

Environment:
  FUZZ_TARGET_DIR   build dir (default fuzz/target)
  SANITIZER         none (default, builds on the pinned stable toolchain) or address
                    (needs nightly with the wasm32-wasip2 target; slower)
  FUZZ_ARGS         extra libFuzzer flags, e.g. "-max_len=65536"

Needs cargo-fuzz (cargo install cargo-fuzz). Fuzzing is not part of scripts/test.sh: CI
only type-checks the targets.
EOF
}

targets() {
    for file in fuzz/fuzz_targets/*.rs; do
        basename "$file" .rs
    done
}

target_dir="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
sanitizer="${SANITIZER:-none}"

# The seed generator runs on the workspace's toolchain, without libFuzzer.
write_seeds() {
    echo "==> generating fuzz/seeds/" >&2
    cargo run --quiet --manifest-path fuzz/Cargo.toml --no-default-features \
        --target-dir "$target_dir" --example seeds -- write
}

case "${1:-}" in
    "") targets; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    --seeds) write_seeds; exit 0 ;;
esac

target="$1"
seconds="${2:-300}"
if ! targets | grep -x -- "$target" >/dev/null; then  # not -q: an early exit would SIGPIPE targets under pipefail
    echo "error: no fuzz target named '$target'; the targets are:" >&2
    targets >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is missing; install it with: cargo install cargo-fuzz" >&2
    exit 2
fi

toolchain=()
if [ "$sanitizer" != none ]; then
    # Sanitizers need -Zsanitizer; node/build.rs builds the guest with the same toolchain.
    toolchain=(+nightly)
    if ! rustup target list --toolchain nightly --installed | grep -qx wasm32-wasip2; then
        echo "error: SANITIZER=$sanitizer needs: rustup toolchain install nightly" \
            "--target wasm32-wasip2" >&2
        exit 2
    fi
fi

if [ ! -d "fuzz/seeds/$target" ]; then
    write_seeds
fi

# The file-writing targets make a directory tree per input: on tmpfs when there is one.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target"
args=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1)
if [ -f "fuzz/dict/$target.dict" ]; then
    args+=(-dict="fuzz/dict/$target.dict")
fi
read -r -a extra <<<"${FUZZ_ARGS:-}"
args+=("${extra[@]}")

# One process (no -jobs/-workers): the build machines are shared.
exec cargo "${toolchain[@]}" fuzz run -s "$sanitizer" --codegen-units 16 \
    --target-dir "$target_dir" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/regressions/$target" -- "${args[@]}"
