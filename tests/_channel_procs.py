"""Child processes for tests/client/test_channel.py: the two ends of a channel.

Run as ``python tests/_channel_procs.py ROLE ADDRESS ARGS...``; like tests/_procs.py
(whose :class:`~_procs.Child`, :func:`~_procs.report` and ``main`` this reuses), a
child reports one JSON object per line on stdout and logs to stderr. The test side
uses :func:`spawn`, which always kills the child and waits for it.
"""

from __future__ import annotations

import contextlib
import random
import zlib
from pathlib import Path

import anyio

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_channel_procs.py ROLE ARGS...``; killed and waited for on exit."""
    return _procs.spawn(role, *args, script=HERE)


_SOURCE_SIZE = 1 << 20


def source(seed: int) -> bytes:
    """The bytes message payloads are sliced from (same in every process)."""
    return random.Random(seed).randbytes(_SOURCE_SIZE)


def message(src: bytes, rng: random.Random, max_size: int) -> memoryview:
    """The next payload of a stream: a random slice of ``src``."""
    size = rng.randint(0, max_size)
    start = rng.randrange(0, len(src) - size + 1)
    return memoryview(src)[start : start + size]


# -- the child side --------------------------------------------------------------------
async def chan_producer(
    address: str, name: str, to: str, count: str, max_size: str, seed: str, capacity: str
) -> None:
    """Open a channel to ``to`` and send ``count`` messages of random sizes (``-1``:
    until a send fails), each with its index and crc32 in the header. Then close the
    channel and report "done"; a failed send reports "error" (and closes the channel,
    reporting "closed")."""
    import blockipc

    src = source(int(seed))
    rng = random.Random(int(seed))
    async with blockipc.connect(address, name=name) as client:
        tx = await client.open_channel(to, capacity=capacity, wait_for_peer=20)
        report("ready", channel=tx.id)
        i = 0
        try:
            while int(count) < 0 or i < int(count):
                data = message(src, rng, int(max_size))
                await tx.send(data, header={"i": i, "crc": zlib.crc32(data)})
                i += 1
        except blockipc.BlockIPCError as exc:
            report("error", type=type(exc).__name__, message=str(exc), sent=i)
            await tx.aclose()
            report("closed")
        else:
            await tx.aclose()
            report("done", sent=i)
        await anyio.sleep_forever()


async def chan_consumer(address: str, name: str, seed: str, max_size: str, midway: str) -> None:
    """Accept one channel and receive until it ends, checking each message's crc32,
    index and bytes (the same stream the producer draws); report "midway" after
    ``midway`` messages, then a summary at the end."""
    import blockipc

    src = source(int(seed))
    rng = random.Random(int(seed))
    async with blockipc.connect(address, name=name) as client:
        report("ready")
        rx = await client.accept_channel()
        report("accepted", channel=rx.id, sender=rx.peer)
        n = bad = out_of_order = 0
        async for msg in rx:
            with msg:
                want = message(src, rng, int(max_size))
                bad += zlib.crc32(msg.data) != msg.header["crc"] or msg.data != want
                out_of_order += msg.header["i"] != n
            n += 1
            if n == int(midway):
                report("midway", received=n)
        await rx.aclose()
        report("done", received=n, bad=bad, out_of_order=out_of_order)
        await anyio.sleep_forever()


async def chan_burst(
    address: str, name: str, to: str, count: str, size: str, capacity: str
) -> None:
    """Open a channel to ``to``, send ``count`` messages of ``size`` bytes (all fit in
    the ring: none waits), report "sent", then start one more message with
    ``reserve()``, half fill it, report "reserving" and sleep inside it until killed."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        tx = await client.open_channel(to, capacity=capacity, wait_for_peer=20)
        for i in range(int(count)):
            data = bytes([i % 256]) * int(size)
            await tx.send(data, header={"i": i, "crc": zlib.crc32(data)}, nowait=True)
        report("sent", channel=tx.id, count=int(count))
        async with tx.reserve(int(size), header={"i": int(count), "crc": 0}) as view:
            view[: int(size) // 2] = b"\xee" * (int(size) // 2)
            report("reserving")
            await anyio.sleep_forever()


async def chan_offers(address: str, name: str, to: str, count: str, capacity: str) -> None:
    """Open ``count`` channels to ``to`` (which need not accept them), send one message
    in each, report "opened" and sleep until killed."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        ids = []
        for i in range(int(count)):
            tx = await client.open_channel(to, capacity=capacity, wait_for_peer=20)
            await tx.send(b"offered", header={"i": i}, nowait=True)
            ids.append(tx.id)
        report("opened", channels=ids)
        await anyio.sleep_forever()


async def chan_leave(address: str, name: str, to: str, count: str) -> None:
    """Open a channel to ``to``, send ``count`` messages, then close the client with the
    channel still open (a clean close of every end), report "left" and sleep."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        tx = await client.open_channel(to, capacity="64KiB", wait_for_peer=20)
        for i in range(int(count)):
            await tx.send(b"m%d" % i, header={"i": i}, nowait=True)
    report("left", channel=tx.id)
    await anyio.sleep_forever()


_procs.ROLES.update(
    chan_offers=chan_offers,
    chan_leave=chan_leave,
    chan_producer=chan_producer,
    chan_consumer=chan_consumer,
    chan_burst=chan_burst,
)


if __name__ == "__main__":
    _procs.main()
