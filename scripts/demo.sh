#!/usr/bin/env bash
# Runs the example mesh on this machine: controller -> relay -> node1 on 127.0.0.1
# (examples/mesh), then pings node1 from the controller across the relay, traces the route
# and shows the controller's status. Stops the nodes at the end unless --keep is given.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
[[ "${1:-}" == "--keep" ]] && keep=true

echo "==> building warren" >&2
cargo build -q -p warren
warren=target/debug/warren
mesh=examples/mesh
data=$mesh/data
mkdir -p "$data"
# git does not keep file modes; the demo keys must not be readable by others.
chmod 600 "$mesh"/keys/*.key

pids=()
stop() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
$keep || trap stop EXIT

for node in node1 relay controller; do
    rm -f "$data/$node.ready"
    "$warren" node --config "$mesh/$node.toml" --ready-file "$data/$node.ready" \
        >"$data/$node.log" 2>&1 &
    pids+=("$!")
done
for node in node1 relay controller; do
    for _ in $(seq 100); do [[ -s "$data/$node.ready" ]] && break; sleep 0.1; done
    [[ -s "$data/$node.ready" ]] || { echo "$node did not start; see $data/$node.log" >&2; exit 1; }
done

socket=$data/controller/control.sock
echo "==> waiting for a route from controller to node1" >&2
for _ in $(seq 150); do
    "$warren" status --socket "$socket" --json 2>/dev/null | grep -q '"node1": "relay"' && break
    sleep 0.1
done

echo "==> warren ping node1 (from the controller, through the relay)" >&2
"$warren" ping node1 --count 3 --interval 0.2 --socket "$socket"
echo "==> warren traceroute node1" >&2
"$warren" traceroute node1 --socket "$socket"
echo "==> warren status" >&2
"$warren" status --socket "$socket"
if $keep; then
    echo "==> nodes keep running (pids ${pids[*]}); logs in $data/*.log" >&2
fi
