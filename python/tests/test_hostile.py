"""A compromised worker node against the Python API: node `evil`'s "ansible-runner" answers
each job with a hostile worker stream. ansible-runner's own Processor, fed the same bytes,
writes where the worker says (each test shows that first); through Warren, nothing is
written outside the artifact dir, the terminal gets colour and no other escapes, and the
run ends with status `error` and a `job_explanation` instead of a traceback."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Iterator

import ansible_runner
import pytest

from conftest import Mesh, Setup, wait_for, warren

OSC_STDOUT = "\x1b]0;owned by the worker\x07\x1b[0;32mok: [localhost]\x1b[0m\x1b[2J"


def stream(lines_before: list[dict], zip_bytes: bytes | None = None,
           lines_after: list[dict] = (), raw: bytes = b"") -> bytes:
    out = b"".join(json.dumps(line).encode() + b"\n" for line in lines_before)
    out += raw
    if zip_bytes is not None:
        out += json.dumps({"zipfile": len(zip_bytes)}).encode() + b"\n"
        out += base64.b64encode(zip_bytes)
    out += b"".join(json.dumps(line).encode() + b"\n" for line in lines_after)
    return out + b'{"eof": true}\n'


def symlink_zip(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("rc", "0")
        archive.writestr("status", "successful")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, target)
    return buffer.getvalue()


class Evil:
    """Node `evil`, linked to directly, whose ansible-runner replays `<playbook>.stream`."""

    def __init__(self, mesh: Mesh, home: Path):
        self.dir = mesh.dir
        self.identity = home / "identity.key"
        out = warren("keygen", "--out", str(self.identity))
        token = out.stdout.strip().splitlines()[-1]
        runner = mesh.dir / "hostile-runner"
        runner.write_text(
            "#!/bin/sh\n"
            "case \"$1\" in\n"
            "--version) echo 2.4.3 ;;\n"
            "worker)\n"
            "  [ \"$2\" = --help ] && { echo 'usage: worker --private-data-dir DIR'; exit 0; }\n"
            "  read -r kwargs; /bin/cat >/dev/null\n"
            f"  for s in {mesh.dir}/*.stream; do\n"
            "    name=$(basename \"$s\" .stream)\n"
            "    case \"$kwargs\" in *\"$name.yml\"*) exec /bin/cat \"$s\" ;; esac\n"
            "  done; exit 3 ;;\n"
            "*) exit 2 ;;\n"
            "esac\n")
        runner.chmod(0o755)
        node = mesh.start(mesh.identity("evil"), [
            "--ansible-runner", str(runner), "--trust", token,
            "--allow-work", f"ansible-runner={token}"])
        self.peer = f"receptor://{node.addr}"

        def offers() -> bool:
            types = (mesh.status("evil") or {}).get("WorkTypes") or [{}]
            return types[0].get("WorkType") == "ansible-runner"

        wait_for("evil to offer ansible-runner", offers)

    def serve(self, name: str, data: bytes) -> None:
        (self.dir / f"{name}.stream").write_bytes(data)

    def run(self, pdd: Path, name: str, **kwargs):
        (pdd / "project" / f"{name}.yml").write_text("- hosts: all\n")
        return ansible_runner.run(private_data_dir=str(pdd), playbook=f"{name}.yml", ident=name,
                                  via_receptor="evil", receptor_peer=self.peer, **kwargs)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory, component_cache: Path) -> Iterator[Evil]:
    mesh = Mesh(tmp_path_factory.mktemp("evil"), component_cache)
    home = tmp_path_factory.mktemp("client")
    saved = os.environ.get("WARREN_IDENTITY")
    try:
        node = Evil(mesh, home)
        os.environ["WARREN_IDENTITY"] = str(node.identity)
        yield node
    finally:
        from warren import _native

        _native.shutdown_all()
        if saved is None:
            os.environ.pop("WARREN_IDENTITY", None)
        else:
            os.environ["WARREN_IDENTITY"] = saved
        mesh.stop()


def process_locally(data: bytes, pdd: Path, ident: str) -> None:
    """ansible-runner's own `process` step on `data` (the path Warren replaces)."""
    pdd.mkdir(parents=True, exist_ok=True)
    ansible_runner.interface.run(streamer="process", _input=io.BytesIO(data),
                                 private_data_dir=str(pdd), ident=ident, quiet=True)


