"""Unchanged ansible-runner code runs its job on node1, two hops away, once the package is
installed: `ansible_runner.run(..., via_receptor='node1')` gives what a local run of the
same private data dir gives (rc, status, stats, events, artifact files, callbacks)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import ansible_runner
import pytest

from conftest import Setup, counters, files, playbook, slow_playbook, wait_for

#: A script as a user writes it: ansible-runner only, no `import warren`. It runs the demo
#: on node1 and locally, and prints what each run returned.
UNCHANGED = r'''
import json, os, sys
import ansible_runner

pdd, peer = sys.argv[1], sys.argv[2]

def summary(r):
    return {
        "type": type(r).__module__ + "." + type(r).__qualname__,
        "is_runner": isinstance(r, ansible_runner.Runner),
        "rc": r.rc, "status": r.status, "canceled": r.canceled,
        "timed_out": r.timed_out, "errored": r.errored,
        "ident": r.config.ident, "artifact_dir": r.config.artifact_dir,
        "stats": r.stats,
        "events": [e["event"] for e in r.events],
        "counters": [e["counter"] for e in r.events],
        "host_events": len(list(r.host_events("localhost"))),
        "fact_cache": r.get_fact_cache("localhost"),
        "fact_files": sorted(os.listdir(r.config.fact_cache)),
        "stdout": r.stdout.read(), "stderr": r.stderr.read(),
    }

def facts(ident):
    # Ansible's jsonfile fact cache in the artifact dir (relative to project/, where
    # ansible-playbook runs), as AWX sets it up.
    return {"ANSIBLE_CACHE_PLUGIN": "jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": f"../artifacts/{ident}/fact_cache"}

remote = ansible_runner.run(private_data_dir=pdd, playbook="test.yml", ident="remote",
                            quiet=True, envvars=facts("remote"),
                            via_receptor="node1", receptor_peer=peer)
local = ansible_runner.run(private_data_dir=pdd, playbook="test.yml", ident="local",
                           quiet=True, envvars=facts("local"))
print(json.dumps({"remote": summary(remote), "local": summary(local)}))
'''


def test_unchanged_ansible_runner_code_runs_on_node1_like_a_local_run(
        mesh3: Setup, demo: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(UNCHANGED)
    out = subprocess.run([sys.executable, str(script), str(demo), mesh3.peer],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    remote, local = result["remote"], result["local"]

    assert remote["type"] == "warren._remote.RemoteRunner" and remote["is_runner"]
    assert remote["rc"] == local["rc"] == 0
    assert remote["status"] == local["status"] == "successful"
    assert not (remote["canceled"] or remote["timed_out"] or remote["errored"])
    assert remote["ident"] == "remote"
    assert remote["artifact_dir"] == str(demo / "artifacts" / "remote")
    assert remote["stats"] == local["stats"]
    assert remote["stats"]["ok"] == {"localhost": 2}
    assert remote["events"] == local["events"]
    assert remote["counters"] == local["counters"] == sorted(local["counters"])
    assert remote["host_events"] == local["host_events"] > 0
    # The facts arrived in the artifacts (Runner.get_fact_cache reads them as locally; with
    # ansible-core 2.19's cache file names it finds nothing in either run).
    assert remote["fact_files"] == local["fact_files"] and remote["fact_files"]
    assert remote["fact_cache"] == local["fact_cache"]
    assert '"msg": "Test!"' in remote["stdout"]
    assert remote["stdout"].count("\n") == local["stdout"].count("\n")
    assert remote["stderr"] == local["stderr"]

    r, l = demo / "artifacts" / "remote", demo / "artifacts" / "local"
    assert files(r) == files(l)
    assert counters(r) == counters(l)
    assert (r / "status").read_text() == "successful"
    assert (r / "rc").read_text() == "0"
    # The unit was released on node1 once the artifacts were written.
    assert mesh3.mesh.units("node1") == {}


def test_the_plugin_is_registered_and_leaves_other_calls_to_ansible_runner(
        mesh3: Setup, demo: Path) -> None:
    import ansible_runner.interface
    from ansible_runner.runner import Runner

    assert "warren" in ansible_runner.plugins
    for module in (ansible_runner, ansible_runner.interface):
        assert module.run.__warren_original__.__module__ == "ansible_runner.interface"
        assert "via_receptor" in module.run.__doc__

    from warren import _native

    _native.shutdown_all()
    local = ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident="plain",
                               quiet=True)
    assert type(local) is Runner
    assert local.status == "successful"
    # An explicit via_receptor=None is a local run too.
    none = ansible_runner.interface.run(private_data_dir=str(demo), playbook="test.yml",
                                        ident="none", quiet=True, via_receptor=None,
                                        receptor_peer="unused:1")
    assert type(none) is Runner and none.rc == 0
    assert _native.node_count() == 0, "a local run linked to the mesh"
    # Without via_receptor, ansible-runner's own argument handling answers.
    with pytest.raises(TypeError, match="receptor_peer"):
        ansible_runner.run(private_data_dir=str(demo), playbook="test.yml",
                           receptor_peer="localhost:1", quiet=True)


def test_event_handler_returning_false_keeps_the_event_off_disk_as_locally(
        mesh3: Setup, demo: Path) -> None:
    seen: dict[str, list[tuple[int, str]]] = {"remote": [], "local": []}

    def keep_all_but_ok(run: str):
        def handler(event: dict) -> bool:
            seen[run].append((event["counter"], event["event"]))
            return event["event"] != "runner_on_ok"
        return handler

    remote = ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident="eh-r",
                                quiet=True, event_handler=keep_all_but_ok("remote"),
                                via_receptor="node1", receptor_peer=mesh3.peer)
    local = ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident="eh-l",
                               quiet=True, event_handler=keep_all_but_ok("local"))
    assert remote.rc == local.rc == 0
    # Live, in counter order, every event.
    counters_seen = [c for c, _ in seen["remote"]]
    assert counters_seen == sorted(counters_seen)
    assert [e for _, e in seen["remote"]] == [e for _, e in seen["local"]]
    assert "runner_on_ok" in [e for _, e in seen["remote"]]

    def on_disk(ident: str) -> list[str]:
        events = demo / "artifacts" / ident / "job_events"
        return sorted(json.loads(p.read_text())["event"] for p in events.iterdir())

    assert on_disk("eh-r") == on_disk("eh-l")
    assert "runner_on_ok" not in on_disk("eh-r")
    oks = [e for _, e in seen["remote"]].count("runner_on_ok")
    assert len(on_disk("eh-r")) == len(seen["remote"]) - oks


def test_status_handler_and_finished_callback_are_called_as_in_a_local_run(
        mesh3: Setup, demo: Path) -> None:
    calls: dict[str, list] = {"remote": [], "local": []}

    def handlers(run: str) -> dict:
        def status_handler(data: dict, runner_config) -> None:
            calls[run].append(("status", data["status"], runner_config.ident,
                               runner_config.artifact_dir))

        def finished_callback(runner) -> None:
            calls[run].append(("finished", runner.status, runner.rc,
                               (Path(runner.config.artifact_dir) / "rc").exists(), runner))

        return {"status_handler": status_handler, "finished_callback": finished_callback}

    remote = ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident="sh",
                                quiet=True, via_receptor="node1", receptor_peer=mesh3.peer,
                                **handlers("remote"))
    local = ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident="sh-l",
                               quiet=True, **handlers("local"))
    statuses = [c[1] for c in calls["remote"] if c[0] == "status"]
    assert statuses == [c[1] for c in calls["local"] if c[0] == "status"]
    assert statuses == ["starting", "running", "successful"]
    assert {c[2] for c in calls["remote"] if c[0] == "status"} == {"sh"}
    assert {c[3] for c in calls["remote"] if c[0] == "status"} == {remote.config.artifact_dir}
    finished = [c for c in calls["remote"] if c[0] == "finished"]
    assert len(finished) == 1 and calls["remote"][-1] is finished[0]
    assert finished[0][1:4] == ("successful", 0, True)
    assert finished[0][4] is remote
    assert [c[1:4] for c in calls["local"] if c[0] == "finished"] == [("successful", 0, True)]
    assert local.status == "successful"


def test_run_async_of_a_failing_play_ends_failed_with_rc_2(mesh3: Setup, demo: Path) -> None:
    playbook(demo, "fail.yml",
             "- hosts: all\n  gather_facts: false\n  tasks:\n    - pause:\n        seconds: 1\n"
             "    - fail:\n        msg: on purpose\n")
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(demo), playbook="fail.yml", ident="fail", quiet=True,
        via_receptor="node1", receptor_peer=mesh3.peer)
    assert isinstance(thread, threading.Thread) and thread.is_alive()
    # Its status changes live while the thread follows the job.
    wait_for("the runner to be running", lambda: runner.status == "running")
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert runner.status == "failed"
    assert runner.rc == 2
    assert "on purpose" in runner.stdout.read()
    assert runner.stats["failures"] == {"localhost": 1}
    assert (demo / "artifacts" / "fail" / "status").read_text() == "failed"


def test_twenty_concurrent_run_async_jobs_share_one_link_and_stay_apart(
        mesh3: Setup, demo: Path) -> None:
    from warren import _native

    _native.shutdown_all()
    playbook(demo, "n.yml",
             "- hosts: all\n  gather_facts: false\n  tasks:\n"
             "    - pause:\n        seconds: 3\n"
             "    - debug:\n        msg: \"job {{ n }} of 20\"\n")
    jobs = [
        ansible_runner.run_async(private_data_dir=str(demo), playbook="n.yml", ident=f"n{i}",
                                 extravars={"n": i}, quiet=True, via_receptor="node1",
                                 receptor_peer=mesh3.peer)
        for i in range(20)
    ]
    # While they run: one embedded node, one link from it to the controller.
    assert _native.node_count() == 1
    clients = {r.receptor_node_id for _, r in jobs}
    assert len(clients) == 1
    status = mesh3.mesh.status("controller")
    links = sorted(c["NodeID"] for c in status["Connections"])
    assert links == sorted(["relay", *clients]), links
    running = wait_for("20 units on node1", lambda: len(mesh3.mesh.units("node1")) == 20)
    assert running
    for thread, _ in jobs:
        thread.join(timeout=240)
    for i, (thread, runner) in enumerate(jobs):
        assert not thread.is_alive()
        assert runner.status == "successful", (i, runner.status, runner.job_explanation)
        assert runner.rc == 0
        out = runner.stdout.read()
        assert f'"msg": "job {i} of 20"' in out
        others = [j for j in range(20) if j != i and f'"msg": "job {j} of 20"' in out]
        assert others == [], f"job {i}'s output holds jobs {others}'"
        assert {e.get("runner_ident") for e in runner.events} == {f"n{i}"}
    assert mesh3.mesh.units("node1") == {}


def test_receptor_node_id_is_the_submitter_seen_on_node1(mesh3: Setup, demo: Path) -> None:
    slow_playbook(demo, 2)
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(demo), playbook="slow.yml", ident="who", quiet=True,
        via_receptor="node1", receptor_peer=mesh3.peer, receptor_node_id="py-client")
    assert runner.receptor_node_id == "py-client"
    # node1 logs each request with the submitter's proven identity.
    def submitted_by() -> list[str]:
        log = mesh3.mesh.nodes["node1"].log_text().splitlines()
        return [line for line in log if "work request" in line
                and "submit ansible-runner" in line
                and "peer=py-client" in line]

    assert wait_for("node1 to log the submission", submitted_by)
    assert mesh3.mesh.units("node1")
    thread.join(timeout=120)
    assert runner.status == "successful"
    log = mesh3.mesh.nodes["node1"].log_text()
    assert f"peer=py-client key={mesh3.client_token} request=release {runner.unit_id}" in log
    assert mesh3.mesh.units("node1") == {}


def test_the_default_peer_is_localhost_8888(default_mesh3: Setup, demo: Path) -> None:
    runner = ansible_runner.run(private_data_dir=str(demo), playbook="test.yml", ident="dflt",
                                quiet=True, via_receptor="node1")
    assert runner.status == "successful", runner.job_explanation
    assert '"msg": "Test!"' in runner.stdout.read()
