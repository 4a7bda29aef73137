"""Real processes: exchanging blocks, dying with ``kill -9``, and the coordinator dying.

Children are ``python tests/_procs.py ROLE ...`` (see there); every test that starts
one kills it and waits for it, whatever happens. Every test runs on asyncio's loop and
on uvloop (in the test process; the children use uvloop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import blockipc
from _peer_wait_procs import spawn as peer_wait_spawn
from _procs import payload, sha256, spawn, wait_until
from blockipc import ConnectionClosed
from blockipc.testing import assert_pool_clean, isolated_coordinator, unique_name

KiB, MiB = 1 << 10, 1 << 20


async def test_producer_and_consumer_processes_exchange_blocks(
    coord: blockipc.Coordinator,
) -> None:
    start = coord.stats()
    sizes = [1, 4 * KiB, MiB, 64 * MiB]  # 64 MiB is the whole pool: one at a time
    consumer_name, producer_name = unique_name("consumer"), unique_name("producer")
    async with spawn("consumer", coord.address, consumer_name, 2 * len(sizes)) as consumer:
        await consumer.expect("ready")
        async with spawn(
            "producer", coord.address, producer_name, consumer_name, *sizes
        ) as producer:
            await producer.expect("ready")
            verified = [await consumer.expect("verified", timeout=30) for _ in range(8)]
            await consumer.expect("done")
            sent = [await producer.expect("sent") for _ in range(8)]
            await producer.expect("done")
            assert [(e["size"], e["method"]) for e in verified] == [
                (size, method) for size in sizes for method in ("lease", "write")
            ]
            assert all(e["ok"] for e in verified), verified
            assert {e["sender"] for e in verified} == {producer_name}
            assert [e["size"] for e in sent] == [e["size"] for e in verified]
            # both still connected, every block freed by the consumer: back to the start
            stats = coord.stats()
            assert (stats.free_bytes, stats.blocks, stats.leases) == (start.free_bytes, 0, 0)
            assert set(stats.processes) == {consumer_name, producer_name}
    await wait_until(lambda: not coord.stats().processes)
    assert coord.stats().free_bytes == start.free_bytes


async def test_kill_9_reclaims_blocks_and_write_lease(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    mine = await client.alloc(3 * MiB)  # so "where it was" is not simply "all free"
    await client.write(mine, b"mine")
    start = coord.stats()
    name = unique_name("holder")
    with blockipc.testing.capture_logs() as logs:
        async with spawn("holder", coord.address, name) as holder:
            ready = await holder.expect("ready")
            stats = coord.stats()
            assert stats.blocks == start.blocks + len(ready["blocks"]) == start.blocks + 4
            assert stats.leases == 2  # its write lease and a read lease
            assert stats.free_bytes < start.free_bytes
            holder.kill()
            assert await holder.wait() == -signal.SIGKILL
            deadline = time.monotonic() + 5
            while coord.stats().free_bytes != start.free_bytes:
                assert time.monotonic() < deadline, coord.stats()
                await asyncio.sleep(0.01)
    assert coord.stats() == start
    assert coord.stats().leases == 0
    (gone,) = [e for e in logs if e["event"] == "client.disconnect" and e["name"] == name]
    assert (gone["blocks_freed"], gone["leases_reclaimed"]) == (4, 2)
    # its name can be taken again
    async with blockipc.connect(coord.address, name=name) as again:
        assert (await again.stats()).processes == tuple(sorted((client.name, name)))
    # the other client kept working all along
    block = await client.alloc(MiB)
    data = payload(MiB, 9)
    await client.write(block, data)
    assert await client.read(block) == data
    assert await client.read(mine, 0, 4) == b"mine"
    await client.free(block)
    await client.free(mine)


async def test_block_in_flight_stays_with_receiver_when_sender_dies(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("sender")
    async with spawn("sender", coord.address, name, client.name, MiB) as sender:
        sent = await sender.expect("sent")
        sender.kill()
        await sender.wait()
    await wait_until(lambda: name not in coord.stats().processes)
    assert coord.stats().blocks == 1
    with anyio.fail_after(2):
        msg = await client.recv()
    assert (msg.block.id, msg.sender, msg.block.owner) == (sent["block"], name, client.name)
    data = await client.read(msg.block)
    assert sha256(data) == msg.header["sha256"] == sha256(payload(MiB, 7))
    await client.free(msg.block)


async def test_coordinator_killed_ends_every_pending_await(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    async with spawn("coordinator", path, "16MiB") as coordinator:
        await coordinator.expect("ready")
        client = await blockipc.connect(path, name="survivor")
        try:
            block = await client.alloc(MiB)
            outcomes: dict[str, tuple[BaseException | None, float]] = {}
            held = asyncio.Event()
            release = asyncio.Event()

            async def record(name: str, call: Callable[[], Awaitable[Any]]) -> None:
                try:
                    await call()
                    outcomes[name] = (None, time.monotonic())
                except BaseException as exc:  # noqa: BLE001 -- checked below
                    outcomes[name] = (exc, time.monotonic())

            async def hold() -> None:
                async with client.lease(block, "w") as view:
                    view[:4] = b"held"
                    held.set()
                    await release.wait()

            async def contend() -> None:
                async with client.lease(block, "w"):
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await held.wait()
                tg.start_soon(record, "recv", client.recv)
                tg.start_soon(record, "lease", contend)
                tg.start_soon(record, "recv2", client.recv)
                await asyncio.sleep(0.1)
                assert not outcomes
                killed_at = time.monotonic()
                coordinator.kill()
                await wait_until(lambda: len(outcomes) == 3, timeout=1)
                release.set()
            for name, (exc, when) in outcomes.items():
                assert isinstance(exc, ConnectionClosed), (name, exc)
                assert when - killed_at < 1, name
            assert client.closed
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: client.alloc(1),
                lambda: client.read(block, 0, 1),
                lambda: client.write(block, b"x"),
                lambda: client.free(block),
                lambda: client.send(block, to="anyone"),
                lambda: client.recv(),
                lambda: client.stats(),
            ]
            for call in calls:
                with pytest.raises(ConnectionClosed):
                    await call()
            with pytest.raises(ConnectionClosed):
                async with client.lease(block, "r"):
                    pass
        finally:
            await client.close()
        assert await coordinator.wait() == -signal.SIGKILL


async def test_child_maps_new_segments_over_the_side_channel() -> None:
    async with isolated_coordinator(pool_size="4MiB", max_pool_size="16MiB") as coord:
        async with blockipc.connect(coord.address, name=unique_name("writer")) as client:
            name = unique_name("reader")
            async with spawn("reader", coord.address, name) as reader:
                assert (await reader.expect("ready"))["segments"] == 1
                filler = await client.alloc(4 * MiB)  # segment 0 is full now
                for size, segments in ((MiB, 2), (8 * MiB, 3)):
                    block = await client.alloc(size)  # in a segment made after it connected
                    assert coord.stats().segments == segments
                    data = payload(size, size)
                    await client.write(block, data)
                    await client.send(block, to=name)
                    seen = await reader.expect("read")
                    assert seen["block"] == block.id
                    assert seen["sha256"] == sha256(data)
                    assert seen["segments_after"] == seen["segments_before"] + 1 == segments
                await client.free(filler)
                await wait_until(lambda: coord.stats().blocks == 0)
        await wait_until(lambda: not coord.stats().processes)
        assert_pool_clean(coord)
        assert coord.stats().pool_size == 16 * MiB


# -- clients that die while a request of theirs is parked --------------------------------
def _rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _kill_parked_senders(address: str, to: str, batches: int) -> None:
    """``batches`` times 40 clients (10 processes of 4) each park a send waiting for
    ``to`` (``wait_for_peer=1e6``), then die by SIGKILL with their process."""
    for _ in range(batches):
        async with peer_wait_spawn(
            "dying_senders", address, unique_name("doomed"), 10, 4, to
        ) as forker:
            ready = await forker.expect("ready")
            for pid in ready["pids"]:
                os.kill(pid, signal.SIGKILL)
            assert (await forker.expect("reaped"))["killed"] == len(ready["pids"])


async def test_killed_senders_waiting_for_a_peer_leave_no_wait_behind(
    coord: blockipc.Coordinator,
) -> None:
    """A session's parked ``wait_for_peer`` send ends with the session: nothing stays
    in the coordinator's registry of waits for a peer."""
    nobody = unique_name("nobody")
    await _kill_parked_senders(coord.address, nobody, 1)
    await wait_until(lambda: not coord.stats().processes)
    assert not coord._state.peer_waits
    # the name still works as a receiver, and nothing is delivered to it
    async with blockipc.connect(coord.address, name=nobody) as late:
        with anyio.move_on_after(0.1):
            msg = await late.recv()
            pytest.fail(f"a dead sender's parked send was delivered: {msg}")


