"""Copy, grants and shared sends, publish/subscribe and inbox backpressure, with
in-process clients against an embedded coordinator (the ``coord`` fixture checks at
teardown that the pool is exactly as it started). Every test runs on asyncio's loop
and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

import blockipc
from _helpers import connected, enter_lease
from _procs import payload, sha256, wait_until
from blockipc import (
    AccessDenied,
    BlockNotFound,
    InboxFull,
    InvalidRequest,
    OutOfBounds,
    PeerUnreachable,
)
from blockipc._core.limits import MAX_HEADER
from blockipc.testing import unique_name

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
async def owner(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with connected(coord, "owner") as c:
        yield c


@pytest.fixture
async def third(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with connected(coord, "third") as c:
        yield c


async def denied(call: Callable[[], Any], match: str | None = None) -> None:
    with pytest.raises(AccessDenied, match=match):
        await call()


# -- copy ------------------------------------------------------------------------------
async def test_copy_whole_block_and_ranges(owner: blockipc.Client) -> None:
    data = payload(10_000, 1)
    src = await owner.alloc(len(data))
    dst = await owner.alloc(len(data))
    await owner.write(src, data)
    assert await owner.copy(src, dst) == len(data)
    assert await owner.read(dst) == data
    # a range, into the middle of another block
    assert await owner.copy(src, dst, src_offset=100, dst_offset=5000, size=300) == 300
    assert await owner.read(dst, 5000, 300) == data[100:400]
    assert await owner.read(dst, 0, 5000) == data[:5000]
    # size defaults to the rest of src from src_offset
    assert await owner.copy(src, dst, src_offset=9000) == 1000
    assert await owner.read(dst, 0, 1000) == data[9000:]
    # a zero-byte copy is a no-op
    assert await owner.copy(src, dst, size=0) == 0
    for block in (src, dst):
        await owner.free(block)


@pytest.mark.parametrize("size", [10_000, 5 * MiB], ids=["inline", "chunked"])
async def test_copy_overlapping_within_one_block_is_a_memmove(
    owner: blockipc.Client, size: int
) -> None:
    """Both directions, small (done at once) and larger than a copy chunk (done in a
    task, chunk by chunk: the chunk order must follow the overlap)."""
    data = payload(size, 2)
    block = await owner.alloc(size)
    shift = 777 if size < MiB else 3 * MiB // 2  # less than one copy chunk
    n = size - shift
    for src_off, dst_off in ((0, shift), (shift, 0)):  # dst above src, then below
        await owner.write(block, data)
        assert await owner.copy(block, block, src_offset=src_off, dst_offset=dst_off, size=n) == n
        expected = bytearray(data)
        expected[dst_off : dst_off + n] = data[src_off : src_off + n]
        assert sha256(await owner.read(block)) == sha256(bytes(expected))
    await owner.free(block)


async def test_copy_bounds_errors_change_nothing(owner: blockipc.Client) -> None:
    src = await owner.alloc(1000)  # capacity 4096: bounds are checked against size
    dst = await owner.alloc(500)
    await owner.write(src, b"s" * 1000)
    await owner.write(dst, b"d" * 500)
    cases: list[Callable[[], Any]] = [
        lambda: owner.copy(src, dst),  # 1000 bytes into 500
        lambda: owner.copy(src, dst, size=501),
        lambda: owner.copy(src, dst, dst_offset=1, size=500),
        lambda: owner.copy(src, dst, src_offset=1001),
        lambda: owner.copy(src, dst, src_offset=999, size=2),
        lambda: owner.copy(src, src, src_offset=0, dst_offset=1, size=1000),
        lambda: owner.copy(src, dst, src_offset=-1, size=1),
        lambda: owner.copy(src, dst, dst_offset=-1, size=1),
        lambda: owner.copy(src, dst, size=-1),
        lambda: owner.copy(src, dst, src_offset=1 << 62, size=1 << 62),
    ]
    before = await owner.stats()
    for call in cases:
        with pytest.raises(OutOfBounds):
            await call()
    assert await owner.stats() == before
    assert await owner.read(dst) == b"d" * 500
    with pytest.raises(BlockNotFound):
        await owner.copy(src, 999_999, size=1)
    with pytest.raises(BlockNotFound):
        await owner.copy(999_999, dst, size=1)
    for block in (src, dst):
        await owner.free(block)


async def test_copy_waits_for_another_process_write_lease_on_dst(
    owner: blockipc.Client, other: blockipc.Client
) -> None:
    """A copy is atomic with respect to other processes' leases (its own never block
    it, as for routed writes)."""
    src = await owner.alloc(100)
    dst = await owner.alloc(100)
    await owner.write(src, b"x" * 100)
    await owner.grant(dst, other.name, "w")
    async with other.lease(dst, "w") as view:
        view[:] = b"y" * 100
        task = asyncio.ensure_future(owner.copy(src, dst))
        await anyio.sleep(0.05)
        assert not task.done()  # queued behind the lease
    assert await task == 100
    assert await owner.read(dst) == b"x" * 100
    await other.free(dst)
    for block in (src, dst):
        await owner.free(block)


async def test_a_cancelled_copy_never_happens_and_leaves_no_lease(
    owner: blockipc.Client, other: blockipc.Client
) -> None:
    """A copy cancelled while it waits for its write lease on dst is withdrawn: its
    queued writer no longer holds up later readers of dst, and when the contending
    lease ends nothing is copied."""
    src = await owner.alloc(100)
    dst = await owner.alloc(100)
    await owner.write(src, b"x" * 100)
    await owner.write(dst, b"d" * 100)
    await owner.grant(dst, other.name, "r")
    start = (await owner.stats()).leases
    async with other.lease(dst, "r"):
        task = asyncio.ensure_future(owner.copy(src, dst))
        # parked once it holds its read lease on src and queues for dst
        while (await owner.stats()).leases != start + 2:
            await anyio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await owner.stats()  # the owner's CANCEL, if any, is handled before this reply
        assert (await owner.stats()).leases == start + 1  # only the reader's is left
        with anyio.fail_after(5):  # no queued writer before it: granted beside the first
            async with other.lease(dst, "r") as view:
                assert bytes(view) == b"d" * 100
    assert await owner.read(dst) == b"d" * 100  # the copy did not run after the lease
    with anyio.fail_after(5):
        async with owner.lease(dst, "w"):
            assert (await owner.stats()).leases == start + 1
    assert (await owner.stats()).leases == start
    await other.free(dst)
    for block in (src, dst):
        await owner.free(block)


async def test_a_cancelled_writer_lets_the_readers_queued_behind_it_in(
    owner: blockipc.Client, other: blockipc.Client, third: blockipc.Client
) -> None:
    """Readers queue behind a waiting writer (FIFO); when that writer is cancelled, the
    ones that fit beside the current read lease are granted at once."""
    block = await owner.alloc(100)
    await owner.grant(block, other.name, "w")
    await owner.grant(block, third.name, "r")
    async with owner.lease(block, "r"):
        writer = asyncio.ensure_future(enter_lease(other, block, "w"))
        await asyncio.sleep(0)  # the task sends its LEASE...
        await other.stats()  # ...which is queued once this is answered
        granted = asyncio.Event()

        async def read() -> None:
            async with third.lease(block, "r"):
                granted.set()

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        await third.stats()  # queued behind the writer
        assert not granted.is_set()
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        with anyio.fail_after(5):  # while the owner still holds its read lease
            await reader
    assert (await owner.stats()).leases == 0
    await other.free(block)
    await third.free(block)
    await owner.free(block)


# -- permissions -----------------------------------------------------------------------
async def test_read_and_write_without_grant(owner: blockipc.Client, other: blockipc.Client) -> None:
    block = await owner.alloc(100)
    await denied(lambda: other.read(block))
    await denied(lambda: other.write(block, b"x"))
    await denied(lambda: enter_lease(other, block, "r"))
    await owner.free(block)


async def test_write_with_read_only_grant(owner: blockipc.Client, other: blockipc.Client) -> None:
    block = await owner.alloc(200 * KiB)
    await owner.write(block, b"a" * block.size)
    await owner.grant(block, other.name, "r")
    assert await other.read(block, 0, 3) == b"aaa"
    assert await other.read(block.id, 0, block.size) == b"a" * block.size  # through a lease
    await denied(lambda: other.write(block, b"x"), match="'r' grant")
    await denied(lambda: other.write(block, b"x" * (100 * KiB)))  # through a write lease
    await denied(lambda: enter_lease(other, block, "w"))
    await denied(lambda: other.grant(block, owner.name))
    assert await owner.read(block, 0, 3) == b"aaa"
    # upgraded to "w": now it may write
    await owner.grant(block, other.name, "w")
    await other.write(block, b"bbb")
    assert await owner.read(block, 0, 4) == b"bbba"
    await other.free(block)
    await owner.free(block)


async def test_copy_needs_read_on_src_and_write_on_dst(
    owner: blockipc.Client, other: blockipc.Client
) -> None:
    mine = await other.alloc(100)
    theirs = await owner.alloc(100)
    await owner.write(theirs, b"t" * 100)
    await other.write(mine, b"m" * 100)
    await denied(lambda: other.copy(theirs, mine))  # no read right on src
    await denied(lambda: other.copy(mine, theirs))  # no write right on dst
    await owner.grant(theirs, other.name, "r")
    assert await other.copy(theirs, mine) == 100  # read grant is enough for src
    assert await other.read(mine) == b"t" * 100
    await denied(lambda: other.copy(mine, theirs), match="'r' grant")  # not for dst
    await owner.grant(theirs, other.name, "w")
    await other.write(mine, b"n" * 100)
    assert await other.copy(mine, theirs) == 100
    assert await owner.read(theirs) == b"n" * 100
    await other.free(theirs)
    await other.free(mine)
    await owner.free(theirs)


async def test_revoke_then_access(owner: blockipc.Client, other: blockipc.Client) -> None:
    block = await owner.alloc(100)
    await owner.grant(block, other.name, "w")
    await other.write(block, b"ok")
    await owner.revoke(block, other.name)
    await denied(lambda: other.read(block, 0, 2))
    await denied(lambda: other.write(block, b"no"))
    await denied(lambda: other.free(block))
    await denied(lambda: owner.revoke(block, other.name), match="no grant")  # nothing to take
    assert await owner.read(block, 0, 2) == b"ok"
    await owner.free(block)  # the owner was the last holder: the block is gone
    with pytest.raises(BlockNotFound):
        await owner.read(block, 0, 1)


async def test_revoke_refused_while_the_grantee_holds_a_lease(
    owner: blockipc.Client, other: blockipc.Client
) -> None:
    block = await owner.alloc(100)
    await owner.grant(block, other.name, "r")
    async with other.lease(block, "r"):
        await denied(lambda: owner.revoke(block, other.name), match="lease")
    await owner.revoke(block, other.name)
    await owner.free(block)


async def test_grant_and_revoke_by_a_non_owner(
    owner: blockipc.Client, other: blockipc.Client, third: blockipc.Client
) -> None:
    block = await owner.alloc(100)
    await denied(lambda: other.grant(block, third.name, "r"))
    await owner.grant(block, other.name, "w")
    # even a grantee with the write right may not pass rights on or take them away
    await denied(lambda: other.grant(block, third.name, "r"))
    await owner.grant(block, third.name, "r")
    await denied(lambda: other.revoke(block, third.name))
    await denied(lambda: third.revoke(block, other.name))
    with pytest.raises(PeerUnreachable):
        await owner.grant(block, unique_name("nobody"), "r")
    with pytest.raises(InvalidRequest):
        await owner.grant(block, other.name, "x")  # type: ignore[arg-type]
    for c in (other, third, owner):
        await c.free(block)


async def test_send_move_of_a_grantees_block_is_refused(
    owner: blockipc.Client, other: blockipc.Client, third: blockipc.Client
) -> None:
    block = await owner.alloc(100)
    await owner.grant(block, other.name, "w")
    await denied(lambda: other.send(block, to=third.name))
    await denied(lambda: other.publish(block, "topic"))
    assert (await other.stats()).blocks == 1
    await other.free(block)
    await owner.free(block)


# -- holders ---------------------------------------------------------------------------
async def test_owner_frees_grantee_still_reads_last_holder_frees(
    coord: blockipc.Coordinator, owner: blockipc.Client, other: blockipc.Client
) -> None:
    start = coord.stats()
    block = await owner.alloc(3 * MiB)
    await owner.write(block, b"kept" * 10)
    await owner.grant(block, other.name, "r")
    await owner.free(block)
    stats = coord.stats()
    assert stats.blocks == start.blocks + 1 and stats.used_bytes == start.used_bytes + 4 * MiB
    assert await other.read(block, 0, 8) == b"keptkept"
    with pytest.raises(AccessDenied):
        await owner.read(block, 0, 1)  # the former owner let go
    await other.free(block)  # the last holder: back to the pool
    stats = coord.stats()
    assert (stats.blocks, stats.used_bytes) == (start.blocks, start.used_bytes)
    with pytest.raises(BlockNotFound):
        await other.read(block, 0, 1)


async def test_shared_send_keeps_the_senders_access(
    coord: blockipc.Coordinator, owner: blockipc.Client, other: blockipc.Client
) -> None:
    block = await owner.alloc(100)
    await owner.write(block, b"shared")
    await owner.send(block, to=other.name, move=False, header={"n": 1})
    msg = await other.recv()
    assert (msg.block.id, msg.block.owner, msg.sender, msg.header) == (
        block.id,
        owner.name,
        owner.name,
        {"n": 1},
    )
    assert msg.topic is None
    assert await other.read(msg.block, 0, 6) == b"shared"
    await denied(lambda: other.write(msg.block, b"x"))  # a read grant only
    await owner.write(block, b"SHARED")  # the sender keeps writing
    assert await other.read(msg.block, 0, 6) == b"SHARED"
    await other.free(msg.block)
    assert coord.stats().blocks == 1
    await owner.free(block)
    assert coord.stats().blocks == 0


async def test_grantee_disconnect_drops_its_hold(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    block = await owner.alloc(100)
    async with connected(coord, "grantee") as grantee:
        await owner.grant(block, grantee.name, "r")
        await owner.free(block)
        assert coord.stats().blocks == 1  # still held by the grantee
    await wait_until(lambda: coord.stats().blocks == 0)


# -- send, inbox limits, backpressure ----------------------------------------------------
async def test_per_sender_order_with_backpressure(coord: blockipc.Coordinator) -> None:
    count = 150
    async with (
        connected(coord, "rx", inbox_messages=4) as rx,
        connected(coord, "a") as a,
        connected(coord, "b") as b,
    ):

        async def produce(client: blockipc.Client) -> None:
            for i in range(count):
                block = await client.alloc(64)
                await client.write(block, i.to_bytes(8, "little"))
                await client.send(block, to=rx.name, header={"seq": i})

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, a)
            tg.start_soon(produce, b)
            seen: dict[str, list[int]] = {a.name: [], b.name: []}
            for _ in range(2 * count):
                msg = await rx.recv()
                seq = int.from_bytes(await rx.read(msg.block, 0, 8), "little")
                assert seq == msg.header["seq"]
                seen[msg.sender].append(seq)
                await rx.free(msg.block)
                if len(seen[a.name]) % 17 == 0:
                    await anyio.sleep(0.001)  # let the inbox fill up
        assert seen == {a.name: list(range(count)), b.name: list(range(count))}


async def test_send_nowait_to_a_full_inbox(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "rx", inbox_messages=2) as rx, connected(coord, "tx") as tx:
        blocks = [await tx.alloc(100) for _ in range(3)]
        await tx.send(blocks[0], to=rx.name, nowait=True)
        await tx.send(blocks[1], to=rx.name, nowait=True)
        with pytest.raises(InboxFull, match="full"):
            await tx.send(blocks[2], to=rx.name, nowait=True)
        await tx.write(blocks[2], b"still mine")  # nothing changed
        for _ in range(2):
            await rx.free((await rx.recv()).block)
        await tx.send(blocks[2], to=rx.name, nowait=True)  # room again
        msg = await rx.recv()
        assert await rx.read(msg.block, 0, 10) == b"still mine"
        await rx.free(msg.block)


async def test_inbox_byte_limit(coord: blockipc.Coordinator) -> None:
    async with (
        connected(coord, "rx", inbox_bytes="10KiB") as rx,
        connected(coord, "tx") as tx,
    ):
        small = await tx.alloc(6 * KiB)
        second = await tx.alloc(6 * KiB)
        await tx.send(small, to=rx.name)
        with pytest.raises(InboxFull):
            await tx.send(second, to=rx.name, nowait=True)
        task = asyncio.ensure_future(tx.send(second, to=rx.name))
        await anyio.sleep(0.05)
        assert not task.done()
        await rx.free((await rx.recv()).block)
        await task
        await rx.free((await rx.recv()).block)
        # a block larger than the byte limit still gets into an empty inbox
        huge = await tx.alloc(64 * KiB)
        await tx.send(huge, to=rx.name, nowait=True)
        await rx.free((await rx.recv()).block)


async def test_cancelling_a_send_that_waits_for_room_withdraws_it(
    coord: blockipc.Coordinator,
) -> None:
    async with connected(coord, "rx", inbox_messages=1) as rx, connected(coord, "tx") as tx:
        first, second = await tx.alloc(100), await tx.alloc(100)
        await tx.send(first, to=rx.name)
        with anyio.move_on_after(0.1) as scope:
            await tx.send(second, to=rx.name)
        assert scope.cancelled_caught
        # the block stays the sender's: it can write, lease and free it
        await tx.write(second, b"mine")
        async with tx.lease(second, "r") as view:
            assert bytes(view[:4]) == b"mine"
        msg = await rx.recv()
        assert msg.block.id == first.id
        with anyio.move_on_after(0.1):
            extra = await rx.recv()
            pytest.fail(f"the withdrawn send was delivered: {extra}")
        await rx.free(msg.block)
        await tx.free(second)


async def test_sender_waiting_for_room_when_the_receiver_leaves(
    coord: blockipc.Coordinator,
) -> None:
    async with connected(coord, "tx") as tx:
        first, second = await tx.alloc(100), await tx.alloc(100)
        rx = await blockipc.connect(coord.address, name=unique_name("rx"), inbox_messages=1)
        try:
            await tx.send(first, to=rx.name)
            task = asyncio.ensure_future(tx.send(second, to=rx.name))
            await anyio.sleep(0.05)
            assert not task.done()
        finally:
            await rx.aclose()
        with pytest.raises(PeerUnreachable, match="disconnected"):
            await task
        await tx.write(second, b"mine again")  # the undelivered block stays the sender's
        await tx.free(second)
        await wait_until(lambda: coord.stats().blocks == 0)  # first: freed with the inbox


async def test_send_to_unknown_and_wait_for_peer(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "tx") as tx:
        block = await tx.alloc(100)
        name = unique_name("late")
        with pytest.raises(PeerUnreachable):
            await tx.send(block, to=name)
        with anyio.fail_after(5):
            t0 = anyio.current_time()
            with pytest.raises(PeerUnreachable, match="within"):
                await tx.send(block, to=name, wait_for_peer=0.1)
            assert anyio.current_time() - t0 >= 0.09
        task = asyncio.ensure_future(tx.send(block, to=name, header={"x": 1}, wait_for_peer=5))
        await anyio.sleep(0.05)
        assert not task.done()
        async with blockipc.connect(coord.address, name=name) as late:
            await task
            msg = await late.recv()
            assert (msg.block.id, msg.header) == (block.id, {"x": 1})
            assert name in await tx.peers()
            await late.free(msg.block)


async def test_cancelling_a_send_that_waits_for_its_peer(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "tx") as tx:
        block = await tx.alloc(100)
        name = unique_name("never")
        with anyio.move_on_after(0.05):
            await tx.send(block, to=name, wait_for_peer=10)
        async with blockipc.connect(coord.address, name=name) as late:
            with anyio.move_on_after(0.1):
                await late.recv()
                pytest.fail("a cancelled send was delivered")
        await tx.free(block)


async def test_header_size_limit(owner: blockipc.Client, other: blockipc.Client) -> None:
    block = await owner.alloc(100)
    with pytest.raises(InvalidRequest, match=f"limit is {MAX_HEADER}"):
        await owner.send(block, to=other.name, header={"k": "x" * MAX_HEADER})
    with pytest.raises(InvalidRequest, match="keys must be str"):
        await owner.send(block, to=other.name, header={1: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidRequest, match="cannot be sent"):
        await owner.send(block, to=other.name, header={"k": object()})
    with pytest.raises(InvalidRequest, match=f"limit is {MAX_HEADER}"):
        await owner.publish(block, "t", header={"k": "x" * MAX_HEADER})
    await owner.send(block, to=other.name, header={"k": "x" * (MAX_HEADER - 100)})
    msg = await other.recv()
    assert len(msg.header["k"]) == MAX_HEADER - 100
    await other.free(msg.block)


async def test_peers(coord: blockipc.Coordinator, owner: blockipc.Client) -> None:
    assert await owner.peers() == [owner.name]
    async with connected(coord, "zz") as zz:
        assert sorted(await owner.peers()) == sorted([owner.name, zz.name])
    await wait_until(lambda: len(coord.stats().processes) == 1)
    assert await owner.peers() == [owner.name]


# -- publish/subscribe ------------------------------------------------------------------
async def test_publish_fans_out_and_frees_after_the_last_subscriber(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    topic = unique_name("topic")
    data = payload(200 * KiB, 3)
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(connected(coord, f"sub{i}")) for i in range(4)]
        for sub in subs:
            await sub.subscribe(topic)
        await subs[3].unsubscribe(topic)
        block = await owner.alloc(len(data))
        await owner.write(block, data)
        assert await owner.publish(block, topic, header={"sha256": sha256(data)}) == 3
        with pytest.raises((AccessDenied, BlockNotFound)):
            await owner.read(block, 0, 1)  # the publisher gave up its hold
        msgs = [await sub.recv() for sub in subs[:3]]
        for sub, msg in zip(subs, msgs, strict=False):
            assert (msg.block.id, msg.sender, msg.topic) == (block.id, owner.name, topic)
            async with sub.lease(msg.block, "r") as view:
                assert sha256(view) == msg.header["sha256"]
            await denied(lambda s=sub, m=msg: s.write(m.block, b"x"))
        with anyio.move_on_after(0.05):
            await subs[3].recv()
            pytest.fail("an unsubscribed process got a published block")
        for i, (sub, msg) in enumerate(zip(subs, msgs, strict=False)):
            assert coord.stats().blocks == 1, i
            await sub.free(msg.block)
        assert coord.stats().blocks == 0


async def test_wildcard_subscriptions_receive_matching_topics_once(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    """``*`` is one word, ``#`` any number; a process matching by several subscriptions
    gets one message; a published topic with a wildcard word is refused, block kept."""
    base = unique_name("frames")
    async with connected(coord, "one") as one, connected(coord, "deep") as deep:
        await one.subscribe(f"{base}.*")
        await deep.subscribe(f"{base}.#")
        await deep.subscribe(f"{base}.*")  # matches too: still one message each
        for topic, expected in (
            (f"{base}.cam1", 2),
            (f"{base}.cam1.left", 1),
            (base, 1),
            (f"{base}x.cam1", 0),
        ):
            assert await owner.publish(await owner.alloc(10), topic) == expected, topic
        with anyio.fail_after(10):
            got = {"one": [await one.recv()], "deep": [await deep.recv() for _ in range(3)]}
        assert {k: [m.topic for m in v] for k, v in got.items()} == {
            "one": [f"{base}.cam1"],
            "deep": [f"{base}.cam1", f"{base}.cam1.left", base],
        }
        for c in (one, deep):
            with anyio.move_on_after(0.05):
                await c.recv()
                pytest.fail("a second message for one publish")
        block = await owner.alloc(10)
        with pytest.raises(InvalidRequest, match="wildcard"):
            await owner.publish(block, f"{base}.*")
        await owner.write(block, b"still mine")  # nothing was sent
        await owner.free(block)
        for c, msgs in ((one, got["one"]), (deep, got["deep"])):
            for msg in msgs:
                await c.free(msg.block)
    assert coord.stats().blocks == 0


async def test_publish_with_no_subscribers_frees_the_block(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    block = await owner.alloc(100)
    assert await owner.publish(block, unique_name("empty")) == 0
    assert coord.stats().blocks == 0
    # the publisher does not receive its own publication
    topic = unique_name("self")
    await owner.subscribe(topic)
    assert await owner.publish(await owner.alloc(100), topic) == 0
    assert coord.stats().blocks == 0


async def test_publish_nowait_to_a_full_inbox_delivers_nothing(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    topic = unique_name("topic")
    async with (
        connected(coord, "roomy") as roomy,
        connected(coord, "full", inbox_messages=1) as full,
    ):
        for sub in (roomy, full):
            await sub.subscribe(topic)
        first = await owner.alloc(100)
        assert await owner.publish(first, topic) == 2
        await roomy.free((await roomy.recv()).block)
        second = await owner.alloc(100)
        with pytest.raises(InboxFull, match=full.name):
            await owner.publish(second, topic, nowait=True)
        await owner.write(second, b"still mine")  # nothing happened
        with anyio.move_on_after(0.05):
            await roomy.recv()
            pytest.fail("a publish that raised InboxFull delivered to someone")
        # without nowait it waits for the full inbox to take it
        task = asyncio.ensure_future(owner.publish(second, topic))
        await anyio.sleep(0.05)
        assert not task.done()
        await full.free((await full.recv()).block)
        assert await task == 2
        for sub in (roomy, full):
            await sub.free((await sub.recv()).block)
        assert coord.stats().blocks == 0


async def test_subscriber_frees_while_another_subscriber_inbox_is_full(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    """A subscriber that got the block may free it while the publish still waits for
    room in another subscriber's inbox; the block lives on for the others."""
    topic = unique_name("topic")
    async with (
        connected(coord, "fast") as fast,
        connected(coord, "slow", inbox_messages=1) as slow,
    ):
        for sub in (fast, slow):
            await sub.subscribe(topic)
        filler = await owner.alloc(100)
        await owner.send(filler, to=slow.name)  # slow's inbox is full now
        block = await owner.alloc(100)
        await owner.write(block, b"published")
        task = asyncio.ensure_future(owner.publish(block, topic))
        msg = await fast.recv()
        assert await fast.read(msg.block, 0, 9) == b"published"
        await fast.free(msg.block)  # the publish still waits for slow's inbox
        await anyio.sleep(0.02)
        assert not task.done()
        assert coord.stats().blocks == 2
        await slow.free((await slow.recv()).block)  # the filler: room for the publish
        assert await task == 2
        msg = await slow.recv()
        assert await slow.read(msg.block, 0, 9) == b"published"
        await slow.free(msg.block)
        assert coord.stats().blocks == 0


