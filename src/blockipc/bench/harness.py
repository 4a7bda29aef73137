"""The benchmark harness: what every suite of ``blockipc bench`` shares.

Theory of operation
-------------------
A suite (:mod:`.core`, :mod:`.cache`) runs every party in a process of its own, started
by the parent as a :class:`Party` (a ``multiprocessing`` process and the pipe to it).
The process's target is the suite's own module-level ``_worker(role, cpu, conn, arg)``,
which the child (a fork of :func:`worker_context`'s forkserver, which imported the
suite once) finds by its module path and which hands over to
:func:`run_worker` with the suite's table of roles: pin to ``cpu`` first (threads
started later inherit the mask), blockipc's warnings only, then the role's coroutine on
uvloop (:func:`run_loop`).

On the pipe the child answers ``("ready", {...})`` once started, then ``("ok",
result)`` for each command the parent sends (:func:`serve_commands`, or
:func:`until_stop` for a server that only waits), or ``("error", "<role> (pid N)
failed: <last line>")``; ``("stop", {})`` ends it. The parent's side is
:meth:`Party.ask` and :meth:`Party.receive`.

The rest is the parent's: which CPUs the two sides get (:func:`pick_cpus`), whether the
machine stayed quiet (:func:`cpu_snapshot`, :func:`load_notes`), the CPU one process
used (:func:`process_cpu_ns`), latency statistics
(:func:`summary`), the machine line and the Markdown table of the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import importlib.util
import math
import multiprocessing
import multiprocessing.context
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeAlias

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    Pipe: TypeAlias = Connection[Any, Any]
    """The parent's or the child's end of a party's pipe."""
    Role: TypeAlias = Callable[[Pipe, dict[str, Any]], Coroutine[Any, Any, None]]
    """A party's coroutine: ``role(conn, arg)``."""

__all__ = [
    # the child process
    "run_worker",
    "pin",
    "quiet_logs",
    "run_loop",
    "readable",
    "until_stop",
    "Handler",
    "serve_commands",
    "timed_loop",
    "coordinator_role",
    # the parent
    "Party",
    "START_TIMEOUT",
    "COMMAND_TIMEOUT",
    "pick_cpus",
    "cpu_snapshot",
    "process_cpu_ns",
    "load_notes",
    "has",
    "rounds_progress",
    # the report
    "summary",
    "fmt_us",
    "verdict",
    "machine_info",
    "table",
]

START_TIMEOUT: Final = 60.0
"""Seconds a party has to say it is ready."""
COMMAND_TIMEOUT: Final = 180.0
"""Seconds a party has to answer one command (one measurement slice)."""


# =====================================================================================
# the child process
# =====================================================================================


def run_worker(
    roles: Mapping[str, Role],
    role: str,
    cpu: int | None,
    conn: Pipe,
    arg: dict[str, Any],
    *,
    logs: bool = True,
) -> None:
    """The body of every child process: run ``roles[role](conn, arg)`` pinned to
    ``cpu``; a failure is reported on ``conn`` (its last line) and raised. ``logs=False``
    leaves logging alone (a party that runs no blockipc code)."""
    pin(cpu)  # first: threads started later (libzmq's I/O thread) inherit the mask
    if logs:
        quiet_logs()
    try:
        run_loop(lambda: roles[role](conn, arg))
    except BaseException:
        # the full traceback goes to stderr (multiprocessing prints it); the parent
        # reports the last line
        last = traceback.format_exc().strip().splitlines()[-1]
        conn.send(("error", f"{role} (pid {os.getpid()}) failed: {last}"))
        raise
    finally:
        conn.close()


def worker_context(*preload: str) -> multiprocessing.context.BaseContext:
    """The ``multiprocessing`` context a benchmark starts its processes with: a
    forkserver that imported ``blockipc`` (and ``preload``) once, so that each process
    starts as a fork of an interpreter that runs no loop and no thread, in tens of
    milliseconds where a spawned one imports everything again (0.6-2.8 s each on a busy
    2-CPU machine: most of a quick run)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["blockipc", *preload])
    return ctx


def stop_workers(pipes: Iterable[tuple[str, Pipe]], procs: Iterable[Any]) -> None:
    """End a benchmark script's workers: ``None`` on each ``(role, pipe)``, then join
    each process, terminated if still alive after 10 s (a worker stuck at exit must not
    hang the run)."""
    for _, pipe in pipes:
        pipe.send(None)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=10)


def pin(cpu: int | None) -> None:
    """Pin this process to ``cpu`` (``None``, or no ``sched_setaffinity``: unpinned)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def quiet_logs() -> None:
    """A worker prints blockipc's warnings and errors (to stderr), nothing else."""
    from .. import configure_logging

    configure_logging("warning")


