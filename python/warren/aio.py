"""ansible-runner jobs on a Warren mesh node, for asyncio.

::

    job = warren.aio.run(private_data_dir="demo", playbook="test.yml", via_receptor="node1")
    async for event in job.events():
        print(event["event"])
    runner = await job

:func:`run` takes the keywords of :func:`warren.ansible.run` and returns a :class:`Job` at
once: a coroutine (await it, or ``asyncio.create_task(job)``) whose result is the Runner.
Cancelling the task that awaits it (``task.cancel()``) cancels the unit on its node and
waits until the unit has stopped and its artifacts are written, then raises
``CancelledError``. The job itself runs in a thread of its own, so the event loop never
waits on the network.
"""

from __future__ import annotations

import asyncio
import collections.abc
import threading
from typing import Any, AsyncIterator, Generator

from warren._remote import RemoteRunner, prepare

__all__ = ["run", "Job"]

_END = object()


class Job(collections.abc.Coroutine):
    """A job running on a mesh node: awaitable (the result is its Runner), with
    :meth:`events` and :meth:`cancel`. Made by :func:`run`."""

    def __init__(self, kwargs: dict[str, Any]):
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "warren.aio.run() needs a running event loop; outside asyncio use "
                "warren.ansible.run() or run_async()"
            ) from None
        kwargs = dict(kwargs)
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._done: asyncio.Future[RemoteRunner] = self._loop.create_future()
        self._cancel = threading.Event()
        self._started = threading.Event()
        self.runner: RemoteRunner | None = None
        user_events = kwargs.pop("event_handler", None)
        user_cancel = kwargs.pop("cancel_callback", None)

        def on_event(event: dict) -> bool:
            keep = user_events(event) if user_events is not None else True
            self._post(self._events.put_nowait, event)
            return keep

        def should_cancel() -> bool:
            if self._cancel.is_set():
                return True
            return bool(user_cancel()) if user_cancel is not None else False

        kwargs["event_handler"] = on_event
        kwargs["cancel_callback"] = should_cancel
        self._thread = threading.Thread(target=self._work, args=(kwargs,), name="warren-aio")
        self._thread.start()
        self._coroutine = self._wait()

    def _post(self, callback: Any, *args: Any) -> None:
        """Runs `callback(*args)` on the loop, if it still runs."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening

    def _work(self, kwargs: dict[str, Any]) -> None:
        try:
            runner = prepare(kwargs)
            self.runner = runner
            self._started.set()
            runner.run()
        except BaseException as error:  # handed to whoever awaits the job
            self._post(_settle, self._done, None, error)
        else:
            self._post(_settle, self._done, runner, None)
        finally:
            self._started.set()
            self._post(self._events.put_nowait, _END)

    async def events(self) -> AsyncIterator[dict]:
        """Every event of the job as it arrives, in counter order (also those an
        ``event_handler`` chose not to keep on disk); ends with the job. One consumer."""
        while True:
            event = await self._events.get()
            if event is _END:
                return
            yield event

    def cancel(self) -> None:
        """Cancels the unit on its node (within 0.1 s); the job ends with status
        ``canceled``. Awaiting the job still gives its Runner."""
        self._cancel.set()

    async def _wait(self) -> RemoteRunner:
        try:
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            # Whoever awaited us was cancelled: stop the unit, and return only once it has
            # stopped and its artifacts are written.
            self._cancel.set()
            try:
                await asyncio.shield(self._done)
            except BaseException:  # noqa: BLE001 - the cancellation is what we report
                pass
            raise

    # The coroutine protocol, delegated: asyncio.create_task() accepts a Job.
    def send(self, value: Any) -> Any:
        return self._coroutine.send(value)

    def throw(self, *args: Any) -> Any:
        return self._coroutine.throw(*args)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, None, RemoteRunner]:
        return self._coroutine.__await__()


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def run(**kwargs: Any) -> Job:
    """Starts an ansible-runner job on ``via_receptor`` (the keywords of
    :func:`warren.ansible.run`) and returns its :class:`Job`. Call it from a coroutine.

    Awaiting the job raises :mod:`warren.errors` exceptions when the peer or the node cannot
    take it.
    """
    return Job(kwargs)
