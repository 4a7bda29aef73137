"""Real processes: streams with backpressure, ``kill -9`` of receivers and senders, and
a large copy that must not stall a coordinator running in another process.

Children are ``python tests/_procs.py ROLE ...`` (see there); every test that starts
one kills it and waits for it, whatever happens. Every test runs on asyncio's loop and
on uvloop (in the test process; the children use uvloop).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import anyio
import pytest

import blockipc
from _procs import sha256, spawn, stream_payload, wait_until
from blockipc import PeerUnreachable
from blockipc.testing import unique_name

MiB = 1 << 20


async def test_ten_thousand_sends_to_a_slow_consumer(coord: blockipc.Coordinator) -> None:
    """Two producers, 5,000 blocks each, into an inbox of 8 that is drained slowly:
    nothing lost, nothing duplicated, every checksum right, each sender's order kept."""
    per_sender, size = 5_000, 256
    consumer = unique_name("consumer")
    producers = [unique_name("producer") for _ in range(2)]
    async with spawn(
        "slow_consumer", coord.address, consumer, ",".join(producers), 2 * per_sender, 8, 500
    ) as rx:
        await rx.expect("ready")
        async with (
            spawn(
                "stream_producer", coord.address, producers[0], consumer, per_sender, size, "q"
            ) as a,
            spawn(
                "stream_producer", coord.address, producers[1], consumer, per_sender, size, "q"
            ) as b,
        ):
            done = await rx.expect("done", timeout=50)
            for producer in (a, b):
                await producer.expect("ready")
                assert (await producer.expect("done"))["sent"] == per_sender
    assert done["received"] == dict.fromkeys(producers, per_sender)
    assert (done["bad"], done["duplicates"], done["out_of_order"]) == (0, 0, 0)
    assert done["stats"] == 0  # every block freed by the consumer before it reported


async def test_kill_9_of_a_receiver_with_a_full_inbox(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """Its inbox's blocks go back to the pool; the senders waiting for room get
    ``PeerUnreachable`` and keep their blocks."""
    start = coord.stats()
    name = unique_name("sink")
    async with blockipc.connect(coord.address, name=unique_name("second")) as second:
        async with spawn("sink", coord.address, name, 4) as sink:
            await sink.expect("ready")
            queued = [await client.alloc(MiB) for _ in range(4)]
            for block in queued:
                await client.send(block, to=name)  # fills the inbox
            waiting = [await c.alloc(MiB) for c in (client, second, second)]
            tasks = [
                asyncio.ensure_future(c.send(block, to=name))
                for c, block in zip((client, second, second), waiting, strict=True)
            ]
            await asyncio.sleep(0.1)
            assert not any(t.done() for t in tasks)
            assert coord.stats().blocks == start.blocks + 7
            sink.kill()
            assert await sink.wait() == -signal.SIGKILL
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, PeerUnreachable) for r in results), results
        # the four blocks of its inbox are freed; the three waiting ones stayed
        await wait_until(lambda: coord.stats().blocks == start.blocks + 3)
        for c, block in zip((client, second, second), waiting, strict=True):
            await c.write(block, b"still mine")
            await c.free(block)
    await wait_until(lambda: coord.stats().processes == (client.name,))
    stats = coord.stats()
    assert (stats.blocks, stats.free_bytes, stats.leases) == (
        start.blocks,
        start.free_bytes,
        start.leases,
    )


async def test_kill_9_of_a_sender_mid_stream(
    coord: blockipc.Coordinator,
) -> None:
    """The receiver still gets, in order and intact, everything the sender sent."""
    start = coord.stats()
    size = 4096
    async with blockipc.connect(
        coord.address, name=unique_name("receiver"), inbox_messages=8
    ) as rx:
        name = unique_name("sender")
        got: list[int] = []

        async def take() -> None:
            msg = await rx.recv()
            data = await rx.read(msg.block)
            assert msg.sender == name
            assert sha256(data) == msg.header["sha256"]
            assert data == stream_payload(msg.header["seq"], size)
            got.append(msg.header["seq"])
            await rx.free(msg.block)

        async with spawn("stream_producer", coord.address, name, rx.name, 100_000, size) as tx:
            await tx.expect("ready")
            for _ in range(50):
                await take()
            await asyncio.sleep(0.05)  # the sender is waiting for room again
            tx.kill()
            assert tx.proc.stdout is not None
            lines = (await tx.proc.stdout.read()).decode().splitlines()
            assert await tx.wait() == -signal.SIGKILL
        reported = [json.loads(line)["seq"] for line in lines if line.startswith("{")]
        await wait_until(lambda: name not in coord.stats().processes)
        while True:
            with anyio.move_on_after(0.2):
                await take()
                continue
            break
        assert got == list(range(len(got)))
        # everything the sender saw delivered arrived (a send that got in just before
        # the kill may arrive without having been reported)
        assert reported and reported[-1] < len(got) <= reported[-1] + 2
        assert coord.stats().blocks == start.blocks
    await wait_until(lambda: not coord.stats().processes)


@pytest.mark.one_loop  # the coordinator is a child process
async def test_large_copy_in_another_process_keeps_answering(short_dir: Path) -> None:
    """A 256 MiB copy by a coordinator running in its own process: another client's
    small requests keep being answered while it runs (liveness, not speed)."""
    path = short_dir / "c.sock"
    size = 256 * MiB
    async with spawn("coordinator", path, "544MiB") as coordinator:
        await coordinator.expect("ready")
        async with (
            blockipc.connect(path, name="copier") as copier,
            blockipc.connect(path, name="pinger") as pinger,
        ):
            src = await copier.alloc(size)
            dst = await copier.alloc(size)
            async with copier.lease(src, "w") as view:
                for i in range(0, size, 16 * MiB):
                    view[i : i + 16 * MiB] = bytes([i // (16 * MiB) + 1]) * (16 * MiB)
                view[:8] = b"FIRSTBYT"
                view[-8:] = b"LASTBYTE"
            small = await pinger.alloc(64)
            await pinger.write(small, b"p" * 64)
            rtts: list[float] = []
            copy = asyncio.ensure_future(copier.copy(src, dst))
            await asyncio.sleep(0)  # the COPY request is on its way
            t_start = time.perf_counter()
            while not copy.done():
                t0 = time.perf_counter()
                assert await pinger.read(small, 0, 8) == b"pppppppp"
                rtts.append(time.perf_counter() - t0)
            assert await copy == size
            elapsed = time.perf_counter() - t_start
            # answered between the chunks (256 of them): a count, not a time, so that a
            # busy machine cannot fail it
            assert len(rtts) >= 20, (len(rtts), elapsed, max(rtts))
            async with copier.lease(dst, "r") as got, copier.lease(src, "r") as want:
                assert bytes(got[:8]) == b"FIRSTBYT" and bytes(got[-8:]) == b"LASTBYTE"
                assert got == want
            for block in (src, dst):
                await copier.free(block)
            await pinger.free(small)
            stats = await pinger.stats()
            assert (stats.blocks, stats.used_bytes, stats.leases) == (0, 0, 0)
