"""A job that cannot start raises an exception naming the node or peer and what to do, as
`warren run` says it; one that breaks off after it started ends with status `error`, a
`job_explanation`, and the artifacts received so far."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import ansible_runner
import pytest
from ansible_runner.exceptions import AnsibleRunnerException

from conftest import Setup, slow_playbook, wait_for


def run(demo: Path, **kwargs):
    return ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", quiet=True,
                              **kwargs)


def test_an_unknown_node_raises_naming_it_and_the_peer(mesh3: Setup, demo: Path) -> None:
    from warren.errors import UnknownNode

    with pytest.raises(UnknownNode) as raised:
        run(demo, via_receptor="nowhere", receptor_peer=mesh3.peer, receptor_timeout=1)
    message = str(raised.value)
    assert "nowhere is not reachable from" in message
    assert mesh3.peer.removeprefix("receptor://") in message
    assert "warren status" in message
    assert raised.value.node == "nowhere"
    assert isinstance(raised.value, (LookupError, AnsibleRunnerException))


def test_an_unreachable_peer_raises_naming_it(demo: Path) -> None:
    from warren.errors import PeerUnreachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on that port now.
    with pytest.raises(PeerUnreachable) as raised:
        run(demo, via_receptor="node1", receptor_peer=f"127.0.0.1:{port}", receptor_timeout=1)
    message = str(raised.value)
    assert f"cannot link to 127.0.0.1:{port}" in message
    assert "receptor_peer=" in message
    assert isinstance(raised.value, ConnectionError)


def test_a_bad_peer_address_raises_value_error(demo: Path) -> None:
    with pytest.raises(ValueError, match="receptor_peer"):
        run(demo, via_receptor="node1", receptor_peer="127.0.0.1:notaport")


def test_a_node_without_ansible_runner_raises_not_offered(mesh3: Setup, demo: Path) -> None:
    from warren.errors import NotOffered

    with pytest.raises(NotOffered) as raised:
        run(demo, via_receptor="relay", receptor_peer=mesh3.peer, receptor_timeout=1)
    assert "node relay does not offer work type ansible-runner" in str(raised.value)


def test_a_peer_that_does_not_trust_the_client_says_how_to_admit_it(
        mesh3: Setup, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from warren.errors import PeerRefused

    monkeypatch.setenv("WARREN_IDENTITY", str(tmp_path / "unknown.key"))
    with pytest.raises(PeerRefused) as raised:
        run(demo, via_receptor="node1", receptor_peer=mesh3.peer, receptor_timeout=5)
    message = str(raised.value)
    token = subprocess.run([str(_warren()), "keygen", "--show", str(tmp_path / "unknown.key")],
                           capture_output=True, text=True).stdout.strip()
    assert f"refused this client's key {token}" in message
    assert "--trust" in message


def test_a_node_that_does_not_allow_the_client_says_which_flag_would(
        mesh3: Setup, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from warren.errors import SubmitRefused

    monkeypatch.setenv("WARREN_IDENTITY", str(mesh3.stranger))
    with pytest.raises(SubmitRefused) as raised:
        run(demo, via_receptor="node1", receptor_peer=mesh3.peer)
    assert f"--allow-work ansible-runner={mesh3.stranger_token}" in str(raised.value)
    assert mesh3.mesh.units("node1") == {}


def test_run_async_refused_by_the_node_ends_error_saying_which_flag_would(
        mesh3: Setup, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run_async returns once the link and the node are checked; node1 makes the unit in
    # the thread, so its refusal ends the run there, as handlers and artifacts show it.
    monkeypatch.setenv("WARREN_IDENTITY", str(mesh3.stranger))
    statuses: list[str] = []
    finished: list[object] = []
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(demo), playbook="test.yml", ident="refused", quiet=True,
        via_receptor="node1", receptor_peer=mesh3.peer,
        status_handler=lambda data, runner_config: statuses.append(data["status"]),
        finished_callback=finished.append)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert runner.status == "error"
    assert runner.errored and runner.rc == 254
    assert runner.unit_id is None
    assert f"--allow-work ansible-runner={mesh3.stranger_token}" in runner.job_explanation
    assert statuses == ["error"]
    assert finished == [runner]
    artifacts = demo / "artifacts" / "refused"
    assert (artifacts / "status").read_text() == "error"
    assert (artifacts / "rc").read_text() == "254"
    assert mesh3.mesh.units("node1") == {}


def test_run_async_cancelled_at_once_ends_canceled_and_leaves_nothing_on_node1(
        mesh3: Setup, demo: Path) -> None:
    # Cancelled before or while node1 makes the unit (whichever comes first here): the run
    # ends canceled either way and node1 keeps nothing.
    slow_playbook(demo, 30)
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(demo), playbook="slow.yml", ident="early", quiet=True,
        via_receptor="node1", receptor_peer=mesh3.peer)
    runner.cancel()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert runner.status == "canceled"
    assert runner.canceled
    assert wait_for("node1 to keep no unit", lambda: mesh3.mesh.units("node1") == {})


def test_losing_the_node_mid_job_ends_with_error_and_keeps_partial_artifacts(
        own_mesh3: Setup, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_LOST_CONTACT_TIMEOUT", "2")
    slow_playbook(demo, 60)
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(demo), playbook="slow.yml", ident="lost", quiet=True,
        via_receptor="node1", receptor_peer=own_mesh3.peer)
    events = demo / "artifacts" / "lost" / "job_events"
    wait_for("the job's first task's result",
             lambda: any("runner_on_ok" in p.read_text() for p in events.glob("*.json")))
    own_mesh3.mesh.nodes["relay"].kill()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert runner.status == "error"
    assert runner.errored and runner.rc == 254
    assert "lost contact with node1" in runner.job_explanation, runner.job_explanation
    assert runner.unit_id in runner.job_explanation
    kept = [e for e in runner.events if e.get("event") == "runner_on_ok"]
    assert kept and "before" in kept[0]["stdout"]
    assert (demo / "artifacts" / "lost" / "status").read_text() == "error"


def _warren() -> Path:
    from conftest import warren_bin

    return warren_bin()
