"""Stream: many messages through a channel, past the coordinator, verified end to end.

This process runs an embedded coordinator and starts itself twice, once per role:

* **producer** opens a channel to the consumer (``open_channel``: one coordinator
  request for the whole stream) and sends ``--count`` messages of ``--size`` bytes,
  each with its sequence number in the header and a payload made from that number
  (a 32-byte sha256 repeated). Small payloads go with ``send`` (one copy into the
  ring); big ones are written in place with ``reserve`` (no copy besides the writes).
  At the end it closes the channel;
* **consumer** ``accept_channel``s it and reads the messages where they lie in the
  ring (``async for``: it ends once the producer closed and everything was read).
  It checks the sender, the order and every byte of every payload, in place, and
  prints messages/s and MB/s from its first message to its last.

The ring holds ``--capacity`` bytes: a full ring makes the producer wait for the
consumer (backpressure). Each process waits for the other (``wait_for_peer``), so the
start order does not matter.

    python examples/stream.py [--count 20000] [--size 4096] [--capacity 4MiB]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from collections.abc import Callable

import anyio
import anyio.abc

import blockipc

PEER_TIMEOUT = 15.0
RESERVE_FROM = 64 << 10  # payloads this big are written in place with reserve()
MiB = 1 << 20


def pattern(seq: int) -> bytes:
    """The 32 bytes that message ``seq``'s payload repeats: different for every message."""
    return hashlib.sha256(seq.to_bytes(8, "little")).digest()


