"""blockipc.sync: the blocking client, on its own loop thread.

The coordinator runs on the test's loop; the blocking calls run in worker threads
(``asyncio.to_thread``), as they would in a program that is not async.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import blockipc
import blockipc.sync
from _procs import run_python
from blockipc.testing import unique_name

T = TypeVar("T")


async def off_loop(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def test_blocks_leases_and_named_objects(coord: blockipc.Coordinator) -> None:
    def work() -> None:
        with blockipc.sync.connect(coord.address, unique_name("sync")) as c:
            assert c.access == "rw" and not c.closed
            block = c.alloc("1KiB")
            assert c.write(block, b"hello") == 5
            assert c.read(block, 0, 5) == b"hello"
            with c.lease(block, "w") as view:
                view[:5] = b"HELLO"
            with c.lease(block) as view:
                assert bytes(view[:5]) == b"HELLO"
            big = c.alloc(200_000)  # a write that takes a lease inside
            c.write(big, b"x" * 200_000)
            assert c.read(big) == b"x" * 200_000
            c.free_many([block, big])
            c.put({"k": [1, 2]}, name="obj")
            assert c.get("obj") == {"k": [1, 2]}
            assert c.get_or_put("obj", lambda: 0) == {"k": [1, 2]}
            c.delete("obj")
            assert c.cache_statistics().hits >= 0
            assert c.name in c.stats().processes
        assert c.closed

    await off_loop(work)


async def test_messages_between_a_sync_and_an_async_client(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("sync")

    def work() -> list[bytes]:
        with blockipc.sync.connect(coord.address, name) as c:
            for i in range(3):
                b = c.alloc(16)
                c.write(b, b"m%d" % i)
                c.send(b, to=client.name, header={"i": i}, wait_for_peer=5)
            got = []
            for msg in c.messages():
                assert msg.block is not None
                got.append(c.read(msg.block, 0, 5))
                c.free(msg.block)
                if len(got) == 2:
                    break
            return got

    task = asyncio.create_task(off_loop(work))
    for i in range(3):
        msg = await client.recv()
        assert msg.header == {"i": i} and msg.sender == name
        assert msg.block is not None
        assert await client.read(msg.block, 0, 2) == b"m%d" % i
        await client.free(msg.block)
    for i in range(2):
        b = await client.alloc(8)
        await client.write(b, b"back%d" % i)
        await client.send(b, to=name, wait_for_peer=5)
    assert await task == [b"back0", b"back1"]


async def test_recv_times_out_and_keeps_what_comes_later(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    def work() -> None:
        with blockipc.sync.connect(coord.address, unique_name("sync")) as c:
            with pytest.raises(TimeoutError):
                c.recv(timeout=0.05)
            with pytest.raises(TimeoutError):
                c.recv_many(timeout=0.05)
            asyncio.run_coroutine_threadsafe(client.send(None, to=c.name), loop).result(5)
            msg = c.recv(timeout=30)
            assert msg.block is None and msg.sender == client.name
            c.send_value(c.name, {"x": 1})  # inline messages, one and a batch
            c.send_many(c.name, [2, 3])
            got: list[object] = []
            while len(got) < 3:
                got += [m.value for m in c.recv_many(8, timeout=30)]
            assert got == [{"x": 1}, 2, 3]

    loop = asyncio.get_running_loop()
    await off_loop(work)


async def test_request_reply_and_work_queues(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("responder")
    ready = threading.Event()

    def respond() -> int:
        answered = 0
        with blockipc.sync.connect(coord.address, name) as c:
            ready.set()
            for req in c.requests():
                assert req.sender == client.name and req.block is None and not req.done
                if req.value == "boom":
                    req.fail("no")
                else:
                    req.reply(sum(req.value))
                answered += 1
                if answered == 2:
                    break
            with pytest.raises(TimeoutError):
                c.next_request(timeout=0.05)
            c.declare_queue("jobs")
            c.enqueue("jobs", [1, 2])
            c.enqueue("jobs", [3])
            job = c.take("jobs", timeout=5)
            assert job.value == [1, 2] and job.queue == "jobs" and job.attempts == 0
            job = c.take("jobs", timeout=5, ack=job)  # the ack folded into the take
            assert job.value == [3] and job.producer == c.name
            job.nack()
            job = c.take("jobs", timeout=5)
            assert job.attempts == 1 and isinstance(job.id, int)
            job.ack()
            assert job.done
            assert len(c.enqueue_many("jobs", [[4], [5], [6]])) == 3  # batches, both ways
            jobs = c.take_many("jobs", 2, timeout=5)
            assert [j.value for j in jobs] == [[4], [5]]
            last = c.take_many("jobs", 2, timeout=5, ack=jobs)
            assert [j.value for j in last] == [[6]] and all(j.done for j in jobs)
            last[0].ack()
        return answered

    task = asyncio.create_task(off_loop(respond))
    await off_loop(lambda: ready.wait(10))
    assert await client.request(name, [1, 2, 3], timeout=10) == 6
    with pytest.raises(blockipc.RemoteError):
        await client.request(name, "boom", timeout=10)
    assert await task == 2


async def test_many_threads_share_one_client(coord: blockipc.Coordinator) -> None:
    def work() -> None:
        with blockipc.sync.connect(coord.address, unique_name("sync")) as c:
            errors: list[BaseException] = []

            def hammer(t: int) -> None:
                try:
                    for i in range(25):
                        block = c.put([t, i])
                        assert c.get(block) == [t, i]
                        c.free(block)
                except BaseException as exc:  # noqa: BLE001 -- checked below
                    errors.append(exc)

            threads = [threading.Thread(target=hammer, args=(t,)) for t in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert not errors, errors
            assert not any(th.is_alive() for th in threads)

    await off_loop(work)


async def test_errors_closing_and_misuse(coord: blockipc.Coordinator, short_dir: Any) -> None:
    def work() -> None:
        with pytest.raises(blockipc.ConnectionClosed, match="no coordinator is listening"):
            blockipc.sync.connect(str(short_dir / "none.sock"), "x")
        with pytest.raises(ValueError, match="timeout"):
            blockipc.sync.connect(coord.address, "x", timeout=-1)
        c = blockipc.sync.connect(coord.address, unique_name("sync"))
        with pytest.raises(blockipc.NameTaken):
            blockipc.sync.connect(coord.address, c.name)
        with pytest.raises(blockipc.BlockNotFound):
            c.read(10**6, 0, 1)
        with pytest.raises(blockipc.WrongEventLoop, match="wait for itself"):
            c.get_or_put(unique_name("obj"), lambda: c.peers())
        c.close()
        c.close()  # idempotent
        assert c.closed
        with pytest.raises(blockipc.ConnectionClosed, match="is closed"):
            c.alloc(16)
        with pytest.raises(blockipc.ConnectionClosed):
            c.lease(1).__enter__()

    await off_loop(work)


async def test_an_unclosed_client_warns_and_lets_go(coord: blockipc.Coordinator) -> None:
    def work() -> None:
        c = blockipc.sync.connect(coord.address, unique_name("sync"))
        thread = c._runner._thread
        # (the warning comes from __del__: at the `del` or at the collection)
        with pytest.warns(ResourceWarning, match="unclosed blockipc sync client"):  # noqa: PT031
            del c
            gc.collect()
        thread.join(5)
        assert not thread.is_alive()

    await off_loop(work)


POOL = """
import asyncio, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, sys.argv[1])  # the tests' folder, for _sync_procs (spawned workers too)
import blockipc, _sync_procs

