#!/usr/bin/env bash
# The demo: the seed's command, run through Warren across a three-node mesh on this machine.
#
# Sets up what it needs (the toolchain of rust-toolchain.toml, .venv/ with ansible-runner
# and ansible-core from PyPI), builds Warren, starts controller -> relay -> node1 from
# examples/mesh/ (the controller on the default port 8888; node1 runs ansible-runner from
# .venv), and runs exactly
#   ansible-runner run examples/demo -p test.yml --via-receptor node1
# through Warren's ansible-runner front end, first on PATH. Then it says what to try next.
#
#   scripts/demo.sh          # run the demo, stop the nodes at the end
#   scripts/demo.sh --keep   # leave the nodes running, to try the command again and more
#   scripts/demo.sh --stop   # stop nodes left running by --keep
#
# WARREN_DEMO_BIN=DIR uses the `warren` and `ansible-runner` binaries in DIR instead of
# building (the tests use this).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mesh=examples/mesh
data=$mesh/data
pidfile=$data/demo.pids
command=(ansible-runner run examples/demo -p test.yml --via-receptor node1)

# Whether any node the demo started is still running.
alive() {
    [[ -f $pidfile ]] || return 1
    local pid
    while read -r pid; do kill -0 "$pid" 2>/dev/null && return 0; done <"$pidfile"
    return 1
}

stop_nodes() {
    [[ -f $pidfile ]] || return 0
    xargs -r kill -TERM <"$pidfile" 2>/dev/null || true
    for _ in $(seq 100); do alive || break; sleep 0.1; done
    if alive; then
        echo "the demo's nodes did not stop; pids: $(tr '\n' ' ' <"$pidfile")" >&2
        return 1
    fi
    rm -f "$pidfile"
}

keep=false
case "${1:-}" in
    "") ;;
    --keep) keep=true ;;
    --stop) stop_nodes && echo "==> the demo's nodes are stopped" >&2; exit ;;
    *) echo "usage: scripts/demo.sh [--keep | --stop]" >&2; exit 2 ;;
esac
if alive; then
    echo "the demo's nodes are already running (pids $(tr '\n' ' ' <"$pidfile")):" \
        "run \`scripts/demo.sh --stop\` first" >&2
    exit 1
fi

if [[ -n ${WARREN_DEMO_BIN:-} ]]; then
    bin=$(cd "$WARREN_DEMO_BIN" && pwd)
    scripts/setup-python.sh >&2
else
    echo "==> setting up (the Rust toolchain, .venv with ansible-runner)" >&2
    scripts/toolchain.sh
    scripts/setup-python.sh >&2
    echo "==> building warren" >&2
    cargo build -q -p warren
    target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$root/$target
    bin=$target/debug
fi
mkdir -p "$data"
# git does not keep file modes; the demo keys must not be readable by others.
chmod 600 "$mesh"/keys/*.key

# Port 8888 is shared with the one test that binds it (tests/run.rs): both take this lock,
# and the controller holds it for as long as it runs, --keep or not.
lock=${TMPDIR:-/tmp}/warren-port-8888.lock
exec 9>"$lock"
if command -v flock >/dev/null && ! flock -n 9; then
    echo "==> waiting for a test run that uses port 8888 ($lock)" >&2
    flock -w 300 9 || { echo "port 8888 is still locked by $lock; try again later" >&2; exit 1; }
fi

# The demo's client: its own identity under data/client (your ~/.config/warren is left
# alone), with a certificate from the demo authority putting it in group "submitters",
# which node1's [[allow]] rule lets run ansible-runner. The front end finds the certificate
# next to the identity (identity.cert).
export WARREN_IDENTITY=$root/$data/client/identity.key
if [[ ! -f $WARREN_IDENTITY ]]; then
    mkdir -p "$(dirname "$WARREN_IDENTITY")"
    "$bin/warren" keygen --out "$WARREN_IDENTITY" >/dev/null 2>&1
fi
# A fresh certificate on every run, so it never expires under a kept demo.
rm -f "$data/client/identity.cert"
"$bin/warren" ca sign --ca "$mesh/keys/ca.key" --node demo-client --group submitters \
    --key "$("$bin/warren" keygen --show "$WARREN_IDENTITY")" --expires 30d \
    --out "$data/client/identity.cert" 2>/dev/null
echo "==> the demo client is $WARREN_IDENTITY, certified as demo-client in group submitters" >&2
export WARREN_COMPONENT_CACHE=$root/$data/component-cache

$keep || trap stop_nodes EXIT
: >"$pidfile"
start() {
    local node=$1; shift
    rm -f "$data/$node.ready"
    "$bin/warren" node --config "$mesh/$node.toml" --ready-file "$data/$node.ready" "$@" \
        </dev/null >"$data/$node.log" 2>&1 &
    echo "$!" >>"$pidfile"
}
# Only the controller keeps the port lock (descriptor 9).
start node1 --ansible-runner "$root/.venv/bin/ansible-runner" 9>&-
start relay 9>&-
start controller
exec 9>&-
for node in node1 relay controller; do
    for _ in $(seq 100); do [[ -s "$data/$node.ready" ]] && break; sleep 0.1; done
    [[ -s "$data/$node.ready" ]] || { echo "$node did not start; see $data/$node.log" >&2; exit 1; }
done

export PATH=$bin:$root/.venv/bin:$PATH
echo "==> ${command[*]}" >&2
set +e
"${command[@]}"
rc=$?
set -e
echo "==> exit code $rc; artifacts in examples/demo/artifacts/" >&2
echo "==> warren status (controller)" >&2
warren status --socket "$data/controller/control.sock"

socket=$data/controller/control.sock
if $keep; then
    cat >&2 <<EOF
==> The nodes keep running (logs in $data/*.log). Try, from $root:
    export PATH=$bin:$root/.venv/bin:\$PATH
    export WARREN_IDENTITY=$WARREN_IDENTITY
    ${command[*]}      # the same job again
    warren status --socket $socket
    warren work list --socket $socket
    receptorctl --socket $socket status
    receptorctl --socket $socket ping node1
    scripts/demo.sh --stop      # stop the nodes
EOF
else
    cat >&2 <<EOF
==> The nodes are stopped. To try more, run \`scripts/demo.sh --keep\`: it leaves them
    running and prints the commands to try (the same command again, warren status,
    receptorctl), and \`scripts/demo.sh --stop\` stops them.
EOF
fi
exit $rc
