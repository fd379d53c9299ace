"""ansible-runner's ``run`` and ``run_async`` on a Warren mesh node, called explicitly.

These take every keyword of ``ansible_runner.run`` (they go into the transmit stream as
``ansible-runner transmit`` would send them; the callbacks stay here), plus:

- ``via_receptor`` (required): the node to run on;
- ``receptor_peer``: the node to link to, ``host:port``, ``receptor://host:port`` or a
  host (port 8888); default ``localhost:8888``;
- ``receptor_node_id``: this client's node id (the submitter the target sees); default a
  unique temporary id, or the identity certificate's;
- ``receptor_timeout``: seconds to wait for the link and the node (default 15).

They return an ``ansible_runner.runner.Runner`` (:class:`warren._remote.RemoteRunner`)
that reads the local ``artifacts/<ident>/`` exactly as after a local run. Callbacks keep
ansible-runner's signatures and order: ``status_handler(data, runner_config=...)``,
``event_handler(event) -> bool`` live in counter order, ``artifacts_handler(dir)``,
``finished_callback(runner)``; ``cancel_callback()`` is asked every 0.1 s and a ``True``
cancels the unit on its node.

Before the job starts they raise :mod:`warren.errors` exceptions naming the node or peer
and what to do. After, a broken-off job ends with status ``error`` and a
``job_explanation``, keeping the artifacts received.
"""

from __future__ import annotations

import threading
from typing import Any

from warren._remote import RemoteRunner, prepare

__all__ = ["run", "run_async", "RemoteRunner"]


def run(**kwargs: Any) -> RemoteRunner:
    """Runs an ansible-runner job on ``via_receptor`` and returns its Runner once it is
    complete (see the module's docs for the keywords).

    :raises warren.errors.WarrenError: the peer or the node cannot take the job.
    """
    runner = prepare(kwargs)
    runner.run()
    return runner


def run_async(**kwargs: Any) -> tuple[threading.Thread, RemoteRunner]:
    """Starts an ansible-runner job on ``via_receptor`` and returns at once with the
    started thread following it and the Runner, whose ``status`` changes as the job runs.

    The link and the route to a node offering ansible-runner are checked before it
    returns, so their errors raise here, as ansible-runner's own keyword errors do. The
    node makes the unit in the thread, so that many calls in a row do not each wait for
    it: a refusal by the node (:class:`warren.errors.SubmitRefused` from :func:`run`)
    ends the run with status ``error`` and the refusal as ``runner.job_explanation``;
    ``runner.unit_id`` is ``None`` until the unit exists.

    :raises warren.errors.WarrenError: the peer or the node cannot take the job.
    """
    runner = prepare(kwargs, make_unit=False)
    thread = threading.Thread(target=runner.run, name=f"warren-{runner.config.ident}")
    thread.start()
    return thread, runner
