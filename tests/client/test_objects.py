"""Named objects, codecs and the coherent client cache: put/get/delete in one process
and across real processes, CodecError without leftovers, eviction under pressure,
cache hits without a round trip, never a stale value, and cancellation.

The cross-process tests drive a child (``obj_agent`` in ``_procs.py``) over its stdin:
one JSON command a line, one JSON result a line, so the test decides exactly when the
other process writes, replaces or frees something and what a reader must see next.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sys
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgpack
import numpy as np
import pytest

import blockipc
from _procs import HERE, SRC, Child, codec_samples, same_value, sample_codec, wait_until
from blockipc import BlockNotFound, CodecError, PoolExhausted
from blockipc.testing import assert_pool_clean, capture_logs, isolated_coordinator, unique_name

KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture
async def client(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with blockipc.connect(coord.address, name=unique_name("client")) as c:
        yield c
        await delete_all(c)


async def delete_all(client: blockipc.Client) -> None:
    """Named objects outlive their putter: remove them so the pool ends clean."""
    for name in (await client.stats()).names:
        with contextlib.suppress(BlockNotFound):
            await client.delete(name)


def pool_state(coord: blockipc.Coordinator) -> tuple[int, int, int, tuple[str, ...]]:
    s = coord.stats()
    return s.used_bytes, s.blocks, s.leases, s.names


async def assert_state(coord: blockipc.Coordinator, expected: tuple[Any, ...]) -> None:
    """``get`` releases its read lease without waiting for the answer: give that
    release a moment to arrive, then the pool must be exactly as expected."""
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: pool_state(coord) == expected, timeout=2.0)
    assert pool_state(coord) == expected


async def assert_usable(client: blockipc.Client) -> None:
    block = await client.put(b"still here", "raw")
    assert await client.get(block) == b"still here"
    await client.free(block)


# -- a child process that runs the test's commands --------------------------------------
class Agent:
    def __init__(self, child: Child) -> None:
        self.child = child

    async def __call__(self, op: str, **args: Any) -> Any:
        stdin = self.child.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await stdin.drain()
        event = await self.child.event()
        if event["event"] == "error":
            exc_type = getattr(blockipc, event["type"])
            raise exc_type(event["message"])
        assert event["event"] == "ok", event
        return event["result"]


@contextlib.asynccontextmanager
async def agent(address: str, name: str) -> AsyncIterator[Agent]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        "obj_agent",
        address,
        name,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    child = Child("obj_agent", proc)
    try:
        await child.expect("ready")
        yield Agent(child)
    finally:
        await child.stop()


# -- codecs ------------------------------------------------------------------------------
async def test_every_codec_round_trips_between_processes(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with agent(coord.address, unique_name("agent")) as run:
        # put in the child, get here
        await run("put_samples", prefix="there")
        for key, want in codec_samples().items():
            got = await client.get(f"there-{key}")
            assert same_value(got, want), key
            assert same_value(await client.get(f"there-{key}"), want), key  # a cache hit
        # put here, get in the child
        for key, obj in codec_samples().items():
            await client.put(obj, sample_codec(key), name=f"back-{key}")
        ok = await run("check_samples", prefix="back")
        assert ok == dict.fromkeys(codec_samples(), True)


async def test_recorded_codec_is_used_and_codec_overrides(client: blockipc.Client) -> None:
    value = {"a": [1, 2, 3], "b": "text"}
    block = await client.put(value, "msgpack", name="obj")
    assert await client.get("obj") == value
    assert await client.get(block) == value
    assert await client.get("obj", codec="raw") == msgpack.packb(value, use_bin_type=True)
    arr = np.arange(1000, dtype=np.float64).reshape(10, 100)
    await client.put(arr, "numpy", name="arr")
    got = await client.get("arr")
    assert isinstance(got, np.ndarray) and got.dtype == arr.dtype and not got.flags.writeable
    assert np.array_equal(got, arr)
    assert await client.get("arr", codec="raw") == arr.tobytes()
    # json bytes parse as msgpack only by accident: an override is taken literally
    await client.put({"x": 1}, "json", name="j")
    assert await client.get("j") == {"x": 1}
    with pytest.raises(CodecError):
        await client.get("j", codec="numpy")
    # a block filled by hand decodes as raw
    raw = await client.alloc(5)
    await client.write(raw, b"hello")
    assert await client.get(raw) == b"hello"
    await client.free(raw)


async def test_results_are_the_callers(client: blockipc.Client) -> None:
    await client.put({"list": [1, 2]}, "json", name="mut")
    first = await client.get("mut")
    first["list"].append(3)  # mutating a result must not spoil the cache
    assert await client.get("mut") == {"list": [1, 2]}


@pytest.mark.parametrize(
    ("obj", "codec"),
    [
        (object(), "json"),
        ({"set": {1, 2}}, "msgpack"),
        ("not an array", "numpy"),
        (np.array([object(), 1], dtype=object), "numpy"),
        (12345, "raw"),
        (lambda: None, "pickle"),
    ],
)
async def test_unencodable_object_leaves_nothing(
    coord: blockipc.Coordinator, client: blockipc.Client, obj: object, codec: str
) -> None:
    before = pool_state(coord)
    with pytest.raises(CodecError):
        await client.put(obj, codec, name="never")
    with pytest.raises(CodecError):
        await client.put(obj, codec)
    await assert_state(coord, before)
    with pytest.raises(BlockNotFound):
        await client.get("never")
    await assert_usable(client)
    await assert_state(coord, before)


@pytest.mark.parametrize(
    ("value", "codec", "garbage"),
    [
        ({"key": "value", "n": 12}, "json", b"\xff\xfe{not json"),
        ({"key": "value", "n": 12}, "msgpack", b"\xc1\xc1\xc1\xc1"),
        ({"key": "value", "n": 12}, "pickle", b"\x80\x05garbage"),
    ],
)
async def test_corrupt_bytes_give_codec_error(
    coord: blockipc.Coordinator,
    client: blockipc.Client,
    other: blockipc.Client,
    value: Any,
    codec: str,
    garbage: bytes,
) -> None:
    block = await client.put(value, codec)
    assert await client.get(block) == value  # cached now: the corruption must show anyway
    await client.grant(block, other.name)
    assert await other.get(block) == value
    async with client.lease(block, "w") as view:
        view[: len(garbage)] = garbage
    before = pool_state(coord)
    for reader in (client, other):
        for _ in range(2):
            with pytest.raises(CodecError):
                await reader.get(block)
    assert (await client.get(block, codec="raw"))[: len(garbage)] == garbage
    await assert_state(coord, before)
    await other.free(block)
    await client.free(block)
    await assert_usable(client)
    await assert_usable(other)


async def test_numpy_meta_mismatch_is_codec_error(client: blockipc.Client) -> None:
    """numpy parses any bytes of the right size; a block too short for its recorded
    shape must still fail cleanly."""
    block = await client.put(np.arange(100, dtype=np.int64), "numpy")
    with pytest.raises(CodecError):
        await client.get(block, codec="json")
    raw = await client.alloc(10)
    with pytest.raises(CodecError):
        await client.get(raw, codec="numpy")  # no dtype or shape recorded
    await client.free(raw)
    await client.free(block)
    await assert_usable(client)


async def test_lease_with_codec_is_zero_copy(client: blockipc.Client) -> None:
    arr = np.arange(50_000, dtype=np.int32)
    block = await client.put(arr, "numpy", name="big")
    with capture_logs() as logs:
        async with client.lease(block, "r", codec="numpy") as view:
            assert isinstance(view, np.ndarray) and not view.flags.writeable
            assert np.array_equal(view, arr)
            assert view.base is not None  # a view of shared memory, not a copy
            del view  # the array must not outlive the lease (lease.view_exported)
        async with client.lease(block, "r") as mv:  # a plain read lease on a named block
            assert bytes(mv[:8]) == arr.tobytes()[:8]
    assert not [e for e in logs if e["log_level"] == "warning"]


# -- names ---------------------------------------------------------------------------------
async def test_unknown_deleted_and_replaced_names(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    with pytest.raises(BlockNotFound):
        await other.get("nobody")
    with pytest.raises(BlockNotFound):
        await other.delete("nobody")
    first = await client.put(b"one", "raw", name="n")
    assert await other.get("n") == b"one"
    second = await client.put(b"two", "raw", name="n")
    assert await other.get("n") == b"two"
    with pytest.raises(BlockNotFound):
        await other.get(first)  # the replaced block is gone
    assert (await other.stats()).names == ("n",)
    await other.delete("n")
    for key in ("n", second):
        with pytest.raises(BlockNotFound):
            await client.get(key)
    assert "n" not in (await client.stats()).names


# -- eviction -----------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def small_pool() -> AsyncIterator[tuple[blockipc.Coordinator, blockipc.Client]]:
    """A 1 MiB pool: four 256 KiB objects fill it. The client has no cache, so every get
    reaches the coordinator and counts as a use for the LRU order."""
    async with isolated_coordinator(pool_size="1MiB") as coord:
        async with blockipc.connect(coord.address, unique_name("c"), cache_size=0) as c:
            yield coord, c
            await delete_all(c)
        await wait_until(lambda: not coord.stats().processes)
        assert_pool_clean(coord)


async def fill(client: blockipc.Client, *, cacheable: bool = True) -> dict[str, blockipc.Block]:
    blocks = {}
    for key in "abcd":
        blocks[key] = await client.put(
            key.encode() * (200 * KiB), "raw", name=key, cacheable=cacheable
        )
    assert blocks["a"].capacity == 256 * KiB
    return blocks


async def test_eviction_is_lru() -> None:
    async with small_pool() as (coord, c):
        await fill(c)
        assert await c.get("a") == b"a" * (200 * KiB)  # a is now the most recently used
        await c.get("c")
        before = coord.stats().cache_evictions
        first = await c.alloc(200 * KiB)
        assert coord.stats().names == ("a", "c", "d")
        second = await c.alloc(200 * KiB)
        assert coord.stats().names == ("a", "c")
        assert coord.stats().cache_evictions == before + 2
        for gone in "bd":
            with pytest.raises(BlockNotFound):
                await c.get(gone)
        assert await c.get("c") == b"c" * (200 * KiB)
        await c.free(first)
        await c.free(second)
        assert (await c.stats()).cache_evictions >= 2


async def test_hits_a_client_cache_serves_count_as_uses_for_eviction() -> None:
    """Another process reads "a" from its own cache (no round trip): the coordinator
    hears of those hits in a TOUCH, so "a" is not the object evicted first."""
    async with small_pool() as (coord, c), agent(coord.address, unique_name("reader")) as run:
        await fill(c)
        a = [200 * KiB, zlib.crc32(b"a" * (200 * KiB))]
        assert await run("get", name="a", digest=True) == a  # a miss: now cached there
        for key in "bcd":
            await c.get(key)  # c has no cache: these reach the coordinator
        assert list(coord._state.table.evictable) == ["a", "b", "c", "d"]
        answered = coord.stats().cache_hits
        assert await run("get", name="a", digest=True) == a  # a hit
        assert coord.stats().cache_hits == answered  # the get itself never came here
        await wait_until(lambda: list(coord._state.table.evictable)[-1] == "a")
        block = await c.alloc(200 * KiB)
        assert coord.stats().names == ("a", "c", "d")
        await c.free(block)


async def test_leased_objects_survive_eviction() -> None:
    async with small_pool() as (coord, c):
        blocks = await fill(c)
        async with (
            c.lease(blocks["a"], "r", codec="raw") as a_view,
            c.lease(blocks["b"], "r") as b_view,
        ):
            extra = [await c.alloc(200 * KiB), await c.alloc(200 * KiB)]
            assert coord.stats().names == ("a", "b")
            with pytest.raises(PoolExhausted):
                await c.alloc(200 * KiB)
            assert bytes(a_view[:3]) == b"aaa" and bytes(b_view[:3]) == b"bbb"
        assert await c.get("a") == b"a" * (200 * KiB)
        third = await c.alloc(200 * KiB)  # unleased now: b (least recently used) goes
        assert coord.stats().names == ("a",)
        for block in [*extra, third]:
            await c.free(block)


async def test_a_lease_held_by_a_killed_process_stops_protecting() -> None:
    async with small_pool() as (coord, c), agent(coord.address, unique_name("holder")) as run:
        blocks = await fill(c)
        await run("hold", block=blocks["a"].id, codec="raw")
        extra = [await c.alloc(200 * KiB) for _ in range(3)]  # b, c and d go
        assert coord.stats().names == ("a",)
        with pytest.raises(PoolExhausted):
            await c.alloc(200 * KiB)
        run.child.kill()
        await wait_until(lambda: coord.stats().leases == 0)
        extra.append(await c.alloc(200 * KiB))  # the lease is gone: a goes too
        assert coord.stats().names == ()
        for block in extra:
            await c.free(block)


async def test_replace_is_atomic_for_concurrent_readers(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    """Readers racing a writer that keeps replacing the object see whole values only:
    each array is filled with one number, a torn read would show two."""
    n = 256 * KiB // 8
    await client.put(np.zeros(n), "numpy", name="atomic")
    stop = False

    async def writer() -> None:
        k = 0
        while not stop:
            k += 1
            await client.put(np.full(n, float(k)), "numpy", name="atomic")

    async def reader(seen: set[float]) -> None:
        while len(seen) < 20:
            arr = await other.get("atomic")
            assert arr.min() == arr.max(), "a torn read"
            seen.add(float(arr[0]))
            await asyncio.sleep(0)  # a cache hit does not yield to the loop: let the writer run

    seen: set[float] = set()
    task = asyncio.ensure_future(writer())
    try:
        with anyio.fail_after(20):
            await asyncio.gather(*(reader(seen) for _ in range(4)))
    finally:
        stop = True
        await task
    assert len(seen) >= 20


async def test_non_cacheable_objects_are_never_evicted() -> None:
    async with small_pool() as (coord, c):
        await fill(c, cacheable=False)
        before = pool_state(coord)
        with pytest.raises(PoolExhausted):
            await c.alloc(200 * KiB)
        with pytest.raises(PoolExhausted):
            await c.put(b"x" * 1000, "raw", name="e", cacheable=True)
        await assert_state(coord, before)
        assert coord.stats().cache_evictions == 0
        for key in "abcd":
            assert (await c.get(key))[:1] == key.encode()


async def test_eviction_invalidates_client_caches() -> None:
    async with small_pool() as (coord, c):
        cached = await blockipc.connect(coord.address, unique_name("cached"))
        try:
            await fill(c)
            assert await cached.get("a") == b"a" * (200 * KiB)
            blocks = [await c.alloc(200 * KiB) for _ in range(4)]  # evicts all four
            assert coord.stats().names == ()
            with pytest.raises(BlockNotFound):
                await cached.get("a")
            for block in blocks:
                await c.free(block)
        finally:
            await cached.aclose()


# -- who holds the pool ------------------------------------------------------------------
async def test_usage_says_which_process_holds_what() -> None:
    holder = unique_name("holder")
    async with (
        isolated_coordinator(pool_size="8MiB") as coord,
        blockipc.connect(coord.address, unique_name("me"), inbox_messages=8) as me,
        agent(coord.address, holder) as run,
    ):
        blocks = [await run("alloc", size=size) for size in (100, 5000, 70 * KiB)]
        await run("hold", block=blocks[0], codec="raw")  # a read lease, held until killed
        await run("grant", block=blocks[1], to=me.name)
        mine = await me.alloc(MiB)
        usage = {  # over the wire; the request counters are checked in tests/test_cli.py
            u.name: dataclasses.replace(u, requests=0) for u in (await me.stats()).usage
        }
        assert usage[holder] == blockipc.ProcessStats(
            holder, run.child.pid, blocks=3, owned_bytes=4 * KiB + 8 * KiB + 128 * KiB, leases=1
        )
        assert usage[me.name] == blockipc.ProcessStats(
            me.name, os.getpid(), blocks=2, owned_bytes=MiB
        )  # its own block and the grant
        await me.send(mine, to=me.name)  # in its own inbox now
        (row,) = [u for u in coord.stats().usage if u.name == me.name]
        assert (row.inbox, row.inbox_bytes) == (1, MiB)
        run.child.kill()  # kill -9: its row goes, its blocks with it
        await wait_until(lambda: holder not in {u.name for u in coord.stats().usage})
        await me.free((await me.recv()).block)
        # the grant outlives its owner: still held here, owned by nobody
        assert [(u.name, u.blocks, u.owned_bytes) for u in coord.stats().usage] == [(me.name, 1, 0)]
        await me.free(blocks[1])
        assert [(u.name, u.blocks, u.owned_bytes) for u in coord.stats().usage] == [(me.name, 0, 0)]


# -- the cache --------------------------------------------------------------------------
async def test_cache_hit_costs_no_round_trip(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    arr = np.arange(256 * KiB // 8, dtype=np.float64)
    await client.put(arr, "numpy", name="w")
    first = await other.get("w")
    mine = await other.stats()
    coord_before = coord.stats()
    requests = coord._state.table.lease_count, coord.stats().cache_hits
    for _ in range(100):
        assert await other.get("w") is first  # read-only arrays are shared, not copied
    coord_after = coord.stats()
    assert (coord_after.cache_hits, coord_after.cache_misses) == (
        coord_before.cache_hits,
        coord_before.cache_misses,
    )
    assert requests == (coord._state.table.lease_count, coord.stats().cache_hits)
    after = await other.stats()
    # stats() itself is a round trip but not a get: the coordinator's counters stand still
    assert after.cache_hits - mine.cache_hits == 100
    assert after.cache_misses == mine.cache_misses


async def test_cache_size_bounds_the_cache(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with blockipc.connect(coord.address, unique_name("tiny"), cache_size="600KiB") as tiny:
        for i in range(4):
            await client.put(bytes([i]) * (256 * KiB), "raw", name=f"v{i}")
        for i in range(4):
            await tiny.get(f"v{i}")
        s = await tiny.stats()
        assert s.cache_evictions - coord.stats().cache_evictions >= 2
        assert await tiny.get("v3") == bytes([3]) * (256 * KiB)


async def test_never_stale_after_changes_by_another_process(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with agent(coord.address, unique_name("agent")) as run:

        async def get(key: Any) -> bytes:
            first = await client.get(key)
            assert await client.get(key) == first  # the second is a hit, and agrees
            return bytes(first)

        block = await run("put", value=b"v1".hex(), hex=True, codec="raw")
        await run("grant", block=block, to=client.name, mode="r")
        assert await get(block) == b"v1"
        await run("write", block=block, value=b"v2".hex(), hex=True)  # routed write
        assert await get(block) == b"v2"
        await run("lease_write", block=block, value=b"v3".hex(), hex=True)
        assert await get(block) == b"v3"
        src = await run("alloc", size=2)
        await run("write", block=src, value=b"v4".hex(), hex=True)
        await run("copy", src=src, dst=block)
        assert await get(block) == b"v4"
        big = b"L" * (100 * KiB)  # a write large enough to go through a lease
        block2 = await run("put", value=bytes(len(big)).hex(), hex=True, codec="raw")
        await run("grant", block=block2, to=client.name, mode="r")
        assert await get(block2) == bytes(len(big))
        await run("write", block=block2, value=big.hex(), hex=True)
        assert await get(block2) == big
        # replace and delete of a name
        await run("put", value=b"n1".hex(), hex=True, codec="raw", name="obj")
        named = (await client.get("obj"), client._refs["obj"][0])
        assert named[0] == b"n1"
        await run("put", value=b"n2".hex(), hex=True, codec="raw", name="obj")
        assert await get("obj") == b"n2"
        with pytest.raises(BlockNotFound):
            await client.get(named[1])
        await run("delete", name="obj")
        with pytest.raises(BlockNotFound):
            await client.get("obj")
        # free: the last holder lets go, and the slot is reused by a new block
        await client.free(block)
        await run("free", block=block)
        reused = await run("put", value=b"xx".hex(), hex=True, codec="raw")
        with pytest.raises(BlockNotFound):
            await client.get(block)
        for b in (src, reused, block2):
            await run("free", block=b)
        await client.free(block2)
    assert coord.stats().names == ()


async def test_replace_get_rounds_between_processes_never_stale(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """The child replaces the object, then the test reads it: each read must return the
    round just acknowledged, so a stale (cached, older) value fails at once. Values of
    varying size make the new block sometimes take the old one's slot."""
    rounds = 2_000  # (10,000 took 15-30 s a loop; 5 sizes of value cycle every 5 rounds)
    async with agent(coord.address, unique_name("replacer")) as run:
        before = await client.stats()
        for i in range(1, rounds + 1):
            await run("put", value={"i": i, "pad": "x" * (i % 5 * 1500)}, name="ctr")
            got = await client.get("ctr")
            assert got["i"] == i, f"stale read: round {i} returned {got['i']}"
            assert (await client.get("ctr"))["i"] == i
        after = await client.stats()
        assert after.cache_hits - before.cache_hits >= rounds
        await run("delete", name="ctr")