async def test_sender_cannot_free_a_block_waiting_for_room(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "rx", inbox_messages=1) as rx, connected(coord, "tx") as tx:
        first, second = await tx.alloc(100), await tx.alloc(100)
        await tx.send(first, to=rx.name)
        for move in (True, False):
            task = asyncio.ensure_future(tx.send(second, to=rx.name, move=move))
            await anyio.sleep(0.02)
            await denied(lambda: tx.free(second), match="being sent")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await tx.free(second)
        await rx.free((await rx.recv()).block)


async def test_cancelling_a_publish_that_waits_for_room(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    """The deliveries already made stay; the waiting ones are withdrawn; the block
    stays the publisher's."""
    topic = unique_name("topic")
    async with (
        connected(coord, "fast") as fast,
        connected(coord, "slow", inbox_messages=1) as slow,
    ):
        for sub in (fast, slow):
            await sub.subscribe(topic)
        await owner.send(await owner.alloc(100), to=slow.name)  # slow's inbox is full
        block = await owner.alloc(100)
        await owner.write(block, b"published")
        with anyio.move_on_after(0.1) as scope:
            await owner.publish(block, topic)
        assert scope.cancelled_caught
        msg = await fast.recv()  # delivered before the cancel: it stays
        assert await fast.read(msg.block, 0, 9) == b"published"
        await fast.free(msg.block)
        await slow.free((await slow.recv()).block)  # room now, but it was withdrawn
        with anyio.move_on_after(0.1):
            await slow.recv()
            pytest.fail("a withdrawn publish was delivered")
        await owner.write(block, b"mine")  # still the publisher's
        assert await owner.publish(block, topic) == 2  # and it can publish it again
        for sub in (fast, slow):
            await sub.free((await sub.recv()).block)
        assert coord.stats().blocks == 0


async def test_subscriber_leaving_while_a_publish_waits_for_its_inbox(
    coord: blockipc.Coordinator, owner: blockipc.Client
) -> None:
    topic = unique_name("topic")
    async with connected(coord, "fast") as fast:
        slow = await blockipc.connect(coord.address, name=unique_name("slow"), inbox_messages=1)
        try:
            for sub in (fast, slow):
                await sub.subscribe(topic)
            await owner.send(await owner.alloc(100), to=slow.name)  # slow's inbox is full
            task = asyncio.ensure_future(owner.publish(await owner.alloc(100), topic))
            msg = await fast.recv()
            await anyio.sleep(0.02)
            assert not task.done()
        finally:
            await slow.aclose()
        assert await task == 1  # only fast got it
        await fast.free(msg.block)
        await wait_until(lambda: coord.stats().blocks == 0)


async def test_client_leaving_during_a_large_copy(coord: blockipc.Coordinator) -> None:
    """A chunked copy whose client disconnects stops cleanly; nothing leaks."""
    client = await blockipc.connect(coord.address, name=unique_name("copier"))
    try:
        src = await client.alloc(24 * MiB)
        dst = await client.alloc(24 * MiB)
        task = asyncio.ensure_future(client.copy(src, dst))
        await asyncio.sleep(0.001)
    finally:
        await client.aclose()
    with contextlib.suppress(blockipc.ConnectionClosed):
        await task
    await wait_until(lambda: coord.stats().blocks == 0 and not coord.stats().processes)
