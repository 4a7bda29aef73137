"""The client API against an embedded coordinator: errors, leases, cancellation,
pipelining and large transfers. Every test runs on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import blockipc
from _helpers import enter_lease
from _procs import payload, sha256, wait_until
from blockipc import (
    AccessDenied,
    BlockIPCError,
    BlockNotFound,
    ConnectionClosed,
    InvalidRequest,
    OutOfBounds,
    PeerUnreachable,
    PoolExhausted,
)
from blockipc._client.client import INLINE_THRESHOLD
from blockipc._core.protocol import Op
from blockipc.testing import unique_name

MiB = 1 << 20


async def assert_usable(client: blockipc.Client) -> None:
    """The connection still answers: a block can be made, written, read and freed."""
    before = await client.stats()
    block = await client.alloc(10)
    assert await client.write(block, b"0123456789") == 10
    assert await client.read(block, 2, 3) == b"234"
    await client.free(block)
    assert await client.stats() == before


async def expect_error(
    client: blockipc.Client,
    exc_type: type[BaseException],
    call: Callable[[], Any],
    match: str | None = None,
) -> None:
    """``call()`` raises ``exc_type`` (when called or when awaited) and changes nothing."""
    before = await client.stats()
    with pytest.raises(exc_type, match=match):
        result = call()
        if inspect.isawaitable(result):
            await result
    assert await client.stats() == before
    await assert_usable(client)


# -- bad input: each raises its error and changes nothing ---------------------------------
async def test_unknown_block(client: blockipc.Client, other: blockipc.Client) -> None:
    for bid in (999_999, 0, -1, (1 << 63) + 5):
        await expect_error(client, BlockNotFound, lambda b=bid: client.read(b, 0, 1))
        await expect_error(client, BlockNotFound, lambda b=bid: client.write(b, b"x"))
        await expect_error(client, BlockNotFound, lambda b=bid: client.free(b))
        await expect_error(client, BlockNotFound, lambda b=bid: enter_lease(client, b, "r"))
        await expect_error(client, BlockNotFound, lambda b=bid: client.send(b, to=other.name))


async def test_another_process_block(client: blockipc.Client, other: blockipc.Client) -> None:
    theirs = await other.alloc(100)
    await other.write(theirs, b"theirs")
    big = 2 * INLINE_THRESHOLD
    await expect_error(client, AccessDenied, lambda: client.read(theirs))
    await expect_error(client, AccessDenied, lambda: client.read(theirs.id, 0, 6))
    await expect_error(client, AccessDenied, lambda: client.write(theirs, b"mine"))
    await expect_error(client, AccessDenied, lambda: client.write(theirs, b"m" * big))
    await expect_error(client, AccessDenied, lambda: client.free(theirs))
    await expect_error(client, AccessDenied, lambda: enter_lease(client, theirs, "r"))
    await expect_error(client, AccessDenied, lambda: enter_lease(client, theirs, "w"))
    await expect_error(client, AccessDenied, lambda: client.send(theirs, to=client.name))
    assert await other.read(theirs, 0, 6) == b"theirs"
    await other.free(theirs)


async def test_out_of_bounds(client: blockipc.Client) -> None:
    block = await client.alloc(1000)  # capacity 4096: bounds are checked against size
    assert block.capacity == 4096
    await client.write(block, b"a" * 1000)
    cases: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.read(block, 0, 1001),
        lambda: client.read(block, 0, 4096),
        lambda: client.read(block, 1000, 1),
        lambda: client.read(block, 999, 2),
        lambda: client.read(block, 1001),  # size defaults to the rest: negative
        lambda: client.read(block.id, 1001),  # same, size known from alloc
        lambda: client.read(block, -1, 1),
        lambda: client.read(block, 0, -1),
        lambda: client.read(block, 1 << 62, 1 << 62),
        lambda: client.write(block, b"b" * 1001),
        lambda: client.write(block, b"b", offset=1000),
        lambda: client.write(block, b"b", offset=-1),
        lambda: client.write(block, b"b" * 2, offset=999),
    ]
    for call in cases:
        await expect_error(client, OutOfBounds, call)
    assert await client.read(block) == b"a" * 1000

    size = 3 * INLINE_THRESHOLD  # above the inline threshold: through a lease
    big = await client.alloc(size)
    await client.write(big, b"c" * size)
    for call in [
        lambda: client.write(big, b"d" * (size + 1)),
        lambda: client.write(big, b"d" * size, offset=1),
        lambda: client.write(big, b"d" * size, offset=-5),
        lambda: client.read(big, 1, size),
        lambda: client.read(big, -1, size),
    ]:
        await expect_error(client, OutOfBounds, call)
    assert await client.read(big) == b"c" * size  # nothing written partially
    await client.free(big)
    await client.free(block)


async def test_alloc_invalid_sizes(client: blockipc.Client) -> None:
    await expect_error(client, InvalidRequest, lambda: client.alloc(0))
    await expect_error(client, InvalidRequest, lambda: client.alloc(-1))
    await expect_error(client, InvalidRequest, lambda: client.alloc(-(1 << 70)))
    # larger than the pool (64 MiB) can ever hold
    await expect_error(client, PoolExhausted, lambda: client.alloc(64 * MiB + 1))
    await expect_error(client, PoolExhausted, lambda: client.alloc(1 << 40))
    await expect_error(client, PoolExhausted, lambda: client.alloc(1 << 70))


async def test_pool_exhaustion_and_recovery(client: blockipc.Client) -> None:
    whole = await client.alloc(64 * MiB)
    stats = await client.stats()
    assert stats.free_bytes == 0
    with pytest.raises(PoolExhausted):
        await client.alloc(1)
    assert await client.stats() == stats
    await client.free(whole)

    quarter = [await client.alloc(16 * MiB) for _ in range(4)]
    with pytest.raises(PoolExhausted):
        await client.alloc(16 * MiB)
    with pytest.raises(PoolExhausted):
        await client.alloc(4096)
    await client.free(quarter.pop(1))
    small = await client.alloc(4096)  # recovered
    await client.write(small, b"ok")
    assert await client.read(small, 0, 2) == b"ok"
    with pytest.raises(PoolExhausted):  # the hole is now split
        await client.alloc(16 * MiB)
    await client.free(small)
    quarter.append(await client.alloc(16 * MiB))  # coalesced back
    for block in quarter:
        await client.free(block)
    assert (await client.stats()).free_bytes == 64 * MiB


async def test_bad_lease_mode(client: blockipc.Client) -> None:
    block = await client.alloc(10)
    for mode in ("x", "rw", "", "R", "W", None, 1, b"r"):
        await expect_error(client, InvalidRequest, lambda m=mode: client.lease(block, m))
    await client.free(block)


async def test_use_after_free(client: blockipc.Client, other: blockipc.Client) -> None:
    block = await client.alloc(100)
    await client.free(block)
    await expect_error(client, BlockNotFound, lambda: client.read(block))
    await expect_error(client, BlockNotFound, lambda: client.read(block.id, 0, 1))
    await expect_error(client, BlockNotFound, lambda: client.write(block, b"x"))
    await expect_error(client, BlockNotFound, lambda: client.write(block, b"x" * MiB))
    await expect_error(client, BlockNotFound, lambda: enter_lease(client, block, "r"))
    await expect_error(client, BlockNotFound, lambda: enter_lease(client, block, "w"))
    await expect_error(client, BlockNotFound, lambda: client.free(block))
    await expect_error(client, BlockNotFound, lambda: client.send(block, to=other.name))


async def test_use_after_close(coord: blockipc.Coordinator) -> None:
    client = await blockipc.connect(coord.address, name=unique_name())
    block = await client.alloc(100)
    await client.close()
    assert client.closed
    await client.close()  # idempotent
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.alloc(10),
        lambda: client.free(block),
        lambda: client.write(block, b"x"),
        lambda: client.write(block, b"x" * MiB),
        lambda: client.read(block),
        lambda: client.read(block, 0, MiB),
        lambda: enter_lease(client, block, "r"),
        lambda: enter_lease(client, block, "w"),
        lambda: client.send(block, to="anyone"),
        lambda: client.recv(),
        lambda: client.stats(),
    ]
    errors = []
    for call in calls:
        with pytest.raises(ConnectionClosed) as info:
            await call()
        errors.append(info.value)
    # each call gets its own exception, not one instance collecting every traceback
    assert len({id(e) for e in errors}) == len(errors)
    # the documented exception: messages() ends when its client is closed
    assert [m async for m in client.messages()] == []
    await wait_until(lambda: client.name not in coord.stats().processes)


async def test_duplicate_process_name(coord: blockipc.Coordinator) -> None:
    name = unique_name("dup")
    first = await blockipc.connect(coord.address, name=name)
    try:
        for _ in range(3):
            with pytest.raises(BlockIPCError, match="already taken"):
                await blockipc.connect(coord.address, name=name)
        await assert_usable(first)
        assert coord.stats().processes == (name,)
    finally:
        await first.close()
    # the name is free again as soon as close() returns, every time
    for _ in range(20):
        again = await blockipc.connect(coord.address, name=name)
        await again.alloc(10)
        await again.close()


async def test_invalid_process_names(coord: blockipc.Coordinator) -> None:
    for name in ("", "x" * 256):
        with pytest.raises(InvalidRequest):
            blockipc.connect(coord.address, name=name)
    for name in ("a/b", "tab\there"):
        with pytest.raises(InvalidRequest):
            await blockipc.connect(coord.address, name=name)
    assert coord.stats().processes == ()


async def test_send_to_unknown_name(client: blockipc.Client) -> None:
    block = await client.alloc(100)
    await client.write(block, b"still mine")
    for to in ("nobody", "node-x/nobody", "n" * 255):
        await expect_error(client, PeerUnreachable, lambda t=to: client.send(block, to=t))
    assert await client.read(block, 0, 10) == b"still mine"
    await client.free(block)


async def test_bad_headers(client: blockipc.Client, other: blockipc.Client) -> None:
    block = await client.alloc(100)
    for header in (
        {"big": "x" * (20 * 1024)},
        {"obj": object()},
        {"nested": {"set": {1, 2}}},
        {1: "int key"},
        {b"bytes": "key"},
        [("a", 1)],
        "a string",
    ):
        await expect_error(
            client, InvalidRequest, lambda h=header: client.send(block, to=other.name, header=h)
        )
    # a header that is fine goes through, intact
    header = {"k": 1, "s": "x" * 1000, "l": [1, 2.5, None, True], "b": b"\x00\xff", "d": {"x": {}}}
    await client.send(block, to=other.name, header=header)
    msg = await other.recv()
    assert msg.header == header
    assert msg.sender == client.name
    await other.free(msg.block)


async def test_wrong_types(coord: blockipc.Coordinator, client: blockipc.Client) -> None:
    block = await client.alloc(100)
    calls: list[Callable[[], Any]] = [
        lambda: client.alloc(b"4KiB"),
        lambda: client.alloc(4096.0),
        lambda: client.alloc(True),
        lambda: client.alloc(None),
        lambda: client.free("1"),
        lambda: client.free(None),
        lambda: client.free(1.0),
        lambda: client.free(True),
        lambda: client.read("1", 0, 1),
        lambda: client.read(block, "0", 1),
        lambda: client.read(block, 0, "1"),
        lambda: client.read(block, 0.0, 1),
        lambda: client.write(block, "text"),
        lambda: client.write(block, 42),
        lambda: client.write(block, None),
        lambda: client.write(block, b"x", offset="0"),
        lambda: client.write([block], b"x"),
        lambda: client.lease("1", "r"),
        lambda: client.send(block, to=42),
        lambda: client.send(block, to=None),
        lambda: client.send("1", to=client.name),
    ]
    for call in calls:
        await expect_error(client, TypeError, call)
    with pytest.raises(TypeError):
        blockipc.connect(coord.address, name=42)  # type: ignore[arg-type]
    await client.free(block)


# -- leases ---------------------------------------------------------------------------
async def test_two_readers_at_once(client: blockipc.Client) -> None:
    block = await client.alloc(100)
    await client.write(block, b"shared")
    held: list[int] = []
    both = asyncio.Event()

    async def reader(i: int) -> None:
        async with client.lease(block, "r") as view:
            held.append(i)
            if len(held) == 2:
                both.set()
            await both.wait()  # neither lets go until both hold a lease
            assert bytes(view[:6]) == b"shared"
            assert (await client.stats()).leases == 2

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, 1)
            tg.start_soon(reader, 2)
    assert (await client.stats()).leases == 0
    await client.free(block)


async def test_writer_waits_for_readers_and_readers_for_writer(
    client: blockipc.Client,
) -> None:
    block = await client.alloc(100)
    order: list[str] = []

    async def writer() -> None:
        async with client.lease(block, "w") as view:
            order.append("writer")
            view[:5] = b"WRITE"

    async def reader() -> None:
        async with client.lease(block, "r") as view:
            order.append("reader2:" + bytes(view[:5]).decode())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, client.lease(block, "r"):
            tg.start_soon(writer)
            await asyncio.sleep(0.1)
            tg.start_soon(reader)  # queued behind the writer (FIFO, no starvation)
            await asyncio.sleep(0.1)
            assert order == []
            assert (await client.stats()).leases == 1
            order.append("reader1")
    assert order == ["reader1", "writer", "reader2:WRITE"]
    await client.free(block)


async def test_own_routed_requests_pass_own_write_lease(client: blockipc.Client) -> None:
    block = await client.alloc(100)
    with anyio.fail_after(5):
        async with client.lease(block, "w") as view:
            view[:3] = b"abc"
            assert await client.read(block, 0, 3) == b"abc"
            await client.write(block, b"XY", offset=1)
            assert bytes(view[:3]) == b"aXY"
    await client.free(block)


async def test_lease_view_is_size_long_and_released_after(client: blockipc.Client) -> None:
    for size, capacity in ((1, 4096), (1000, 4096), (4096, 4096), (100_000, 131072)):
        block = await client.alloc(size)
        assert (block.size, block.capacity) == (size, capacity)
        async with client.lease(block, "w") as wview:
            assert len(wview) == wview.nbytes == size
            assert not wview.readonly
            wview[-1:] = b"Z"
        async with client.lease(block, "r") as rview:
            assert len(rview) == size
            assert rview.readonly
            assert bytes(rview[-1:]) == b"Z"
            with pytest.raises(TypeError):
                rview[0] = 1
            with pytest.raises(TypeError):
                rview[:1] = b"x"
        for stale in (wview, rview):
            with pytest.raises(ValueError):
                stale[0]
            with pytest.raises(ValueError):
                bytes(stale)
            with pytest.raises(ValueError):
                len(stale)
        with pytest.raises(ValueError):
            wview[0] = 1
        assert await client.read(block, size - 1, 1) == b"Z"
        await client.free(block)


async def test_block_with_lease_cannot_be_freed_or_sent(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.alloc(100)
    async with client.lease(block, "r"):
        await expect_error(client, AccessDenied, lambda: client.free(block))
        await expect_error(client, AccessDenied, lambda: client.send(block, to=other.name))
    await client.free(block)


async def test_cancel_contended_lease_leaves_nothing(client: blockipc.Client) -> None:
    block = await client.alloc(100)
    for mode in ("r", "w"):
        async with client.lease(block, "w") as view:
            view[:4] = b"held"
            with anyio.move_on_after(0.1) as scope:
                async with client.lease(block, mode):
                    pytest.fail("granted while a write lease is held")
            assert scope.cancelled_caught
            assert (await client.stats()).leases == 1
        assert (await client.stats()).leases == 0
        with anyio.fail_after(2):  # the block is usable, nobody waits on it
            async with client.lease(block, "w") as view:
                assert bytes(view[:4]) == b"held"
            assert await client.read(block, 0, 4) == b"held"
    await client.free(block)


async def test_cancel_just_after_the_lease_is_granted(client: blockipc.Client) -> None:
    """A cancellation that lands after the grant arrived, before the task resumed:
    the grant must be given back, not kept forever."""
    block = await client.alloc(100)
    entered = []

    async def acquire() -> None:
        async with client.lease(block, "w"):
            entered.append(True)

    async with client.lease(block, "r"):
        task = asyncio.create_task(acquire())
        await asyncio.sleep(0.05)  # parked in the coordinator
        dispatch = client._dispatch

        def dispatch_then_cancel(event: Any) -> None:
            dispatch(event)
            if event.op is Op.LEASE:
                task.cancel()

        client._dispatch = dispatch_then_cancel  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await task
    client._dispatch = dispatch  # type: ignore[method-assign]
    assert not entered
    assert (await client.stats()).leases == 0
    with anyio.fail_after(2):
        async with client.lease(block, "w"):
            pass
    await client.free(block)


async def test_cancel_recv_then_send_loses_nothing(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    with anyio.move_on_after(0.1) as scope:
        await client.recv()
    assert scope.cancelled_caught
    block = await other.alloc(100)
    await other.write(block, b"not lost")
    await other.send(block, to=client.name, header={"n": 1})
    with anyio.fail_after(2):
        msg = await client.recv()
    assert msg.block.id == block.id
    assert msg.header == {"n": 1}
    assert await client.read(msg.block, 0, 8) == b"not lost"
    await client.free(msg.block)


async def test_cancel_recv_just_after_delivery(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    """A recv cancelled after its message arrived, before the task resumed: the message
    goes to the next recv."""
    task = asyncio.create_task(client.recv())
    await asyncio.sleep(0.05)
    dispatch = client._dispatch

    def dispatch_then_cancel(event: Any) -> None:
        dispatch(event)
        if event.op is Op.RECV:
            task.cancel()

    client._dispatch = dispatch_then_cancel  # type: ignore[method-assign]
    block = await other.alloc(100)
    await other.write(block, b"delivered")
    await other.send(block, to=client.name)
    with pytest.raises(asyncio.CancelledError):
        await task
    client._dispatch = dispatch  # type: ignore[method-assign]
    with anyio.fail_after(2):
        msg = await client.recv()
    assert msg.block.id == block.id
    assert await client.read(msg.block) == b"delivered".ljust(100, b"\0")
    await client.free(msg.block)


async def test_cancel_alloc_just_after_reply(client: blockipc.Client) -> None:
    """An alloc cancelled after its reply arrived frees the block it was given."""
    task = asyncio.create_task(client.alloc(MiB))
    dispatch = client._dispatch

    def dispatch_then_cancel(event: Any) -> None:
        dispatch(event)
        if event.op is Op.ALLOC:
            task.cancel()

    client._dispatch = dispatch_then_cancel  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await task
    client._dispatch = dispatch  # type: ignore[method-assign]
    stats = await client.stats()
    assert (stats.blocks, stats.used_bytes) == (0, 0)


# -- pipelining -------------------------------------------------------------------------
async def test_thousand_concurrent_reads_and_writes(client: blockipc.Client) -> None:
    chunk, n = 256, 500
    source = await client.alloc(chunk * n)
    target = await client.alloc(chunk * n)
    data = payload(chunk * n, 1)
    await client.write(source, data)
    pieces = [payload(chunk, 100 + i) for i in range(n)]

    async def read(i: int) -> bytes:
        await asyncio.sleep(0)
        return await client.read(source, i * chunk, chunk)

    async def write(i: int) -> int:
        await asyncio.sleep(0)
        return await client.write(target, pieces[i], offset=i * chunk)

    ops: list[Awaitable[Any]] = []
    for i in range(n):
        ops += [read(i), write(i)]
    random.Random(5).shuffle(ops)
    with anyio.fail_after(30):
        results = await asyncio.gather(*ops)
    assert len(results) == 2 * n
    reads = await asyncio.gather(*(client.read(source, i * chunk, chunk) for i in range(n)))
    assert b"".join(reads) == data
    assert await client.read(target) == b"".join(pieces)
    assert sorted(r for r in results if isinstance(r, int)) == [chunk] * n
    assert sorted(r for r in results if isinstance(r, bytes)) == sorted(
        data[i * chunk : (i + 1) * chunk] for i in range(n)
    )
    await client.free(source)
    await client.free(target)


async def test_concurrent_allocs_from_many_tasks(client: blockipc.Client) -> None:
    blocks = await asyncio.gather(*(client.alloc(4096) for _ in range(1000)))
    assert len({b.id for b in blocks}) == 1000
    assert (await client.stats()).used_bytes == 1000 * 4096
    await asyncio.gather(*(client.free(b) for b in blocks))
    assert (await client.stats()).used_bytes == 0


# -- large transfers ------------------------------------------------------------------
@pytest.mark.parametrize("size", [MiB, 64 * MiB], ids=["1MiB", "64MiB"])
async def test_large_write_and_read_go_through_a_lease(
    client: blockipc.Client, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    leases: list[str] = []
    lease = client.lease

    def spy(block: Any, mode: Any = "r") -> blockipc.Lease:
        leases.append(mode)
        return lease(block, mode)

    monkeypatch.setattr(client, "lease", spy)
    data = payload(size, size)
    block = await client.alloc(size)
    assert await client.write(block, data) == size
    assert leases == ["w"]
    back = await client.read(block)
    assert leases == ["w", "r"]
    assert sha256(back) == sha256(data)
    assert await client.read(block, size - 100_000, 100_000) == data[-100_000:]  # above inline
    assert await client.read(block, 5, 10) == data[5:15]  # inline, no lease
    assert leases == ["w", "r", "r"]
    assert (await client.stats()).leases == 0
    await client.free(block)


async def test_alloc_accepts_size_strings(client: blockipc.Client) -> None:
    block = await client.alloc("4KiB")
    assert (block.size, block.capacity) == (4096, 4096)
    await client.free(block)
    with pytest.raises(InvalidRequest):
        await client.alloc("four kilobytes")
    await assert_usable(client)


async def test_lease_views_die_with_the_connection() -> None:
    """When the coordinator goes away, open views are released: the memory they point
    at is no longer this process's to touch."""
    async with blockipc.testing.isolated_coordinator() as coord:
        client = await blockipc.connect(coord.address, name=unique_name())
        block = await client.alloc(100)
        lease = client.lease(block, "w")
        view = await lease.__aenter__()
        view[:2] = b"ok"
        await coord.aclose()
        await wait_until(lambda: client.closed)
        with pytest.raises(ValueError):
            view[:2] = b"no"
        await lease.__aexit__(None, None, None)
        with pytest.raises(ConnectionClosed):
            await client.alloc(1)
        await client.close()


