"""Fixtures: real `warren node` processes (controller -> relay -> node1, node1 running the
venv's real ansible-runner) on 127.0.0.1, a client identity the controller trusts and node1
lets run ansible-runner, and copies of examples/demo.

The `warren` binary is the one the cargo tests built: `$WARREN_TEST_BIN_DIR/warren`, else
`$CARGO_TARGET_DIR/debug/warren`, else `target/debug/warren` of this repository. A missing
binary fails the tests with the command that builds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
#: How long any condition may take before a test fails (as tests/support: 30 s).
DEADLINE = 30.0
#: The venv running the tests: ansible-runner and ansible-playbook are in it.
VENV_BIN = Path(sys.executable).parent


def warren_bin() -> Path:
    if os.environ.get("WARREN_TEST_BIN_DIR"):
        path = Path(os.environ["WARREN_TEST_BIN_DIR"]) / "warren"
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        path = target / "debug" / "warren"
    assert path.is_file(), f"{path} is missing; build it with `cargo build -p warren`"
    return path


def wait_for(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    """Polls `check` until it returns something truthy; fails naming `what`."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < end, f"timed out after {deadline} s waiting for {what}"
        time.sleep(0.02)


def warren(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("WARREN_SOCKET", None)
    return subprocess.run([str(warren_bin()), *args], capture_output=True, text=True, env=env)


class Identity:
    def __init__(self, node_id: str, key: Path):
        self.id = node_id
        self.key = key
        out = warren("keygen", "--out", str(key))
        assert out.returncode == 0, out
        self.token = out.stdout.strip().splitlines()[-1]


class Node:
    def __init__(self, mesh: "Mesh", identity: Identity, extra: list[str]):
        self.identity = identity
        self.socket = mesh.dir / f"{identity.id}.sock"
        self.log = mesh.dir / f"{identity.id}.log"
        self.args = [
            "node", "--id", identity.id, "--key", str(identity.key),
            "--data-dir", str(mesh.dir / f"{identity.id}-data"),
            "--control-socket", str(self.socket),
            *extra,
        ]
        if "--listen" not in extra:
            self.args += ["--listen", "127.0.0.1:0"]
        ready = mesh.dir / f"{identity.id}.ready"
        env = dict(os.environ, RUST_LOG=mesh.log_filter,
                   WARREN_COMPONENT_CACHE=str(mesh.component_cache))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(warren_bin()), *self.args, "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

        def bound() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"node {identity.id} exited early:\n{self.log_text()}")
            try:
                return ready.read_text().splitlines()[0]
            except (OSError, IndexError):
                return None

        self.addr = wait_for(f"{identity.id}'s ready file", bound)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class Mesh:
    """A temp dir of node processes, killed at the end; their logs are printed on failure.
    The nodes log at `log_filter` (a RUST_LOG filter; the tests want debug lines, the
    benchmark the default a deployed node runs with)."""

    def __init__(self, root: Path, component_cache: Path, log_filter: str = "warren=debug"):
        self.dir = root
        self.component_cache = component_cache
        self.log_filter = log_filter
        self.nodes: dict[str, Node] = {}

    def identity(self, node_id: str) -> Identity:
        return Identity(node_id, self.dir / f"{node_id}.key")

    def start(self, identity: Identity, extra: list[str]) -> Node:
        node = Node(self, identity, extra)
        self.nodes[identity.id] = node
        return node

    def ctl(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return warren(*args, "--socket", str(self.nodes[name].socket))

    def status(self, name: str) -> dict | None:
        out = self.ctl(name, "status", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    def units(self, name: str) -> dict:
        out = self.ctl(name, "work", "list", "--json")
        assert out.returncode == 0, out
        return json.loads(out.stdout)

    def logs(self) -> str:
        return "".join(f"===== {n} log =====\n{node.log_text()}\n" for n, node in self.nodes.items())

    def stop(self) -> None:
        """SIGTERM first, SIGKILL for what is still up after 5 s: a node stopped with SIGTERM
        stops its jobs, whereas a SIGKILLed one leaves its detached jobs (ansible-runner's)
        running on purpose, to re-attach them. A test must not leave a job behind."""
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + 5
        for node in self.nodes.values():
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()


def trust(ids: list[Identity]) -> list[str]:
    return [arg for i in ids for arg in ("--trust", f"{i.id}={i.token}")]


class Setup:
    """controller -> relay -> node1, a client identity (`identity`) that the controller
    trusts and node1 lets run ansible-runner, and one (`stranger`) it trusts but node1
    does not let run anything. `node1_max_running` sets node1's `[work] max-running`
    (default: the node's own, two per CPU)."""

    def __init__(self, mesh: Mesh, controller_listen: str | None = None,
                 node1_max_running: int | None = None):
        self.mesh = mesh
        client_dir = mesh.dir / "client"
        client_dir.mkdir()
        self.home = client_dir
        self.identity = client_dir / "identity.key"
        out = warren("keygen", "--out", str(self.identity))
        assert out.returncode == 0, out
        self.client_token = out.stdout.strip().splitlines()[-1]
        # A second client the controller admits but node1 does not let run anything.
        (mesh.dir / "stranger").mkdir()
        self.stranger = mesh.dir / "stranger" / "identity.key"
        out = warren("keygen", "--out", str(self.stranger))
        assert out.returncode == 0, out
        self.stranger_token = out.stdout.strip().splitlines()[-1]
        ids = [mesh.identity(n) for n in ("controller", "relay", "node1")]
        runner = VENV_BIN / "ansible-runner"
        node1_extra = trust(ids) + [
            "--ansible-runner", str(runner),
            "--allow-work", f"ansible-runner={self.client_token}",
        ]
        if node1_max_running is not None:
            # A file for the one setting without a flag; the flags fill in the rest.
            config = mesh.dir / "node1.toml"
            config.write_text(f'[node]\nid = "node1"\ndata-dir = "node1-data"\n'
                              f'key-file = "node1.key"\n\n[work]\n'
                              f"max-running = {int(node1_max_running)}\n")
            node1_extra += ["--config", str(config)]
        node1 = mesh.start(ids[2], node1_extra)
        # Only node1 offers ansible-runner (the others would find the venv's on PATH).
        relay = mesh.start(ids[1], trust(ids) + ["--peer", f"receptor://{node1.addr}",
                                                 "--no-ansible-runner"])
        extra = trust(ids) + ["--peer", f"receptor://{relay.addr}", "--trust", self.client_token,
                              "--trust", self.stranger_token, "--no-ansible-runner"]
        if controller_listen:
            extra += ["--listen", controller_listen]
        controller = mesh.start(ids[0], extra)
        self.peer = f"receptor://{controller.addr}"

        def routed() -> bool:
            status = mesh.status("controller") or {}
            return status.get("RoutingTable", {}).get("node1") == "relay"

        wait_for("the controller to route to node1 via relay", routed)

        def offers() -> bool:
            status = mesh.status("node1") or {}
            types = status.get("WorkTypes") or [{}]
            return types[0].get("WorkType") == "ansible-runner"

        wait_for("node1 to offer ansible-runner", offers)


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ansible-playbook on PATH for local runs; a home of its own, so the user's
    ~/.config/warren is never touched."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    os.environ["HOME"] = str(home)
    os.environ["LANG"] = "C.UTF-8"
    os.environ.pop("WARREN_IDENTITY", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def component_cache() -> Iterator[Path]:
    """One compiled-component cache for every node of the session."""
    path = Path(tempfile.mkdtemp(prefix="warren-pytest-components-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _make_setup(tmp: Path, cache: Path, listen: str | None = None) -> Iterator[Setup]:
    mesh = Mesh(tmp, cache)
    try:
        try:
            setup = Setup(mesh, listen)
        except BaseException:
            print(mesh.logs(), file=sys.stderr)
            raise
        os.environ["WARREN_IDENTITY"] = str(setup.identity)
        yield setup
    finally:
        from warren import _native

        _native.shutdown_all()
        os.environ.pop("WARREN_IDENTITY", None)
        mesh.stop()


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory: pytest.TempPathFactory, component_cache: Path) -> Iterator[Setup]:
    """controller -> relay -> node1, shared by a module's tests (each uses its own ident)."""
    yield from _make_setup(tmp_path_factory.mktemp("mesh"), component_cache)


@pytest.fixture
def own_mesh3(tmp_path_factory: pytest.TempPathFactory, component_cache: Path) -> Iterator[Setup]:
    """controller -> relay -> node1 for one test (one that kills nodes)."""
    yield from _make_setup(tmp_path_factory.mktemp("mesh"), component_cache)


@pytest.fixture
def default_port_lock() -> Iterator[None]:
    """The lock on 127.0.0.1:8888 that tests/support and scripts/demo.sh take
    (`$TMPDIR/warren-port-8888.lock`, flock), held for the test."""
    path = Path(tempfile.gettempdir()) / "warren-port-8888.lock"
    with open(path, "w") as lock:
        end = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < end, (
                    f"port 8888 stayed locked ({path}): are demo nodes running? "
                    "`scripts/demo.sh --stop`")
                time.sleep(0.1)
        yield


@pytest.fixture
def default_mesh3(tmp_path_factory: pytest.TempPathFactory, component_cache: Path,
                  default_port_lock: None) -> Iterator[Setup]:
    """controller -> relay -> node1 with the controller on 127.0.0.1:8888, under the lock."""
    yield from _make_setup(tmp_path_factory.mktemp("mesh"), component_cache,
                           listen="127.0.0.1:8888")


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A fresh copy of examples/demo (without artifacts)."""
    dst = tmp_path / "demo"
    shutil.copytree(DEMO, dst, ignore=shutil.ignore_patterns("artifacts"))
    return dst


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report carries the nodes' logs."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("mesh3", "own_mesh3", "default_mesh3"):
            setup = getattr(item, "funcargs", {}).get(name)
            if setup is not None:
                report.sections.append((f"warren node logs ({name})", setup.mesh.logs()))


def files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def counters(artifacts: Path) -> list[int]:
    return sorted(int(p.name.split("-", 1)[0]) for p in (artifacts / "job_events").iterdir())


def playbook(pdd: Path, name: str, text: str) -> None:
    (pdd / "project" / name).write_text(text)


def slow_playbook(pdd: Path, secs: int) -> None:
    playbook(pdd, "slow.yml",
             "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n        msg: before\n"
             f"    - pause:\n        seconds: {secs}\n    - debug:\n        msg: after\n")
