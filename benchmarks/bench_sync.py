"""What the blocking client (blockipc.sync) and the trio path cost per call, beside the
async client.

    python benchmarks/bench_sync.py [--rounds 7] [--calls 2000] [--json out.json]

A coordinator (``blockipc serve``) runs in its own process. This process connects
three clients to it: the async client on a uvloop loop of this thread, the blocking
client of :mod:`blockipc.sync` (its loop in a thread of its own), and, when trio is
installed, the client :func:`blockipc.connect` gives under ``trio.run`` (the async
client on a loop thread, awaited from trio). Each makes the same small round trip,
``read(block, 0, 64)`` (inline: one request, one reply, 64 bytes), ``--calls`` times in
a row, and the rounds interleave the contenders (their order rotates every round).
The table gives the median microseconds per call over the rounds, and each one's
ratio to the async client's.

The extra cost of the two bridged paths is the hop to the loop thread and back (a
wake-up of a thread parked on a lock, then of trio's run loop), paid per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chaos import SRC, serve

sys.path.insert(0, str(SRC))
import blockipc
import blockipc.sync
from blockipc._loopthread import new_loop

try:
    import trio
except ImportError:  # the trio row is left out
    trio = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--json", type=Path, help="write every timing here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bipc-bench-sync-") as tmp:
        sock = Path(tmp) / "c.sock"
        with serve(sock, "64MiB", Path(tmp) / "serve.log"):
            results = measure(str(sock), args.rounds, args.calls)
    report(results, args.rounds, args.calls)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def measure(address: str, rounds: int, calls: int) -> dict[str, list[float]]:
    loop = new_loop()
    aclient = loop.run_until_complete(blockipc.connect(address, "bench-async"))
    block = loop.run_until_complete(aclient.alloc(64))
    sclient = blockipc.sync.connect(address, "bench-sync")
    sblock = sclient.alloc(64)

    async def async_batch() -> float:
        t = time.perf_counter()
        for _ in range(calls):
            await aclient.read(block, 0, 64)
        return time.perf_counter() - t

    def sync_batch() -> float:
        t = time.perf_counter()
        for _ in range(calls):
            sclient.read(sblock, 0, 64)
        return time.perf_counter() - t

    contenders: dict[str, Callable[[], float]] = {
        "async client (uvloop)": lambda: loop.run_until_complete(async_batch()),
        "blockipc.sync": sync_batch,
    }
    trio_state: dict[str, Any] = {}
    if trio is not None:

        async def trio_open() -> None:
            client = await blockipc.connect(address, "bench-trio")
            trio_state.update(client=client, block=await client.alloc(64))

        async def trio_batch() -> float:
            client, tblock = trio_state["client"], trio_state["block"]
            t = time.perf_counter()
            for _ in range(calls):
                await client.read(tblock, 0, 64)
            return time.perf_counter() - t

        trio.run(trio_open)
        contenders["trio (blockipc.connect)"] = lambda: trio.run(trio_batch)
    names = list(contenders)
    for name in names:  # a warm-up round each, not counted
        contenders[name]()
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(contenders[name]() / calls * 1e6)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    if trio is not None:

        async def trio_close() -> None:
            await trio_state["client"].free(trio_state["block"])
            await trio_state["client"].aclose()

        trio.run(trio_close)
    sclient.free(sblock)
    sclient.close()
    loop.run_until_complete(aclient.free(block))
    loop.run_until_complete(aclient.aclose())
    loop.close()
    return results


def report(results: dict[str, list[float]], rounds: int, calls: int) -> None:
    base = statistics.median(results["async client (uvloop)"])
    print(f"read(block, 0, 64) round trip, median of {rounds} rounds x {calls} calls")
    print("(a shared, noisy machine: compare the rows of one run, not runs)\n")
    print("| client | µs per call (median) | min .. max | vs async |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in results.items():
        med = statistics.median(values)
        print(
            f"| {name} | {med:.1f} | {min(values):.1f} .. {max(values):.1f} | {med / base:.2f}x |"
        )
    if trio is None:
        print("\ntrio is not installed: no trio row")


if __name__ == "__main__":
    main()
