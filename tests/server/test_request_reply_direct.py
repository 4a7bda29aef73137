"""Direct request/reply (``_client/direct.py``): once a requester has learnt its
responder's direct socket (from the first brokered reply), inline requests go on that
socket and the coordinator sees none of them (its request ids stop moving), with the
brokered path's semantics: order, ``fail``, timeouts that withdraw, ``InboxFull``, a
responder that closes (``PeerUnreachable`` at once), a restart under the same name, a
stale address, blocks still brokered."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import pytest

import blockipc
from _helpers import connected
from _procs import wait_until
from blockipc import InboxFull, PeerUnreachable, RemoteError
from blockipc._core.limits import MAX_INLINE_PAYLOAD, MAX_QUEUED_REQUESTS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="direct request/reply is Linux's"
)


def brokered(coord: blockipc.Coordinator) -> int:
    """The coordinator's next request id: it moves with every brokered request only."""
    state = coord._state
    assert state is not None
    return state.requests._next


async def serve(client: blockipc.Client, seen: list[object] | None = None) -> None:
    async for req in client.requests():
        if seen is not None:
            seen.append((req.sender, req.value))
        if req.value == "fail":
            await req.fail(ValueError("bad input"))
        else:
            await req.reply(req.value)


async def learnt(coord: blockipc.Coordinator, client: blockipc.Client, to: str) -> None:
    """One brokered request, which teaches ``client`` the direct address of ``to``."""
    before = brokered(coord)
    assert await client.request(to, "hello", timeout=10) == "hello"
    assert brokered(coord) == before + 1
    assert to in client._direct_addrs