def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to its end on uvloop, or on asyncio when uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


async def readable(conn: Pipe) -> None:
    """Wait, without blocking the loop, until the parent has written to ``conn``."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    while not conn.poll():
        ready: asyncio.Future[None] = loop.create_future()

        def wake(ready: asyncio.Future[None] = ready) -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def until_stop(conn: Pipe) -> None:
    """Server-side loop: wait for the parent's ``stop`` (other commands are ignored)."""
    while True:
        await readable(conn)
        cmd, _args = conn.recv()
        if cmd == "stop":
            return


Handler: TypeAlias = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""One command of :func:`serve_commands`: its arguments in, its result out."""


async def serve_commands(conn: Pipe, handlers: dict[str, Handler], *, armed: bool = False) -> None:
    """Client-side loop: run each measurement slice the parent asks for. With
    ``armed``, each command is first answered once it is about to run (a consumer is
    armed: the parent starts the producer then), and again with its result."""
    conn.send(("ready", {}))
    while True:
        await readable(conn)
        cmd, args = conn.recv()
        if cmd == "stop":
            return
        gc.collect()
        if armed:
            conn.send(("ok", {}))
        result = await handlers[cmd](args)
        conn.send(("ok", result))


def timed_loop(samples: list[int], warmup: int) -> Callable[[int], None]:
    """``record(t0)``: appends the nanoseconds since ``t0`` to ``samples``, except for
    the first ``warmup`` calls."""

    def record(t0: int) -> None:
        nonlocal warmup
        t1 = time.perf_counter_ns()
        if warmup > 0:
            warmup -= 1
        else:
            samples.append(t1 - t0)

    return record


async def coordinator_role(conn: Pipe, arg: dict[str, Any]) -> None:
    """A role of every suite: a ``Coordinator`` of ``arg["pool_size"]``; it answers
    ``ready`` with its address and runs until ``stop``."""
    from .. import Coordinator

    async with Coordinator(pool_size=arg["pool_size"]) as coord:
        conn.send(("ready", {"address": coord.address}))
        await until_stop(conn)


# =====================================================================================
# the parent
# =====================================================================================


class Party:
    """One child process and the pipe to it."""

    def __init__(
        self,
        ctx: Any,
        role: str,
        cpu: int | None,
        arg: dict[str, Any],
        worker: Callable[[str, int | None, Pipe, dict[str, Any]], None],
    ) -> None:
        """Start ``role`` in a process of ``ctx`` (a ``multiprocessing`` context) pinned
        to ``cpu``. ``worker(role, cpu, conn, arg)`` is the suite's module-level entry
        point that knows the role (the spawn context imports it by name in the child)."""
        self.role = role
        parent_end, child_end = ctx.Pipe()
        self.conn: Pipe = parent_end
        self.process: BaseProcess = ctx.Process(
            target=worker,
            args=(role, cpu, child_end, arg),
            name=f"bench-{role}",
            daemon=True,
        )
        self.process.start()
        child_end.close()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The party's next answer; ``RuntimeError`` if it reports an error, ends or
        says nothing for ``timeout`` seconds."""
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.role}: no answer within {timeout:.0f} s")
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.role}: process ended ({self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(payload)
        result: dict[str, Any] = payload
        return result

    def ask(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its answer (up to :data:`COMMAND_TIMEOUT`)."""
        self.conn.send((cmd, args))
        return self.receive(COMMAND_TIMEOUT)

    def stop(self) -> None:
        """Ask the party to end (it may already have)."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("stop", {}))

    def join(self) -> None:
        """Wait for the process to end (terminated after 10 s) and close the pipe."""
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def pick_cpus() -> tuple[int | None, int | None, str | None]:
    """The server side's CPU, the client side's, and a note for the report when they
    cannot be two (one CPU, or no pinning on this platform)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None, "CPU pinning unavailable on this platform: processes not pinned"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus[0], cpus[0], f"only CPU {cpus[0]} available: every party pinned to it"
    return cpus[0], cpus[1], None


def load_notes(
    before: tuple[int, int, int] | None,
    after: tuple[int, int, int] | None,
    started: float,
    prefix: str = "",
) -> list[str]:
    """Notes for the report when other processes (or the hypervisor) took CPU time while
    the measurement that began at ``started`` ran, from two :func:`cpu_snapshot`."""
    if before is None or after is None:
        return []
    ncpu = os.cpu_count() or 1
    capacity = (time.perf_counter() - started) * os.sysconf("SC_CLK_TCK") * ncpu
    foreign = (after[0] - before[0] - (after[1] - before[1])) / capacity
    steal = (after[2] - before[2]) / capacity
    notes = []
    if foreign > 0.05:
        notes.append(
            f"{prefix}other processes used {foreign:.0%} of the {ncpu} CPUs while this ran: "
            "the machine was not quiet, expect noisy numbers (rerun on an idle machine)"
        )
    if steal > 0.02:
        notes.append(f"{prefix}the hypervisor stole {steal:.0%} of the {ncpu} CPUs while this ran")
    return notes


def cpu_snapshot(pids: list[int]) -> tuple[int, int, int] | None:
    """Clock ticks: (busy on the whole machine, used by ``pids``, stolen); Linux only."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        ours = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            ours += int(stat[11]) + int(stat[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system = fields[0:3]
    steal = fields[7] if len(fields) > 7 else 0
    return user + nice + system, ours, steal


def process_cpu_ns(pid: int) -> int:
    """CPU time (ns) a process has used so far: the sum of its threads' on-CPU time
    (``/proc/<pid>/task/*/schedstat``, finer than the clock ticks of
    :func:`cpu_snapshot`; 0 where there is no such file)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def has(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# =====================================================================================
# the report
# =====================================================================================


@contextlib.contextmanager
def rounds_progress(
    total: int, label: str = "round", stream: TextIO | None = None
) -> Iterator[Callable[[], None]]:
    """Report each finished round of ``total`` on ``stream`` (stderr): a progress bar
    when it is a terminal and rich is installed (the ``watch`` extra), else one line per
    round (``round 2/5 done in 3.1 s``). Call what it yields once per round::

        with rounds_progress(plan.rounds) as done:
            for _ in range(plan.rounds):
                run_one_round()
                done()
    """
    out = sys.stderr if stream is None else stream
    bar = None
    if out.isatty() and has("rich"):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        bar = Progress(
            f"[bold]{label}s",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=out),
        )
    t0, k = time.perf_counter(), 0

    def done() -> None:
        nonlocal t0, k
        k += 1
        if bar is not None:
            bar.advance(task)
        else:
            print(
                f"{label} {k}/{total} done in {time.perf_counter() - t0:.1f} s",
                file=out,
                flush=True,
            )
        t0 = time.perf_counter()

    if bar is None:
        yield done
        return
    with bar:
        task = bar.add_task(label, total=total)
        yield done


def _pct(sorted_samples: list[int], q: float) -> float:
    """Nearest-rank percentile."""
    i = max(0, math.ceil(q / 100 * len(sorted_samples)) - 1)
    return float(sorted_samples[i])


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled latency statistics (µs) plus the spread of the per-round medians."""
    pooled = sorted(s for r in rounds for s in r["samples"])
    per_round = [statistics.median(r["samples"]) / 1e3 for r in rounds]
    return {
        "n": len(pooled),
        "median_us": statistics.median(pooled) / 1e3,
        "p99_us": _pct(pooled, 99) / 1e3,
        "min_us": pooled[0] / 1e3,
        "round_medians_us": per_round,
    }


def fmt_us(us: float) -> str:
    """Microseconds for the table: ``"12.3 µs"``, ``"1.23 ms"``."""
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.1f} µs"


def verdict(ok: bool) -> str:
    """The result column: ``pass`` or ``**FAIL**``."""
    return "pass" if ok else "**FAIL**"


def machine_info() -> dict[str, Any]:
    """Date, CPU model and count, kernel and versions, for the report's first line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("uvloop", "zmq", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "missing"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": cpus,
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def table(rows: list[list[str]]) -> str:
    """The Markdown table of the report: metric, blockipc, baseline(s), ratio, target,
    result."""
    head = ["metric", "blockipc", "baseline(s)", "ratio", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
