"""Channels: a stream of messages between two processes through a ring in the pool,
past the coordinator (``Client.open_channel`` / ``Client.accept_channel``).

In-process clients against an embedded coordinator (the ``coord`` fixture checks at
teardown that the pool is exactly as it started), then real processes from
tests/_channel_procs.py, killed with ``kill -9`` mid-stream. Every test runs on
asyncio's loop and on uvloop. No assertion is timed: timeouts only turn a hang into a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

import blockipc
from _channel_procs import message, source, spawn
from _helpers import connected
from _procs import payload, wait_until
from blockipc import (
    AccessDenied,
    BlockNotFound,
    ChannelClosed,
    InboxFull,
    InvalidRequest,
    PeerUnreachable,
)
from blockipc.testing import isolated_coordinator, unique_name

KiB, MiB = 1 << 10, 1 << 20
CTL = 4096  # the ring's control page: a channel of capacity C carries C - CTL bytes
SMALL = 8 * KiB  # the smallest channel: one page of data


@pytest.fixture
async def a(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with connected(coord, "a") as c:
        yield c


@pytest.fixture
async def b(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with connected(coord, "b") as c:
        yield c


async def pair(
    a: blockipc.Client, b: blockipc.Client, capacity: int | str = 64 * KiB
) -> tuple[blockipc.ChannelSender, blockipc.ChannelReceiver]:
    tx = await a.open_channel(b.name, capacity=capacity)
    async with asyncio.timeout(10):
        rx = await b.accept_channel()
    return tx, rx


def eventfds() -> int:
    """Eventfds this process holds (a channel end holds two, and so does the embedded
    coordinator for each channel)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    return n


def ring_block(coord: blockipc.Coordinator, channel: int) -> int:
    """The id of the block holding a channel's ring (in the coordinator's table)."""
    block_id: int = coord._state.table.channels[channel].block.id
    return block_id


def usage(coord: blockipc.Coordinator) -> tuple[int, int, int]:
    s = coord.stats()
    return s.blocks, s.used_bytes, s.free_bytes


async def ring_freed(coord: blockipc.Coordinator, start: tuple[int, int, int]) -> None:
    await wait_until(lambda: usage(coord) == start)
    assert not coord._state.table.channels and coord.stats().channels == 0
    assert not coord._state.bells