@pytest.mark.one_loop  # the coordinator is a child process
async def test_200_killed_senders_waiting_for_a_peer_do_not_grow_the_coordinator(
    short_dir: Path,
) -> None:
    """Before the fix each dead sender's wait pinned its session (and that session's
    256 KiB receive buffer) until the wait ran out: 200 deaths grew the coordinator by
    about 53 MB. A warm-up round of the same size first: the sessions alive at once
    (more of them on a busy machine) leave freed memory that the allocator keeps, and
    the second round reuses it, where a leak would grow by a buffer per death. A bound
    of 10 MB leaves room for allocator noise and stays far below that."""
    path = short_dir / "c.sock"
    async with spawn("coordinator", path, "16MiB") as coordinator:
        await coordinator.expect("ready")
        await _kill_parked_senders(str(path), "nobody", 5)  # warm-up: caches, arenas
        async with blockipc.connect(path, name="watcher") as watcher:
            while (await watcher.stats()).processes != ("watcher",):
                await anyio.sleep(0.01)
            before = _rss(coordinator.pid)
            await _kill_parked_senders(str(path), "nobody", 5)  # 200 clients
            while (await watcher.stats()).processes != ("watcher",):
                await anyio.sleep(0.01)
            grown = _rss(coordinator.pid) - before
        assert grown < 10 * MiB, f"the coordinator grew by {grown / MiB:.1f} MiB"
