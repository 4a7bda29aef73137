"""A client used where it cannot work says so: after fork, from another loop or
thread, or dropped without being closed."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

import pytest

import blockipc
from _procs import run_python
from blockipc.testing import unique_name

# The parent connects, uses a get cache and a channel, then a ProcessPoolExecutor
# worker (fork start) tries every kind of call on the inherited objects. The parent
# then goes on using its connection and its channel.
FORK = """
import asyncio, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
import blockipc

state = {}

def in_child():
    client, tx, rx = state["client"], state["tx"], state["rx"]
    async def attempts():
        results = []
        for what, call in [
            ("alloc", lambda: client.alloc(4096)),
            ("read", lambda: client.read(state["block"], 0, 6)),
            ("get", lambda: client.get("obj")),  # a hit in the inherited cache
            ("lease", lambda: client.lease(state["block"], "r").__aenter__()),
            ("tx.send", lambda: tx.send(b"from the child")),
            ("rx.recv", lambda: rx.recv()),
        ]:
            try:
                await call()
            except blockipc.UsedAfterFork as exc:
                assert "connect again in the child process" in str(exc), exc
                results.append(what)
        assert client.closed
        await client.close()  # a no-op here: nothing goes out on the parent's socket
        await tx.aclose()
        await state["coord"].aclose()  # the parent's: not this process's to close
        return results
    return asyncio.run(attempts())

async def main():
    async with blockipc.Coordinator(pool_size="8MiB") as coord:
        async with blockipc.connect(coord.address, name="parent") as client, \\
                blockipc.connect(coord.address, name="peer") as peer:
            block = await client.alloc(4096)
            await client.write(block, b"before")
            await client.put(b"cached", codec="raw", name="obj")
            assert await client.get("obj") == b"cached"
            tx = await client.open_channel("peer", capacity="64KiB")
            rx = await peer.accept_channel()
            state.update(coord=coord, client=client, block=block, tx=tx, rx=rx)
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                refused = await asyncio.get_running_loop().run_in_executor(pool, in_child)
            print("refused in the child:", " ".join(refused))
            # the parent's connection and channel were not touched
            assert await client.read(block, 0, 6) == b"before"
            other = await client.alloc(4096)
            await client.free(other)
            await tx.send(b"from the parent")
            with await rx.recv() as msg:
                assert bytes(msg.data) == b"from the parent", bytes(msg.data)
            assert sorted((await client.stats()).processes) == ["parent", "peer"]
            async with blockipc.connect(coord.address, name="late"):  # still listening
                pass
            await tx.aclose()
            await rx.aclose()
            await client.free(block)
            await client.delete("obj")
            print("parent ok")

asyncio.run(main())
"""


def test_a_forked_child_gets_a_clear_error_and_the_parent_keeps_working() -> None:
    result = run_python(FORK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "refused in the child: alloc read get lease tx.send rx.recv",
        "parent ok",
    ]


def _in_thread(call: object) -> BaseException | None:
    """Run ``asyncio.run(call())`` in another thread; the exception it raised."""
    raised: list[BaseException | None] = [None]

    def target() -> None:
        try:
            asyncio.run(call())  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            raised[0] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the call from another loop hangs"
    return raised[0]


async def test_another_event_loop_gets_a_clear_error_at_once(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    block = await client.alloc(4096)
    await client.put([1, 2], name="obj")
    assert await client.get("obj") == [1, 2]
    peer = await blockipc.connect(coord.address, name=unique_name("peer"))
    try:
        tx = await client.open_channel(peer.name, capacity="64KiB")
        rx = await peer.accept_channel()
        for call in (
            lambda: client.alloc(4096),
            lambda: client.read(block, 0, 4),
            lambda: client.get("obj"),
            lambda: client.close(),
            lambda: rx.recv(),  # nothing sent: it would sleep on the other loop
            lambda: tx.send(b"room"),  # the ring has room: no sleep needed
            lambda: tx.reserve(4).__aenter__(),
            lambda: tx.aclose(),
        ):
            exc = await asyncio.to_thread(_in_thread, call)
            assert isinstance(exc, blockipc.WrongEventLoop), repr(exc)
            assert "event loop" in str(exc)
        # nothing was harmed: the client and the channel work on their own loop
        assert not client.closed
        await client.write(block, b"fine")
        assert await client.read(block, 0, 4) == b"fine"
        await tx.send(b"still")
        exc = await asyncio.to_thread(_in_thread, rx.recv)  # a message waits: not for it
        assert isinstance(exc, blockipc.WrongEventLoop), repr(exc)
        with await rx.recv() as msg:
            assert bytes(msg.data) == b"still"
        await tx.aclose()
        await rx.aclose()
    finally:
        await peer.close()
    await client.free(block)
    await client.delete("obj")


UNCLOSED_CLIENT = """
import asyncio, gc, sys
import blockipc

