"""The two-core floor: what two processes on two CPUs can move with no synchronisation.

Theory of operation
-------------------
A throughput row of ``blockipc bench`` is a producer -> consumer stream: the producer
writes each payload, the consumer, another process on the other CPU, reads it once.
The floor is the same two halves with nothing else: process W (pinned to the
producers' CPU) copies payloads into the slots of a shared memfd ring, round and round,
while process R (pinned to the consumers' CPU) reads the slots, round and round,
neither ever waiting for the other. Every cache line then moves between the two cores'
caches, which is what a real stream cannot avoid either; W's and R's rates bound any
stream from above (a real one also waits, and hands the slots over in order), so
``min(write, read)`` is the floor a stream's rate is judged against.

W copies with the producers' copy (a ``memoryview`` slice assignment from
:func:`source`) and R reads with the consumers' :func:`reader`, so the floor differs
from a stream only by the handing over. Both run over the same window of
``CLOCK_MONOTONIC`` (the parent names its start a little ahead; see :func:`run_floor`),
so each is measured while the other runs.

This module is the one home of the measurement: ``blockipc bench`` runs a floor slice
per payload size in its interleaved throughput rounds, and ``benchmarks/bench_floor.py``
runs the same parties on their own (:func:`measure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from .harness import COMMAND_TIMEOUT, START_TIMEOUT, Party, pick_cpus, run_worker, serve_commands

if TYPE_CHECKING:
    from .harness import Pipe, Role

__all__ = [
    "SLOTS",
    "MAX_SIZE",
    "source",
    "reader",
    "spin",
    "floor_role",
    "memcpy_role",
    "ring_file",
    "run_floor",
    "measure",
]

SLOTS: Final = 4
"""Payload slots of the floor's ring (a channel of the bench holds about as many)."""
MAX_SIZE: Final = 64 << 20
"""The largest payload the bench streams (and the floor measures)."""
SMALL_READ: Final = 4096
"""Below this the consumers' read is a bytes scan, not numpy (a call costs more)."""
START_AHEAD_NS: Final = 50_000_000
"""How far ahead of now the parent sets a floor slice's start (both parties get the
command and collect garbage before it)."""


