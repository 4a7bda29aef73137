"""Views that outlive their lease or channel message (issue 14, item 13).

A numpy array, a slice or a memoryview made from a lease's view reaches the block's
bytes after the lease ended: the client logs ``lease.view_exported`` (rate-limited) and
the coordinator never hands that memory out again while the view lives: once the last
one is gone the client says so (UNEXPORT), else its disconnect does. A channel
message still exported when it is released keeps its room in the ring. Against an
embedded coordinator (the ``coord`` fixture checks the pool is clean at teardown); no
assertion is timed.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import blockipc
import blockipc._client.client as client_module
from _helpers import connected
from _procs import wait_until
from blockipc import InboxFull
from blockipc._log import RateLimiter
from blockipc.testing import capture_logs, isolated_coordinator, unique_name

KiB = 1 << 10
SIZE = 16 * KiB

EXPORTS: dict[str, Callable[[memoryview], Any]] = {
    "np.frombuffer": lambda v: np.frombuffer(v, dtype=np.uint8),
    "np.asarray": np.asarray,
    "slice": lambda v: v[1:],
    "memoryview of the view": memoryview,
    "cast": lambda v: v.cast("I"),
    "array slice": lambda v: np.frombuffer(v, dtype=np.uint8)[8:],
}


@pytest.fixture(autouse=True)
def fresh_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """lease.view_exported is rate-limited per process: each test starts its count, in
    one interval however long it takes."""
    monkeypatch.setattr(client_module, "_export_limit", RateLimiter(clock=lambda: 0.0))


async def settled(c: blockipc.Client) -> None:
    """What this client's loop had scheduled (a view's weak reference callback, on
    collection) has run, and the coordinator has handled what it sent."""
    gc.collect()
    await asyncio.sleep(0)
    await c.stats()


def place(coord: blockipc.Coordinator, block: blockipc.Block) -> tuple[int, int]:
    rec = coord._state.table.blocks[block.id]
    return rec.segment, rec.offset


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.parametrize("mode", ["w", "r"])
@pytest.mark.parametrize("how", list(EXPORTS))
async def test_exported_lease_view_keeps_its_memory(
    coord: blockipc.Coordinator, other: blockipc.Client, how: str, mode: str
) -> None:
    async with connected(coord, "exporter") as c:
        block = await c.alloc(SIZE)
        await c.write(block, bytes(range(256)) * (SIZE // 256))
        where = place(coord, block)
        with capture_logs() as logs:
            async with c.lease(block, mode) as view:
                kept = EXPORTS[how](view)
                before = bytes(kept)
        [warned] = events(logs, "lease.view_exported")
        assert warned["block"] == block.id and warned["log_level"] == "warning"
        await c.free(block)
        assert coord.stats().used_bytes == block.capacity  # still out of the pool
        for owner in (c, other, c, other):  # same size: the buddy allocator's first pick
            new = await owner.alloc(SIZE)
            assert place(coord, new) != where
            await owner.write(new, b"\xff" * SIZE)
            assert bytes(kept) == before
        # the new blocks are held (each alloc must look again), then freed
        for proc in coord._state.table.processes.values():
            for bid in list(proc.blocks):
                await (c if proc.name == c.name else other).free(bid)
        assert coord.stats().used_bytes == block.capacity
    await wait_until(lambda: c.name not in coord.stats().processes)
    assert coord.stats().used_bytes == 0  # its holder disconnected: free again
    del kept
    new = await other.alloc(SIZE)
    assert coord.stats().used_bytes == new.capacity
    await other.free(new)


async def test_exported_view_of_a_block_moved_away(
    coord: blockipc.Coordinator, other: blockipc.Client
) -> None:
    """The receiver of a block whose sender still reaches it frees it: the memory stays
    out of the pool while the sender is connected."""
    async with connected(coord, "exporter") as c:
        block = await c.alloc(SIZE)
        async with c.lease(block, "w") as view:
            kept = np.frombuffer(view, dtype=np.uint8)
        await c.send(block, to=other.name)
        msg = await other.recv()
        await other.free(msg.block)
        assert coord.stats().used_bytes == block.capacity
        assert coord.stats().blocks == 0
    await wait_until(lambda: coord.stats().used_bytes == 0)
    del kept


async def test_exported_view_of_a_named_object(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    """A codec lease's array kept past the lease; the name is then deleted by another
    process: the block is gone, its memory is not (until the reader disconnects)."""
    name = unique_name("weights")
    block = await other.put(np.arange(SIZE // 8, dtype=np.int64), codec="numpy", name=name)
    with capture_logs() as logs:
        async with client.lease(block, "r", codec="numpy") as arr:
            kept = arr
    assert len(events(logs, "lease.view_exported")) == 1
    await other.delete(name)
    assert coord.stats().blocks == 0 and coord.stats().used_bytes == block.capacity
    assert int(kept[-1]) == SIZE // 8 - 1
    await client.aclose()
    await wait_until(lambda: coord.stats().used_bytes == 0)
    del kept, arr


async def test_no_warning_when_everything_was_released(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """Guards against false alarms: exports dropped before the lease ends (a codec
    lease's array included) neither warn nor keep the memory."""
    block = await client.put(np.ones(SIZE // 8), codec="numpy")
    raw = await client.alloc(SIZE)
    with capture_logs() as logs:
        async with client.lease(raw, "w") as view:
            arr = np.frombuffer(view, dtype=np.uint8)
            part = view[4:8]
            arr[:] = 7
            del arr, part
        async with client.lease(block, "r", codec="numpy") as values:
            assert values.sum() == SIZE // 8
            del values
        async with client.lease(raw, "r", codec="raw") as data:  # the lease's own view
            assert data[0] == 7
    assert not events(logs, "lease.view_exported")
    await client.free(raw)
    await client.free(block)
    assert coord.stats().used_bytes == 0


# -- the export gone: the memory comes back (UNEXPORT) ----------------------------------
async def test_a_loop_of_codec_leases_does_not_fill_the_pool() -> None:
    """The idiom ``async with lease(..., codec="numpy") as arr`` leaves ``arr`` bound
    after the block: each block freed then stays out of the pool only until ``arr`` is
    rebound. A 64 KiB pool (16 blocks) survives 2,000 such rounds of put, lease, free
    (125 times what it holds)."""
    rounds, values = 2_000, np.arange(512, dtype=np.int64)  # 4 KiB: one block each
    async with (
        isolated_coordinator(pool_size="64KiB") as coord,
        connected(coord, "looper") as c,
    ):
        blocks = coord.stats().free_bytes // 4096
        assert rounds > 100 * blocks
        total = 0
        with capture_logs() as logs:
            for _ in range(rounds):
                block = await c.put(values, codec="numpy")
                async with c.lease(block, "r", codec="numpy") as arr:
                    total += int(arr[-1])
                await c.free(block)
        assert total == rounds * 511
        kept = coord.stats().used_bytes // 4096
        assert kept <= 2, kept  # the last array (and one not yet told) at most
        warned = events(logs, "lease.view_exported")
        assert len(warned) == client_module._export_limit.burst  # not one per round
        assert "del arr" in warned[0]["hint"] and "get()" in warned[0]["hint"]
        assert events(logs, "log.suppressed")  # ... and the count of the others said
        del arr
        await settled(c)
        assert coord.stats().used_bytes == 0
        assert not coord._state.table.processes[c.name].exports


async def test_the_memory_comes_back_when_the_last_view_is_gone(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    """Two leases of one block each leave a view behind: the block's memory stays out of
    the pool while either lives, and comes back (no disconnect) once both are gone."""
    block = await client.alloc(SIZE)
    where = place(coord, block)
    async with client.lease(block, "w") as view:
        first = np.frombuffer(view, dtype=np.uint8)
        first[:] = 1
    async with client.lease(block, "r") as view:
        second = view[8:16]
    await client.free(block)
    del first
    await settled(client)
    assert coord.stats().used_bytes == block.capacity  # `second` still reaches it
    new = await other.alloc(SIZE)
    assert place(coord, new) != where
    await other.write(new, b"\xff" * SIZE)
    assert bytes(second) == b"\x01" * 8
    await other.free(new)
    del second
    await settled(client)
    assert coord.stats().used_bytes == 0
    assert not coord._state.table.processes[client.name].exports
    assert coord._state.table.processes[client.name].held_bytes == 0


async def test_a_view_gone_before_the_block_is_freed(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """The view is gone while the block lives: the mark goes, and freeing the block
    gives its memory back at once."""
    block = await client.put(np.ones(SIZE // 8), codec="numpy")
    async with client.lease(block, "r", codec="numpy") as arr:
        pass
    assert coord._state.table.blocks[block.id].exported
    del arr
    await settled(client)
    assert not coord._state.table.blocks[block.id].exported
    await client.free(block)
    assert coord.stats().used_bytes == 0


async def test_a_view_gone_after_its_connection_tells_nothing(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """A view of a lease of a closed client dies later: nothing is sent, nothing fails."""
    async with connected(coord, "closing") as c:
        block = await c.alloc(SIZE)
        async with c.lease(block, "r") as view:
            kept = np.asarray(view)
    await wait_until(lambda: coord.stats().used_bytes == 0)
    del kept
    await settled(client)
    assert coord.stats().used_bytes == 0


def test_unexport_in_the_routing_table() -> None:
    """The pure rule: a removed block's memory comes back with the last process that
    reached it, and counted as that process's held bytes until then."""
    from blockipc._core.routing import RoutingTable

    table = RoutingTable()
    a, b = (table.register(n, pid=1, uid=0) for n in ("a", "b"))
    rec = table.add_block(a, segment=0, offset=0, capacity=4096, size=10)
    table.grant(a, rec, b, "r")
    for proc in (a, b):
        lease = table.request_lease(proc, rec, "r", object())
        assert lease is not None
        table.mark_exported(lease)
        table.end_lease(lease)
    assert table.unexport(a, 999) == table.unexport(b, 999) == ((), (), (), (), (), 0)
    assert not table.release_hold(b, rec).freed and not table.release_hold(a, rec).freed
    assert rec.id not in table.blocks and a.held_bytes == b.held_bytes == 4096
    assert not table.unexport(a, rec.id).freed  # b still reaches it
    assert a.held_bytes == 0 and not a.exports
    assert table.unexport(b, rec.id).freed == (rec,)
    assert b.held_bytes == 0 and rec.exported == ()
    assert not table.unexport(b, rec.id).freed  # said twice: nothing


# -- channels ----------------------------------------------------------------------
async def test_exported_channel_message_keeps_its_room(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "tx") as a, connected(coord, "rx") as b:
        tx = await a.open_channel(b.name, capacity=8 * KiB)  # 4 KiB of ring
        rx = await b.accept_channel()
        await tx.send(b"A" * 1024)
        msg = await rx.recv()
        kept = np.frombuffer(msg.data, dtype=np.uint8)
        with capture_logs() as logs:
            msg.release()
        [warned] = events(logs, "channel.view_exported")
        assert warned["channel"] == rx.id
        sent = 0
        with pytest.raises(InboxFull):  # the ring fills up without reusing the message's room
            for _ in range(16):
                await tx.send(b"B" * 1024, nowait=True)
                sent += 1
        for _ in range(sent):
            with await rx.recv() as m:
                assert bytes(m.data) == b"B" * 1024
        assert bytes(kept) == b"A" * 1024
        with pytest.raises(InboxFull):
            await tx.send(b"C" * 1024, nowait=True)
        del kept
        gc.collect()
        async with asyncio.timeout(10):  # the room comes back once the array is gone
            await tx.send(b"C" * 1024)
            with await rx.recv() as m:
                assert bytes(m.data) == b"C" * 1024
        await tx.aclose()
        await rx.aclose()


async def test_channel_closed_while_a_message_is_exported(coord: blockipc.Coordinator) -> None:
    """Both ends closed while an array of a message lives: the coordinator keeps the
    ring until the array is gone."""
    async with connected(coord, "tx") as a, connected(coord, "rx") as b:
        tx = await a.open_channel(b.name, capacity=8 * KiB)
        rx = await b.accept_channel()
        await tx.send(b"A" * 1024, codec="raw")
        msg = await rx.recv()
        kept = np.asarray(msg.data)
        with capture_logs() as logs:
            await rx.aclose()  # releases the message it still had
        assert len(events(logs, "channel.view_exported")) == 1
        await tx.aclose()
        await a.stats()  # a round trip on each: their closes have been handled
        await b.stats()
        assert tx.id in coord._state.table.channels
        assert coord.stats().used_bytes == 8 * KiB
        assert bytes(kept) == b"A" * 1024
        del kept
        await wait_until(lambda: tx.id not in coord._state.table.channels)
        assert coord.stats().used_bytes == 0


async def test_channel_views_released_in_time_do_not_warn(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "tx") as a, connected(coord, "rx") as b:
        tx = await a.open_channel(b.name, capacity=8 * KiB)
        rx = await b.accept_channel()
        with capture_logs() as logs:
            for i in range(32):  # laps the ring: every room given back
                await tx.send(np.full(256, i, dtype=np.int32), codec="numpy")
                with await rx.recv() as m:
                    arr = m.view()
                    assert int(arr[0]) == i
                    del arr
        assert not events(logs, "channel.view_exported")
        await tx.aclose()
        await rx.aclose()
