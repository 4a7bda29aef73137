"""Request/reply on a live coordinator (``_server/ops/requests.py``), clients in this
process: payloads inline and as blocks both ways, ``fail``, timeouts and cancelling
(the late reply dropped, its block freed), unknown names, the bounds on requests queued
and in hand, a responder that closes with requests; the ``coord`` fixture checks that
nothing is left in the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

import blockipc
from _helpers import connected
from _procs import wait_until
from blockipc import InboxFull, InvalidRequest, PeerUnreachable, QuotaExceeded, RemoteError
from blockipc._core.limits import (
    MAX_DIRECT_ADDRESS,
    MAX_HEADER,
    MAX_IN_HAND,
    MAX_INLINE_PAYLOAD,
    MAX_QUEUED_REQUESTS,
)
from blockipc._core.protocol import (
    MAX_FRAME_SIZE,
    NO_BLOCK,
    Connection,
    Op,
    Reply,
    Request,
    Role,
    read_only_refusal,
)
from blockipc.testing import unique_name

Handler = Callable[[blockipc.IncomingRequest], Awaitable[None]]


async def echo(req: blockipc.IncomingRequest) -> None:
    await req.reply(req.value)


async def _serve(client: blockipc.Client, handler: Handler) -> None:
    async for req in client.requests():
        await handler(req)


class Serving:
    """A responder task over ``client`` running ``handler`` for every request."""

    def __init__(self, client: blockipc.Client, handler: Handler = echo) -> None:
        self.task = asyncio.create_task(_serve(client, handler))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def svc(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with connected(coord, "svc") as c:
        yield c


def desk(coord: blockipc.Coordinator, client: blockipc.Client) -> tuple[int, int]:
    """(queued, in hand) of ``client`` as a responder."""
    state = coord._state
    assert state is not None
    return state.requests.counts(state.table.processes[client.name])


async def test_inline_both_ways(client: blockipc.Client, svc: blockipc.Client) -> None:
    seen: list[tuple[str, str, bool]] = []

    async def handler(req: blockipc.IncomingRequest) -> None:
        seen.append((req.sender, req.codec, req.block is None))
        await req.reply({"n": req.value["n"] + 1})  # the request's codec by default

    serving = Serving(svc, handler)
    try:
        assert await client.request(svc.name, {"n": 1}) == {"n": 2}  # msgpack by default
        assert await client.request(svc.name, {"n": 41}, codec="json", timeout=5) == {"n": 42}
        # several at once, to one responder, each answered to its own caller
        results = await asyncio.gather(*(client.request(svc.name, {"n": i}) for i in range(20)))
        assert results == [{"n": i + 1} for i in range(20)]
    finally:
        await serving.stop()
    assert seen[:2] == [(client.name, "msgpack", True), (client.name, "json", True)]


async def test_blocks_both_ways_and_nothing_left(
    coord: blockipc.Coordinator, client: blockipc.Client, svc: blockipc.Client
) -> None:
    big = np.arange(MAX_INLINE_PAYLOAD, dtype=np.float64)  # 512 KiB: over the inline limit
    blocks: list[blockipc.Block | None] = []

    async def handler(req: blockipc.IncomingRequest) -> None:
        blocks.append(req.block)
        value = req.value
        if isinstance(value, np.ndarray):
            await req.reply(value * 2, codec="numpy")  # a block back
        elif value == b"echo":
            await req.reply(b"x" * (MAX_INLINE_PAYLOAD + 1), codec="raw")
        else:  # a Block of the request's, sent back as it is (zero-copy)
            assert req.block is not None
            async with svc.lease(req.block, "w") as view:
                view[:4] = b"DONE"
            await req.reply(req.block)

    serving = Serving(svc, handler)
    before = coord.stats().blocks
    try:
        got = await client.request(svc.name, big, codec="numpy")
        assert got.dtype == big.dtype and np.array_equal(got, big * 2)
        assert blocks[-1] is not None and blocks[-1].size == big.nbytes
        assert await client.request(svc.name, b"echo", codec="raw") == b"x" * (
            MAX_INLINE_PAYLOAD + 1
        )
        assert blocks[-1] is None  # small: inline
        block = await client.alloc(MAX_INLINE_PAYLOAD * 2)
        await client.write(block, b"todo")
        got = await client.request(svc.name, block, codec="raw")  # raw: a block's codec
        assert got[:4] == b"DONE" and len(got) == block.size
        # every block made, moved or handed back is freed (the Block sent is not ours;
        # a reply's block is freed by a FREE the requester does not wait for)
        await wait_until(lambda: coord.stats().blocks == before)
        with pytest.raises(blockipc.BlockIPCError):
            await client.free(block)
    finally:
        await serving.stop()


async def test_fail_raises_remote_error(client: blockipc.Client, svc: blockipc.Client) -> None:
    async def handler(req: blockipc.IncomingRequest) -> None:
        if req.value == "text":
            await req.fail("no such thing")
        else:
            await req.fail(ValueError(f"bad input {req.value!r}"))
        with pytest.raises(InvalidRequest, match="failed already"):
            await req.reply(1)

    serving = Serving(svc, handler)
    try:
        with pytest.raises(RemoteError) as info:
            await client.request(svc.name, 7)
        assert str(info.value) == f"{svc.name!r} failed the request: ValueError: bad input 7"
        assert isinstance(info.value, blockipc.BlockIPCError)
        with pytest.raises(RemoteError, match=r"failed the request: no such thing$"):
            await client.request(svc.name, "text")
    finally:
        await serving.stop()


async def test_a_timeout_withdraws_and_the_late_reply_is_dropped(
    coord: blockipc.Coordinator, client: blockipc.Client, svc: blockipc.Client
) -> None:
    before = coord.stats().blocks
    # queued (the responder is not receiving): withdrawn, and a Block stays ours
    block = await client.alloc(100)
    with pytest.raises(TimeoutError):
        await client.request(svc.name, block, timeout=0.05)
    await wait_until(lambda: desk(coord, svc) == (0, 0))
    with pytest.raises(TimeoutError):
        await svc.next_request(timeout=0.05)  # nothing was left for it
    await client.write(block, b"still mine")
    await client.free(block)
    # in the responder's hands: its reply, with a block, comes after the timeout
    receiving = asyncio.create_task(svc.next_request())
    with pytest.raises(TimeoutError):
        await client.request(svc.name, b"slow", codec="raw", timeout=0.05)
    req = await receiving
    assert req.value == b"slow"
    await wait_until(lambda: desk(coord, svc) == (0, 1))
    await req.reply(b"r" * (MAX_INLINE_PAYLOAD * 2), codec="raw")  # dropped: freed
    assert desk(coord, svc) == (0, 0)
    assert coord.stats().blocks == before


async def test_cancelling_a_request_withdraws_it(
    coord: blockipc.Coordinator, client: blockipc.Client, svc: blockipc.Client
) -> None:
    before = coord.stats().blocks
    task = asyncio.create_task(client.request(svc.name, b"p" * (MAX_INLINE_PAYLOAD * 2), "raw"))
    await wait_until(lambda: desk(coord, svc) == (1, 0))
    assert coord.stats().blocks == before + 1  # the block made for it, carried
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: desk(coord, svc) == (0, 0) and coord.stats().blocks == before)
    # a responder's receive, cancelled, leaves the requests as they were
    waiting = asyncio.create_task(svc.next_request())
    await asyncio.sleep(0.02)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    serving = Serving(svc)
    try:
        assert await client.request(svc.name, "after") == "after"
    finally:
        await serving.stop()


async def test_unknown_responder(coord: blockipc.Coordinator, client: blockipc.Client) -> None:
    name = unique_name("late")
    with pytest.raises(PeerUnreachable, match="no process named"):
        await client.request(name, 1)
    with pytest.raises(InvalidRequest, match="this coordinator only"):
        await client.request("b/" + name, 1)

    async def late() -> None:
        await asyncio.sleep(0.05)
        async with blockipc.connect(coord.address, name=name) as c:
            req = await c.next_request(timeout=5)
            await req.reply(req.value + 1)

    responder = asyncio.create_task(late())
    assert await client.request(name, 1, wait_for_peer=5, timeout=10) == 2
    await responder


async def test_a_responder_that_closes_fails_its_requests_at_once(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    before = coord.stats().blocks
    async with connected(coord, "svc") as svc:
        in_hand = [
            asyncio.create_task(client.request(svc.name, b"h" * (MAX_INLINE_PAYLOAD * 2), "raw")),
            asyncio.create_task(client.request(svc.name, "inline", timeout=60)),
        ]
        got = [await svc.next_request(), await svc.next_request()]
        assert sorted(r.block is None for r in got) == [False, True]
        queued = asyncio.create_task(client.request(svc.name, "queued", timeout=60))
        await wait_until(lambda: desk(coord, svc) == (1, 2))
    for task in [*in_hand, queued]:
        with pytest.raises(PeerUnreachable, match="disconnected before it answered"):
            await task
    assert coord.stats().blocks == before


async def test_a_requester_that_closes_drops_the_reply(
    coord: blockipc.Coordinator, svc: blockipc.Client
) -> None:
    before = coord.stats().blocks
    async with connected(coord, "asker") as asker:
        task = asyncio.create_task(asker.request(svc.name, "q"))
        req = await svc.next_request()
        queued = asyncio.create_task(asker.request(svc.name, b"z" * (MAX_INLINE_PAYLOAD * 2)))
        await wait_until(lambda: desk(coord, svc) == (1, 1))
    for t in (task, queued):
        with pytest.raises(blockipc.ConnectionClosed):
            await t
    assert desk(coord, svc) == (0, 1)  # the queued one withdrawn, its block freed
    await req.reply(b"y" * (MAX_INLINE_PAYLOAD * 2), codec="raw")  # dropped, its block freed
    assert desk(coord, svc) == (0, 0)
    assert coord.stats().blocks == before


async def test_answers_and_values(client: blockipc.Client, svc: blockipc.Client) -> None:
    task = asyncio.create_task(client.request(svc.name, b"b" * (MAX_INLINE_PAYLOAD * 2), "raw"))
    req = await svc.next_request()
    assert not req.done and repr(req) == f"<IncomingRequest {req.id} from {client.name!r}>"
    await req.reply(b"ok", codec="raw")
    assert req.done and await task == b"ok"
    with pytest.raises(InvalidRequest, match=r"read req\.value first"):
        _ = req.value
    with pytest.raises(InvalidRequest, match="replied already"):
        await req.fail("twice")


async def test_requests_queued_for_a_responder_are_bounded(
    coord: blockipc.Coordinator, client: blockipc.Client, svc: blockipc.Client
) -> None:
    tasks = [
        asyncio.create_task(client.request(svc.name, i, timeout=60))
        for i in range(MAX_QUEUED_REQUESTS)
    ]
    await wait_until(lambda: desk(coord, svc) == (MAX_QUEUED_REQUESTS, 0), timeout=20)
    with pytest.raises(InboxFull, match="requests waiting that it has not received"):
        await client.request(svc.name, "one too many")
    serving = Serving(svc)
    try:
        assert await asyncio.gather(*tasks) == list(range(MAX_QUEUED_REQUESTS))
        assert await client.request(svc.name, "room again") == "room again"
    finally:
        await serving.stop()


async def test_requests_in_hand_are_bounded(
    coord: blockipc.Coordinator, client: blockipc.Client, svc: blockipc.Client
) -> None:
    tasks = [
        asyncio.create_task(client.request(svc.name, i, timeout=60)) for i in range(MAX_IN_HAND)
    ]
    held = [await svc.next_request() for _ in range(MAX_IN_HAND)]
    extra = asyncio.create_task(client.request(svc.name, "extra", timeout=60))
    await wait_until(lambda: desk(coord, svc) == (1, MAX_IN_HAND), timeout=20)
    with pytest.raises(QuotaExceeded, match="requests it has not answered"):
        await svc.next_request()
    await held[0].reply("first")
    last = await svc.next_request()  # room for one more
    assert last.value == "extra"
    for req in [*held[1:], last]:
        await req.reply(req.value)
    assert (await asyncio.gather(*tasks))[:2] == ["first", 1]
    assert await extra == "extra"


def test_the_largest_inline_frames_fit() -> None:
    """A request and a reply carrying an inline payload at its limit, with a codec meta
    at the header rule's limit and the longest strings, fit a frame."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    client.state = server.state = client.state.READY
    meta = {"k": b"x" * (MAX_HEADER - 16)}
    data = b"d" * MAX_INLINE_PAYLOAD
    longest = "\U0001f600" * 1024
    args = {"to": longest, "block": NO_BLOCK, "codec": longest, "meta": meta, "wait_ms": 0}
    server.receive_data(client.send(Request(1, Op.REQUEST, args, data)))
    server.next_event()
    result: dict[str, Any] = {"block": 0, "size": 0, "capacity": 0, "segment": 0, "offset": 0}
    result["direct"] = "\0" * MAX_DIRECT_ADDRESS  # the responder's direct socket
    frame = server.send(Reply(1, Op.REQUEST, {**result, "codec": longest, "meta": meta}, data))
    assert len(frame) <= MAX_FRAME_SIZE


def test_a_read_only_connection_requests_and_replies_inline_only() -> None:
    inline = {"block": NO_BLOCK, "to": "svc", "codec": "raw", "meta": {}, "wait_ms": 0}
    assert read_only_refusal(Op.REQUEST, inline) is None
    assert read_only_refusal(Op.RESPOND, {**inline, "request": 1}) is None
    assert read_only_refusal(Op.SERVE, {}) is None
    refused = read_only_refusal(Op.REQUEST, {**inline, "block": 5})
    assert refused is not None and "carrying a block" in refused