def test_an_absolute_event_counter_writes_nothing_outside(evil: Evil, demo: Path,
                                                          tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = stream([{"status": "starting", "runner_ident": "abs"},
                   {"counter": f"{outside}/owned", "uuid": "x", "event": "verbose", "stdout": ""},
                   {"status": "successful", "runner_ident": "abs"}])
    # The attack is real: ansible-runner's Processor writes the file where the worker says.
    process_locally(data, tmp_path / "plain", "abs")
    assert (outside / "owned-x.json").exists()
    (outside / "owned-x.json").unlink()

    evil.serve("abs", data)
    runner = evil.run(demo, "abs", quiet=True)
    assert list(outside.iterdir()) == []
    assert runner.status == "error"
    assert "not a plain file name" in runner.job_explanation, runner.job_explanation


def test_a_symlink_in_the_artifacts_cannot_redirect_an_event_file(evil: Evil, demo: Path,
                                                                  tmp_path: Path) -> None:
    victim = tmp_path / ".bashrc"
    victim.write_text("# the user's shell setup\n")
    pwn = {"uuid": "pwn", "counter": 1, "event": "verbose", "stdout": "", "kube": "config"}
    data = stream([{"status": "successful", "runner_ident": "pwn"}],
                  symlink_zip("job_events/1-pwn.json", str(victim)), [pwn])
    process_locally(data, tmp_path / "plain", "pwn")
    assert json.loads(victim.read_text())["kube"] == "config"  # overwritten through the link
    victim.write_text("# the user's shell setup\n")

    evil.serve("pwn", data)
    runner = evil.run(demo, "pwn", quiet=True)
    assert victim.read_text() == "# the user's shell setup\n"
    artifacts = demo / "artifacts" / "pwn"
    assert not (artifacts / "job_events" / "1-pwn.json").is_symlink()
    assert runner.status == "error"
    assert "cannot extract the artifacts" in runner.job_explanation, runner.job_explanation
    assert "1-pwn.json" in (artifacts / "warren-incomplete.txt").read_text()


def test_event_output_reaches_the_terminal_with_colour_and_no_other_escapes(
        evil: Evil, demo: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = stream([{"status": "starting", "runner_ident": "osc"},
                   {"uuid": "e1", "counter": 1, "event": "verbose", "stdout": OSC_STDOUT},
                   {"status": "successful", "runner_ident": "osc"}])
    evil.serve("osc", data)
    runner = evil.run(demo, "osc", quiet=False)
    printed = capfd.readouterr().out
    assert "\x1b[0;32mok: [localhost]\x1b[0m" in printed
    assert "\x1b]" not in printed and "\x1b[2J" not in printed
    assert runner.status == "successful"
    # The event file keeps what the worker sent, as ansible-runner writes it.
    event = json.loads((demo / "artifacts" / "osc" / "job_events" / "1-e1.json").read_text())
    assert event["stdout"] == OSC_STDOUT


def test_a_line_that_is_not_an_object_ends_the_run_with_an_explanation(
        evil: Evil, demo: Path, tmp_path: Path) -> None:
    data = stream([{"status": "starting", "runner_ident": "list"}], raw=b"[1, 2]\n")
    # ansible-runner's Processor dies on it with an AttributeError.
    with pytest.raises(AttributeError):
        process_locally(data, tmp_path / "plain", "list")
    evil.serve("list", data)
    runner = evil.run(demo, "list", quiet=True)
    assert runner.status == "error"
    assert "not a JSON object" in runner.job_explanation


def test_a_bad_zipfile_length_ends_the_run_with_an_explanation(evil: Evil, demo: Path) -> None:
    evil.serve("len", stream([{"zipfile": "all of it"}]))
    runner = evil.run(demo, "len", quiet=True)
    assert runner.status == "error"
    assert "invalid zipfile length" in runner.job_explanation


def test_a_stream_of_one_event_more_than_the_cap_is_cut_at_the_cap(
        evil: Evil, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_ARTIFACTS_MAX_EVENTS", "3")
    events = [{"uuid": f"e{i}", "counter": i, "event": "verbose", "stdout": f"line {i}"}
              for i in range(1, 5)]
    evil.serve("flood", stream([{"status": "starting", "runner_ident": "flood"}, *events,
                                {"status": "successful", "runner_ident": "flood"}]))
    runner = evil.run(demo, "flood", quiet=True)
    artifacts = demo / "artifacts" / "flood"
    written = sorted(path.name for path in (artifacts / "job_events").iterdir())
    assert written == ["1-e1.json", "2-e2.json", "3-e3.json"]
    assert runner.status == "error"
    assert "job events cap of 3 events" in runner.job_explanation, runner.job_explanation
    assert "WARREN_ARTIFACTS_MAX_EVENTS" in (artifacts / "warren-incomplete.txt").read_text()
