"""The client API under both anyio backends: asyncio, and trio (where
:func:`blockipc.connect` bridges to the asyncio client on a loop thread of its own).

Each test runs on both backends, as anyio's own tests do (an ``anyio_backend``
parameter). Not through anyio's pytest plugin: pytest-asyncio, in auto mode for the
rest of the suite, takes every ``async def`` test for itself (it would run the trio
case on asyncio), so :func:`on_both_backends` makes each a plain test that runs its
body with ``anyio.run(..., backend=anyio_backend)``. The coordinator runs on a loop
thread of its own, outside either backend.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import anyio
import pytest

import blockipc
from blockipc._loopthread import LoopThread
from blockipc.testing import assert_pool_clean, unique_name


def on_both_backends(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """``test`` (async, taking ``anyio_backend``) as a plain test run by anyio."""

    @functools.wraps(test)
    def run(*args: Any, anyio_backend: str, **kwargs: Any) -> None:
        body = functools.partial(test, *args, anyio_backend=anyio_backend, **kwargs)
        anyio.run(body, backend=anyio_backend)

    return run


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def coord() -> Iterator[blockipc.Coordinator]:  # (overrides conftest's, an asyncio one)
    runner = LoopThread("coordinator")
    coordinator = blockipc.Coordinator(pool_size="16MiB")
    try:
        runner.run(coordinator.__aenter__)
        yield coordinator
        # (a process that held blocks leaves `processes` before its reclaim is done)
        for _ in range(250):
            stats = coordinator.stats()
            if not stats.processes and not stats.blocks:
                break
            runner.run(lambda: anyio.sleep(0.02))
        assert_pool_clean(coordinator)
    finally:
        runner.run(lambda: coordinator.__aexit__(None, None, None))
        runner.stop()


def expected_type(backend: str) -> type[Any]:
    if backend == "trio":
        from blockipc.trio import Client

        return Client
    return blockipc.Client


@on_both_backends
async def test_blocks_and_leases(coord: blockipc.Coordinator, anyio_backend: str) -> None:
    async with blockipc.connect(coord.address, unique_name("c")) as client:
        assert isinstance(client, expected_type(anyio_backend))
        block = await client.alloc(1000)
        assert await client.write(block, b"hello") == 5
        async with client.lease(block, "w") as view:
            view[:5] = b"HELLO"
        assert await client.read(block, 0, 5) == b"HELLO"
        big = await client.alloc(200_000)
        await client.write(big, b"y" * 200_000)
        assert await client.read(big) == b"y" * 200_000
        await client.free_many([block, big])


@on_both_backends
async def test_named_objects_from_many_tasks(
    coord: blockipc.Coordinator, anyio_backend: str
) -> None:
    client = await blockipc.connect(coord.address, unique_name("c"))
    try:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(lambda i=i: client.put([i, "x"], name=f"obj{i}"))
        for i in range(20):
            assert await client.get(f"obj{i}") == [i, "x"]
            await client.delete(f"obj{i}")
        assert client.name in (await client.stats()).processes
    finally:
        await client.aclose()
    assert client.closed
    with pytest.raises(blockipc.ConnectionClosed):
        await client.alloc(16)


@on_both_backends
async def test_messages_and_cancellation(coord: blockipc.Coordinator, anyio_backend: str) -> None:
    async with (
        blockipc.connect(coord.address, unique_name("a")) as a,
        blockipc.connect(coord.address, unique_name("b")) as b,
    ):
        with anyio.move_on_after(0.05) as scope:
            await b.recv()  # nothing comes: cancelled, and nothing lost
        assert scope.cancelled_caught
        for i in range(3):
            block = await a.alloc(16)
            await a.write(block, b"m%d" % i)
            await a.send(block, to=b.name, header={"i": i})
        got = []
        # (trio wants an async generator left early closed: aclosing)
        async with contextlib.aclosing(b.messages()) as messages:
            async for msg in messages:
                assert msg.block is not None and msg.sender == a.name
                got.append(await b.read(msg.block, 0, 2))
                await b.free(msg.block)
                if len(got) == 3:
                    break
        assert got == [b"m0", b"m1", b"m2"]
        await a.send(None, to=b.name)
        assert [m.block for m in await b.recv_many()] == [None]


@on_both_backends
async def test_request_reply_and_work_queues(
    coord: blockipc.Coordinator, anyio_backend: str
) -> None:
    async with (
        blockipc.connect(coord.address, unique_name("asker")) as asker,
        blockipc.connect(coord.address, unique_name("responder")) as responder,
    ):

        async def serve() -> None:
            async with contextlib.aclosing(responder.requests()) as requests:
                async for req in requests:
                    await req.reply(sum(req.value))
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            assert await asker.request(responder.name, [1, 2, 3], timeout=10) == 6
        with pytest.raises(TimeoutError):
            await responder.next_request(timeout=0.05)
        await asker.declare_queue("jobs")
        await asker.enqueue("jobs", {"n": 1})
        job = await responder.take("jobs", timeout=10)
        assert job.value == {"n": 1} and job.producer == asker.name
        await job.ack()
        assert job.done


@on_both_backends
async def test_errors_are_the_clients(coord: blockipc.Coordinator, anyio_backend: str) -> None:
    async with blockipc.connect(coord.address, unique_name("c")) as client:
        with pytest.raises(blockipc.NameTaken):
            await blockipc.connect(coord.address, client.name)
        with pytest.raises(blockipc.BlockNotFound):
            await client.read(10**6, 0, 1)
    with pytest.raises(blockipc.ConnectionClosed, match="no coordinator is listening"):
        await blockipc.connect(coord.address + ".none", "x")


@on_both_backends
async def test_cancelled_calls_lose_nothing(
    coord: blockipc.Coordinator, anyio_backend: str
) -> None:
    # Calls cancelled at every stage (before the request went, while the reply was on
    # its way, after it came): what each returned is ours; what a cancelled one got,
    # the client's orphan handlers gave back. So the blocks the coordinator counts for
    # this client are exactly those returned.
    async with blockipc.connect(coord.address, unique_name("c")) as client:
        got: list[blockipc.Block] = []

        async def alloc() -> None:
            got.append(await client.alloc(4096))

        for delay in (0, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05):
            with anyio.move_on_after(delay):
                async with anyio.create_task_group() as tg:
                    for _ in range(10):
                        tg.start_soon(alloc)
        for _ in range(250):  # the orphans' FREEs are sent without waiting
            usage = {u.name: u for u in (await client.stats()).usage}[client.name]
            if usage.blocks == len(got):
                break
            await anyio.sleep(0.02)
        assert usage.blocks == len(got), (usage, len(got))
        await client.free_many(got)