# -- batches: recv_many, free_many -------------------------------------------------------
async def test_recv_many_returns_a_burst_in_order(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    start = coord.stats()
    sent = []
    for i in range(10):
        block = await other.alloc(64)
        await other.write(block, bytes([i]) * 64)
        await other.send(block, to=client.name, header={"i": i})
        sent.append(block.id)
    with anyio.fail_after(5):
        first = await client.recv_many(4)
        rest = await client.recv_many()
    msgs = first + rest
    assert [m.header["i"] for m in msgs] == list(range(10))
    assert [m.block.id for m in msgs] == sent
    assert len(first) == 4 and all(m.sender == other.name for m in msgs)
    assert await client.read(msgs[3].block, 0, 2) == b"\x03\x03"
    await client.free_many(m.block for m in msgs)
    assert coord.stats().blocks == start.blocks


async def test_recv_many_waits_for_the_first_message(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    task = asyncio.create_task(client.recv_many(8))
    await asyncio.sleep(0.05)
    assert not task.done()
    block = await other.alloc(10)
    await other.send(block, to=client.name)
    with anyio.fail_after(5):
        msgs = await task
    assert [m.block.id for m in msgs] == [block.id]
    await client.free_many([msgs[0].block.id])


async def test_cancelled_recv_many_loses_nothing(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    with anyio.move_on_after(0.05) as scope:
        await client.recv_many()
    assert scope.cancelled_caught
    blocks = [await other.alloc(10) for _ in range(3)]
    for b in blocks:
        await other.send(b, to=client.name)
    got: list[blockipc.Message] = []
    with anyio.fail_after(5):
        while len(got) < 3:
            got += await client.recv_many()
    assert [m.block.id for m in got] == [b.id for b in blocks]
    await client.free_many(m.block for m in got)


async def test_free_many_is_all_or_nothing(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    start = coord.stats()
    mine = [await client.alloc(100) for _ in range(3)]
    theirs = await other.alloc(100)
    leased = await client.alloc(100)
    with pytest.raises(AccessDenied):
        await client.free_many([*mine, theirs])  # not ours: nothing freed
    with pytest.raises(BlockNotFound):
        await client.free_many([*mine, 10**9])
    async with client.lease(leased, "r"):
        with pytest.raises(AccessDenied, match="lease"):
            await client.free_many([*mine, leased])
    with pytest.raises(InvalidRequest):
        await client.free_many([mine[0], mine[0]])  # twice
    with pytest.raises(InvalidRequest):
        await client.free_many([])
    assert coord.stats().blocks == start.blocks + 5  # all still there
    await client.free_many([*mine, leased])
    await other.free(theirs)
    assert coord.stats().blocks == start.blocks
    with pytest.raises(InvalidRequest):
        await client.recv_many(0)


async def test_recv_many_keeps_a_reply_under_the_frame_limit(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    """Many messages with large headers come in several replies, never one frame over
    the limit (which would end the connection)."""
    big = {"pad": "x" * 15_000}
    for _ in range(80):  # 80 x 15 KB of headers: more than one frame may carry
        block = await other.alloc(10)
        await other.send(block, to=client.name, header=big)
    got: list[blockipc.Message] = []
    with anyio.fail_after(10):
        while len(got) < 80:
            batch = await client.recv_many(1000)
            assert len(batch) < 80
            got += batch
    assert all(m.header == big for m in got)
    await client.free_many(m.block for m in got)
