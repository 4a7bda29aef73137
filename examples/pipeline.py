"""Pipeline: producer -> transformer -> consumer, three processes, one command.

This process runs an embedded coordinator and starts itself three more times, once
per role:

* **producer** fills blocks in place (a write lease) and sends them to the
  transformer, each with the sha256 of what the consumer should see;
* **transformer** ``copy``s every block it receives into a new block (the coordinator
  copies inside the pool: the bytes never cross a socket), frees the original,
  transforms the copy in place through a write lease (XOR with a key byte) and sends
  it on;
* **consumer** hashes each block through a read lease, checks it, frees it.

Inboxes are small (``--inbox``), so a fast stage waits for room in the next one's inbox
instead of piling blocks up: backpressure. Each stage waits for the next one to
register (``wait_for_peer``), so the start order does not matter.

    python examples/pipeline.py [--count 32] [--size 1048576] [--inbox 4]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import anyio

import blockipc

KEY = 0x5A
XOR = bytes(b ^ KEY for b in range(256))  # a bytes.translate table
PEER_TIMEOUT = 15.0


def payload(seq: int, size: int) -> bytes:
    """Block ``seq``'s bytes: cheap to make, different for every block."""
    pattern = hashlib.sha256(seq.to_bytes(8, "little")).digest()
    return (pattern * (size // len(pattern) + 1))[:size]


async def producer(args: argparse.Namespace) -> None:
    async with blockipc.connect(args.socket, name="producer") as client:
        for seq in range(args.count):
            data = payload(seq, args.size)
            block = await client.alloc(args.size)
            async with client.lease(block, "w") as view:  # zero-copy: fill shared memory
                view[:] = data
            expected = hashlib.sha256(data.translate(XOR)).hexdigest()
            header = {"seq": seq, "sha256": expected}
            await client.send(block, to="transformer", header=header, wait_for_peer=PEER_TIMEOUT)
        await client.send(await client.alloc(1), to="transformer", header={"end": True})
        print(f"producer: sent {args.count} blocks of {args.size:,} bytes")


async def transformer(args: argparse.Namespace) -> None:
    async with blockipc.connect(
        args.socket, name="transformer", inbox_messages=args.inbox
    ) as client:
        copied = 0
        while True:
            msg = await client.recv()
            if msg.header.get("end"):
                await client.send(
                    msg.block, to="consumer", header=msg.header, wait_for_peer=PEER_TIMEOUT
                )
                break
            out = await client.alloc(msg.block.size)
            copied += await client.copy(msg.block, out)  # inside the pool
            await client.free(msg.block)
            async with client.lease(out, "w") as view:  # transform in place
                view[:] = bytes(view).translate(XOR)
            await client.send(out, to="consumer", header=msg.header, wait_for_peer=PEER_TIMEOUT)
        print(f"transformer: copied and transformed {copied:,} bytes")


async def consumer(args: argparse.Namespace) -> int:
    async with blockipc.connect(args.socket, name="consumer", inbox_messages=args.inbox) as client:
        good = bad = 0
        expected_seq = 0
        while True:
            msg = await client.recv()
            if msg.header.get("end"):
                await client.free(msg.block)
                break
            async with client.lease(msg.block, "r") as view:
                ok = hashlib.sha256(view).hexdigest() == msg.header["sha256"]
            ok = ok and msg.header["seq"] == expected_seq and msg.sender == "transformer"
            expected_seq += 1
            good += ok
            bad += not ok
            await client.free(msg.block)
        print(f"consumer: {good} blocks ok, {bad} bad")
        return 0 if bad == 0 and good == args.count else 1


async def run_all(args: argparse.Namespace) -> int:
    """Start a coordinator and the three stages; wait for them; check the pool."""
    async with blockipc.Coordinator(pool_size=args.pool_size) as coord:
        print(f"pipeline: coordinator at {coord.address}")
        common = [
            "--socket",
            coord.address,
            "--count",
            str(args.count),
            "--size",
            str(args.size),
            "--inbox",
            str(args.inbox),
        ]
        procs = []
        start = time.perf_counter()
        try:
            for role in ("consumer", "transformer", "producer"):
                proc = await anyio.open_process(
                    [sys.executable, __file__, "--role", role, *common], stdout=None, stderr=None
                )
                procs.append(proc)
            with anyio.fail_after(120):
                codes = [await proc.wait() for proc in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        elapsed = time.perf_counter() - start
        stats = coord.stats()
        print(
            f"pipeline: exit codes {codes}, {elapsed:.2f} s; "
            f"pool after: {stats.used_bytes} bytes used, {stats.blocks} blocks"
        )
        return 0 if codes == [0, 0, 0] and stats.blocks == 0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --role, runs the coordinator and all three stages.",
    )
    parser.add_argument("--role", choices=["producer", "transformer", "consumer"])
    parser.add_argument("--socket", help="coordinator socket (with --role)")
    parser.add_argument("--count", type=int, default=32, help="blocks to send")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per block")
    parser.add_argument("--inbox", type=int, default=4, help="inbox limit of each stage")
    parser.add_argument("--pool-size", default="64MiB", help="pool of the coordinator")
    args = parser.parse_args(argv)
    if args.role and not args.socket:
        parser.error("--role needs --socket")
    return args


async def main(args: argparse.Namespace) -> int:
    if args.role == "producer":
        await producer(args)
        return 0
    if args.role == "transformer":
        await transformer(args)
        return 0
    if args.role == "consumer":
        return await consumer(args)
    return await run_all(args)


if __name__ == "__main__":
    blockipc.configure_logging("warning")
    args = parse_args()
    sys.exit(blockipc.run(lambda: main(args)))