async def main():
    async with blockipc.Coordinator(pool_size="16MiB") as coord:
        async with blockipc.connect(coord.address, name="parent") as parent:
            for i in range(4):
                await parent.put(list(range(i + 3)), name=f"task{i}")
            loop = asyncio.get_running_loop()
            with ProcessPoolExecutor(
                2,
                mp_context=multiprocessing.get_context(sys.argv[2]),
                initializer=_sync_procs.connect_once,
                initargs=(coord.address,),
            ) as pool:
                done = await asyncio.gather(*(
                    loop.run_in_executor(pool, _sync_procs.square_named, f"task{i}")
                    for i in range(4)
                ))
                names = {name for name, _pid in done}
                # one client a worker, each connected once
                assert len({pid for _name, pid in done}) == len(names) <= 2, done
                assert names <= set(await parent.peers())
                sums = {}
                for _ in range(4):
                    msg = await parent.recv()
                    assert msg.sender in names
                    data = await parent.read(msg.block, 0, 64)
                    sums[msg.header["task"]] = int(data.strip(b"\\0"))
                    await parent.free(msg.block)
            for i in range(4):
                squares = [n * n for n in range(i + 3)]
                assert await parent.get(f"task{i}.out") == squares
                assert sums[f"task{i}"] == sum(squares)
                await parent.delete(f"task{i}")
                await parent.delete(f"task{i}.out")
            print("workers:", len(names))
        stats = coord.stats()
        assert not stats.blocks and not stats.used_bytes, stats
        print("pool clean")

blockipc.run(main)
"""


@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_process_pool_workers_connect_once_and_exchange_data(start: str) -> None:
    # fork: the workers inherit the parent's loop and coordinator, and connect anew
    result = run_python(POOL, str(Path(__file__).parent), start)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "pool clean" and lines[0] in ("workers: 1", "workers: 2"), lines


FORK = """
import multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
import blockipc, blockipc.sync

async def main():
    async with blockipc.Coordinator(pool_size="8MiB") as coord:
        import asyncio
        await asyncio.to_thread(in_parent, coord.address)

def in_child(client, block):
    refused = []
    for what, call in [
        ("alloc", lambda: client.alloc(64)),
        ("read", lambda: client.read(block, 0, 6)),
        ("lease", lambda: client.lease(block).__enter__()),
        ("recv", lambda: client.recv(timeout=1)),
    ]:
        try:
            call()
        except blockipc.UsedAfterFork as exc:
            assert "connect again in the child process" in str(exc), exc
            refused.append(what)
    assert client.closed
    client.close()  # a no-op: nothing goes out on the parent's socket
    return refused

def in_parent(address):
    with blockipc.sync.connect(address, "parent") as client:
        block = client.alloc(64)
        client.write(block, b"before")
        state["args"] = (client, block)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            print("refused in the child:", " ".join(pool.submit(child).result(30)))
        assert client.read(block, 0, 6) == b"before"
        client.free(block)
        print("parent ok")

state = {}
def child():
    return in_child(*state["args"])

blockipc.run(main)
"""


def test_a_sync_client_in_a_forked_child_raises_used_after_fork() -> None:
    result = run_python(FORK, options=["-W", "ignore::DeprecationWarning"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "refused in the child: alloc read lease recv",
        "parent ok",
    ]