async def test_cache_off(coord: blockipc.Coordinator, client: blockipc.Client) -> None:
    async with blockipc.connect(coord.address, unique_name("nocache"), cache_size=0) as nc:
        await client.put([1, 2], "json", name="l")
        before = coord.stats().cache_hits
        assert await nc.get("l") == [1, 2]
        assert await nc.get("l") == [1, 2]
        assert coord.stats().cache_hits == before + 2


# -- cancellation -----------------------------------------------------------------------
async def test_cancelled_put_and_get_leave_nothing(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    rng = random.Random(6)
    arr = np.arange(MiB // 8, dtype=np.float64)
    await client.put(arr, "numpy", name="kept")
    baseline = pool_state(coord)
    kept: list[blockipc.Block] = []
    for i in range(200):
        kind = i % 3
        if kind == 0:
            coro: Any = client.put(arr, "numpy")
        elif kind == 1:
            coro = client.put({"i": i}, "msgpack", name="cancelled")
        else:
            coro = other.get("kept")
        task = asyncio.ensure_future(coro)
        for _ in range(rng.randrange(8)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            continue
        if kind == 0:
            kept.append(result)
    for block in kept:
        await client.free(block)
    with contextlib.suppress(BlockNotFound):
        await client.delete("cancelled")
    await assert_state(coord, baseline)
    assert np.array_equal(await other.get("kept"), arr)
    await assert_usable(client)
    await assert_usable(other)


async def test_cancel_get_waiting_for_a_write_lease(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.put(b"abc", "raw")
    await client.grant(block, other.name)
    async with client.lease(block, "w"):
        with anyio.move_on_after(0.05) as scope:
            await other.get(block)  # waits for the write lease: cancelled
        assert scope.cancelled_caught
    await wait_until(lambda: coord.stats().leases == 0)
    assert await other.get(block) == b"abc"
    await other.free(block)
    await client.free(block)
