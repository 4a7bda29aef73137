"""How a channel ends (issue 14): an offer never outlives its opener, offers to one
process are bounded, and a receiver tells a sender that crashed from one that closed.

Real processes from tests/_channel_procs.py where a process ends (``kill -9``, or a
clean exit), in-process clients elsewhere; the ``coord`` fixture checks at teardown
that the pool is exactly as it started. No assertion is timed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

import blockipc
from _channel_procs import spawn
from _helpers import connected
from _procs import wait_until
from blockipc import ChannelClosed, PeerUnreachable, QuotaExceeded
from blockipc._core.limits import MAX_OFFERS
from blockipc.testing import assert_pool_clean, unique_name

SMALL = 8 * 1024  # the smallest channel: a control page and one page of data


@pytest.fixture
async def b(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with connected(coord, "b") as c:
        yield c


async def clean(coord: blockipc.Coordinator) -> None:
    """The pool, the channels and their eventfds all back to nothing."""
    await wait_until(lambda: not coord.stats().blocks and not coord._state.table.channels)
    assert_pool_clean(coord)
    assert coord.stats().channels == 0 and not coord._state.bells


# -- offers: withdrawn when their opener goes, bounded per receiver ---------------------
async def test_offers_of_a_closed_opener_are_withdrawn(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    # b never accepts; the opener closes one channel, then its client with the others
    # open: each offer, with nothing sent in it, is withdrawn, its ring freed
    async with connected(coord, "opener") as a:
        ends = [await a.open_channel(b.name, capacity=SMALL) for _ in range(5)]
        assert coord.stats().blocks == 5
        await ends[1].aclose()  # withdrawn at once, not when b disconnects
        await wait_until(lambda: coord.stats().blocks == 4)
    await clean(coord)
    assert not coord._state.table.processes[b.name].channel_offers
    with pytest.raises(TimeoutError):  # nothing to accept
        async with asyncio.timeout(0.2):
            await b.accept_channel()


async def test_offers_of_a_killed_opener_are_withdrawn(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    name = unique_name("opener")
    async with spawn("chan_offers", coord.address, name, b.name, 8, SMALL) as opener:
        opened = await opener.expect("opened")
        assert len(opened["channels"]) == 8 and coord.stats().blocks == 8
        opener.kill()
        assert await opener.wait() == -signal.SIGKILL
    await clean(coord)  # at once, not when b disconnects
    assert name not in coord.stats().processes and b.name in coord.stats().processes


async def test_an_offer_closed_with_messages_waits_for_its_receiver(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    # a clean close is not a withdrawal of what was sent: the receiver gets it all,
    # even after the opener's process is gone
    name = unique_name("leaver")
    async with spawn("chan_leave", coord.address, name, b.name, 3) as leaver:
        left = await leaver.expect("left")
        await wait_until(lambda: name not in coord.stats().processes)
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
            assert rx.id == left["channel"]
            got = [msg.header["i"] async for msg in rx]  # ends normally: a clean close
    assert got == [0, 1, 2]
    await rx.aclose()
    await clean(coord)


async def test_pending_offers_are_bounded_per_receiver(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    async with connected(coord, "opener") as a, connected(coord, "other") as c:
        ends = [await a.open_channel(b.name, capacity=SMALL) for _ in range(MAX_OFFERS)]
        before = coord.stats()
        fds = len(coord._state.bells)
        for opener in (a, c):  # per receiver, whoever opens
            with pytest.raises(QuotaExceeded, match=f"has {MAX_OFFERS} channels offered"):
                await opener.open_channel(b.name, capacity=SMALL)
        after = coord.stats()  # refused with nothing allocated
        assert (after.blocks, after.used_bytes, after.channels) == (
            before.blocks,
            before.used_bytes,
            before.channels,
        )
        assert len(coord._state.bells) == fds
        other = await a.open_channel(c.name, capacity=SMALL)  # another receiver: fine
        async with asyncio.timeout(10):
            rx = await b.accept_channel()  # one accepted: room for one more offer
        ends.append(await c.open_channel(b.name, capacity=SMALL))
        await rx.aclose()
        for end in [*ends, other]:
            await end.aclose()
    await clean(coord)


# -- a sender gone: crashed or closed ---------------------------------------------------
async def test_a_killed_producer_is_not_a_clean_end(
    coord: blockipc.Coordinator, b: blockipc.Client
) -> None:
    name = unique_name("producer")
    async with spawn("chan_burst", coord.address, name, b.name, 20, 100, "64KiB") as prod:
        await prod.expect("sent")
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
        await prod.expect("reserving")
        prod.kill()
        assert await prod.wait() == -signal.SIGKILL
    got = []
    async with asyncio.timeout(10):
        with pytest.raises(PeerUnreachable, match=f"{name!r} ended without closing"):
            async for msg in rx:
                with msg:
                    got.append(msg.header["i"])
    assert got == list(range(20))  # every committed message, then the error
    await rx.aclose()
    await clean(coord)


@pytest.mark.parametrize("how", ["tx.aclose", "client.aclose"])
async def test_a_producer_that_closes_ends_the_loop(
    coord: blockipc.Coordinator, b: blockipc.Client, how: str
) -> None:
    name = unique_name("producer")
    if how == "tx.aclose":
        role = spawn("chan_producer", coord.address, name, b.name, 50, 500, 1, "64KiB")
    else:  # leaves its client with the channel open: a clean close too
        role = spawn("chan_leave", coord.address, name, b.name, 50)
    async with role as prod:
        if how == "tx.aclose":
            await prod.expect("ready")
        async with asyncio.timeout(10):
            rx = await b.accept_channel()
            n = 0
            async for msg in rx:  # ends normally: no error
                with msg:
                    assert msg.header["i"] == n
                n += 1
        assert n == 50
        await prod.expect("done" if how == "tx.aclose" else "left")
        with pytest.raises(ChannelClosed):
            await rx.recv()
    await rx.aclose()
    await clean(coord)
