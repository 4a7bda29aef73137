"""An event loop in a thread of its own, for callers that are not on it.

Theory of operation
-------------------
The client is asyncio code: its protocol, futures and timers live on one loop. A
caller that has no asyncio loop (a plain script, a ``ProcessPoolExecutor`` worker, a
trio program) gets one from :class:`LoopThread`: a daemon thread that runs a loop made
as :func:`blockipc.run` makes it (uvloop when installed), and :meth:`LoopThread.submit`
hands it a coroutine from any thread. Each submission is one task on that loop; the
caller waits on a :class:`Call` (a ``concurrent.futures.Future``), which also lets it
cancel the task without losing its result: cancelling asks the loop to cancel the
task and the caller still waits for the task's end, so a reply that came first (a
block allocated) is handed over, and one that did not is undone by the client's
orphan handlers, as for any cancelled call.

Nothing of the loop survives a fork: the child has no such thread. The clients made
on it are marked by the async client's own fork hook (``_client.client._after_fork``),
and the wrappers check :attr:`LoopThread.pid` before they submit anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from ._exceptions import WrongEventLoop
from ._runtime import use_uvloop

__all__ = ["Call", "LoopThread", "new_loop", "under_trio"]

T = TypeVar("T")

STOP_TIMEOUT = 5.0
"""Seconds :meth:`LoopThread.stop` waits for the thread to end."""


def new_loop() -> asyncio.AbstractEventLoop:
    """A loop of the kind :func:`blockipc.run` runs: uvloop's when installed."""
    if use_uvloop():
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Call(concurrent.futures.Future[T], Generic[T]):
    """One coroutine running on a :class:`LoopThread`: its result, and a cancel that
    waits for the task to end (see the module's docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._task: asyncio.Task[T] | None = None

    def _start(self, coro: Coroutine[Any, Any, T]) -> None:  # on the loop
        if not self.set_running_or_notify_cancel():  # (never: cancel() is cancel_task())
            coro.close()
            return
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[T]) -> None:  # on the loop
        if task.cancelled():
            self.set_exception(concurrent.futures.CancelledError())
        elif (exc := task.exception()) is not None:
            self.set_exception(exc)
        else:
            self.set_result(task.result())

    def cancel_task(self) -> None:
        """Ask the loop to cancel the task (from any thread); the call still ends with
        the task: its result if it finished first, else ``CancelledError``."""

        def cancel() -> None:
            if self._task is not None:
                self._task.cancel()

        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(cancel)

    def wait(self) -> T:
        """Block until the task ends; a ``KeyboardInterrupt`` (or any exception raised
        in the wait) cancels it, waits for it to end, and is raised."""
        try:
            return self.result()
        except BaseException:
            if not self.done():
                self.cancel_task()
                concurrent.futures.wait([self], STOP_TIMEOUT)
            raise


class LoopThread:
    """A daemon thread running an event loop until :meth:`stop`."""

    def __init__(self, name: str = "blockipc-loop") -> None:
        self.pid = os.getpid()
        self.loop = new_loop()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                self.loop.close()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (and in a forked child: no thread runs)."""
        return self._stopped or os.getpid() != self.pid

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (where waiting would deadlock)."""
        return threading.get_ident() == self._thread.ident

    def submit(self, make: Callable[[], Coroutine[Any, Any, T]]) -> Call[T]:
        """Run ``make()`` as a task on the loop; ``make`` is called there, so a check
        that raises in it raises in the call, and no coroutine is made for nothing."""
        if self.in_loop_thread():
            raise WrongEventLoop(
                "a blocking blockipc call was made from the loop thread that serves it "
                "(e.g. from a get_or_put factory): it would wait for itself forever"
            )
        call: Call[T] = Call(self.loop)

        async def run() -> T:
            return await make()

        # a fresh context, not the caller's: a trio task's says "trio" to anyio and
        # sniffio, which the client (anyio.connect_unix, cancel scopes) would believe
        self.loop.call_soon_threadsafe(call._start, run(), context=contextvars.Context())
        return call

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """:meth:`submit`, then wait for the result (see :meth:`Call.wait`)."""
        return self.submit(make).wait()

    def stop(self) -> None:
        """End the loop and its thread; idempotent. Not in a forked child (the loop
        is the parent's, and no thread of it runs here): there it does nothing."""
        if self._stopped or os.getpid() != self.pid:
            self._stopped = True
            return
        self._stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self._thread.join(STOP_TIMEOUT)


def under_trio() -> bool:
    """True when called from a task of a running ``trio.run`` (and no asyncio loop
    runs in this thread): what :func:`blockipc.connect` bridges to."""
    if asyncio._get_running_loop() is not None:
        return False
    trio = sys.modules.get("trio")  # (a program under trio has imported it)
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
