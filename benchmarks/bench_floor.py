"""What this machine allows a two-process stream at all: the floor under the targets.

    python benchmarks/bench_floor.py [--rounds 3] [--seconds 1.0] [--json out.json]

The throughput rows of ``blockipc bench`` are producer -> consumer streams (the
producer writes each payload, the consumer, another process on the other CPU, reads it
once), and each row is judged against the **two-core floor** measured in the same run:
process W (pinned to one CPU) copies payloads into the slots of a shared memfd ring,
round and round, while process R (pinned to the other CPU) reads the slots, round and
round, neither ever waiting for the other. ``min(write, read)`` bounds any such stream
from above. The measurement lives in ``blockipc.bench.floor`` (one home: the bench runs
the same parties in its interleaved rounds); this script runs it on its own, longer,
next to a one-process memcpy of the same payloads for context. Rounds interleave the
sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from blockipc.bench.floor import measure, median_floor

SIZES = (64, 64 << 10, 1 << 20, 64 << 20)


def _rate(size: int, bytes_per_s: float) -> str:
    if size < 4096:
        return f"{bytes_per_s / size / 1e3:,.0f} k msg/s"
    return f"{bytes_per_s / 1e9:.2f} GB/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (default 1)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs", file=sys.stderr)
        return 1
    results = measure(SIZES, args.rounds, args.seconds)
    print(
        "| payload | memcpy, one process | write, two cores | read, two cores | "
        "floor: min(write, read) | floor / memcpy |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for size, rounds in results.items():
        med = {k: median_floor(rounds, k) for k in ("memcpy", "write", "read", "bytes_per_s")}
        label = (
            f"{size >> 20} MiB"
            if size >= 1 << 20
            else f"{size >> 10} KiB"
            if size >= 1024
            else f"{size} B"
        )
        print(
            f"| {label} | {_rate(size, med['memcpy'])} | {_rate(size, med['write'])} "
            f"| {_rate(size, med['read'])} | {_rate(size, med['bytes_per_s'])} "
            f"| {med['bytes_per_s'] / med['memcpy']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
