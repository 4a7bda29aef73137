"""Request/reply between real processes: a responder process answers requesters of
other processes, inline and with blocks; ``kill -9``ed with requests in its hands and
more queued for it, every one of those requesters raises ``PeerUnreachable`` (not
``TimeoutError`` at its generous timeout), and the pool is back where it began."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import blockipc
from _helpers import connected
from _procs import wait_until
from _rr_procs import spawn
from blockipc.testing import unique_name

TIMEOUT = 60.0  # generous: the requests must end long before it, by PeerUnreachable
HELD = 3  # requests the responder receives and never answers, before it stops receiving


async def test_requesters_raise_peer_unreachable_when_the_responder_is_killed(
    coord: blockipc.Coordinator,
) -> None:
    svc = unique_name("svc")
    async with connected(coord, "asker") as asker, contextlib.AsyncExitStack() as stack:
        responder = await stack.enter_async_context(spawn("responder", coord.address, svc, HELD))
        await responder.expect("ready")
        blocks_before = coord.stats().blocks

        # across processes, both ways: inline, and a block each way (the reply is json)
        assert await asker.request(svc, [1, "two"], codec="json", timeout=TIMEOUT) == {
            "echo": [1, "two"],
            "sender": asker.name,
        }
        big = b"b" * (1 << 20)  # over the inline limit: a block moved to the responder
        got = await asker.request(svc, big, codec="raw", timeout=TIMEOUT)
        assert got["echo"] == {"bytes": len(big), "first": ord("b")}
        assert coord.stats().blocks == blocks_before  # the request's block freed with it

        # a requester process of its own, and requests of this one: HELD go into the
        # responder's hands (one with a block), then more are queued for it
        other = await stack.enter_async_context(
            spawn("requester", coord.address, unique_name("req"), svc, TIMEOUT)
        )
        assert (await other.expect("ok"))["reply"]["echo"][1] == "ok"
        await responder.expect("holding")
        held = [
            asyncio.create_task(asker.request(svc, b"H" * (1 << 20), codec="raw", timeout=TIMEOUT))
        ]
        held += [
            asyncio.create_task(asker.request(svc, [i, "hang"], codec="json", timeout=TIMEOUT))
            for i in range(HELD - 2)
        ]
        holding = [await responder.expect("holding") for _ in range(HELD - 1)]
        assert holding[-1]["held"] == HELD and any(h["block"] for h in holding)
        await responder.expect("full")
        queued = [
            asyncio.create_task(asker.request(svc, [i, "queued"], codec="json", timeout=TIMEOUT))
            for i in range(4)
        ]
        state = coord._state
        assert state is not None
        proc = state.table.processes[svc]
        # the request with a block is in its hands at the coordinator; the inline ones
        # (held, and the 4 queued) went on the direct sockets, past the coordinator
        await wait_until(lambda: state.requests.counts(proc) == (0, 1))
        assert state.requests.direct.get(proc.key)

        responder.kill()  # kill -9, with HELD requests in hand and 4 queued for it
        await responder.wait()

        for task in held + queued:
            with pytest.raises(blockipc.PeerUnreachable, match="disconnected before it answered"):
                await task
        raised = await other.expect("raised", timeout=TIMEOUT)
        assert raised["error"] == "PeerUnreachable", raised
        await wait_until(lambda: svc not in coord.stats().processes)
        # the block it held went with it; the queued requests' blocks were never made
        assert coord.stats().blocks == blocks_before
        with pytest.raises(blockipc.PeerUnreachable, match="no process named"):
            await asker.request(svc, 1, timeout=TIMEOUT)


async def test_direct_requests_fail_at_once_when_the_responder_is_killed_and_its_successor_answers(
    coord: blockipc.Coordinator,
) -> None:
    """Inline requests after the first go on the responder's direct socket, past the
    coordinator (whose request ids do not move); ``kill -9``ed with two of them in its
    hands, both raise ``PeerUnreachable`` at once (the socket's end says so), and a new
    process registered under the same name is reached (its new socket learnt anew)."""
    svc = unique_name("svc")
    state = coord._state
    assert state is not None
    async with connected(coord, "asker") as asker, contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(spawn("responder", coord.address, svc, 2))
        await first.expect("ready")
        got = await asker.request(svc, ["learn"], codec="json", timeout=TIMEOUT)
        assert got["echo"] == ["learn"]
        before = state.requests._next
        held = [
            asyncio.create_task(asker.request(svc, [i, "hang"], codec="json", timeout=TIMEOUT))
            for i in range(2)
        ]
        for _ in range(2):
            await first.expect("holding")
        await first.expect("full")
        assert state.requests._next == before  # both went direct
        assert state.requests.counts(state.table.processes[svc]) == (0, 0)

        first.kill()
        await first.wait()
        for task in held:
            with pytest.raises(blockipc.PeerUnreachable, match="disconnected before it answered"):
                await task
        await wait_until(lambda: svc not in coord.stats().processes)

        second = await stack.enter_async_context(spawn("responder", coord.address, svc, 5))
        await second.expect("ready")
        assert (await asker.request(svc, ["again"], codec="json", timeout=TIMEOUT))["echo"] == [
            "again"
        ]  # through the coordinator: the old socket is gone, the new one learnt
        assert (await asker.request(svc, ["direct"], codec="json", timeout=TIMEOUT))["echo"] == [
            "direct"
        ]
        assert state.requests._next == before + 1