# -- basics ------------------------------------------------------------------------------
async def test_roundtrip_with_header(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    start = usage(coord)
    fds = eventfds()
    tx = await a.open_channel(b.name, capacity="64KiB")
    assert isinstance(tx, blockipc.ChannelSender)
    assert tx.capacity == 64 * KiB - CTL
    assert 0 < tx.max_payload({"k": "v"}) < tx.max_payload() < tx.capacity
    assert tx.peer == b.name and not tx.closed
    # the ring is a block of the pool, held by the channel
    blocks, used, _ = usage(coord)
    assert (blocks, used) == (start[0] + 1, start[1] + 64 * KiB)
    assert (await a.stats()).channels == coord.stats().channels == 1
    data = payload(1000, 1)
    header = {"seq": 1, "name": "h\u00e9llo", "list": [1, 2.5, None], "bin": b"\x00\x01"}
    await tx.send(data, header=header)
    await tx.send(b"")  # an empty message, no header
    async with asyncio.timeout(10):
        rx = await b.accept_channel()
    assert isinstance(rx, blockipc.ChannelReceiver)
    assert (rx.id, rx.peer) == (tx.id, a.name)
    async with asyncio.timeout(10):
        msg = await rx.recv()
    assert isinstance(msg, blockipc.ChannelMessage)
    assert isinstance(msg.data, memoryview) and msg.data.readonly
    assert bytes(msg.data) == data
    assert msg.header == header
    assert msg.sender == a.name
    assert "1000 bytes" in repr(msg)
    with pytest.raises(TypeError):
        msg.data[0] = 1  # type: ignore[index]
    msg.release()
    msg.release()  # idempotent
    assert "released" in repr(msg)
    with pytest.raises(ValueError):
        bytes(msg.data)  # the view is gone with the release
    async with asyncio.timeout(10):
        with await rx.recv() as empty:
            assert (bytes(empty.data), empty.header) == (b"", {})
    assert eventfds() == fds + 6  # two per end, two in the (embedded) coordinator
    await tx.aclose()
    await tx.aclose()  # idempotent
    await rx.aclose()
    assert tx.closed and rx.closed
    await ring_freed(coord, start)
    assert eventfds() == fds


async def test_order_and_integrity_over_many_wraps(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    """Thousands of messages of random sizes through a 16 KiB ring (the position laps
    it hundreds of times), sender and receiver in two tasks: every message arrives,
    in order, with its bytes and header intact."""
    tx, rx = await pair(a, b, capacity=16 * KiB + CTL)
    rng = random.Random(5)
    src = payload(64 * KiB, 5)
    sizes = [
        rng.choice([0, 1, 7, 8, 9, rng.randint(0, 12 * KiB), rng.randint(0, 300)])
        for _ in range(3000)
    ]
    total = 0

    async def produce() -> None:
        nonlocal total
        for i, n in enumerate(sizes):
            at = (i * 131) % (len(src) - n + 1)
            data = src[at : at + n]
            total += n
            await tx.send(data, header={"i": i, "crc": zlib.crc32(data)})
        await tx.aclose()

    got = 0
    async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
        tg.create_task(produce())
        async for msg in rx:
            with msg:
                assert msg.header["i"] == got
                n = sizes[got]
                assert len(msg.data) == n
                at = (got * 131) % (len(src) - n + 1)
                assert msg.data == src[at : at + n]
                assert zlib.crc32(msg.data) == msg.header["crc"]
            got += 1
    assert got == len(sizes)
    assert total > 100 * 16 * KiB  # the ring was lapped a hundred times and more
    await rx.aclose()


async def test_backpressure_small_ring_slow_consumer(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    """A ring of 4 KiB of data and 1000-byte messages: the sender waits for room once
    four are in flight, and resumes as the consumer releases; nothing is lost."""
    tx, rx = await pair(a, b, capacity=SMALL)
    sent = 0

    async def produce() -> None:
        nonlocal sent
        for i in range(200):
            await tx.send(payload(1000, i), header={"i": i})
            sent += 1

    task = asyncio.create_task(produce())
    try:
        await wait_until(lambda: sent == 4)  # 4 x 1008 bytes fill 4096
        await asyncio.sleep(0.2)  # nothing happens while nobody reads
        assert sent == 4 and not task.done()
        with pytest.raises(InboxFull):
            await tx.send(b"x" * 100, nowait=True)  # no room, and another send waits
        async with asyncio.timeout(20):
            for i in range(200):
                msg = await rx.recv()
                assert msg.header == {"i": i}
                assert msg.data == payload(1000, i)
                if i % 20 == 0:
                    await asyncio.sleep(0.002)  # a slow consumer
                msg.release()
            await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sent == 200


async def test_nowait_on_a_full_ring_raises_inbox_full(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    tx, rx = await pair(a, b, capacity=SMALL)
    n = 0
    with pytest.raises(InboxFull):
        while True:
            await tx.send(payload(500, n), header={"i": n}, nowait=True)
            n += 1
    assert n == 4096 // (8 + 8 + 504)  # 7 records of 520 bytes (header "i" pads to 8)
    with pytest.raises(InboxFull):  # still full (456 bytes left, at the end)
        await tx.send(payload(500, 99), nowait=True)
    async with asyncio.timeout(10):
        first = await rx.recv()
    first.release()
    await tx.send(payload(500, n), header={"i": n}, nowait=True)  # room again
    n += 1
    await tx.aclose()
    got = [0]
    async with asyncio.timeout(10):
        async for msg in rx:
            with msg:
                assert msg.data == payload(500, msg.header["i"])
                got.append(msg.header["i"])
    assert got == list(range(n))  # every accepted send, nothing of the refused ones
    await rx.aclose()


async def test_reserve_writes_in_place(a: blockipc.Client, b: blockipc.Client) -> None:
    tx, rx = await pair(a, b)
    data = payload(5000, 3)
    async with tx.reserve(len(data), header={"kind": "reserved"}) as view:
        assert isinstance(view, memoryview) and not view.readonly
        assert len(view) == len(data)
        view[:] = data
    async with tx.reserve(0) as view:
        assert len(view) == 0
    async with asyncio.timeout(10):
        with await rx.recv() as msg:
            assert (msg.data, msg.header) == (data, {"kind": "reserved"})
        with await rx.recv() as msg:
            assert (bytes(msg.data), msg.header) == (b"", {})
    with pytest.raises(InvalidRequest):
        async with tx.reserve(-1):
            pass
    await tx.aclose()
    await rx.aclose()


async def test_exception_inside_reserve_publishes_nothing(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    tx, rx = await pair(a, b, capacity=SMALL)
    for attempt in range(10):  # more than the ring holds: the room is not lost either
        with pytest.raises(RuntimeError, match="abandoned"):
            async with tx.reserve(1000, header={"bad": attempt}) as view:
                view[:] = b"\xbb" * 1000
                raise RuntimeError("abandoned")
    await tx.send(b"good", header={"ok": True}, nowait=True)  # the lock was released
    async with tx.reserve(3) as view:
        view[:] = b"yes"
    await tx.aclose()
    async with asyncio.timeout(10):
        got = [(bytes(m.data), m.header) for m in [await rx.recv(), await rx.recv()]]
        assert got == [(b"good", {"ok": True}), (b"yes", {})]
        with pytest.raises(ChannelClosed):
            await rx.recv()
    await rx.aclose()


async def test_messages_sent_before_accept_are_delivered(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    tx = await a.open_channel(b.name, capacity="1MiB")
    for i in range(50):
        await tx.send(payload(i * 100, i), header={"i": i}, nowait=True)
    await tx.aclose()  # even closed before the receiver accepted
    assert coord.stats().blocks == 1  # the ring waits for the receiver
    async with asyncio.timeout(10):
        rx = await b.accept_channel()
        got = []
        async for msg in rx:
            with msg:
                assert msg.data == payload(msg.header["i"] * 100, msg.header["i"])
                got.append(msg.header["i"])
    assert got == list(range(50))
    await rx.aclose()
    await wait_until(lambda: coord.stats().blocks == 0)


async def test_channels_are_accepted_oldest_first(
    a: blockipc.Client, b: blockipc.Client, coord: blockipc.Coordinator
) -> None:
    async with connected(coord, "c") as c:
        tx1 = await a.open_channel(b.name, capacity=SMALL)
        tx2 = await c.open_channel(b.name, capacity=SMALL)
        tx3 = await a.open_channel(b.name, capacity=SMALL)
        for tx in (tx1, tx2, tx3):
            await tx.send(str(tx.id).encode())
        async with asyncio.timeout(10):
            rxs = [await b.accept_channel() for _ in range(3)]
        assert [rx.id for rx in rxs] == [tx1.id, tx2.id, tx3.id]
        assert [rx.peer for rx in rxs] == [a.name, c.name, a.name]
        for rx in rxs:
            with await rx.recv() as msg:
                assert bytes(msg.data) == str(rx.id).encode()
            await rx.aclose()
        for tx in (tx1, tx2, tx3):
            await tx.aclose()


# -- closing -----------------------------------------------------------------------------
async def test_receiver_closed_sender_gets_peer_unreachable(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    start = usage(coord)
    tx, rx = await pair(a, b, capacity=SMALL)
    await tx.send(b"one")
    await rx.aclose()
    with pytest.raises(PeerUnreachable):
        await tx.send(b"two")
    with pytest.raises(PeerUnreachable):
        await tx.send(b"two", nowait=True)
    with pytest.raises(PeerUnreachable):
        async with tx.reserve(10):
            pytest.fail("reserved room in a channel nobody reads")
    assert usage(coord) != start  # the sender still has its end
    await tx.aclose()
    await ring_freed(coord, start)


async def test_receiver_closing_wakes_a_sender_waiting_for_room(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    start = usage(coord)
    tx, rx = await pair(a, b, capacity=SMALL)
    with contextlib.suppress(InboxFull):
        while True:
            await tx.send(b"x" * 1000, nowait=True)
    send = asyncio.create_task(tx.send(b"y" * 1000))
    reserve_entered = False

    async def reserve() -> None:
        nonlocal reserve_entered
        async with tx.reserve(1000):
            reserve_entered = True

    res = asyncio.create_task(reserve())
    await asyncio.sleep(0.05)
    assert not send.done() and not res.done()
    await rx.aclose()
    async with asyncio.timeout(10):  # woken at once (not a hang)
        with pytest.raises(PeerUnreachable):
            await send
        with pytest.raises(PeerUnreachable):
            await res
    assert not reserve_entered
    await tx.aclose()
    await ring_freed(coord, start)


async def test_sender_closed_receiver_drains_then_ends(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    start = usage(coord)
    tx, rx = await pair(a, b)
    for i in range(20):
        await tx.send(payload(300, i), header={"i": i})
    await tx.aclose()
    with pytest.raises(ChannelClosed):
        await tx.send(b"late")
    with pytest.raises(ChannelClosed):
        async with tx.reserve(1):
            pass
    got = []
    async with asyncio.timeout(10):
        async for msg in rx:
            with msg:
                got.append((msg.header["i"], msg.data == payload(300, msg.header["i"])))
        with pytest.raises(ChannelClosed):
            await rx.recv()
        with pytest.raises(ChannelClosed):
            await rx.recv()
    assert got == [(i, True) for i in range(20)]
    assert not rx.closed  # the sender closed, not this end
    await rx.aclose()
    with pytest.raises(ChannelClosed):
        await rx.recv()
    await ring_freed(coord, start)


async def test_sender_closing_wakes_a_waiting_receiver(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    tx, rx = await pair(a, b)
    recv = asyncio.create_task(rx.recv())
    await asyncio.sleep(0.05)
    assert not recv.done()
    await tx.send(b"last")
    async with asyncio.timeout(10):
        with await recv as msg:
            assert bytes(msg.data) == b"last"
    recv = asyncio.create_task(rx.recv())
    await asyncio.sleep(0.05)
    await tx.aclose()
    async with asyncio.timeout(10):
        with pytest.raises(ChannelClosed):
            await recv
    await rx.aclose()


async def outcomes(*tasks: asyncio.Task[Any]) -> list[type[BaseException] | None]:
    """The exception type each task ended with (``None``: no exception), waiting at
    most 10 s for them all (a hang fails)."""
    async with asyncio.timeout(10):
        await asyncio.wait(tasks)
    return [None if (e := t.exception()) is None else type(e) for t in tasks]


async def test_own_end_closed_while_waiting(a: blockipc.Client, b: blockipc.Client) -> None:
    """aclose() on an end another task waits on wakes that task with ChannelClosed."""
    tx_idle, rx_idle = await pair(a, b, capacity=SMALL)  # its receiver waits for data
    tx_full, rx_full = await pair(a, b, capacity=SMALL)  # its sender waits for room
    with contextlib.suppress(InboxFull):
        while True:
            await tx_full.send(b"z" * 1000, nowait=True)
    recv = asyncio.create_task(rx_idle.recv())
    send = asyncio.create_task(tx_full.send(b"w" * 1000))
    await asyncio.sleep(0.05)
    assert not send.done() and not recv.done()
    await rx_idle.aclose()
    await tx_full.aclose()
    assert await outcomes(recv, send) == [ChannelClosed, ChannelClosed]
    for end in (tx_idle, rx_full):
        await end.aclose()


@pytest.mark.parametrize("closing", ["receiver", "sender"])
async def test_client_close_with_channels_open_ends_pending_calls(
    coord: blockipc.Coordinator, closing: str
) -> None:
    """A client closed while its channel ends have calls pending: those raise
    ChannelClosed (a ConnectionClosed) at once, the peer's pending calls see the
    channel end (PeerUnreachable for a sender, ChannelClosed for a receiver), and the
    coordinator frees the ring once the other end closes too."""
    start = usage(coord)
    fds = eventfds()
    async with connected(coord, "tx") as a, connected(coord, "rx") as b:
        tx_full, rx_full = await pair(a, b, capacity=SMALL)  # a sender waits for room
        tx_idle, rx_idle = await pair(a, b, capacity=SMALL)  # a receiver waits for data
        with contextlib.suppress(InboxFull):
            while True:
                await tx_full.send(b"f" * 1000, nowait=True)
        send = asyncio.create_task(tx_full.send(b"g" * 1000))
        recv = asyncio.create_task(rx_idle.recv())
        await asyncio.sleep(0.05)
        assert not send.done() and not recv.done()
        assert usage(coord)[0] == start[0] + 2
        if closing == "receiver":
            await b.aclose()
            # its own pending recv: ChannelClosed; the peer's pending send: PeerUnreachable
            assert await outcomes(recv, send) == [ChannelClosed, PeerUnreachable]
            async with asyncio.timeout(10):
                with pytest.raises(ChannelClosed):
                    await rx_full.recv()
                with pytest.raises(PeerUnreachable):
                    await tx_idle.send(b"nobody")
            survivor: list[Any] = [tx_idle, tx_full]
        else:
            await a.aclose()
            # its own pending send: ChannelClosed; the peer's pending recv: ChannelClosed
            assert await outcomes(send, recv) == [ChannelClosed, ChannelClosed]
            async with asyncio.timeout(10):
                with pytest.raises(ChannelClosed):
                    await tx_idle.send(b"closed")
                # what was committed before is still delivered
                n = 0
                async for msg in rx_full:
                    with msg:
                        assert msg.data == b"f" * 1000
                    n += 1
                assert n == 4
            survivor = [rx_idle, rx_full]
        assert usage(coord)[0] == start[0] + 2  # each ring still has one end
        for end in survivor:
            await end.aclose()
        await ring_freed(coord, start)
    assert eventfds() == fds


async def test_client_disconnect_without_aclose_frees_the_ring(
    coord: blockipc.Coordinator,
) -> None:
    start = usage(coord)
    async with connected(coord, "tx") as a, connected(coord, "rx") as b:
        tx, rx = await pair(a, b)
        await tx.send(b"data")
        (await rx.recv()).release()
    await ring_freed(coord, start)
    assert tx.closed and rx.closed


# -- the pool ----------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["sender_first", "receiver_first"])
async def test_pool_accounting_after_both_ends_close(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client, order: str
) -> None:
    mine = await a.alloc(3 * MiB)  # so "the start" is not simply "all free"
    start = usage(coord)
    fds = eventfds()
    tx, rx = await pair(a, b, capacity="1MiB")
    blocks, used, free = usage(coord)
    assert (blocks, used, free) == (start[0] + 1, start[1] + MiB, start[2] - MiB)
    for i in range(100):
        await tx.send(payload(20_000, i))
        (await rx.recv()).release()
    first, second = (tx, rx) if order == "sender_first" else (rx, tx)
    await first.aclose()
    await asyncio.sleep(0.05)
    assert usage(coord) == (blocks, used, free)  # one end left: the ring stays
    await second.aclose()
    await ring_freed(coord, start)
    assert eventfds() == fds
    await a.free(mine)


async def test_ring_block_is_out_of_reach_of_both_ends(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    """The ring's block id is in the routing table, but held by the channel: neither
    end (nor anyone else) may free, read, write, lease, grant, copy or send it."""
    tx, rx = await pair(a, b)
    await tx.send(b"precious")
    rid = ring_block(coord, tx.id)
    scratch = await a.alloc(4096)
    for c in (a, b):
        calls: list[Callable[[], Any]] = [
            lambda c=c: c.free(rid),
            lambda c=c: c.write(rid, b"scribble"),
            lambda c=c: c.write(rid, b"scribble", offset=CTL),
            lambda c=c: c.read(rid, 0, 16),
            lambda c=c: c.grant(rid, a.name if c is b else b.name),
            lambda c=c: c.send(rid, to=a.name if c is b else b.name),
        ]
        for call in calls:
            with pytest.raises(AccessDenied):
                await call()
        for mode in ("r", "w"):
            with pytest.raises(AccessDenied):
                async with c.lease(rid, mode):
                    pytest.fail("leased a channel's ring")
    with pytest.raises(AccessDenied):
        await a.copy(rid, scratch, size=16)
    with pytest.raises(AccessDenied):
        await a.copy(scratch, rid, size=16)
    # the ring is untouched
    async with asyncio.timeout(10):
        with await rx.recv() as msg:
            assert bytes(msg.data) == b"precious"
    await tx.aclose()
    await rx.aclose()
    await wait_until(lambda: rid not in coord._state.table.blocks)
    for call in (lambda: a.free(rid), lambda: b.write(rid, b"x"), lambda: a.read(rid, 0, 1)):
        with pytest.raises(BlockNotFound):
            await call()
    await a.free(scratch)


async def test_open_channel_to_unknown_name(
    coord: blockipc.Coordinator, a: blockipc.Client
) -> None:
    start = usage(coord)
    with pytest.raises(PeerUnreachable):
        await a.open_channel(unique_name("nobody"))
    with pytest.raises(PeerUnreachable):
        await a.open_channel(unique_name("nobody"), wait_for_peer=0.05)
    assert usage(coord) == start
    name = unique_name("late")

    async def register_later() -> blockipc.ChannelReceiver:
        await asyncio.sleep(0.2)
        async with connected_as(coord, name) as late:
            rx = await late.accept_channel()
            with await rx.recv() as msg:
                assert bytes(msg.data) == b"hello late"
            await rx.aclose()
            return rx

    async with asyncio.timeout(10):
        task = asyncio.create_task(register_later())
        tx = await a.open_channel(name, capacity=SMALL, wait_for_peer=10)
        assert tx.peer == name
        await tx.send(b"hello late")
        await task
        await tx.aclose()
    await ring_freed(coord, start)


@contextlib.asynccontextmanager
async def connected_as(coord: blockipc.Coordinator, name: str) -> AsyncIterator[blockipc.Client]:
    async with blockipc.connect(coord.address, name=name) as c:
        yield c


async def test_invalid_open_requests(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    start = usage(coord)
    for capacity in (0, 1, 4096, SMALL - 1, 65 * MiB, "128MiB"):
        with pytest.raises(InvalidRequest):
            await a.open_channel(b.name, capacity=capacity)
    with pytest.raises(InvalidRequest, match=r"send\(block, to='node/name'\)"):
        await a.open_channel("node/name")
    with pytest.raises(InvalidRequest):
        await a.open_channel(b.name, wait_for_peer=-1)
    assert usage(coord) == start
    tx = await a.open_channel(b.name, capacity=SMALL)  # the smallest is fine
    assert tx.capacity == SMALL - CTL
    await tx.aclose()
    # closed before it was accepted, with nothing in it: withdrawn, its ring freed now
    await ring_freed(coord, start)


async def test_payload_too_large_is_a_value_error(a: blockipc.Client, b: blockipc.Client) -> None:
    tx, rx = await pair(a, b, capacity=SMALL)
    biggest = tx.max_payload()
    assert biggest == SMALL - CTL - 8
    with pytest.raises(ValueError):
        await tx.send(bytes(biggest + 1))
    with pytest.raises(ValueError):
        await tx.send(bytes(biggest), header={"some": "header"})
    with pytest.raises(ValueError):
        async with tx.reserve(biggest + 1):
            pytest.fail("reserved more than the ring holds")
    with pytest.raises(InvalidRequest):
        await tx.send(b"x", header={1: "not a str key"})  # type: ignore[dict-item]
    with pytest.raises(InvalidRequest):
        await tx.send(b"x", header={"big": "h" * 100_000})
    # nothing was published, and the largest fits
    await tx.send(payload(biggest, 1), nowait=True)
    with_header = tx.max_payload({"some": "header"})
    async with asyncio.timeout(10):
        with await rx.recv() as msg:
            assert msg.data == payload(biggest, 1)
        await tx.send(payload(with_header, 2), header={"some": "header"}, nowait=True)
        with await rx.recv() as msg:
            assert (msg.data, msg.header) == (payload(with_header, 2), {"some": "header"})
    await tx.aclose()
    with pytest.raises(ChannelClosed):
        await rx.recv()
    await rx.aclose()


async def test_large_payload_copied_in_chunks(a: blockipc.Client, b: blockipc.Client) -> None:
    """Payloads over the sender's chunk size (4 MiB) are copied piecewise; sends from
    several tasks at once still arrive whole and in the order they started."""
    tx, rx = await pair(a, b, capacity="32MiB")
    big = [payload(9 * MiB + i, i) for i in range(3)]

    async def send(i: int) -> None:
        await tx.send(big[i], header={"i": i})

    async with asyncio.timeout(20):
        tasks = [asyncio.create_task(send(i)) for i in range(3)]
        small = asyncio.create_task(tx.send(b"small", header={"i": 3}))
        await asyncio.gather(*tasks, small)
        got = []
        for _ in range(4):
            with await rx.recv() as msg:
                i = msg.header["i"]
                got.append(i)
                assert msg.data == (big[i] if i < 3 else b"small")
    assert sorted(got) == [0, 1, 2, 3]
    await tx.aclose()
    await rx.aclose()


# -- cancellation ------------------------------------------------------------------------
async def test_cancelled_accept_leaves_nothing_behind(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client
) -> None:
    start = usage(coord)
    fds = eventfds()
    for _ in range(3):
        accept = asyncio.create_task(b.accept_channel())
        await asyncio.sleep(0.05)
        accept.cancel()
        with pytest.raises(asyncio.CancelledError):
            await accept
    tx = await a.open_channel(b.name, capacity=SMALL)
    await tx.send(b"for the next accept")
    async with asyncio.timeout(10):
        rx = await b.accept_channel()  # not swallowed by a cancelled accept
        with await rx.recv() as msg:
            assert bytes(msg.data) == b"for the next accept"
    await tx.aclose()
    await rx.aclose()
    await ring_freed(coord, start)
    assert eventfds() == fds


DELAYS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 20, 24]
"""Loop iterations before a cancel: to land it at each await of the call's way."""


@pytest.mark.parametrize("delay", DELAYS)
async def test_accept_cancelled_around_the_offer_loses_no_channel(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client, delay: int
) -> None:
    """An accept cancelled as the channel arrives (at several points of its way: the
    reply on its way, the ring being mapped, the eventfds being fetched): a later
    accept gets that channel, with what was sent; no fd is left open and the pool is as
    before. (A cancel while the ring was mapped used to close the channel instead.)"""
    start = usage(coord)
    fds = eventfds()
    accept = asyncio.create_task(b.accept_channel())
    await asyncio.sleep(0.02)
    tx = await a.open_channel(b.name, capacity=SMALL)
    await tx.send(b"hello")
    for _ in range(delay):
        await asyncio.sleep(0)
    accept.cancel()
    try:
        rx = await accept
    except asyncio.CancelledError:
        rx = None
    if rx is None:  # the channel is still on offer, or kept by the client: not lost
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
    assert rx.id == tx.id
    async with asyncio.timeout(10):
        with await rx.recv() as msg:
            assert bytes(msg.data) == b"hello"
    await rx.aclose()
    await tx.aclose()
    await ring_freed(coord, start)
    assert eventfds() == fds


@pytest.mark.parametrize("steps", range(0, 30, 2))
async def test_accept_cancelled_while_it_maps_the_ring_keeps_the_channel(steps: int) -> None:
    """The accept waits first, the channel is opened meanwhile, and the accept is
    cancelled ``steps`` loop iterations later: also while it maps a ring in a segment
    it had not mapped yet (fetched on a side connection). The next accept gets the
    channel."""
    async with (
        isolated_coordinator(pool_size="1MiB", max_pool_size="8MiB") as coord,
        blockipc.connect(coord.address, name=unique_name("a")) as a,
        blockipc.connect(coord.address, name=unique_name("b")) as b,
    ):
        filler = await a.alloc("1MiB")  # the ring lands in a new segment b has not mapped
        opening = asyncio.ensure_future(a.open_channel(b.name, capacity="1MiB"))
        accept = asyncio.ensure_future(b.accept_channel())
        for _ in range(steps):
            await asyncio.sleep(0)
        accept.cancel()
        try:
            rx = await accept
        except asyncio.CancelledError:
            async with asyncio.timeout(10):
                rx = await b.accept_channel()
        tx = await opening
        assert rx.id == tx.id
        await tx.send(b"kept")
        async with asyncio.timeout(10):
            with await rx.recv() as msg:
                assert bytes(msg.data) == b"kept"
        await tx.aclose()
        await rx.aclose()
        await a.free(filler)


async def test_cancelled_open_waiting_for_peer_leaves_nothing_behind(
    coord: blockipc.Coordinator, a: blockipc.Client
) -> None:
    start = usage(coord)
    fds = eventfds()
    name = unique_name("later")
    opener = asyncio.create_task(a.open_channel(name, capacity=SMALL, wait_for_peer=30))
    await asyncio.sleep(0.05)
    opener.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opener
    await wait_until(lambda: not any(coord._state.peer_waits.by_name.values()))
    async with connected_as(coord, name) as late:
        await asyncio.sleep(0.1)  # had the cancelled open been retried, it would be now
        assert usage(coord) == start
        assert not coord._state.table.processes[name].channel_offers
        tx = await a.open_channel(name, capacity=SMALL)
        await tx.send(b"the real one")
        async with asyncio.timeout(10):
            rx = await late.accept_channel()
            assert rx.id == tx.id
            with await rx.recv() as msg:
                assert bytes(msg.data) == b"the real one"
        await rx.aclose()
        await tx.aclose()
    await ring_freed(coord, start)
    assert eventfds() == fds


@pytest.mark.parametrize("delay", DELAYS)
async def test_open_cancelled_midway_leaves_nothing_behind(
    coord: blockipc.Coordinator, a: blockipc.Client, b: blockipc.Client, delay: int
) -> None:
    """open_channel cancelled at several points of its way (request sent, ring being
    mapped, eventfds being fetched): either it completed, or its end is closed again;
    the receiver's accept then finds a closed channel, no fd is left open and the pool
    comes back to the start."""
    start = usage(coord)
    fds = eventfds()
    opener = asyncio.create_task(a.open_channel(b.name, capacity="1MiB"))
    for _ in range(delay):
        await asyncio.sleep(0)
    opener.cancel()
    try:
        tx = await opener
    except asyncio.CancelledError:
        tx = None
    if tx is not None:
        await tx.aclose()
    # every channel opened is closed by the sender's side now (or soon)
    await wait_until(lambda: all(c.sender is None for c in coord._state.table.channels.values()))
    for _ in coord._state.table.processes[b.name].channel_offers.copy():
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
            with pytest.raises(ChannelClosed):
                await rx.recv()
        await rx.aclose()
    await ring_freed(coord, start)
    assert eventfds() == fds


# -- payload types and release order -----------------------------------------------------
async def test_numpy_and_other_buffers(a: blockipc.Client, b: blockipc.Client) -> None:
    tx, rx = await pair(a, b, capacity="1MiB")
    arrays = [
        np.arange(10_000, dtype=np.float64),
        np.arange(6000, dtype=np.int16).reshape(60, 100),
        np.zeros(0, dtype=np.uint8),
        np.array(3.5, dtype=np.float32),  # 0-d
    ]
    for arr in arrays:
        await tx.send(arr, header={"dtype": arr.dtype.str, "shape": list(arr.shape)})
    await tx.send(bytearray(b"bytearray"))
    await tx.send(memoryview(b"--memoryview--")[2:-2])
    await tx.send(memoryview(np.arange(8, dtype=np.uint32)))  # format "I"
    with pytest.raises(InvalidRequest):
        await tx.send(np.arange(100, dtype=np.int32)[::2])  # not C-contiguous
    with pytest.raises(InvalidRequest):
        await tx.send(np.asfortranarray(np.arange(12).reshape(3, 4)))
    async with asyncio.timeout(10):
        for arr in arrays:
            with await rx.recv() as msg:
                got = np.frombuffer(msg.data, dtype=msg.header["dtype"]).reshape(
                    msg.header["shape"]
                )
                assert got.dtype == arr.dtype and got.shape == arr.shape
                assert np.array_equal(got, arr)
                assert not got.flags.writeable
                del got  # the array exports the view: drop it before the release
        for want in (b"bytearray", b"memoryview", np.arange(8, dtype=np.uint32).tobytes()):
            with await rx.recv() as msg:
                assert bytes(msg.data) == want
    await tx.aclose()
    await rx.aclose()


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0,)])
async def test_empty_numpy_array_is_an_empty_message(
    a: blockipc.Client, b: blockipc.Client, shape: tuple[int, ...]
) -> None:
    """An empty array, of any shape, is a C-contiguous buffer of 0 bytes."""
    tx, rx = await pair(a, b, capacity=SMALL)
    await tx.send(np.zeros(shape, dtype=np.float64), header={"shape": list(shape)})
    async with asyncio.timeout(10):
        with await rx.recv() as msg:
            assert (len(msg.data), msg.header) == (0, {"shape": list(shape)})
    await tx.aclose()
    await rx.aclose()


async def test_out_of_order_release(a: blockipc.Client, b: blockipc.Client) -> None:
    """Messages released out of order: each stays intact until its own release, and the
    room comes back only once the oldest is released."""
    tx, rx = await pair(a, b, capacity=SMALL)
    for i in range(4):
        await tx.send(payload(1000, i), header={"i": i}, nowait=True)  # 4 x 1008: full
    async with asyncio.timeout(10):
        msgs = [await rx.recv() for _ in range(4)]
    for i in (2, 1, 3):
        msgs[i].release()
    with pytest.raises(InboxFull):  # the oldest still holds the start of the room
        await tx.send(payload(1000, 9), nowait=True)
    assert msgs[0].data == payload(1000, 0)
    send = asyncio.create_task(tx.send(payload(1000, 4), header={"i": 4}))
    await asyncio.sleep(0.05)
    assert not send.done()
    assert msgs[0].data == payload(1000, 0)  # still intact while the sender waits
    msgs[0].release()
    async with asyncio.timeout(10):
        await send  # woken by the release of the oldest
        for i in (5, 6, 7):
            await tx.send(payload(1000, i), header={"i": i}, nowait=True)
        got = []
        for _ in range(4):
            msg = await rx.recv()
            got.append(msg)
        for msg in reversed(got):
            assert msg.data == payload(1000, msg.header["i"])
            msg.release()
    assert [m.header["i"] for m in got] == [4, 5, 6, 7]
    await tx.aclose()
    await rx.aclose()


async def test_exported_view_survives_release(a: blockipc.Client, b: blockipc.Client) -> None:
    """A message whose data is still exported (a numpy array on it) when released:
    release() does not raise, and the room still comes back."""
    tx, rx = await pair(a, b, capacity=SMALL)
    await tx.send(payload(2000, 1))
    async with asyncio.timeout(10):
        msg = await rx.recv()
        arr = np.frombuffer(msg.data, dtype=np.uint8)
        msg.release()
        del arr
        for i in range(10):  # more than the ring holds: the room came back
            await tx.send(payload(2000, i))
            (await rx.recv()).release()
    await tx.aclose()
    await rx.aclose()


# -- real processes ----------------------------------------------------------------------
async def test_processes_stream_with_checksums(coord: blockipc.Coordinator) -> None:
    """A producer and a consumer process stream 20,000 messages of random sizes through
    a 256 KiB ring, each checked by crc32 and against the bytes it should be."""
    start = usage(coord)
    consumer_name, producer_name = unique_name("consumer"), unique_name("producer")
    count, max_size, seed = 20_000, 3000, 11
    async with spawn("chan_consumer", coord.address, consumer_name, seed, max_size, 1) as cons:
        await cons.expect("ready")
        async with spawn(
            "chan_producer",
            coord.address,
            producer_name,
            consumer_name,
            count,
            max_size,
            seed,
            256 * KiB,
        ) as prod:
            ready = await prod.expect("ready")
            accepted = await cons.expect("accepted")
            assert (accepted["channel"], accepted["sender"]) == (ready["channel"], producer_name)
            await cons.expect("midway")
            done = await cons.expect("done", timeout=30)
            assert done == {
                "event": "done",
                "received": count,
                "bad": 0,
                "out_of_order": 0,
            }
            assert (await prod.expect("done", timeout=30))["sent"] == count
            await ring_freed(coord, start)  # both ends closed, both processes alive


async def test_kill_9_consumer_mid_stream(coord: blockipc.Coordinator, a: blockipc.Client) -> None:
    """The consumer process killed mid-stream: the producer (here) waiting for room is
    woken with PeerUnreachable (not a hang), and the ring is freed once it closes."""
    start = usage(coord)
    name = unique_name("consumer")
    async with spawn("chan_consumer", coord.address, name, 3, 2000, 500) as cons:
        await cons.expect("ready")
        tx = await a.open_channel(name, capacity=16 * KiB, wait_for_peer=10)
        await_accept = asyncio.create_task(cons.expect("accepted"))
        src = source(3)
        rng = random.Random(3)
        sent = 0
        killed = False
        error: BaseException | None = None
        async with asyncio.timeout(20):
            try:
                while True:
                    data = message(src, rng, 2000)
                    await tx.send(data, header={"i": sent, "crc": zlib.crc32(data)})
                    sent += 1
                    if sent == 1000 and not killed:
                        await await_accept
                        await cons.expect("midway")
                        cons.kill()
                        killed = True
            except PeerUnreachable as exc:
                error = exc
        assert killed and isinstance(error, PeerUnreachable)
        assert await cons.wait() == -signal.SIGKILL
    await wait_until(lambda: name not in coord.stats().processes)
    assert usage(coord)[0] == start[0] + 1  # the producer's end still holds the ring
    with pytest.raises(PeerUnreachable):
        await tx.send(b"more", nowait=True)
    await tx.aclose()
    await ring_freed(coord, start)


async def test_kill_9_producer_consumer_gets_everything_committed(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    """The producer process killed while filling a reserve(): the consumer (here)
    receives every message committed before, not the half-written one, then
    PeerUnreachable (the stream was cut short: a loop over it does not just end); the
    coordinator frees the ring when the consumer closes."""
    start = usage(coord)
    name = unique_name("producer")
    count, size = 50, 1000
    async with spawn("chan_burst", coord.address, name, b.name, count, size, "1MiB") as prod:
        sent = await prod.expect("sent")
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
        assert (rx.id, rx.peer) == (sent["channel"], name)
        # a few before the kill, the rest after
        got = []
        for _ in range(10):
            with await rx.recv() as msg:
                got.append((msg.header["i"], zlib.crc32(msg.data) == msg.header["crc"]))
        await prod.expect("reserving")
        prod.kill()
        assert await prod.wait() == -signal.SIGKILL
    async with asyncio.timeout(10):
        with pytest.raises(PeerUnreachable, match="ended without closing"):
            async for msg in rx:  # a stream cut short: not the normal end of the loop
                with msg:
                    assert len(msg.data) == size
                    got.append((msg.header["i"], zlib.crc32(msg.data) == msg.header["crc"]))
        with pytest.raises(PeerUnreachable):
            await rx.recv()
    assert got == [(i, True) for i in range(count)]
    await wait_until(lambda: name not in coord.stats().processes)
    assert usage(coord)[0] == start[0] + 1  # this end still holds the ring
    await rx.aclose()
    await ring_freed(coord, start)


async def test_kill_9_producer_wakes_a_waiting_consumer(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    """A consumer waiting in recv() (every message read) when the producer is killed is
    woken with PeerUnreachable by the coordinator, not left to hang."""
    start = usage(coord)
    name = unique_name("producer")
    async with spawn("chan_burst", coord.address, name, b.name, 3, 100, SMALL) as prod:
        await prod.expect("sent")
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
            for i in range(3):
                with await rx.recv() as msg:
                    assert msg.header["i"] == i
        await prod.expect("reserving")
        recv = asyncio.create_task(rx.recv())
        await asyncio.sleep(0.05)
        assert not recv.done()
        prod.kill()
        async with asyncio.timeout(10):
            with pytest.raises(PeerUnreachable):
                await recv
        await prod.wait()
    await rx.aclose()
    await wait_until(lambda: name not in coord.stats().processes)
    await ring_freed(coord, start)


# -- codecs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codec", "value"),
    [
        ("json", {"k": [1, 2.5, None, "h\u00e9"]}),
        ("msgpack", {"k": [1, 2.5, None], "b": b"\x00\xff"}),
        ("pickle", {"set": {1, 2}, "tuple": (1, "x")}),
        ("raw", b"raw bytes"),
    ],
)
async def test_codec_roundtrip(
    a: blockipc.Client, b: blockipc.Client, codec: str, value: Any
) -> None:
    tx, rx = await pair(a, b)
    await tx.send(value, header={"seq": 7}, codec=codec)
    async with asyncio.timeout(10):
        msg = await rx.recv()
    assert (msg.codec, msg.header) == (codec, {"seq": 7})  # the user's header, untouched
    decoded = msg.decode()
    msg.release()
    assert decoded == value  # decode() owns its memory: still good after release
    await tx.aclose()
    await rx.aclose()


async def test_numpy_codec_view_is_zero_copy_until_release(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    tx, rx = await pair(a, b, capacity=MiB)
    arr = np.arange(12 * 1000, dtype=np.float64).reshape(12, 1000)
    await tx.send(arr, codec="numpy")
    await tx.send(arr[:, ::2].copy(), codec="numpy")  # a second message after it
    async with asyncio.timeout(10):
        msg = await rx.recv()
    view = msg.view()
    assert view.shape == (12, 1000) and view.dtype == np.float64
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, arr)
    # the array lies in the ring: it shares memory with the message's data
    assert np.shares_memory(view, np.frombuffer(msg.data, dtype=np.uint8))
    copy = msg.decode()
    assert not np.shares_memory(copy, np.frombuffer(msg.data, dtype=np.uint8))
    del view
    msg.release()
    np.testing.assert_array_equal(copy, arr)
    async with asyncio.timeout(10):
        second = await rx.recv()
    with second:
        np.testing.assert_array_equal(second.view(), arr[:, ::2])
    await tx.aclose()
    await rx.aclose()


async def test_codec_errors_send_nothing(a: blockipc.Client, b: blockipc.Client) -> None:
    tx, rx = await pair(a, b)
    with pytest.raises(blockipc.CodecError):
        await tx.send({"x": 1}, codec="yaml")  # no such codec
    with pytest.raises(blockipc.CodecError):
        await tx.send({"x": object()}, codec="json")  # json cannot encode it
    with pytest.raises(blockipc.CodecError):
        await tx.send([1, 2], codec="numpy")  # not an array
    await tx.send(b"after")  # the channel is fine, and nothing else was sent
    async with asyncio.timeout(10):
        msg = await rx.recv()
    with msg:
        assert (bytes(msg.data), msg.codec, msg.decode(), msg.view()) == (
            b"after",
            None,
            b"after",
            msg.data,
        )
    await tx.aclose()
    await rx.aclose()


async def test_a_scribbled_codec_header_is_a_protocol_error(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    """A header that is neither a map nor [map, codec, meta] raises ProtocolError in
    the receiver (the sender wrote it with reserve's header path bypassed)."""
    import msgpack

    from blockipc._core.ring import RingWriter

    tx, rx = await pair(a, b)
    ring: RingWriter = tx._ring  # type: ignore[attr-defined]
    for bad in ([1, 2], [{}, 3, {}], "text"):
        hdr = msgpack.packb(bad)
        at = ring.reserve(0, hdr)
        assert at is not None
        ring.commit(at, 0)
        with pytest.raises(blockipc.ProtocolError):
            async with asyncio.timeout(10):
                await rx.recv()
    await tx.aclose()
    await rx.aclose()


async def test_a_channel_to_itself_is_refused(
    coord: blockipc.Coordinator, a: blockipc.Client
) -> None:
    start = usage(coord)
    with pytest.raises(InvalidRequest, match="two processes"):
        await a.open_channel(a.name)
    assert usage(coord) == start


async def test_a_header_the_receiver_could_not_decode_is_refused_by_the_sender(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    """Headers are checked as a send's are: one msgpack can encode but a receiver
    (strict map keys) could not decode raises InvalidRequest before anything is sent."""
    tx, rx = await pair(a, b)
    for bad in ({"nested": {1: "int key"}}, {"x": object()}, ["not", "a", "dict"]):
        with pytest.raises(InvalidRequest):
            await tx.send(b"x", header=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            await tx.send({"v": 1}, header=bad, codec="json")  # type: ignore[arg-type]
    await tx.send(b"after", header={"ok": True})
    async with asyncio.timeout(10):
        msg = await rx.recv()
    with msg:
        assert (bytes(msg.data), msg.header) == (b"after", {"ok": True})
    await tx.aclose()
    await rx.aclose()


async def test_small_released_room_goes_back_in_batches(
    a: blockipc.Client, b: blockipc.Client
) -> None:
    """A release of a small message gives its room back when the loop next runs, in
    one store with the others released meanwhile, not one store per message; a sender
    waiting for room gets it all the same."""
    from blockipc._core.ring import W_TAIL

    tx, rx = await pair(a, b, capacity=SMALL)
    for i in range(3):
        await tx.send(payload(8, i), nowait=True)  # records of 16 bytes
    async with asyncio.timeout(10):
        msgs = [await rx.recv() for _ in range(3)]
    tail = rx._ring.ctl  # the receiver's view of the control words
    msgs[0].release()
    msgs[1].release()
    assert tail[W_TAIL] == 0  # noted, not given back yet
    await asyncio.sleep(0)
    assert tail[W_TAIL] == 32  # both, in one store
    msgs[2].release()
    n = 0
    with pytest.raises(InboxFull):
        while True:
            await tx.send(payload(8, n), nowait=True)
            n += 1
    waiting = asyncio.create_task(tx.send(payload(8, 99)))
    async with asyncio.timeout(10):
        (await rx.recv()).release()  # one small release, from a full ring
        await waiting
        for _ in range(n):  # the rest of the n, and the one that waited
            with await rx.recv():
                pass
    await tx.aclose()
    await rx.aclose()
