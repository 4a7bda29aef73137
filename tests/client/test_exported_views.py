"""Views that outlive their lease or channel message (issue 14, item 13).

A numpy array, a slice or a memoryview made from a lease's view reaches the block's
bytes after the lease ended: the client logs ``lease.view_exported`` and the
coordinator never hands that memory out again while the client is connected. A channel
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
from _helpers import connected
from _procs import wait_until
from blockipc import InboxFull
from blockipc.testing import capture_logs, unique_name

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
