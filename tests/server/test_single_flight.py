"""Single flight (issue 15, item 4): ``get_or_put`` runs the factory once across
processes; a claimant that dies, raises or is cancelled passes the claim on;
``put(if_absent=True)`` and ``ttl``; the bounds. Children are real processes
(``tests/_flight_procs.py``) on the ``coord`` fixture's coordinator."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

import blockipc
from _flight_procs import spawn
from _procs import Child
from blockipc import BlockNotFound, InvalidRequest, NameTaken, QuotaExceeded
from blockipc._core.claims import Claims
from blockipc._core.limits import MAX_CLAIMS
from blockipc.testing import unique_name


async def until_done(child: Child) -> tuple[list[str], list[Any]]:
    """Who ran a factory in ``child`` (its ``factory`` events), and its results."""
    factories = []
    while (event := await child.event(timeout=30))["event"] != "done":
        assert event["event"] == "factory", event
        factories.append(event["by"])
    return factories, event["results"]


async def test_two_processes_times_ten_calls_run_the_factory_once(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    key, go = unique_name("flight"), unique_name("go")
    async with (
        spawn("flight", coord.address, unique_name("a"), key, 10, 0, go) as a,
        spawn("flight", coord.address, unique_name("b"), key, 10, 0, go) as b,
    ):
        await a.expect("ready")
        await b.expect("ready")
        await client.put(b"", "raw", name=go)  # both start at once
        (fa, ra), (fb, rb) = await until_done(a), await until_done(b)
    assert len(fa + fb) == 1, (fa, fb)
    assert ra + rb == [{"by": (fa + fb)[0]}] * 20
    assert await client.get(key) == {"by": (fa + fb)[0]}
    for name in (key, go):
        await client.delete(name)


async def test_a_claimant_killed_mid_factory_passes_the_claim_on(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    key = unique_name("flight")
    async with spawn("flight", coord.address, unique_name("dies"), key, 1, 1, "-") as dies:
        await dies.expect("ready")
        await dies.expect("factory")  # computing, forever
        async with spawn("flight", coord.address, unique_name("next"), key, 10, 0, "-") as nxt:
            await nxt.expect("ready")
            await anyio.sleep(0.2)  # (its calls wait behind the claim by now, or soon)
            dies.kill()
            factories, results = await until_done(nxt)
    assert len(factories) == 1
    assert results == [{"by": factories[0]}] * 10
    await client.delete(key)


async def test_a_factory_that_raises_lets_the_next_waiter_compute(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    key = unique_name("flight")
    started = asyncio.Event()

    async def failing() -> int:
        started.set()
        await anyio.sleep(0.1)
        raise RuntimeError("no luck")

    first = asyncio.ensure_future(client.get_or_put(key, failing, codec="json"))
    await started.wait()
    second = asyncio.ensure_future(other.get_or_put(key, lambda: 42, codec="json"))
    with pytest.raises(RuntimeError, match="no luck"):
        await first
    assert await second == 42
    assert await client.get(key) == 42
    assert await client.get_or_put(key, failing, codec="json") == 42  # bound: no factory
    await client.delete(key)


async def test_a_cancelled_claimant_and_a_cancelled_waiter(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    key = unique_name("flight")
    started = asyncio.Event()

    async def forever() -> int:
        started.set()
        await anyio.sleep(3600)
        return 0

    claimant = asyncio.ensure_future(client.get_or_put(key, forever, codec="json"))
    await started.wait()
    waiter = asyncio.ensure_future(other.get_or_put(key, lambda: 1, codec="json"))
    await anyio.sleep(0.05)
    waiter.cancel()  # withdrawn from behind the claim
    with pytest.raises(asyncio.CancelledError):
        await waiter
    claimant.cancel()  # gives the claim up
    with pytest.raises(asyncio.CancelledError):
        await claimant
    with anyio.fail_after(10):
        assert await other.get_or_put(key, lambda: 7, codec="json") == 7
    assert len(coord._state.claims) == 0
    await client.delete(key)


async def test_put_if_absent(client: blockipc.Client, other: blockipc.Client) -> None:
    name = unique_name("obj")
    await client.put({"v": 1}, "json", name=name, if_absent=True)
    with pytest.raises(NameTaken, match="exists"):
        await other.put({"v": 2}, "json", name=name, if_absent=True)
    assert await other.get(name) == {"v": 1}
    await other.put({"v": 3}, "json", name=name)  # without it: replaced
    assert await client.get(name) == {"v": 3}
    with pytest.raises(InvalidRequest, match="named objects only"):
        await client.put(b"x", "raw", if_absent=True)
    await client.delete(name)


async def test_ttl_unbinds_the_name_and_caches_do_not_keep_it(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("obj")
    await client.put({"v": 1}, "json", name=name, ttl=0.3)
    assert await other.get(name) == {"v": 1}
    assert await other.get(name) == {"v": 1}  # from its cache
    await anyio.sleep(0.6)
    for c in (client, other):
        with pytest.raises(BlockNotFound):
            await c.get(name)
    assert coord.stats().blocks == 0
    # a later put without a ttl keeps the name; the old timer is gone
    await client.put({"v": 2}, "json", name=name, ttl=0.3)
    await client.put({"v": 3}, "json", name=name)
    await anyio.sleep(0.6)
    assert await other.get(name) == {"v": 3}
    await client.delete(name)
    assert not coord._state.expiry
    with pytest.raises(InvalidRequest, match="ttl"):
        await client.put(b"x", "raw", name=name, ttl=0)


def test_claims_rules() -> None:
    claims: Claims[str, str] = Claims()
    assert claims.claim("n", "a")
    assert not claims.claim("n", "b")  # held
    assert not claims.claim("n", "a")  # another request of the holder waits too
    claims.wait("n", "b", "b1")
    claims.wait("n", "c", "c1")
    claims.wait("n", "d", "d1")
    claims.withdraw("n", "c1")
    assert claims.release("n", "b") is None  # not its claim
    assert claims.release("n", "a") == "b1" and claims.holder("n") == "b"
    assert claims.drop_holder("b") == ["d1"] and claims.holder("n") == "d"
    assert claims.resolve("n") == [] and len(claims) == 0
    assert claims.held("d") == set()
    for i in range(MAX_CLAIMS):
        assert claims.claim(f"x{i}", "e")
    with pytest.raises(QuotaExceeded, match="get_or_put"):
        claims.claim("one more", "e")
    assert claims.resolve("x0") == []
    assert claims.claim("one more", "e")
