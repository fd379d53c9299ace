"""A job on a mesh node, made and read with ansible-runner's own streaming pieces.

- The payload is what ``ansible-runner transmit`` sends: ansible-runner's ``init_runner``
  with ``streamer='transmit'`` builds the ``Transmitter`` from the caller's keywords (the
  same ``dump_artifacts`` and path handling), and it writes into the job's pipe.
- The results are read by ansible-runner's ``Processor`` (its line loop, status handling,
  error wording and plugin calls), with three of its steps done Warren's way: event files
  and the artifacts zip are written by the extension beneath the artifact dir (never
  through a symlink, never outside it, within the artifact caps), and event ``stdout`` is
  printed with terminal escapes removed.
- What the caller gets is a real ``ansible_runner.runner.Runner`` (:class:`RemoteRunner`)
  whose config is the ``RunnerConfig`` a local run of the same keywords would have, so
  ``stdout``, ``events``, ``stats``, ``host_events()`` and ``get_fact_cache()`` read the
  local artifacts as they would after a local run.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable

import ansible_runner
from ansible_runner.config.runner import RunnerConfig
from ansible_runner.exceptions import CallbackError
from ansible_runner.interface import init_runner
from ansible_runner.runner import Runner
from ansible_runner.streaming import Processor
from ansible_runner.utils import cleanup_artifact_dir, signal_handler

from warren import _native, errors

_log = logging.getLogger("warren")

#: Where jobs go when ``receptor_peer`` is not given (Receptor's default).
DEFAULT_PEER = "localhost:8888"

#: Seconds to wait for the link and the target node when ``receptor_timeout`` is not given.
DEFAULT_TIMEOUT = 15.0

#: How often ``cancel_callback`` is asked, in seconds (ansible-runner asks every
#: ``pexpect_timeout``, 5 s by default).
CANCEL_POLL = 0.1

#: Payload bytes gathered before they are handed to the extension.
PAYLOAD_CHUNK = 256 * 1024

_HANDLERS = ("event_handler", "status_handler", "artifacts_handler", "cancel_callback",
             "finished_callback")


def lost_contact_timeout() -> float:
    """Seconds the target may stay unreachable before a running job ends with status
    ``error`` (``$WARREN_LOST_CONTACT_TIMEOUT``, default 60)."""
    value = os.environ.get("WARREN_LOST_CONTACT_TIMEOUT", "")
    try:
        return float(value) if value else 60.0
    except ValueError:
        raise ValueError(f"$WARREN_LOST_CONTACT_TIMEOUT={value!r} is not a number of seconds") from None


class _HandlerError(Exception):
    """An exception raised by one of the caller's callbacks: it is the caller's, and goes
    back to them (after the remote unit is cancelled)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _StreamRefused(Exception):
    """The worker sent something Warren will not write (an unsafe event name, artifacts
    over a cap or leaving their dir, a line that is not a JSON object)."""


