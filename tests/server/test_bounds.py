"""What one connection can make the coordinator hold is bounded (issue 14): the replies
it does not read, and the requests it has waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

import blockipc
from _helpers import raw_hello
from _procs import serving
from blockipc._core.limits import MAX_PARKED
from blockipc._core.protocol import Op, Reply, Request
from blockipc._handshake import receive_event

MiB = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_stops_reading_does_not_grow_the_coordinator(
    short_dir: Path,
) -> None:
    # 600 pipelined routed reads of 1 MiB, never read: 600 MiB of replies if the
    # coordinator kept answering (3,000 of them grew a serve by 3 GB before)
    sock = short_dir / "c.sock"
    with serving(sock, "--socket", str(sock), "--pool-size", "8MiB") as served:
        stream, conn = await raw_hello(str(sock), "hog")
        try:
            await stream.send(conn.send(Request(2, Op.ALLOC, {"size": MiB})))
            reply, _ = await receive_event(stream, conn)
            assert isinstance(reply, Reply)
            block = reply.result["block"]
            before = rss(served.pid)
            reads = b"".join(
                conn.send(Request(10 + i, Op.READ, {"block": block, "offset": 0, "size": MiB}))
                for i in range(600)
            )
            await stream.send(reads)
            # meanwhile another client is served as usual
            async with blockipc.connect(str(sock), name="good") as good:
                mine = await good.alloc(64)
                for _ in range(200):
                    await good.write(mine, b"x" * 64)
                    assert await good.read(mine, 0, 64) == b"x" * 64
                await anyio.sleep(0.3)  # (time for a coordinator that buffers to do so)
                grown = rss(served.pid) - before
                assert grown < 64 * MiB, f"the coordinator grew by {grown / MiB:.0f} MiB"
        finally:
            await stream.aclose()
        # the hog gone, everything it held is reclaimed and the coordinator serves on
        async with blockipc.connect(str(sock), name="after") as after:
            await after.free(await after.alloc(MiB))


async def test_a_connection_has_at_most_max_parked_requests_waiting(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    waiting = [asyncio.create_task(client.recv()) for _ in range(MAX_PARKED)]
    try:
        session = next(iter(coord._state.sessions.values()))
        await anyio.sleep(0.2)
        for _ in range(100):
            if len(session.parked) == MAX_PARKED:
                break
            await anyio.sleep(0.05)
        assert len(session.parked) == MAX_PARKED
        with (
            anyio.fail_after(10),  # (it would wait for a message, for ever)
            pytest.raises(blockipc.QuotaExceeded, match=f"{MAX_PARKED} requests waiting"),
        ):
            await client.recv()
        block = await client.alloc(64)  # what does not wait is still answered
        with pytest.raises(blockipc.QuotaExceeded):  # a send that might wait is not
            await client.send(block, to=client.name)
        assert len(session.parked) == MAX_PARKED  # nothing half-done was left behind
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    for _ in range(100):
        if not session.parked:
            break
        await anyio.sleep(0.05)
    assert not session.parked
    await client.send(block, to=client.name)  # room again
    msg = await client.recv()
    await client.free(msg.block)


async def test_a_client_whose_parked_answers_pile_up_unread_is_closed(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    # 80 routed reads of 1 MiB park behind another client's write lease, their replies
    # never read; when the lease ends they are all answered at once: past MAX_UNSENT
    # (64 MiB) unsent the coordinator closes that connection instead of buffering more
    block = await client.alloc(MiB)
    stream, conn = await raw_hello(coord.address, "hog")
    try:
        await client.grant(block, "hog", "r")
        with blockipc.testing.capture_logs() as logs:
            async with client.lease(block, "w"):
                args = {"block": block.id, "offset": 0, "size": MiB}
                reads = [conn.send(Request(10 + i, Op.READ, args)) for i in range(80)]
                await stream.send(b"".join(reads))
                session = next(s for s in coord._state.sessions.values() if s.proc.name == "hog")
                for _ in range(200):
                    if len(session.parked) == 80:
                        break
                    await anyio.sleep(0.02)
                assert len(session.parked) == 80
            # the lease ended: 80 MiB of answers for a client that reads none of them
            for _ in range(200):
                if "hog" not in coord.stats().processes:
                    break
                await anyio.sleep(0.02)
        assert "hog" not in coord.stats().processes
        assert [e for e in logs if e["event"] == "client.not_reading"]
    finally:
        await stream.aclose()
    await client.free(block)
