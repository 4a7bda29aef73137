"""Header-only messages (issue 15, item 3): ``send(None, to, header=...)`` and
``publish(None, topic, header=...)`` deliver a header with no block, in order with the
blocks of the same sender, under the same inbox bounds, waits and cancellation; and
they leave nothing behind (the ``coord`` fixture checks the pool at teardown)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

import blockipc
from _helpers import connected
from blockipc import InboxFull, InvalidRequest, PeerUnreachable
from blockipc.testing import unique_name


async def test_send_a_header_alone_in_order_with_blocks(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.alloc(10)
    await client.write(block, b"0123456789")
    await client.send(None, other.name, header={"event": "start"})
    await client.send(block, other.name, header={"i": 1})
    await client.send(None, other.name)  # not even a header: a bare signal
    first, second, third = [await other.recv() for _ in range(3)]
    assert (first.block, first.header, first.sender) == (None, {"event": "start"}, client.name)
    assert second.block is not None and await other.read(second.block) == b"0123456789"
    assert (third.block, third.header) == (None, {})
    await other.free(second.block)
    assert coord.stats().blocks == 0
    # in a batch too
    for i in range(3):
        await client.send(None, other.name, header={"i": i})
    msgs = await other.recv_many()
    assert [(m.block, m.header["i"]) for m in msgs] == [(None, 0), (None, 1), (None, 2)]


async def test_a_header_alone_counts_against_the_inbox_and_waits_for_room(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "small", inbox_messages=1) as small:
        await client.send(None, small.name, header={"n": 1})
        with pytest.raises(InboxFull):
            await client.send(None, small.name, header={"n": 2}, nowait=True)
        waiting = asyncio.ensure_future(client.send(None, small.name, header={"n": 3}))
        await anyio.sleep(0.05)
        assert not waiting.done()
        assert (await small.recv()).header == {"n": 1}
        await waiting
        assert (await small.recv()).header == {"n": 3}
        # a cancelled wait withdraws it
        await client.send(None, small.name, header={"n": 4})
        waiting = asyncio.ensure_future(client.send(None, small.name, header={"n": 5}))
        await anyio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await small.recv()).header == {"n": 4}
        with anyio.move_on_after(0.05):
            await small.recv()
            pytest.fail("a cancelled send was delivered")


async def test_a_header_alone_waits_for_its_peer_and_fails_when_it_leaves(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("late")
    with pytest.raises(PeerUnreachable):
        await client.send(None, name, header={"x": 1})
    sent = asyncio.ensure_future(client.send(None, name, header={"x": 2}, wait_for_peer=10))
    await anyio.sleep(0.05)
    async with blockipc.connect(coord.address, name=name, inbox_messages=1) as late:
        await sent
        assert (await late.recv()).header == {"x": 2}
        await client.send(None, name, header={"x": 3})
        queued = asyncio.ensure_future(client.send(None, name, header={"x": 4}))
        await anyio.sleep(0.05)
    with pytest.raises(PeerUnreachable):
        await queued  # its receiver left with the inbox full


async def test_publish_a_header_alone(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    topic = unique_name("events")
    assert await client.publish(None, topic, header={"up": True}) == 0
    await other.subscribe(f"{topic}.#")
    async with connected(coord, "exact") as exact:
        await exact.subscribe(f"{topic}.a")
        assert await client.publish(None, f"{topic}.a", header={"up": True}) == 2
        for c in (other, exact):
            msg = await c.recv()
            assert (msg.block, msg.header, msg.topic) == (None, {"up": True}, f"{topic}.a")
    assert coord.stats().blocks == 0


async def test_a_header_alone_is_for_local_processes(client: blockipc.Client) -> None:
    with pytest.raises(InvalidRequest, match="local processes only"):
        await client.send(None, "node/someone", header={"x": 1})
