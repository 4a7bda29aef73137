"""Producer: allocate blocks, fill them in place, send them to the consumer.

Run against a standalone coordinator (see examples/README.md) or let `make demo`
start everything. Each block carries its sha256 in the message header, so the
consumer can prove that what it read is what was written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import anyio

import blockipc


async def main(args: argparse.Namespace) -> None:
    async with blockipc.connect(args.socket, name=args.name) as client:
        sizes = [int(s) for s in args.sizes.split(",")]
        start = time.perf_counter()
        sent = 0
        for i in range(args.count):
            size = sizes[i % len(sizes)]
            payload = os.urandom(size) if size <= 1 << 16 else bytes([i % 251]) * size
            block = await client.alloc(size)
            async with client.lease(block, "w") as view:  # zero-copy: fill shared memory
                view[:] = payload
            header = {"seq": i, "sha256": hashlib.sha256(payload).hexdigest()}
            with anyio.fail_after(args.timeout):
                while True:  # the consumer may not have registered yet
                    try:
                        await client.send(block, to=args.to, header=header)
                        break
                    except blockipc.PeerUnreachable:
                        await anyio.sleep(0.05)
            sent += size
        elapsed = time.perf_counter() - start
        print(
            f"producer: sent {args.count} blocks, {sent:,} bytes in {elapsed * 1e3:.1f} ms "
            f"({sent / elapsed / 1e9:.2f} GB/s, alloc + fill + send)"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="coordinator socket path")
    parser.add_argument("--name", default="producer", help="process name to register")
    parser.add_argument("--to", default="consumer", help="receiver's process name")
    parser.add_argument("--count", type=int, default=8, help="blocks to send")
    parser.add_argument(
        "--sizes", default="64,4096,1048576,16777216", help="comma-separated block sizes"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --to")
    return parser.parse_args()


if __name__ == "__main__":
    blockipc.configure_logging("warning")
    blockipc.run(lambda: main(parse_args()))
