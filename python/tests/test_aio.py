"""The asyncio form: `warren.aio.run(...)` is awaitable, streams its events with `async for`,
and `task.cancel()` cancels the unit on node1, leaving nothing of the job running."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from conftest import Setup, playbook, wait_for


def _processes() -> dict[int, tuple[int, str]]:
    """Every live (not zombie) process: pid -> (parent pid, command line)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state, parent = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if state != "Z":
            found[int(entry)] = (int(parent), command)
    return found


def job_processes(marker: str) -> dict[int, str]:
    """The live processes of the job whose command line holds `marker` (its unit's directory
    on node1: only that job's ansible-playbook names it), everything they started, and
    their ancestors up to the Warren node (the ansible-runner worker)."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    job: set[int] = set()
    for pid, (parent, command) in procs.items():
        if marker not in command:
            continue
        stack = [pid]
        while stack:
            p = stack.pop()
            if p not in job:
                job.add(p)
                stack.extend(children.get(p, []))
        while parent > 1 and parent in procs and "warren node" not in procs[parent][1]:
            job.add(parent)
            parent = procs[parent][0]
    return {pid: procs[pid][1] for pid in job}


def alive(pids: set[int]) -> set[int]:
    return set(pids) & set(_processes())


def test_await_gives_the_runner_and_events_stream_live(mesh3: Setup, demo: Path) -> None:
    import warren.aio

    async def main():
        job = warren.aio.run(private_data_dir=str(demo), playbook="test.yml", ident="aio",
                             quiet=True, via_receptor="node1", receptor_peer=mesh3.peer)
        events = [event async for event in job.events()]
        runner = await job
        return events, runner

    events, runner = asyncio.run(main())
    assert runner.status == "successful" and runner.rc == 0
    assert [e["counter"] for e in events] == [e["counter"] for e in runner.events]
    assert events[-1]["event"] == "playbook_on_stats"


def test_task_cancel_cancels_the_remote_unit_and_nothing_keeps_running(
        mesh3: Setup, demo: Path) -> None:
    import warren.aio

    playbook(demo, "cancel_me.yml",
             "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n        msg: started\n"
             "    - shell: sleep 300\n")

    async def main():
        job = warren.aio.run(private_data_dir=str(demo), playbook="cancel_me.yml",
                             ident="cancel", quiet=True, via_receptor="node1",
                             receptor_peer=mesh3.peer)
        task = asyncio.create_task(job)
        marker = str(mesh3.mesh.dir / "node1-data" / "units")
        async for event in job.events():
            if (event.get("event") == "runner_on_start"
                    and event["event_data"].get("task_action") == "shell"):
                break
        # The job's processes run on node1 now: the check below can see them.
        def started() -> dict[int, str]:
            found = job_processes(marker)
            return found if any("sleep 300" in c for c in found.values()) else {}

        running = await asyncio.to_thread(wait_for, "the job's `sleep 300`", started)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return job, running, marker

    job, running, marker = asyncio.run(main())
    assert any("ansible-playbook" in c for c in running.values()), running
    assert any("sleep 300" in c for c in running.values()), running
    runner = job.runner
    assert runner.status == "canceled" and runner.canceled and runner.rc == 254
    assert (demo / "artifacts" / "cancel" / "status").read_text() == "canceled"
    # The unit was cancelled on node1 (and released): nothing of it is listed...
    assert mesh3.mesh.units("node1") == {}
    # ... and nothing of the job runs any more: not ansible-playbook, not its `sleep`, not
    # the worker.
    assert any("ansible-runner worker" in c for c in running.values()), running
    try:
        wait_for("the job's processes to end", lambda: not alive(set(running)), deadline=15)
    finally:
        # Whatever fails, the test leaves nothing running either.
        for pid in alive(set(running)):
            os.kill(pid, 9)
    assert job_processes(marker) == {}


def test_aio_run_outside_a_loop_says_what_to_use_instead(demo: Path) -> None:
    import warren.aio

    with pytest.raises(RuntimeError, match="warren.ansible.run"):
        warren.aio.run(private_data_dir=str(demo), playbook="test.yml", via_receptor="node1")