async def test_inline_requests_go_direct_in_order(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    seen: list[object] = []
    async with connected(coord, "svc") as svc:
        task = asyncio.create_task(serve(svc, seen))
        try:
            await learnt(coord, client, svc.name)
            before = brokered(coord)
            for i in range(30):
                assert await client.request(svc.name, {"n": i}, codec="json") == {"n": i}
            many = await asyncio.gather(*(client.request(svc.name, i) for i in range(50)))
            assert many == list(range(50))
            assert brokered(coord) == before  # none of them crossed the coordinator
            assert seen[1:31] == [(client.name, {"n": i}) for i in range(30)]  # in order
            assert seen[31:] == [(client.name, i) for i in range(50)]
            with pytest.raises(RemoteError) as info:
                await client.request(svc.name, "fail")
            assert str(info.value) == f"{svc.name!r} failed the request: ValueError: bad input"
            # a payload over the inline limit still goes as a block, through the coordinator
            big = b"b" * (MAX_INLINE_PAYLOAD + 1)
            assert await client.request(svc.name, big, codec="raw") == big
            assert brokered(coord) == before + 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_timeout_withdraws_a_direct_request(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "svc") as svc:
        task = asyncio.create_task(serve(svc))
        await learnt(coord, client, svc.name)
        task.cancel()  # not receiving now
        await asyncio.gather(task, return_exceptions=True)
        before = brokered(coord)
        with pytest.raises(TimeoutError):
            await client.request(svc.name, "late", timeout=0.05)
        await wait_until(lambda: not svc._rr_ready)  # the CANCEL took it back
        with pytest.raises(TimeoutError):
            await svc.next_request(timeout=0.05)  # nothing was left for it
        # received, then the requester gives up: the reply is dropped
        receiving = asyncio.create_task(svc.next_request())
        with pytest.raises(TimeoutError):
            await client.request(svc.name, "slow", timeout=0.05)
        req = await receiving
        assert req.value == "slow" and req.block is None
        await req.reply("too late")
        assert brokered(coord) == before


async def test_direct_requests_not_received_are_bounded(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "svc") as svc:
        task = asyncio.create_task(serve(svc))
        await learnt(coord, client, svc.name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        tasks = [
            asyncio.create_task(client.request(svc.name, i, timeout=60))
            for i in range(MAX_QUEUED_REQUESTS)
        ]
        await wait_until(lambda: len(svc._rr_ready) == MAX_QUEUED_REQUESTS, timeout=20)
        with pytest.raises(InboxFull, match="requests wait for this responder"):
            await client.request(svc.name, "one too many")
        task = asyncio.create_task(serve(svc))
        try:
            assert await asyncio.gather(*tasks) == list(range(MAX_QUEUED_REQUESTS))
            assert await client.request(svc.name, "room again") == "room again"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_responder_that_closes_then_restarts_under_its_name(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "svc") as svc:
        name = svc.name
        task = asyncio.create_task(serve(svc))
        await learnt(coord, client, name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        before = brokered(coord)
        in_hand = asyncio.create_task(client.request(name, "in hand", timeout=60))
        req = await svc.next_request()
        queued = asyncio.create_task(client.request(name, "queued", timeout=60))
        await wait_until(lambda: len(svc._rr_ready) == 1)
        assert req.value == "in hand" and brokered(coord) == before
    for t in (in_hand, queued):  # at once, not at their timeout
        with pytest.raises(PeerUnreachable, match="disconnected before it answered"):
            await t
    assert name not in client._direct_addrs  # forgotten with its socket
    async with blockipc.connect(coord.address, name=name) as again:
        task = asyncio.create_task(serve(again))
        try:
            before = brokered(coord)
            assert await client.request(name, 1, timeout=10) == 1  # brokered: learns anew
            assert await client.request(name, 2, timeout=10) == 2  # direct again
            assert brokered(coord) == before + 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_stale_address_falls_back_to_the_coordinator(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "svc") as svc:
        task = asyncio.create_task(serve(svc))
        try:
            client._direct_addrs[svc.name] = "\0blockipc-rr-nobody-listens"
            before = brokered(coord)
            assert await client.request(svc.name, "x", timeout=10) == "x"  # brokered
            assert brokered(coord) == before + 1
            assert client._direct_addrs[svc.name] != "\0blockipc-rr-nobody-listens"
            assert await client.request(svc.name, "y", timeout=10) == "y"  # direct
            assert brokered(coord) == before + 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_read_only_clients_go_direct_inline(coord: blockipc.Coordinator) -> None:
    async with (
        connected(coord, "svc", access="r") as svc,
        connected(coord, "asker", access="r") as asker,
    ):
        task = asyncio.create_task(serve(svc))
        try:
            await learnt(coord, asker, svc.name)
            before = brokered(coord)
            assert await asker.request(svc.name, [1, 2], timeout=10) == [1, 2]
            assert brokered(coord) == before
            with pytest.raises(blockipc.AccessDenied):  # a block still needs write access
                await asker.request(svc.name, b"z" * (MAX_INLINE_PAYLOAD + 1), codec="raw")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _raised_in_thread(call: Any) -> BaseException | None:
    """Run ``asyncio.run(call())`` in another thread (another loop); what it raised."""
    raised: list[BaseException | None] = [None]

    def target() -> None:
        try:
            asyncio.run(call())
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            raised[0] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    return raised[0]


async def test_the_direct_hot_path_keeps_its_checks(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """request()'s hot path (a direct socket known, no timeout) refuses another loop
    before it sends, sends a Block through the coordinator, and takes msgpack and raw
    payloads inline; requests() ends at aclose()."""
    async with connected(coord, "svc") as svc:
        task = asyncio.create_task(serve(svc))
        try:
            await learnt(coord, client, svc.name)
            before = brokered(coord)
            assert await client.request(svc.name, 0) == 0  # (connects the direct socket)
            assert svc.name in client._links
            exc = await asyncio.to_thread(_raised_in_thread, lambda: client.request(svc.name, 1))
            assert isinstance(exc, blockipc.WrongEventLoop), repr(exc)
            assert await client.request(svc.name, {"a": [1, b"\0"]}) == {"a": [1, b"\0"]}
            assert await client.request(svc.name, b"raw", codec="raw") == b"raw"
            assert brokered(coord) == before  # the refused one sent nothing anywhere
            block = await client.put(b"in a block", codec="raw")
            assert await client.request(svc.name, block) == b"in a block"
            assert brokered(coord) == before + 1
            with pytest.raises(blockipc.CodecError):
                await client.request(svc.name, object())  # msgpack cannot: nothing sent
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # not receiving now: a timeout on the hot path withdraws; a cancel stays one
        before = brokered(coord)
        with pytest.raises(TimeoutError):
            await client.request(svc.name, "late", timeout=0.05)
        await wait_until(lambda: not svc._rr_ready)  # the CANCEL took it back
        asking = asyncio.create_task(client.request(svc.name, "cancelled", timeout=60))
        await wait_until(lambda: len(svc._rr_ready) == 1)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        await wait_until(lambda: not svc._rr_ready)
        assert brokered(coord) == before and not client._links[svc.name]._pending
        requests = svc.requests()
        assert aiter(requests) is requests
        answering = asyncio.create_task(client.request(svc.name, "last", timeout=10))
        async for req in requests:
            await req.reply(req.value)
            break
        assert await answering == "last"
        await requests.aclose()  # type: ignore[attr-defined]
        with pytest.raises(StopAsyncIteration):
            await anext(requests)
