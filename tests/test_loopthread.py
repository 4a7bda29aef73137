"""The loop thread under blockipc.sync and blockipc.trio: results, errors, and a
cancel (or an exception in the waiting thread, as Ctrl-C is) that waits for the task's
end, so that what the task got is not lost."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

import blockipc
from blockipc._loopthread import LoopThread, under_trio


@pytest.fixture
def runner() -> Iterator[LoopThread]:
    r = LoopThread("test-loop")
    yield r
    r.stop()
    assert r.stopped


def test_results_and_errors_come_back(runner: LoopThread) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail() -> None:
        raise KeyError("k")

    assert runner.run(lambda: add(1, 2)) == 3
    with pytest.raises(KeyError):
        runner.run(fail)
    assert threading.current_thread() is threading.main_thread()
    assert not under_trio()


def test_cancel_waits_for_the_task_and_keeps_a_result_that_came_first(
    runner: LoopThread,
) -> None:
    finished = threading.Event()
    release = asyncio.Event()

    async def done_at_once() -> str:
        return "kept"

    call = runner.submit(done_at_once)
    assert call.result(5) == "kept"
    call.cancel_task()  # too late: the result stands
    assert call.result() == "kept"

    started = threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await release.wait()
        finally:
            finished.set()

    call2 = runner.submit(waits)
    assert started.wait(5)
    call2.cancel_task()
    with pytest.raises(concurrent.futures.CancelledError):
        call2.result(5)
    assert finished.is_set()


def test_an_exception_in_the_waiting_thread_cancels_the_call(runner: LoopThread) -> None:
    # what Ctrl-C does: the signal handler raises in the thread blocked in wait()
    cleaned = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            runner.run(forever)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert cleaned.is_set()  # the task was cancelled, and had ended, before the raise


def test_waiting_from_the_loop_thread_itself_refuses(runner: LoopThread) -> None:
    async def nested() -> None:
        async def inner() -> None:
            pass

        runner.submit(inner)

    with pytest.raises(blockipc.WrongEventLoop, match="wait for itself"):
        runner.run(nested)


def test_stop_is_idempotent() -> None:
    r = LoopThread()
    r.stop()
    r.stop()
    assert r.stopped and r.loop.is_closed()