def payload(seq: int, size: int) -> bytes:
    """Message ``seq``'s payload: ``pattern(seq)`` repeated, cut to ``size`` bytes."""
    return (pattern(seq) * (size // 32 + 1))[:size]


def fill(view: memoryview, seq: int) -> None:
    """Write ``payload(seq, len(view))`` into ``view`` in place, doubling what is there."""
    size = len(view)
    first = pattern(seq)[:size]
    view[: len(first)] = first
    done = len(first)
    while done < size:
        n = min(done, size - done)
        view[done : done + n] = view[:n]
        done += n


def matches(view: memoryview, expected: bytes | bytearray) -> bool:
    """``view`` holds exactly ``expected``: one memcmp, the view is not copied."""
    return len(view) == len(expected) and expected.startswith(view)


def checker(size: int) -> Callable[[memoryview, int], bool]:
    """A check that ``view`` holds message ``seq``'s payload. Big payloads are made in
    one reused buffer: a new one per message would page-fault a fresh mapping each time."""
    if size < RESERVE_FROM:
        return lambda view, seq: matches(view, payload(seq, size))
    expected = bytearray(size)
    target = memoryview(expected)

    def check(view: memoryview, seq: int) -> bool:
        fill(target, seq)
        return matches(view, expected)

    return check


def default_capacity(size: int) -> int:
    """4 MiB, or room for about four messages of ``size`` bytes (a power of two)."""
    need = 4 * (size + 64) + 4096  # + each record's prefix and header, + the control page
    return max(4 * MiB, 1 << (need - 1).bit_length())


async def producer(args: argparse.Namespace) -> int:
    async with blockipc.connect(args.socket, name="producer") as client:
        tx = await client.open_channel(
            "consumer", capacity=args.capacity, wait_for_peer=PEER_TIMEOUT
        )
        async with tx:  # closing it ends the consumer's ``async for``
            largest = tx.max_payload({"seq": args.count})
            if args.size > largest:
                print(
                    f"producer: --size {args.size:,} does not fit a ring of "
                    f"{tx.capacity:,} bytes (at most {largest:,}): raise --capacity",
                    file=sys.stderr,
                )
                return 1
            start = time.perf_counter()
            if args.size < RESERVE_FROM:
                for seq in range(args.count):
                    await tx.send(payload(seq, args.size), header={"seq": seq})
            else:
                for seq in range(args.count):
                    async with tx.reserve(args.size, header={"seq": seq}) as view:
                        fill(view, seq)
            elapsed = time.perf_counter() - start
        how = "send" if args.size < RESERVE_FROM else "reserve"
        print(
            f"producer: sent {args.count:,} messages of {args.size:,} bytes "
            f"({how}, ring of {tx.capacity:,} bytes) in {elapsed:.3f} s"
        )
        return 0


async def consumer(args: argparse.Namespace) -> int:
    async with blockipc.connect(args.socket, name="consumer") as client:
        with anyio.fail_after(2 * PEER_TIMEOUT):  # the producer failed before opening it
            rx = await client.accept_channel()
        check = checker(args.size)
        good = bad = 0
        first = last = 0.0
        async with rx:
            async for msg in rx:
                with msg:  # msg.data: a read-only view into the ring, valid in this block
                    seq = good + bad
                    ok = (
                        msg.sender == "producer"
                        and msg.header.get("seq") == seq
                        and check(msg.data, seq)
                    )
                if not ok and bad < 5:
                    print(
                        f"consumer: message {seq} is wrong: header {msg.header}, "
                        f"from {msg.sender!r}",
                        file=sys.stderr,
                    )
                good += ok
                bad += not ok
                last = time.perf_counter()
                if seq == 0:
                    first = last
        received = good + bad
        elapsed = last - first  # from the first message to the last
        rate = (received - 1) / elapsed if received > 1 and elapsed > 0 else 0.0
        print(
            f"consumer: {good:,} messages ok, {bad} bad; {elapsed:.3f} s from first to last: "
            f"{rate:,.0f} msg/s, {rate * args.size / 1e6:,.1f} MB/s"
        )
        return 0 if bad == 0 and good == args.count else 1


async def _echo(proc: anyio.abc.Process, lines: list[str]) -> None:
    """Print a child's stdout as it comes, and keep its lines."""
    assert proc.stdout is not None
    buf = b""
    async for chunk in proc.stdout:
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            print(line.decode())
            lines.append(line.decode())
    if buf:
        print(buf.decode())
        lines.append(buf.decode())


async def run_all(args: argparse.Namespace) -> int:
    """Start a coordinator, the consumer and the producer; wait; check the pool."""
    pool_size = max(64 * MiB, 2 << (args.capacity - 1).bit_length())
    async with blockipc.Coordinator(pool_size=pool_size) as coord:
        print(f"stream: coordinator at {coord.address}")
        common = ["--socket", coord.address, "--count", str(args.count)]
        common += ["--size", str(args.size), "--capacity", str(args.capacity)]
        procs: list[anyio.abc.Process] = []
        consumer_lines: list[str] = []
        try:
            with anyio.fail_after(args.timeout):
                async with anyio.create_task_group() as tg:
                    for role in ("consumer", "producer"):
                        proc = await anyio.open_process(
                            [sys.executable, __file__, "--role", role, *common], stderr=None
                        )
                        procs.append(proc)
                        tg.start_soon(_echo, proc, consumer_lines if role == "consumer" else [])
                    codes = [await proc.wait() for proc in procs]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        stats = coord.stats()
        print(
            f"stream: exit codes {codes}; "
            f"pool after: {stats.used_bytes} bytes used, {stats.blocks} blocks"
        )
        rate = next(
            (m[1] for line in consumer_lines if (m := re.search(r"([\d,]+) msg/s", line))), "?"
        )
        if codes != [0, 0] or stats.blocks != 0:
            print(f"stream: FAILED ({args.count:,} messages of {args.size:,} bytes)")
            return 1
        print(f"stream: {args.count:,} messages verified, {rate} msg/s")
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without --role, runs the coordinator, the consumer and the producer.",
    )
    parser.add_argument("--role", choices=["producer", "consumer"])
    parser.add_argument("--socket", help="coordinator socket (with --role)")
    parser.add_argument("--count", type=int, default=20000, help="messages to send")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument(
        "--capacity",
        type=blockipc.parse_size,
        help="ring size, e.g. 16MiB (default: 4MiB, or room for 4 messages of --size)",
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds the whole run may take")
    args = parser.parse_args(argv)
    if args.role and not args.socket:
        parser.error("--role needs --socket")
    if args.count < 1 or args.size < 1:
        parser.error("--count and --size must be at least 1")
    if args.capacity is None:
        args.capacity = default_capacity(args.size)
    return args


async def main(args: argparse.Namespace) -> int:
    if args.role == "producer":
        return await producer(args)
    if args.role == "consumer":
        return await consumer(args)
    return await run_all(args)


if __name__ == "__main__":
    blockipc.configure_logging("warning")
    args = parse_args()
    sys.exit(blockipc.run(lambda: main(args)))
