"""A client that held many blocks is reclaimed in slices: the other clients are served
meanwhile, its name is free at once, a cancelled or closing coordinator still gets
every block back. Observed through the coordinator's state and its events, counting
event-loop turns, never the clock."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import connected, raw_hello
from _procs import spawn
from blockipc._core.limits import RECLAIM_SLICE
from blockipc._core.protocol import Connection, Op, Reply, Request
from blockipc._handshake import receive_event
from blockipc._server.state import ServerState
from blockipc.testing import assert_pool_clean, capture_logs, isolated_coordinator, unique_name

HOG_BLOCKS = 20_000  # 20 slices
POOL = "96MiB"  # room for them, at 4 KiB each (78 MiB)


async def _hold(address: str, name: str, blocks: int) -> UNIXSocketStream:
    """A raw connection named ``name`` holding ``blocks`` blocks of 4 KiB (pipelined
    ALLOCs: a client awaiting each would take seconds)."""
    stream, conn = await raw_hello(address, name)
    await stream.send(
        b"".join(conn.send(Request(2 + i, Op.ALLOC, {"size": 4096})) for i in range(blocks))
    )
    for _ in range(blocks):
        reply, _ = await receive_event(stream, conn)
        assert isinstance(reply, Reply), reply
    return stream


async def _ask(stream: UNIXSocketStream, conn: Connection, req: Request) -> Reply:
    await stream.send(conn.send(req))
    reply, _ = await receive_event(stream, conn)
    assert isinstance(reply, Reply), reply
    return reply


async def _turns_until(predicate: Callable[[], Any]) -> None:
    """Let the loop turn until ``predicate`` holds (the time is only a failure's)."""
    deadline = asyncio.get_running_loop().time() + 10
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met within 10 s"
        await asyncio.sleep(0)


def _state(coord: blockipc.Coordinator) -> ServerState:
    assert coord._state is not None
    return coord._state


async def _reclaim_of(state: ServerState) -> asyncio.Task[None]:
    """The reclaim in progress, once the hog's disconnect started it."""
    await _turns_until(lambda: state.reclaims)
    (task,) = state.reclaims.values()
    return task


def _disconnects(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "client.disconnect"]


async def test_other_clients_are_answered_while_a_large_reclaim_runs() -> None:
    async with isolated_coordinator(pool_size=POOL) as coord:
        state = _state(coord)
        async with connected(coord, "good") as good:
            block = await good.alloc(64)
            hog = await _hold(coord.address, unique_name("hog"), HOG_BLOCKS)
            assert coord.stats().blocks == HOG_BLOCKS + 1
            with capture_logs() as logs:
                await hog.aclose()  # as a kill -9 looks to the coordinator
                task = await _reclaim_of(state)
                left = len(state.table.blocks)
                assert await good.read(block, 0, 64) == bytes(64)  # answered...
                assert not task.done()  # ...before the reclaim has finished
                stats = await good.stats()  # another, and the stats meanwhile
                assert not task.done()
                assert 1 < stats.blocks <= left  # what it still held, going back
                assert [u.name for u in stats.usage] == [good.name]  # it is gone
                await task
            (event,) = _disconnects(logs)
            assert event["blocks_freed"] == HOG_BLOCKS
            assert event["slices"] == math.ceil(HOG_BLOCKS / RECLAIM_SLICE)
            assert coord.stats().blocks == 1  # the good client's
            await good.free(block)
        await _turns_until(lambda: not coord.stats().processes)
        assert_pool_clean(coord)


async def test_a_small_reclaim_is_done_at_once() -> None:
    async with isolated_coordinator(pool_size=POOL) as coord:
        state = _state(coord)
        with capture_logs() as logs:
            hog = await _hold(coord.address, unique_name("small"), RECLAIM_SLICE)
            await hog.aclose()
            await _turns_until(lambda: _disconnects(logs))
        assert not state.reclaims
        (event,) = _disconnects(logs)
        assert event["slices"] == 1 and event["blocks_freed"] == RECLAIM_SLICE
        assert_pool_clean(coord)


async def test_a_restarted_process_takes_its_name_during_the_reclaim() -> None:
    async with isolated_coordinator(pool_size=POOL) as coord:
        state = _state(coord)
        state.reclaim_slice = 64  # many turns: room for a whole handshake meanwhile
        name = unique_name("worker")
        async with connected(coord, "sender") as sender:
            old = await _hold(coord.address, name, HOG_BLOCKS)
            await old.aclose()
            task = await _reclaim_of(state)
            # the same name registers again while the old record's blocks go back
            stream, conn = await raw_hello(coord.address, name)
            try:
                mine = await _ask(stream, conn, Request(2, Op.ALLOC, {"size": 4096}))
                gift = await sender.alloc(100)
                await sender.send(gift, to=name)  # reaches the new process, not the old
                assert not task.done()
                new = state.table.processes[name]
                assert [e.block.id for e in new.inbox] == [gift.id]
                assert new.blocks == {mine.result["block"], gift.id}
                (usage,) = [u for u in coord.stats().usage if u.name == name]
                assert usage.blocks == 2  # none of the old record's
                left = [r for r in state.table.blocks.values() if r.owner not in (new, None)]
                assert left and all(r.owner_name == "" for r in left)  # nobody live's
                await task
                assert set(state.table.blocks) == new.blocks  # its blocks untouched
                assert coord.stats().processes.count(name) == 1
                await _ask(stream, conn, Request(3, Op.FREE, {"block": mine.result["block"]}))
            finally:
                await stream.aclose()
        await _turns_until(lambda: not coord.stats().processes and not state.reclaims)
        assert_pool_clean(coord)


async def test_a_cancelled_reclaim_gives_back_the_rest_at_once() -> None:
    async with isolated_coordinator(pool_size=POOL) as coord:
        state = _state(coord)
        hog = await _hold(coord.address, unique_name("hog"), HOG_BLOCKS)
        await hog.aclose()
        task = await _reclaim_of(state)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not state.reclaims
        assert_pool_clean(coord)


async def test_closing_the_coordinator_during_a_reclaim_leaks_nothing() -> None:
    coord = blockipc.Coordinator(pool_size=POOL)
    with capture_logs() as logs:
        async with coord:
            state = _state(coord)
            hog = await _hold(coord.address, unique_name("hog"), HOG_BLOCKS)
            await hog.aclose()
            task = await _reclaim_of(state)
            await coord.aclose()  # before the reclaim could finish on its own
            assert task.done() and not task.cancelled()
            assert not state.reclaims
    assert state.table.blocks == {} and coord.pool.used_bytes == 0
    (event,) = _disconnects(logs)
    assert event["blocks_freed"] == HOG_BLOCKS
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


async def test_a_write_lease_ended_by_a_disconnect_moves_the_generation_on(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """A grantee that wrote through its write lease's view and was killed: the block's
    generation moves on as a released write lease's does, so the owner's cached ``get``
    is not served stale."""
    block = await client.alloc(16)
    await client.write(block, b"old")
    assert await client.get(block) == b"old" + bytes(13)  # cached at this generation
    name = unique_name("writer")
    async with spawn("lease_writer", coord.address, name, block.id, "new") as writer:
        await writer.expect("ready")
        await client.grant(block, to=name, mode="w")
        await writer.expect("written")
        writer.kill()
        await writer.wait()
    await _turns_until(lambda: name not in coord.stats().processes)
    assert await client.get(block) == b"new" + bytes(13)
    await client.free(block)
