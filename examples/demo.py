"""`make demo`: an embedded coordinator, a producer process and a consumer process.

The coordinator runs in this process; producer.py and consumer.py run as their own
processes and exchange blocks through it. Afterwards the pool is back to empty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio

import blockipc

HERE = Path(__file__).parent


async def main(args: argparse.Namespace) -> int:
    async with blockipc.Coordinator(pool_size=args.pool_size) as coord:
        print(f"demo: coordinator at {coord.address}, pool {coord.stats().pool_size:,} bytes")
        common = ["--socket", coord.address, "--count", str(args.count)]
        consumer = await anyio.open_process(
            [sys.executable, str(HERE / "consumer.py"), *common],
            stdout=None,
            stderr=None,
        )
        producer = None
        try:
            start = time.perf_counter()
            producer = await anyio.open_process(
                [sys.executable, str(HERE / "producer.py"), *common, "--sizes", args.sizes],
                stdout=None,
                stderr=None,
            )
            with anyio.fail_after(60):
                rc_p = await producer.wait()
                rc_c = await consumer.wait()
            elapsed = time.perf_counter() - start
        finally:
            for proc in (producer, consumer):
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        stats = coord.stats()
        print(
            f"demo: producer exit {rc_p}, consumer exit {rc_c}, {elapsed:.2f} s wall; "
            f"pool after: {stats.used_bytes} bytes used, {stats.blocks} blocks"
        )
        return 0 if rc_p == rc_c == 0 and stats.used_bytes == 0 else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--sizes", default="64,4096,1048576,16777216")
    parser.add_argument("--pool-size", default="128MiB")
    return parser.parse_args()


if __name__ == "__main__":
    blockipc.configure_logging("warning")
    sys.exit(blockipc.run(lambda: main(parse_args())))