async def main():
    async with blockipc.Coordinator(pool_size="4MiB") as coord:
        client = await blockipc.connect(coord.address, name="dropped")
        await client.alloc(4096)
        del client
        gc.collect()
        await asyncio.sleep(0.2)  # the transport closed: the coordinator frees the block
        stats = coord.stats()
        print(stats.processes, stats.blocks)

asyncio.run(main())
"""

UNCLOSED_COORDINATOR = """
import asyncio, gc, sys
import blockipc

async def main():
    coord = blockipc.Coordinator(sys.argv[1], pool_size="4MiB")
    await coord.start()

asyncio.run(main())
gc.collect()
"""


@pytest.mark.parametrize("code", [UNCLOSED_CLIENT, UNCLOSED_COORDINATOR], ids=["client", "coord"])
def test_dropped_without_close_emits_a_resource_warning(code: str, tmp_path: Path) -> None:
    result = run_python(code, str(tmp_path / "c.sock"), options=["-W", "error::ResourceWarning"])
    # an exception in __del__ cannot propagate: Python prints it as unraisable
    assert "ResourceWarning: unclosed blockipc" in result.stderr, result.stderr
    if code is UNCLOSED_CLIENT:
        assert result.stdout == "() 0\n", result.stdout + result.stderr


async def test_a_constructor_that_raises_leaves_nothing_to_warn_about() -> None:
    # __del__ runs on the half-made object: it must neither warn nor fail
    with pytest.raises(blockipc.InvalidRequest):
        blockipc.connect("/nowhere", name="n", inbox_messages=0)
    with pytest.raises(blockipc.InvalidRequest):
        blockipc.Coordinator(node="a/b")
    gc.collect()


async def test_a_task_nobody_references_keeps_its_client_while_it_waits(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    # fire and forget: only the loop knows the consumer task, only the task its client
    got: list[bytes] = []
    name = unique_name("consumer")

    async def consumer() -> None:
        c = await blockipc.connect(coord.address, name=name)
        try:
            async for msg in c.messages():
                got.append(await c.read(msg.block, 0, 3))
                await c.free(msg.block)
                if len(got) == 3:
                    break
        finally:
            await c.close()

    asyncio.get_running_loop().create_task(consumer())
    while name not in coord.stats().processes:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the consumer waits in recv
    gc.collect()
    for i in range(3):
        block = await client.alloc(3)
        await client.write(block, b"m%d!" % i)
        await client.send(block, to=name)
    while name in coord.stats().processes:
        await asyncio.sleep(0.01)
    assert got == [b"m0!", b"m1!", b"m2!"]


async def test_a_coordinator_that_failed_to_start_warns_of_nothing_and_can_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sock"
    async with blockipc.Coordinator(path, pool_size="4MiB"):
        second = blockipc.Coordinator(path, pool_size="4MiB")
        with pytest.raises(blockipc.BlockIPCError, match="already serving"):
            await second.start()
        gc.collect()  # filterwarnings=error: a ResourceWarning here fails the test
    await second.start()  # the first one is gone now
    await second.aclose()
    del second
    gc.collect()


async def test_a_cancelled_connect_leaves_nothing_behind(coord: blockipc.Coordinator) -> None:
    # cancelled at every point of the handshake in turn (after 0, 1, 2, ... loop steps)
    for steps in range(30):
        task = asyncio.ensure_future(blockipc.connect(coord.address, name=f"c{steps}"))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            client = await task
        except asyncio.CancelledError:
            continue
        await client.close()
    gc.collect()  # an unclosed socket would be a ResourceWarning, an error here
    await asyncio.sleep(0.1)
    assert coord.stats().processes == ()


CLOSED_LOOP = """
import asyncio, sys
import blockipc

async def connect(address):
    return await blockipc.connect(address, name="first-loop")

async def main(address):
    # the loop the client connected on has ended
    client = await asyncio.to_thread(asyncio.run, connect(address))
    try:
        await client.alloc(4096)
    except blockipc.WrongEventLoop as exc:
        assert "has ended" in str(exc), exc
    await client.close()  # no word to the coordinator possible: the socket is shut down
    assert client.closed

async def run():
    async with blockipc.Coordinator(pool_size="4MiB") as coord:
        await main(coord.address)
        for _ in range(100):
            if not coord.stats().processes:
                break
            await asyncio.sleep(0.02)
        print(coord.stats().processes)

asyncio.run(run())
"""


def test_a_client_whose_loop_ended_can_still_be_closed() -> None:
    result = run_python(CLOSED_LOOP)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "()\n", result.stdout + result.stderr
