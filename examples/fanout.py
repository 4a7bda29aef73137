"""Fan-out: one publisher, several subscribers, each block shared zero-copy by all.

This process runs an embedded coordinator and starts itself once as the publisher
and ``--subscribers`` times as a subscriber. Every subscriber ``subscribe``s to the
topic, then tells the publisher it is ready (a one-byte block sent to it). The
publisher waits for all of them, then ``publish``es each block once: every
subscriber gets the *same* block with a read grant (nothing is copied), checks its
sha256 through a read lease and frees it; the block goes back to the pool when the
last subscriber has freed it.

    python examples/fanout.py [--subscribers 4] [--count 16] [--size 4194304]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import anyio

import blockipc

TOPIC = "frames"
PEER_TIMEOUT = 15.0


async def publisher(args: argparse.Namespace) -> None:
    async with blockipc.connect(args.socket, name="publisher") as client:
        for _ in range(args.subscribers):  # each subscriber says it has subscribed
            await client.free((await client.recv()).block)
        start = time.perf_counter()
        for seq in range(args.count):
            block = await client.alloc(args.size)
            async with client.lease(block, "w") as view:  # fill shared memory in place
                view[:] = bytes([seq % 251]) * args.size
                view[:8] = seq.to_bytes(8, "little")
                digest = hashlib.sha256(view).hexdigest()
            header = {"seq": seq, "sha256": digest}
            delivered = await client.publish(block, TOPIC, header=header)
            assert delivered == args.subscribers, delivered
        await client.publish(await client.alloc(1), TOPIC, header={"end": True})
        elapsed = time.perf_counter() - start
        print(
            f"publisher: {args.count} blocks of {args.size:,} bytes to {args.subscribers} "
            f"subscribers in {elapsed * 1e3:.1f} ms"
        )


async def subscriber(args: argparse.Namespace) -> int:
    name = f"subscriber-{args.index}"
    async with blockipc.connect(args.socket, name=name, inbox_messages=args.inbox) as client:
        await client.subscribe(TOPIC)
        await client.send(await client.alloc(1), to="publisher", wait_for_peer=PEER_TIMEOUT)
        good = bad = 0
        async for msg in client.messages():
            if msg.header.get("end"):
                await client.free(msg.block)
                break
            async with client.lease(msg.block, "r") as view:
                ok = hashlib.sha256(view).hexdigest() == msg.header["sha256"]
            ok = ok and msg.topic == TOPIC and msg.header["seq"] == good + bad
            good += ok
            bad += not ok
            await client.free(msg.block)
        print(f"{name}: {good} blocks ok, {bad} bad")
        return 0 if bad == 0 and good == args.count else 1


async def run_all(args: argparse.Namespace) -> int:
    """Start a coordinator, the subscribers and the publisher; wait; check the pool."""
    async with blockipc.Coordinator(pool_size=args.pool_size) as coord:
        print(f"fanout: coordinator at {coord.address}")
        common = ["--socket", coord.address, "--count", str(args.count)]
        common += ["--size", str(args.size), "--subscribers", str(args.subscribers)]
        common += ["--inbox", str(args.inbox)]
        roles = [["--role", "subscriber", "--index", str(i)] for i in range(args.subscribers)]
        roles.append(["--role", "publisher"])
        procs = []
        try:
            for role in roles:
                proc = await anyio.open_process(
                    [sys.executable, __file__, *role, *common], stdout=None, stderr=None
                )
                procs.append(proc)
            with anyio.fail_after(120):
                codes = [await proc.wait() for proc in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        stats = coord.stats()
        print(
            f"fanout: exit codes {codes}; "
            f"pool after: {stats.used_bytes} bytes used, {stats.blocks} blocks"
        )
        return 0 if not any(codes) and stats.blocks == 0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --role, runs the coordinator, the subscribers and the publisher.",
    )
    parser.add_argument("--role", choices=["publisher", "subscriber"])
    parser.add_argument("--socket", help="coordinator socket (with --role)")
    parser.add_argument("--index", type=int, default=0, help="subscriber number (with --role)")
    parser.add_argument("--subscribers", type=int, default=4, help="how many subscribers")
    parser.add_argument("--count", type=int, default=16, help="blocks to publish")
    parser.add_argument("--size", type=int, default=4 << 20, help="bytes per block")
    parser.add_argument("--inbox", type=int, default=4, help="inbox limit of each subscriber")
    parser.add_argument("--pool-size", default="64MiB", help="pool of the coordinator")
    args = parser.parse_args(argv)
    if args.role and not args.socket:
        parser.error("--role needs --socket")
    return args


async def main(args: argparse.Namespace) -> int:
    if args.role == "publisher":
        await publisher(args)
        return 0
    if args.role == "subscriber":
        return await subscriber(args)
    return await run_all(args)


if __name__ == "__main__":
    blockipc.configure_logging("warning")
    args = parse_args()
    sys.exit(blockipc.run(lambda: main(args)))