def source() -> memoryview:
    """What producers copy from: :data:`MAX_SIZE` bytes of a repeating non-zero pattern."""
    return memoryview(bytes(range(1, 256)) * (MAX_SIZE // 255 + 1))[:MAX_SIZE]


def reader() -> Callable[[Any], int]:
    """The consumers' read of a payload: every byte looked at once."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a bench dependency

        def read_slow(view: Any) -> int:
            return bytes(view).count(0)

        return read_slow

    def read(view: Any) -> int:
        if len(view) < SMALL_READ:
            return bytes(view).count(0)
        return int(np.count_nonzero(np.frombuffer(view, dtype=np.uint8)))

    return read


def spin(
    side: str,
    ring: memoryview,
    size: int,
    start_ns: int,
    seconds: float,
    *,
    src: memoryview | None = None,
    read_once: Callable[[Any], int] | None = None,
) -> dict[str, float]:
    """One party's floor slice: from ``start_ns`` for ``seconds``, write (``side ==
    "write"``, copies of ``src``, :func:`source` by default) or read (``read_once``,
    :func:`reader` by default) ``size``-byte payloads in the :data:`SLOTS` slots of
    ``ring``, round and round; returns ``{"bytes_per_s": ..., "n": ...}``::

        spin("write", memoryview(bytearray(4 * 64)), 64, time.perf_counter_ns(), 0.01)
    """
    slots = min(SLOTS, len(ring) // size)
    if slots < 1:
        raise ValueError(f"a {len(ring)}-byte ring holds no {size}-byte slot")
    writes = side == "write"
    payload = (source() if src is None else src)[:size] if writes else memoryview(b"")
    read_once = reader() if read_once is None and not writes else read_once
    views = [ring[i * size : (i + 1) * size] for i in range(slots)]
    now = time.perf_counter_ns
    while now() < start_ns:
        pass
    t0 = t1 = now()  # (a start already past: from now, so the slice is never empty)
    n, end = 0, t0 + int(seconds * 1e9)
    try:
        if writes:
            while t1 < end:
                views[n % slots][:] = payload
                n += 1
                t1 = now()
        else:
            assert read_once is not None
            while t1 < end:
                read_once(views[n % slots])
                n += 1
                t1 = now()
    finally:
        for v in views:
            v.release()
        payload.release()
    return {"bytes_per_s": n * size / ((t1 - t0) / 1e9), "n": n}


@contextlib.contextmanager
def ring_file(size: int = SLOTS * MAX_SIZE) -> Iterator[str]:
    """A memfd of ``size`` bytes for the floor's ring, as a path the parties open
    (``/proc/<pid>/fd/<fd>``, valid while the block runs); Linux only."""
    fd = os.memfd_create("blockipc-floor")
    try:
        os.ftruncate(fd, size)
        yield f"/proc/{os.getpid()}/fd/{fd}"
    finally:
        os.close(fd)


async def floor_role(conn: Pipe, arg: dict[str, Any]) -> None:
    """A floor party (``arg["side"]``: ``"write"`` or ``"read"``) on the ring at
    ``arg["path"]``: maps it, touches every page, then runs each ``floor`` command
    (``{"size", "start_ns", "seconds"}``) with :func:`spin`."""
    fd = os.open(arg["path"], os.O_RDWR)
    try:
        mm = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    ring = memoryview(mm)
    src, read_once = source(), reader()
    try:
        chunk = 1 << 20  # every page mapped now: no page faults while timed
        fill = b"\1" * chunk
        for at in range(0, len(ring), chunk):
            if arg["side"] == "write":
                ring[at : at + chunk] = fill[: len(ring) - at]
            else:
                read_once(ring[at : at + chunk])

        async def floor(args: dict[str, Any]) -> dict[str, Any]:
            wait = (args["start_ns"] - time.perf_counter_ns()) / 1e9 - 0.005
            if wait > 0:
                await asyncio.sleep(wait)
            return spin(
                arg["side"],
                ring,
                args["size"],
                args["start_ns"],
                args["seconds"],
                src=src,
                read_once=read_once,
            )

        await serve_commands(conn, {"floor": floor})
    finally:
        ring.release()
        mm.close()


async def memcpy_role(conn: Pipe, arg: dict[str, Any]) -> None:
    """memcpy of each payload size in one process (numpy ``copyto``), for context: each
    ``produce`` command (``{"n", "size"}``) copies ``n`` payloads."""
    import numpy as np

    src = np.full(MAX_SIZE, 0x5A, dtype=np.uint8)
    dst = np.ones(MAX_SIZE, dtype=np.uint8)

    async def produce(args: dict[str, Any]) -> dict[str, Any]:
        size = args["size"]
        s, d = src[:size], dst[:size]
        t0 = time.perf_counter_ns()
        for _ in range(args["n"]):
            np.copyto(d, s)
        return {"t0": t0, "end": time.perf_counter_ns()}

    await serve_commands(conn, {"produce": produce})


def run_floor(write: Party, read: Party, size: int, seconds: float) -> dict[str, Any]:
    """One floor slice of ``size``-byte payloads on two :func:`floor_role` parties:
    ``{"bytes_per_s": min(write, read), "write": ..., "read": ..., "size": ...}``."""
    args = {"size": size, "start_ns": time.perf_counter_ns() + START_AHEAD_NS, "seconds": seconds}
    for party in (write, read):
        party.conn.send(("floor", args))
    w, r = (party.receive(COMMAND_TIMEOUT)["bytes_per_s"] for party in (write, read))
    return {"bytes_per_s": min(w, r), "write": w, "read": r, "size": size}


_ROLES: Final[dict[str, Role]] = {"floor": floor_role, "memcpy": memcpy_role}


def _worker(role: str, cpu: int | None, conn: Pipe, arg: dict[str, Any]) -> None:
    """Entry point of :func:`measure`'s child processes (they run no blockipc code)."""
    run_worker(_ROLES, role, cpu, conn, arg, logs=False)


def measure(
    sizes: Sequence[int],
    rounds: int,
    seconds: float,
    *,
    memcpy: bool = True,
    start_method: str = "fork",
) -> dict[int, list[dict[str, float]]]:
    """The floor on its own (``benchmarks/bench_floor.py``): per size, one dict a round
    with ``write``, ``read``, ``bytes_per_s`` (their minimum) and, with ``memcpy``, the
    one-process ``memcpy`` rate (numpy, pinned to the writer's CPU); sizes interleaved.
    The parties are forked by default (from a process that runs no event loop), which
    spares each an import of blockipc; ``blockipc bench`` spawns them like its others."""
    server_cpu, client_cpu, _note = pick_cpus()
    ctx = mp.get_context(start_method)
    out: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    parties: list[Party] = []
    with ring_file(SLOTS * max(sizes)) as path:
        try:
            for side, cpu in (("write", client_cpu), ("read", server_cpu)):
                parties.append(Party(ctx, "floor", cpu, {"side": side, "path": path}, _worker))
            if memcpy:
                parties.append(Party(ctx, "memcpy", client_cpu, {}, _worker))
            for party in parties:
                party.receive(START_TIMEOUT)
            for _ in range(rounds):
                for size in sizes:
                    got = run_floor(parties[0], parties[1], size, seconds)
                    if memcpy:
                        n = max(1, int(seconds * 2e9 / size))  # about seconds at 2 GB/s
                        r = parties[2].ask("produce", {"n": n, "size": size})
                        got["memcpy"] = n * size / ((r["end"] - r["t0"]) / 1e9)
                    out[size].append(got)
        finally:
            for party in parties:
                party.stop()
            for party in parties:
                party.join()
    return out


def median_floor(rounds: list[dict[str, float]], key: str = "bytes_per_s") -> float:
    """The median over rounds of one of :func:`run_floor`'s rates."""
    return statistics.median(r[key] for r in rounds)
