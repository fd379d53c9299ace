"""The Python API's benchmark: what `via_receptor` adds to ansible_runner.run, side by side
with local runs in the same process and the same minute.

Starts controller -> relay -> node1 on 127.0.0.1 (real `warren node` processes, node1
running the venv's real ansible-runner), then:

1. latency: the demo playbook run three ways, alternating, N times each: a local run; the
   remote run's own work without Warren (transmit here, `ansible-runner worker` as a
   child process, process here); and via node1 over two hops. Warren's share is the
   remote median minus the pipeline's;
2. concurrency: 20 `run_async` jobs locally, then 20 via node1 through one embedded node,
   alternating, M times each; prints each wave's wall time, the CPU time it took (this
   process and the nodes, each with its reaped children: a local run's ansible-playbook
   is this process's child, a remote one's worker tree node1's), this process's peak RSS
   and the load average before it, then the medians and their ratios. node1 runs all 20
   at once as the local side does (`[work] max-running` = 20; with
   `--node-default-max-running` it keeps its default, twice the cores, and queues the
   rest). The nodes log at their default level, as deployed. Every run gets a fresh copy
   of the demo: ansible-runner's transmit (which the package sends unchanged) zips the
   whole private data dir, the artifacts of earlier runs in it included, which a local
   run never reads. With
   WARREN_BENCH_PIPELINE=1 it also times 20 pipelines as above.

Run it with release builds (figures from debug builds mean little):

    cargo build --release -p warren
    WARREN_PYTHON_PROFILE=release scripts/setup-python.sh
    WARREN_TEST_BIN_DIR=$CARGO_TARGET_DIR/release .venv/bin/python python/bench/bench.py [N [M]]

N = 0 skips the latency section. On a machine shared with other work, compare the CPU
ratio as well as the wall ratio: the wall time depends on what else runs.

(`$CARGO_TARGET_DIR` defaults to `target`.) Not run by the tests: the machine's noise
would make any threshold flaky; the figures are for people.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import conftest  # noqa: E402  (the tests' real-process mesh)

CONCURRENT = 20


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def demo_copy(root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(conftest.DEMO, target)
    return target


def timed(call) -> float:
    start = time.perf_counter()
    runner = call()
    took = time.perf_counter() - start
    assert runner.status == "successful", (runner.status, getattr(runner, "job_explanation", ""))
    return took


def pipeline(ansible_runner, demo: Path, ident: str, scratch: Path):
    """The remote run's work without Warren: transmit in this process, `ansible-runner
    worker` as a child process (as node1 runs it), process in this process."""
    import io
    import subprocess

    payload = scratch / f"{ident}.payload"
    with open(payload, "wb") as out:  # ansible-runner's stream_dir wants a named file
        ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident=ident,
                           quiet=True, streamer="transmit", _output=out)
    work = scratch / ident
    work.mkdir()
    worker = subprocess.run([str(conftest.VENV_BIN / "ansible-runner"), "worker",
                             "--private-data-dir", str(work)],
                            input=payload.read_bytes(), capture_output=True, check=True)
    return ansible_runner.run(private_data_dir=str(demo), ident=ident, quiet=True,
                              streamer="process", _input=io.BytesIO(worker.stdout))


def latency(ansible_runner, root: Path, peer: str, rounds: int, scratch: Path) -> None:
    local, piped, remote = [], [], []
    # One warm-up of each: the embedded node's link and node1's component are set up once.
    # Each run gets a fresh copy of the demo: ansible-runner's transmit zips the whole
    # private data dir, artifacts of earlier runs included, and a local run zips nothing.
    for i in range(rounds + 1):
        a = timed(lambda: ansible_runner.run(private_data_dir=str(demo_copy(root, f"l{i}")),
                                             playbook="test.yml", ident=f"l{i}", quiet=True))
        b = timed(lambda: pipeline(ansible_runner, demo_copy(root, f"p{i}"), f"p{i}", scratch))
        c = timed(lambda: ansible_runner.run(private_data_dir=str(demo_copy(root, f"r{i}")),
                                             playbook="test.yml", ident=f"r{i}", quiet=True,
                                             via_receptor="node1", receptor_peer=peer))
        if i:
            local.append(a)
            piped.append(b)
            remote.append(c)
    lm, pm, rm = (statistics.median(x) for x in (local, piped, remote))
    print(f"latency, demo playbook, {rounds} rounds alternating (median):")
    print(f"  local ansible_runner.run              {lm * 1000:8.1f} ms")
    print(f"  local transmit | worker | process     {pm * 1000:8.1f} ms   (the remote run's work, no mesh)")
    print(f"  via_receptor='node1', 2 hops          {rm * 1000:8.1f} ms")
    print(f"  Warren's share (remote - pipeline)    {(rm - pm) * 1000:8.1f} ms   (target < 20 ms)")
    print(f"  remote / local run                    {rm / lm:8.2f}x")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """`pid`'s own CPU time and its reaped children's, in seconds (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick)


class CpuMeter:
    """CPU time of this process and the mesh's nodes, each with its reaped children (a
    local run's ansible-playbook is this process's child; a remote run's worker tree is
    node1's, through its per-job supervisor). Load-independent, unlike wall time."""

    def __init__(self, mesh: conftest.Mesh):
        self.pids = {"client": os.getpid(),
                     **{name: node.process.pid for name, node in mesh.nodes.items()}}

    def sample(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid)) for name, pid in self.pids.items()}

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


def concurrent(ansible_runner, root: Path, peer: str, scratch: Path, meter: CpuMeter,
               waves: int, max_running: str) -> None:
    def wave(remote: bool, n: int) -> tuple[float, int, dict[str, float], str]:
        extra = {"via_receptor": "node1", "receptor_peer": peer} if remote else {}
        # A fresh demo per job, as AWX gives each job its own dir: a dir shared by the wave
        # would have each remote job's transmit zip the others' artifacts as they grow.
        tag = f"{'r' if remote else 'l'}c{n}-"
        demos = [demo_copy(root, f"{tag}{i}") for i in range(CONCURRENT)]
        peak = [rss_kib()]
        load = loadavg()
        before = meter.sample()
        start = time.perf_counter()
        jobs = [ansible_runner.run_async(private_data_dir=str(demos[i]), playbook="test.yml",
                                         ident=f"{tag}{i}", quiet=True, **extra)
                for i in range(CONCURRENT)]
        while any(t.is_alive() for t, _ in jobs):
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.05)
        took = time.perf_counter() - start
        spent = CpuMeter.spent(before, meter.sample())
        for thread, runner in jobs:
            thread.join()
            assert runner.status == "successful", (runner.status, runner.job_explanation)
        return took, peak[0], spent, load

    def piped_wave() -> float:
        demos = [demo_copy(root, f"pc{i}") for i in range(CONCURRENT)]
        start = time.perf_counter()
        threads = [threading.Thread(target=pipeline, args=(ansible_runner, demos[i], f"pc{i}", scratch))
                   for i in range(CONCURRENT)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    print(f"{CONCURRENT} concurrent run_async jobs, demo playbook, local and via node1 alternating"
          f" (node1 max-running: {max_running}):")
    print("  wave      wall     CPU (client + nodes, children included)   peak RSS   loadavg before")
    local, remote, local_cpu, remote_cpu, ratios = [], [], [], [], []
    for n in range(waves):
        for is_remote in (False, True):
            took, peak, spent, load = wave(is_remote, n)
            cpu = sum(spent.values())
            parts = "  ".join(f"{name} {secs:.2f}" for name, secs in spent.items() if secs >= 0.005)
            print(f"  {'remote' if is_remote else 'local ':6s} {took:7.2f} s  {cpu:6.2f} s ({parts})"
                  f"  {peak / 1024:6.1f} MiB   {load}")
            (remote if is_remote else local).append(took)
            (remote_cpu if is_remote else local_cpu).append(cpu)
        ratios.append(remote[-1] / local[-1])
    lm, rm = statistics.median(local), statistics.median(remote)
    print(f"  median wall: local {lm:.2f} s, remote {rm:.2f} s; ratio remote / local {rm / lm:.2f}"
          f"   (target <= 1.10; per pair: {', '.join(f'{r:.2f}' for r in ratios)})")
    lc, rc = statistics.median(local_cpu), statistics.median(remote_cpu)
    print(f"  median CPU: local {lc:.2f} s, remote {rc:.2f} s; ratio {rc / lc:.2f}"
          f"   (on 2 busy cores, wall cannot beat the CPU ratio)")
    if os.environ.get("WARREN_BENCH_PIPELINE"):
        piped = piped_wave()
        print(f"  local transmit | worker | process {piped:6.2f} s   (the remote runs' work, no mesh)")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = int(args[0]) if args else 10
    waves = int(args[1]) if len(args) > 1 else 3
    # node1 runs as many jobs at once as the local side does, unless told to keep its
    # default (two per CPU): 20 jobs queued behind 4 slots are not 20 concurrent jobs.
    node_default = "--node-default-max-running" in sys.argv
    root = Path(tempfile.mkdtemp(prefix="warren-pybench-"))
    home = root / "home"
    home.mkdir()
    os.environ.update(HOME=str(home), LANG="C.UTF-8",
                      PATH=f"{conftest.VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    cache = root / "components"
    cache.mkdir()
    (root / "mesh").mkdir()
    # The nodes log at their default level, as deployed (the tests' debug lines cost CPU).
    mesh = conftest.Mesh(root / "mesh", cache, log_filter="")
    try:
        setup = conftest.Setup(mesh, node1_max_running=None if node_default else CONCURRENT)
        os.environ["WARREN_IDENTITY"] = str(setup.identity)
        import ansible_runner

        print(f"warren binary: {conftest.warren_bin()}")
        scratch = root / "pipeline"
        scratch.mkdir()
        demos = root / "demos"
        demos.mkdir()
        if rounds:
            latency(ansible_runner, demos, setup.peer, rounds, scratch)
        concurrent(ansible_runner, demos, setup.peer, scratch, CpuMeter(mesh), waves,
                   "default (2 per CPU)" if node_default else str(CONCURRENT))
    finally:
        from warren import _native

        _native.shutdown_all()
        mesh.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
