"""How cost grows: ``stats()`` and a disconnect against the number of live blocks.

    python benchmarks/bench_stats.py [--blocks 10,1000,100000] [--tree old=/tmp/old/src]

For each count of live blocks (4 KiB each, held by another client process, the
``_hold`` child of ``abuse.py``), a ``blockipc serve`` of each tree (``--tree
NAME=SRC``, any number; by default this checkout alone) is started and measured, the
trees taking turns at each count in one run:

* ``stats()``: the median and p90 of ``--calls`` calls from a good client;
* disconnect: a client that holds nothing connects (raw HELLO) and closes its
  socket; the time from the close until the coordinator no longer lists it
  (``peers()`` polled), the median of ``--disconnects``. A PEERS round trip is the
  floor of that figure (its resolution);
* alloc+free: the median of 500 pairs of a 64 B block (the O(log n) claim of the
  buddy allocator and the routing table);
* reclaim: the holder of the live blocks is ``kill -9``ed; the time until the
  coordinator has them all back (``stats().blocks`` polled down to the good client's);
* a 64 B routed read's median round trip, for scale.

``--plot FILE.png`` draws the four against the count of live blocks, log-log
(matplotlib, in the ``bench`` extra).

Before issue 17 both grew with the table: STATS counted leases over every block and
each process's owned bytes over its blocks, and a disconnect scanned every block for
the process's lease waits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from _plot import pyplot, save  # noqa: E402
from abuse import hello  # noqa: E402  (the raw HELLO of a client that holds nothing)

import blockipc  # noqa: E402

MiB = 1 << 20


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


async def _reclaim(good: blockipc.Client, hog: subprocess.Popen[str]) -> float:
    """Kill -9 ``hog``; the seconds until its blocks are all back (the good client's
    one block is what is left)."""
    hog.kill()
    t = time.perf_counter()
    while (await good.stats()).blocks > 1:
        await asyncio.sleep(0.0005)
    return time.perf_counter() - t


async def measure(
    sock: str, calls: int, disconnects: int, hog: subprocess.Popen[str] | None = None
) -> dict[str, float]:
    async with blockipc.connect(sock, name="good") as good:
        block = await good.alloc(64)
        reads = []
        for _ in range(500):
            t = time.perf_counter()
            await good.read(block, 0, 64)
            reads.append(time.perf_counter() - t)
        for _ in range(10):
            await good.stats()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            await good.stats()
            times.append(time.perf_counter() - t)
        pairs = []
        for _ in range(500):
            t = time.perf_counter()
            await good.free(await good.alloc(64))
            pairs.append(time.perf_counter() - t)
        gone = []
        for k in range(disconnects):
            name = f"idle{k}"
            stream, _ = await hello(sock, name)
            t = time.perf_counter()
            await stream.aclose()
            while name in await good.peers():
                pass
            gone.append(time.perf_counter() - t)
        reclaim = await _reclaim(good, hog) if hog is not None else float("nan")
        await good.free(block)
    times.sort()
    return {
        "alloc_free": statistics.median(pairs),
        "reclaim": reclaim,
        "stats": statistics.median(times),
        "stats_p90": times[int(len(times) * 0.9)],
        "disconnect": statistics.median(gone),
        "read": statistics.median(reads),
    }


def run(src: str, blocks: int, calls: int, disconnects: int) -> dict[str, float]:
    pool = f"{blocks * 4096 // MiB + 16}MiB"
    with tempfile.TemporaryDirectory(prefix="bipc-stats-") as tmp:
        sock = str(Path(tmp) / "c.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "blockipc", "serve", "--socket", sock, "--pool-size", pool],
            env={**os.environ, "PYTHONPATH": src},
            stderr=subprocess.DEVNULL,  # its log
        )
        hog = None
        try:
            while not Path(sock).exists():
                time.sleep(0.05)
            hog = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).parent / "abuse.py"),
                    "_hold",
                    sock,
                    str(blocks),
                ],
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                stdout=subprocess.PIPE,
                text=True,
            )
            assert hog.stdout is not None
            assert hog.stdout.readline().strip() == "ready"
            return asyncio.run(measure(sock, calls, disconnects, hog))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait(timeout=30)
            server.terminate()
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", default="10,1000,100000", help="live block counts")
    parser.add_argument("--calls", type=int, default=200, help="stats() calls per count")
    parser.add_argument("--disconnects", type=int, default=100, help="disconnects per count")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="a tree's src directory whose coordinator to measure (repeat to compare)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves (matplotlib)")
    args = parser.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(ROOT / "src")]]
    print(
        f"{'tree':>6} {'live blocks':>11} {'stats() ms':>10} {'p90 ms':>8} "
        f"{'disconnect ms':>13} {'alloc+free ms':>13} {'reclaim ms':>10} {'64 B read ms':>12}"
    )
    results: dict[str, list[tuple[int, dict[str, float]]]] = {name: [] for name, _ in trees}
    for blocks in (int(n) for n in args.blocks.split(",")):
        for name, src in trees:
            r = run(src, blocks, args.calls, args.disconnects)
            results[name].append((blocks, r))
            print(
                f"{name:>6} {blocks:>11} {_ms(r['stats']):>10} {_ms(r['stats_p90']):>8} "
                f"{_ms(r['disconnect']):>13} {_ms(r['alloc_free']):>13} "
                f"{_ms(r['reclaim']):>10} {_ms(r['read']):>12}",
                flush=True,
            )
    if args.plot:
        plot(results, args.plot)


def plot(results: dict[str, list[tuple[int, dict[str, float]]]], path: str) -> None:
    """The four costs against live blocks, log-log, one line per tree."""
    plt = pyplot()
    keys = {
        "stats": "stats() (ms)",
        "disconnect": "disconnect (ms)",
        "alloc_free": "alloc+free (ms)",
        "reclaim": "reclaim after kill -9 (ms)",
    }
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), layout="constrained")
    for ax, (key, title) in zip(axes, keys.items(), strict=True):
        for name, rows in results.items():
            ax.plot([n for n, _ in rows], [r[key] * 1e3 for _, r in rows], "o-", label=name)
        ax.set(title=title, xlabel="live blocks", xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    save(fig, path)


if __name__ == "__main__":
    main()
