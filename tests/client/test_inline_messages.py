"""Inline messages (issue 17, item 3): ``send_value`` and ``send_many`` put small
encoded objects into an inbox inside the request's frame; ``recv`` and ``recv_many``
return them inline. Their bounds are the inbox's: each message takes a place of
``inbox_messages`` and its bytes count against ``inbox_bytes``; a batch is admitted
whole; the inline limit, ``nowait`` and cancelling are as for blocks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import blockipc
from _helpers import connected
from _procs import wait_until
from blockipc import InboxFull, InvalidRequest, PeerUnreachable
from blockipc._core.limits import MAX_BATCH, MAX_INLINE_PAYLOAD
from blockipc.testing import unique_name


def usage(coord: blockipc.Coordinator, name: str) -> tuple[int, int]:
    u = {p.name: p for p in coord.stats().usage}[name]
    return u.inbox, u.inbox_bytes


async def test_send_value_arrives_inline_and_decodes(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    blocks = coord.stats().blocks
    await client.send_value(other.name, {"a": [1, 2]}, header={"kind": "reading"})
    await client.send_value(other.name, b"\x00" * 64, codec="raw")
    await client.send_value(other.name, np.arange(6, dtype="int32").reshape(2, 3), codec="numpy")
    assert coord.stats().blocks == blocks  # no block for any of them
    assert usage(coord, other.name) == (3, len(b"\x81\xa1a\x92\x01\x02") + 64 + 24)
    first = await other.recv()
    assert (first.block, first.sender, first.header) == (None, client.name, {"kind": "reading"})
    assert first.codec == "msgpack" and first.value == {"a": [1, 2]}
    raw, arr = await other.recv_many(8)
    assert raw.data == b"\x00" * 64 and raw.value == b"\x00" * 64
    assert arr.value.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert usage(coord, other.name) == (0, 0)


async def test_send_many_is_one_batch_received_in_order_with_blocks_between(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.alloc(10)
    await client.send_many(other.name, [{"i": i} for i in range(5)], header={"h": 1})
    await client.send(block, other.name)
    await client.send(None, other.name, header={"event": True})
    await client.send_many(other.name, [b"x" * i for i in range(3)], codec="raw")
    got = await other.recv_many(MAX_BATCH)
    assert [m.value for m in got[:5]] == [{"i": i} for i in range(5)]
    assert all(m.header == {"h": 1} for m in got[:5])
    got[0].header["mine"] = True  # each message's header is its own
    assert got[1].header == {"h": 1}
    assert got[5].block is not None and got[5].block.id == block.id and got[5].codec is None
    with pytest.raises(InvalidRequest, match="carries block"):
        _ = got[5].value
    assert got[6].block is None and got[6].header == {"event": True}
    with pytest.raises(InvalidRequest, match="header alone"):
        _ = got[6].value
    assert [m.value for m in got[7:]] == [b"", b"x", b"xx"]
    await other.free(got[5].block)


async def test_send_many_splits_what_one_request_cannot_carry(
    client: blockipc.Client, coord: blockipc.Coordinator
) -> None:
    async with connected(coord, "big", inbox_messages=4 * MAX_BATCH) as rx:
        objs = [i.to_bytes(4, "little") for i in range(MAX_BATCH + 10)]  # over MAX_BATCH
        objs += [bytes(40_000), bytes(40_000)]  # over MAX_INLINE_PAYLOAD together
        await client.send_many(rx.name, objs, codec="raw")
        got: list[bytes] = []
        while len(got) < len(objs):
            got += [m.value for m in await rx.recv_many(MAX_BATCH)]
        assert got == objs


async def test_inline_bounds_are_refused_with_clear_errors(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "small", inbox_messages=4, inbox_bytes=100) as rx:
        with pytest.raises(InvalidRequest, match=f"at most {MAX_INLINE_PAYLOAD} bytes"):
            await client.send_value(rx.name, bytes(MAX_INLINE_PAYLOAD + 1), codec="raw")
        with pytest.raises(InvalidRequest, match=f"at most {MAX_INLINE_PAYLOAD} bytes"):
            await client.send_many(rx.name, [b"ok", bytes(MAX_INLINE_PAYLOAD + 1)], codec="raw")
        with pytest.raises(InvalidRequest, match="can never fit the inbox"):
            await client.send_many(rx.name, [b"m"] * 5, codec="raw")
        with pytest.raises(InvalidRequest, match="this coordinator only"):
            await client.send_value("node-b/x", 1)
        with pytest.raises(PeerUnreachable):
            await client.send_value(unique_name("nobody"), 1)
        assert usage(coord, rx.name) == (0, 0)  # nothing of those got in
        # inline bytes count against inbox_bytes: 60 + 60 > 100 waits, or InboxFull
        await client.send_value(rx.name, bytes(60), codec="raw")
        with pytest.raises(InboxFull, match="is full"):
            await client.send_value(rx.name, bytes(60), codec="raw", nowait=True)
        await client.send_many(rx.name, [bytes(10)] * 3, codec="raw", nowait=True)
        assert usage(coord, rx.name) == (4, 90)
        with pytest.raises(InboxFull):  # places: 4 of 4
            await client.send_many(rx.name, [b""], codec="raw", nowait=True)
        # a batch waits whole, and gets in whole once there is room for all of it
        waiting = asyncio.create_task(client.send_many(rx.name, [bytes(5)] * 2, codec="raw"))
        await wait_until(lambda: len(coord._state.table.processes[rx.name].pending) == 1)
        [first] = await rx.recv_many(1)  # one place free: not enough for the batch
        assert len(first.data) == 60
        assert not waiting.done() and usage(coord, rx.name) == (3, 30)
        await rx.recv()  # two places: it gets in
        await waiting
        assert usage(coord, rx.name) == (4, 30)
        # a cancelled batch that waits is withdrawn whole
        late = asyncio.create_task(client.send_many(rx.name, [b"late"] * 2, codec="raw"))
        await wait_until(lambda: len(coord._state.table.processes[rx.name].pending) == 1)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        got = [m.data for m in await rx.recv_many(8)]
        assert got == [bytes(10), bytes(10), bytes(5), bytes(5)]
        assert usage(coord, rx.name) == (0, 0)
        assert not coord._state.table.processes[rx.name].pending


async def test_recv_many_timeout_raises_and_loses_nothing(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    with pytest.raises(TimeoutError):
        await other.recv_many(4, timeout=0.05)
    with pytest.raises(ValueError, match="positive"):
        await other.recv_many(4, timeout=0)
    await client.send_many(other.name, [1, 2, 3])
    assert [m.value for m in await other.recv_many(2, timeout=5)] == [1, 2]
    assert [m.value for m in await other.recv_many(2, timeout=5)] == [3]


async def test_a_read_only_connection_cannot_send_inline(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "ro", access="r") as ro:
        with pytest.raises(blockipc.AccessDenied, match="read-only"):
            await ro.send_value(client.name, 1)
        with pytest.raises(blockipc.AccessDenied, match="read-only"):
            await ro.send_many(client.name, [1])
        await client.send_value(ro.name, "to a reader")  # receiving is reading
        assert (await ro.recv()).value == "to a reader"
