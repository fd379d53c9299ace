"""The Python API's benchmark: what `via_receptor` adds to ansible_runner.run, side by side
with local runs in the same process and the same minute.

Starts controller -> relay -> node1 on 127.0.0.1 (real `warren node` processes, node1
running the venv's real ansible-runner), then:

1. latency: the demo playbook run three ways, alternating, N times each: a local run; the
   remote run's own work without Warren (transmit here, `ansible-runner worker` as a
   child process, process here); and via node1 over two hops. Warren's share is the
   remote median minus the pipeline's;
2. concurrency: 20 `run_async` jobs locally, 20 pipelines as above, then 20 via node1
   through one embedded node; prints the wall times, their ratios, and this process's
   peak RSS while the local and the remote ones were in flight. node1 runs at most
   `[work] max-running` at once (default twice the cores), the local runs all at once.

Run it with release builds (figures from debug builds mean little):

    cargo build --release -p warren
    WARREN_PYTHON_PROFILE=release scripts/setup-python.sh
    WARREN_TEST_BIN_DIR=$CARGO_TARGET_DIR/release .venv/bin/python python/bench/bench.py [N]

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


def latency(ansible_runner, demo: Path, peer: str, rounds: int, scratch: Path) -> None:
    local, piped, remote = [], [], []
    # One warm-up of each: the embedded node's link and node1's component are set up once.
    for i in range(rounds + 1):
        a = timed(lambda: ansible_runner.run(private_data_dir=str(demo), playbook="test.yml",
                                             ident=f"l{i}", quiet=True))
        b = timed(lambda: pipeline(ansible_runner, demo, f"p{i}", scratch))
        c = timed(lambda: ansible_runner.run(private_data_dir=str(demo), playbook="test.yml",
                                             ident=f"r{i}", quiet=True, via_receptor="node1",
                                             receptor_peer=peer))
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


def concurrent(ansible_runner, demo: Path, peer: str, scratch: Path) -> None:
    def wave(remote: bool) -> tuple[float, int]:
        extra = {"via_receptor": "node1", "receptor_peer": peer} if remote else {}
        peak = [rss_kib()]
        start = time.perf_counter()
        jobs = [ansible_runner.run_async(private_data_dir=str(demo), playbook="test.yml",
                                         ident=f"{'r' if remote else 'l'}c{i}", quiet=True,
                                         **extra)
                for i in range(CONCURRENT)]
        while any(t.is_alive() for t, _ in jobs):
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.05)
        took = time.perf_counter() - start
        for thread, runner in jobs:
            thread.join()
            assert runner.status == "successful", (runner.status, runner.job_explanation)
        return took, peak[0]

    def piped_wave() -> float:
        start = time.perf_counter()
        threads = [threading.Thread(target=pipeline, args=(ansible_runner, demo, f"pc{i}", scratch))
                   for i in range(CONCURRENT)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start

    local, local_rss = wave(remote=False)
    piped = piped_wave()
    remote, remote_rss = wave(remote=True)
    print(f"{CONCURRENT} concurrent run_async jobs, demo playbook (wall time):")
    print(f"  local                           {local:8.2f} s   peak RSS {local_rss / 1024:6.1f} MiB")
    print(f"  local transmit | worker | process {piped:6.2f} s   (the remote runs' work, no mesh)")
    print(f"  via_receptor='node1', 2 hops    {remote:8.2f} s   peak RSS {remote_rss / 1024:6.1f} MiB")
    print(f"  ratio remote / local            {remote / local:8.2f}   (target <= 1.10)")
    print(f"  ratio remote / pipeline         {remote / piped:8.2f}   (Warren's share)")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    root = Path(tempfile.mkdtemp(prefix="warren-pybench-"))
    home = root / "home"
    home.mkdir()
    os.environ.update(HOME=str(home), LANG="C.UTF-8",
                      PATH=f"{conftest.VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    cache = root / "components"
    cache.mkdir()
    (root / "mesh").mkdir()
    mesh = conftest.Mesh(root / "mesh", cache)
    try:
        setup = conftest.Setup(mesh)
        os.environ["WARREN_IDENTITY"] = str(setup.identity)
        import ansible_runner

        print(f"warren binary: {conftest.warren_bin()}")
        demo = demo_copy(root, "demo")
        scratch = root / "pipeline"
        scratch.mkdir()
        latency(ansible_runner, demo, setup.peer, rounds, scratch)
        concurrent(ansible_runner, demo, setup.peer, scratch)
    finally:
        from warren import _native

        _native.shutdown_all()
        mesh.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
