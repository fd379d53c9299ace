#!/usr/bin/env bash
# The demo: the seed's command, run through Warren across a three-node mesh on this machine.
#
# Sets up what it needs (the wasm32-wasip2 target, .venv/ with ansible-runner and
# ansible-core from PyPI), builds Warren, starts controller -> relay -> node1 from
# examples/mesh/ (node1 runs ansible-runner from .venv), and runs
#   ansible-runner run examples/demo -p test.yml --via-receptor node1 --receptor-peer receptor://127.0.0.1:8891
# through Warren's ansible-runner front end. Stops the nodes at the end unless --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

keep=false
[[ "${1:-}" == "--keep" ]] && keep=true

echo "==> setting up (wasm32-wasip2 target, .venv with ansible-runner)" >&2
scripts/toolchain.sh
scripts/setup-python.sh >&2
echo "==> building warren" >&2
cargo build -q -p warren
bin=$root/target/debug
mesh=examples/mesh
data=$mesh/data
mkdir -p "$data/client"
# git does not keep file modes; the demo keys must not be readable by others.
chmod 600 "$mesh"/keys/*.key

# This run's client identity: the controller must trust it.
export WARREN_IDENTITY=$root/$data/client/identity.key
[[ -f $WARREN_IDENTITY ]] || "$bin/warren" keygen --out "$WARREN_IDENTITY" >/dev/null 2>&1
client=$("$bin/warren" keygen --show "$WARREN_IDENTITY")
export WARREN_COMPONENT_CACHE=$root/$data/component-cache

pids=()
stop() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
$keep || trap stop EXIT

start() {
    local node=$1; shift
    rm -f "$data/$node.ready"
    "$bin/warren" node --config "$mesh/$node.toml" --ready-file "$data/$node.ready" "$@" \
        >"$data/$node.log" 2>&1 &
    pids+=("$!")
}
start node1 --ansible-runner "$root/.venv/bin/ansible-runner"
start relay
start controller --trust "$client"
for node in node1 relay controller; do
    for _ in $(seq 100); do [[ -s "$data/$node.ready" ]] && break; sleep 0.1; done
    [[ -s "$data/$node.ready" ]] || { echo "$node did not start; see $data/$node.log" >&2; exit 1; }
done

echo "==> ansible-runner run examples/demo -p test.yml --via-receptor node1 --receptor-peer receptor://127.0.0.1:8891" >&2
set +e
PATH=$bin:$root/.venv/bin:$PATH ansible-runner run examples/demo -p test.yml \
    --via-receptor node1 --receptor-peer receptor://127.0.0.1:8891
rc=$?
set -e
echo "==> exit code $rc; artifacts in examples/demo/artifacts/" >&2
echo "==> warren status (controller)" >&2
"$bin/warren" status --socket "$data/controller/control.sock"
if $keep; then
    echo "==> nodes keep running (pids ${pids[*]}); logs in $data/*.log" >&2
fi
exit $rc
