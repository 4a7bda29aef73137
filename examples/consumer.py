"""Consumer: receive blocks, verify their checksums in place, free them.

Prints one line per block and a summary; exits non-zero if any checksum fails.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import blockipc


async def main(args: argparse.Namespace) -> int:
    async with blockipc.connect(args.socket, name=args.name) as client:
        print("consumer: ready", flush=True)
        bad = received = 0
        start = None
        for _ in range(args.count):
            msg = await client.recv()
            start = start or time.perf_counter()
            async with client.lease(msg.block, "r") as view:  # zero-copy read
                digest = hashlib.sha256(view).hexdigest()
            ok = digest == msg.header.get("sha256")
            bad += not ok
            received += msg.block.size
            print(
                f"consumer: #{msg.header.get('seq')} from {msg.sender}: "
                f"{msg.block.size:>10,} bytes  sha256 {digest[:16]}  {'ok' if ok else 'MISMATCH'}",
                flush=True,
            )
            await client.free(msg.block)
        elapsed = time.perf_counter() - (start or time.perf_counter())
        rate = received / elapsed / 1e9 if elapsed else 0.0
        print(
            f"consumer: {args.count} blocks, {received:,} bytes, {bad} bad checksums, "
            f"{elapsed * 1e3:.1f} ms from first receive ({rate:.2f} GB/s incl. sha256)"
        )
        return 1 if bad else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="coordinator socket path")
    parser.add_argument("--name", default="consumer", help="process name to register")
    parser.add_argument("--count", type=int, default=8, help="blocks to receive, then exit")
    return parser.parse_args()


if __name__ == "__main__":
    blockipc.configure_logging("warning")
    sys.exit(blockipc.run(lambda: main(parse_args())))