def _guard(callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """`callback`, with its exceptions marked as the caller's."""
    if callback is None:
        return None

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - re-raised unwrapped by run()
            raise _HandlerError(error) from error

    return guarded


class _Payload(io.RawIOBase):
    """The write end of the job's payload, as the ``_output`` ansible-runner's Transmitter
    writes to (``stream_dir`` wants a ``name``; ``Base64IO`` wants ``read`` and ``close``)."""

    name = "<warren payload>"

    def __init__(self, job: Any):
        super().__init__()
        self._job = job
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += data
        if len(self._buffer) >= PAYLOAD_CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._job.write(chunk)


class _Results:
    """The read end of the job's results, as the ``_input`` of ansible-runner's Processor.

    While it waits for a line it asks the caller's ``cancel_callback`` every
    :data:`CANCEL_POLL` seconds and turns a ``True`` into a remote cancel. At the end of the
    results it says why they ended without ``{"eof": true}``: a cancelled unit ends as a
    cancelled local run does (status ``canceled``), anything else is a read error whose
    message becomes the ``job_explanation``.
    """

    def __init__(self, runner: RemoteRunner):
        self._runner = runner
        self._job = runner._job
        self._last_poll = 0.0
        self._ending: list[bytes] = []

    def readline(self) -> bytes:
        if self._ending:
            return self._ending.pop(0)
        while True:
            self._poll_cancel()
            line = self._job.readline(CANCEL_POLL)
            if line is None:
                continue
            if line == b"":
                return self._at_end()
            if not line.lstrip().startswith(b"{"):
                # Every line of a worker stream is a JSON object; the Processor would fail
                # on anything else with an AttributeError rather than a status.
                raise OSError(
                    "the worker sent a line that is not a JSON object: "
                    + _native.sanitize(repr(line[:200]))
                )
            return line

    def _poll_cancel(self) -> None:
        runner = self._runner
        now = time.monotonic()
        if runner.cancel_callback is None or runner._cancel_sent or now - self._last_poll < CANCEL_POLL:
            return
        self._last_poll = now
        try:
            wanted = runner.cancel_callback()
        except Exception as error:
            raise _HandlerError(CallbackError(f"Exception in Cancel Callback: {error}")) from error
        if wanted:
            runner.canceled = True
            runner._send_cancel()

    def _at_end(self) -> bytes:
        runner = self._runner
        if runner._cancel_sent:
            # The unit was stopped before its worker could say so: end as a cancelled
            # local run ends.
            status = {"status": "canceled", "runner_ident": str(runner.config.ident)}
            self._ending = [json.dumps({"eof": True}).encode() + b"\n"]
            return json.dumps(status).encode() + b"\n"
        try:
            outcome = self._job.outcome(5.0)
        except _native.NativeError as error:
            raise OSError(error.args[1]) from None
        if outcome is None:
            raise OSError(f"the results of unit {self._job.unit} on {self._job.node} ended early")
        state, detail = outcome
        raise OSError(
            f"the worker stream ended before its end: unit {self._job.unit} on "
            f"{self._job.node} ended {state}" + (f": {detail}" if detail else "")
        )


class _Processor(Processor):
    """ansible-runner's Processor, writing through the extension."""

    def __init__(self, runner: RemoteRunner, results: _Results):
        config = runner.config
        super().__init__(
            _input=results,
            status_handler=runner.status_handler,
            event_handler=runner.event_handler,
            artifacts_handler=runner.artifacts_handler,
            private_data_dir=config.private_data_dir,
            quiet=config.quiet,
            settings=config.settings or {},
        )
        # What a local run passes its handlers as runner_config, and where its files go.
        self.config = config
        self.artifact_dir = config.artifact_dir
        self._runner = runner

    def status_callback(self, status_data: dict) -> None:
        # A local Runner sets its status before it calls the handlers.
        self._runner.status = status_data["status"]
        if "job_explanation" in status_data:
            self._runner.job_explanation = status_data["job_explanation"]
        super().status_callback(status_data)

    def event_callback(self, event_data: dict) -> None:
        counter = event_data.get("counter")
        uuid_val = event_data.get("uuid")
        if not counter or not uuid_val:
            return
        file_name = f"{counter}-{uuid_val}.json"
        if not self.quiet and "stdout" in event_data:
            print(_native.sanitize(str(event_data["stdout"])))
        should_write = self.event_handler(event_data) if self.event_handler is not None else True
        for plugin in ansible_runner.plugins:
            ansible_runner.plugins[plugin].event_handler(self.config, event_data)
        if should_write:
            try:
                self._runner._job.write_event(file_name, json.dumps(event_data).encode("utf-8"))
            except OSError as error:
                raise _StreamRefused(str(error)) from None

    def artifacts_callback(self, artifacts_data: dict) -> None:
        length = artifacts_data["zipfile"]
        if type(length) is not int or length < 0:
            raise _StreamRefused(
                "invalid zipfile length in worker stream: " + _native.sanitize(repr(length)[:100])
            )
        try:
            self._runner._job.unpack_artifacts(length)
        except OSError as error:
            raise _StreamRefused(f"cannot extract the artifacts: {error}") from None
        if self.artifacts_handler is not None:
            try:
                self.artifacts_handler(self.artifact_dir)
            except _HandlerError as error:
                # A local Runner wraps this one callback's exceptions.
                wrapped = CallbackError(f"Exception in Artifact Callback: {error.error}")
                raise _HandlerError(wrapped) from error.error


class RemoteRunner(Runner):
    """ansible-runner's ``Runner`` for a job that runs on a Warren mesh node.

    Everything a local ``Runner`` offers works on the local artifacts: ``status`` (live),
    ``rc`` (the remote playbook's), ``canceled``, ``timed_out``, ``errored``,
    ``config.ident``, ``config.artifact_dir``, ``stdout``, ``stderr``, ``events``, ``stats``,
    ``host_events()``, ``get_fact_cache()``. Besides: ``via_receptor`` (the node),
    ``unit_id`` (the unit there; ``None`` until it is made, which ``run_async`` leaves to
    the thread), ``receptor_node_id`` (this client's node id) and
    ``job_explanation`` (why a run ended with status ``error``).
    """

    def __init__(self, config: RunnerConfig, transmitter: Any, job: Any,
                 handlers: dict[str, Callable[..., Any] | None], pending: Any = None):
        super().__init__(
            config,
            cancel_callback=handlers["cancel_callback"],
            event_handler=_guard(handlers["event_handler"]),
            status_handler=_guard(handlers["status_handler"]),
            artifacts_handler=_guard(handlers["artifacts_handler"]),
            finished_callback=handlers["finished_callback"],
        )
        self._transmitter = transmitter
        self._job = job
        # (link, start keywords, peer) of a unit not made yet: run() makes it.
        self._pending = pending
        self._cancel_sent = False
        self._cancel_lock = threading.Lock()
        origin = job if job is not None else pending[0]
        self.via_receptor: str = origin.node
        self.unit_id: str | None = job.unit if job is not None else None
        self.receptor_node_id: str = origin.client_id
        self.job_explanation: str | None = None

    def cancel(self) -> None:
        """Cancels the job on its node (as a ``cancel_callback`` returning True does); the
        run then ends with status ``canceled``."""
        self.canceled = True
        self._send_cancel()

    def _send_cancel(self) -> None:
        with self._cancel_lock:
            if self._cancel_sent or self._job is None:
                # Nothing made yet: run() sees `canceled` and makes nothing.
                return
            self._cancel_sent = True
        try:
            self._job.cancel()
        except _native.NativeError as error:
            _log.info("could not cancel unit %s on %s: %s", self.unit_id, self.via_receptor,
                      error.args[-1])

    def run(self) -> tuple[str, int | None]:
        """Sends the job, follows it to its end and writes its artifacts; returns
        ``(status, rc)`` as ``Runner.run`` does."""
        if self._job is None and not self._make_unit():
            return self._end_unmade()
        try:
            self._send_payload()
            if self.config.ident is not None:
                cleanup_artifact_dir(os.path.join(self.config.artifact_dir, ".."),
                                     self.config.rotate_artifacts)
            processor = _Processor(self, _Results(self))
            try:
                processor.run()
            except _StreamRefused as refused:
                processor.status_callback({"status": "error", "job_explanation": str(refused)})
            except _HandlerError:
                raise
            except Exception as error:  # a stream ansible-runner's Processor chokes on
                processor.status_callback({
                    "status": "error",
                    "job_explanation": "Failed to process the worker stream: "
                    + _native.sanitize(f"{type(error).__name__}: {error}"),
                })
        except _HandlerError as handler_error:
            self._abandon()
            raise handler_error.error from None
        except BaseException:
            self._abandon()
            raise
        self._finish()
        if self.finished_callback is not None:
            try:
                self.finished_callback(self)
            except Exception as error:
                raise CallbackError(f"Exception in Finished Callback: {error}") from error
        return self.status, self.rc

    def _make_unit(self) -> bool:
        """Has the node create the unit (``run_async`` returned before it did); False if it
        was not made: cancelled first, or the node refused (``job_explanation`` says why)."""
        link, start, peer = self._pending
        with self._cancel_lock:
            if self.canceled:
                self.status = "canceled"
                return False
        try:
            job = link.start(**start)
        except _native.NativeError as error:
            kind, message = error.args
            refusal = errors.from_native(kind, message, node=self.via_receptor,
                                         peer=peer)
            self.status = "error"
            self.job_explanation = str(refusal)
            return False
        with self._cancel_lock:
            self._job = job
            self.unit_id = job.unit
            cancel = self.canceled
        if cancel:
            # cancel() came while the node was making it.
            self._send_cancel()
        return True

    def _end_unmade(self) -> tuple[str, int | None]:
        """Ends a run whose unit was never made as a local run that failed to start
        ends: its status through the handlers, ``status`` and ``rc`` in the artifacts."""
        self.rc = 254
        self.canceled = self.status == "canceled"
        self.errored = self.status == "error"
        os.makedirs(self.config.artifact_dir, mode=0o700, exist_ok=True)
        for name, value in (("status", self.status), ("rc", self.rc)):
            _write_new(os.path.join(self.config.artifact_dir, name), str(value))
        data = {"status": self.status, "runner_ident": str(self.config.ident)}
        if self.job_explanation:
            data["job_explanation"] = self.job_explanation
        if self.status_handler is not None:
            try:
                self.status_handler(data, runner_config=self.config)
            except _HandlerError as error:
                raise error.error from None
        for plugin in ansible_runner.plugins:
            ansible_runner.plugins[plugin].status_handler(self.config, data)
        if self.finished_callback is not None:
            try:
                self.finished_callback(self)
            except Exception as error:
                raise CallbackError(f"Exception in Finished Callback: {error}") from error
        return self.status, self.rc

    def _send_payload(self) -> None:
        payload = _Payload(self._job)
        self._transmitter._output = payload
        self._transmitter.run()
        payload.flush()
        self._job.close()

    def _finish(self) -> None:
        """The run's result from what arrived; the unit is released on its node once the
        artifacts are written (its output holds the job's events and facts)."""
        self.rc = self._job.read_rc()
        self.canceled = self.status == "canceled"
        self.timed_out = self.status == "timeout"
        self.errored = self.status == "error"
        if self.rc is None and (self.canceled or self.errored):
            self.rc = 254
        if self.canceled or self.errored:
            # As a local run leaves them, unless the worker's artifacts did.
            for name, value in (("status", self.status), ("rc", self.rc)):
                _write_new(os.path.join(self.config.artifact_dir, name), str(value))
        # Released whatever the ending (a refused stream's unit too); a node that cannot
        # be reached any more keeps it until its retention removes it.
        self._release()
        self._job.abort()

    def _release(self) -> None:
        try:
            self._job.release()
        except _native.NativeError as error:
            _log.info("could not release unit %s on %s: %s", self.unit_id, self.via_receptor,
                      error.args[-1])

    def _abandon(self) -> None:
        """The caller's exception ends the run: cancel and release the unit, stop reading."""
        self._send_cancel()
        self._job.abort()
        self._release()


def _write_new(path: str, text: str) -> None:
    """Creates `path` with `text` (mode 0600) unless something is there already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _never() -> bool:
    return False


def prepare(kwargs: dict[str, Any], make_unit: bool = True) -> RemoteRunner:
    """Builds the payload and the local config from ansible-runner keywords plus
    ``via_receptor``, ``receptor_peer``, ``receptor_node_id`` and ``receptor_timeout``,
    then links, waits for the node and has it create the unit. Raises what a local run
    raises for bad keywords, and :mod:`warren.errors` for the mesh.

    With ``make_unit=False`` (``run_async``) it returns once the link and the node are
    checked: the Runner's ``run`` has the node create the unit, and a refusal there ends
    the run with status ``error`` and the refusal as its ``job_explanation``."""
    kwargs = dict(kwargs)
    node = kwargs.pop("via_receptor", None)
    if not isinstance(node, str) or not node:
        raise TypeError("via_receptor= must name the node to run the job on")
    peer = kwargs.pop("receptor_peer", None) or DEFAULT_PEER
    node_id = kwargs.pop("receptor_node_id", None)
    timeout = kwargs.pop("receptor_timeout", None)
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if kwargs.get("streamer"):
        raise ValueError("streamer= and via_receptor= do not go together")
    handlers = {name: kwargs.pop(name, None) for name in _HANDLERS}
    if handlers["cancel_callback"] is None:
        # As init_runner does for a local run: SIGINT and SIGTERM cancel the job.
        handlers["cancel_callback"] = signal_handler()
    if kwargs.get("ident") is None:
        # Both ends must agree on it: the worker names its artifacts with it.
        kwargs["ident"] = str(uuid.uuid4())
    transmitter = init_runner(streamer="transmit", cancel_callback=_never, **kwargs)
    config = _local_config(transmitter)
    params = {"term": os.environ["TERM"]} if os.environ.get("TERM") else {}
    unit = {"artifact_dir": config.artifact_dir, "params": params,
            "lost_contact": lost_contact_timeout()}
    try:
        if make_unit:
            job = _native.start(peer=str(peer), node=node, node_id=node_id, timeout=timeout,
                                **unit)
        else:
            link = _native.link(peer=str(peer), node=node, node_id=node_id, timeout=timeout)
    except _native.NativeError as error:
        kind, message = error.args
        raise errors.from_native(kind, message, node=node, peer=str(peer)) from None
    if not make_unit:
        for notice in link.notices:
            _log.info("%s", notice)
        return RemoteRunner(config, transmitter, None, handlers, pending=(link, unit, str(peer)))
    for notice in job.notices:
        _log.info("%s", notice)
    return RemoteRunner(config, transmitter, job, handlers)


def _local_config(transmitter: Any) -> RunnerConfig:
    """The RunnerConfig a local run of the same keywords would have (not prepared: nothing
    runs here), so the Runner's readers find the artifacts where a local run puts them."""
    try:
        kwargs = copy.deepcopy(transmitter.kwargs)
    except Exception:
        kwargs = dict(transmitter.kwargs)
    return RunnerConfig(private_data_dir=transmitter.private_data_dir, **kwargs)
