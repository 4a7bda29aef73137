"""What this machine allows a two-process stream at all: the ceiling under the targets.

    python benchmarks/bench_floor.py [--rounds 3] [--seconds 1.5] [--json out.json]

The throughput targets of ``blockipc bench`` compare a producer -> consumer stream
(the producer writes each payload, the consumer, another process on the other CPU,
reads it once) with a memcpy of the same bytes inside one process. This script
measures, with no blockipc and no synchronisation at all, how fast the two halves of
such a stream can run on this machine:

* **memcpy**: one process copies a payload into a buffer over and over (numpy
  ``copyto``), as the ``memcpy`` column of ``blockipc bench`` does;
* **write / read, two cores**: process W (pinned to one CPU) copies payloads into the
  slots of a shared memfd ring, round and round, while process R (pinned to the other
  CPU) reads the slots (``count_nonzero``), round and round, neither ever waiting for
  the other. Every cache line then moves between the two cores' caches, which is what
  a real stream cannot avoid; W's and R's rates bound any stream from above (a real
  one also waits, and hands the slots over in order).

The ratio ``min(write, read) / memcpy`` is the most a shared-memory stream can reach
against the memcpy column here. Rounds interleave the sizes.
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

SIZES = (1 << 20, 64 << 20)
SLOTS = 4


def _pin(index: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _memcpy(size: int, seconds: float, out: Any) -> None:
    import numpy as np

    _pin(1)
    src, dst = np.full(size, 7, dtype=np.uint8), np.ones(size, dtype=np.uint8)
    np.copyto(dst, src)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, src)
        n += 1
    out.put(("memcpy", n * size / (time.perf_counter() - t0)))


def _ring_party(role: str, fd: int, size: int, seconds: float, out: Any) -> None:
    import numpy as np

    _pin(1 if role == "write" else 0)
    mm = mmap.mmap(fd, SLOTS * size)
    ring = np.frombuffer(mm, dtype=np.uint8)
    np.count_nonzero(ring)  # map every page first: no page faults while timed
    src = np.full(size, 7, dtype=np.uint8)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        at = (n % SLOTS) * size
        if role == "write":
            np.copyto(ring[at : at + size], src)
        else:
            np.count_nonzero(ring[at : at + size])
        n += 1
    out.put((role, n * size / (time.perf_counter() - t0)))
    del ring
    mm.close()


def measure(size: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    got: dict[str, float] = {}
    p = ctx.Process(target=_memcpy, args=(size, seconds, out))
    p.start()
    got.update([out.get()])
    p.join()
    fd = os.memfd_create("blockipc-floor")
    try:
        os.ftruncate(fd, SLOTS * size)
        parties = [
            ctx.Process(target=_ring_party, args=(role, fd, size, seconds, out))
            for role in ("write", "read")
        ]
        for party in parties:
            party.start()
        got.update([out.get(), out.get()])
        for party in parties:
            party.join()
    finally:
        os.close(fd)
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement (default 1.5)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs", file=sys.stderr)
        return 1
    results: dict[int, list[dict[str, float]]] = {size: [] for size in SIZES}
    for _ in range(args.rounds):
        for size in SIZES:
            results[size].append(measure(size, args.seconds))
    print(
        "| payload | memcpy, one process | write, two cores | read, two cores | "
        "min(write, read) / memcpy |"
    )
    print("| --- | --- | --- | --- | --- |")
    for size, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in ("memcpy", "write", "read")}
        ceiling = min(med["write"], med["read"]) / med["memcpy"]
        print(
            f"| {size >> 20} MiB | {med['memcpy'] / 1e9:.2f} GB/s | {med['write'] / 1e9:.2f} GB/s "
            f"| {med['read'] / 1e9:.2f} GB/s | {ceiling:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
