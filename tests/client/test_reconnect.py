"""Surviving restarts: ``connect(..., timeout=, retry=)`` waits for a coordinator that is
not up yet, and ``reconnect=True`` keeps a client usable when its coordinator restarts
on the same socket path (in-process coordinators, and ``blockipc serve`` killed with
SIGKILL). The leak checks of conftest.py see that no fd or mapping of the lost
connection stays behind."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import blockipc
from _procs import run_python, wait_until
from blockipc.testing import unique_name


@pytest.fixture
def sock(short_dir: Path) -> Path:
    return short_dir / "coordinator.sock"


def coordinator(path: Path) -> blockipc.Coordinator:
    return blockipc.Coordinator(path=str(path), pool_size="16MiB")


@pytest.fixture
async def stale_socket(sock: Path) -> AsyncIterator[Path]:
    """A socket file nobody listens on (what a coordinator killed with SIGKILL leaves)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()
    yield sock


# -- connect(timeout=, retry=) ---------------------------------------------------------
async def test_retry_waits_for_a_coordinator_that_starts_later(sock: Path) -> None:
    name = unique_name("early")
    connecting = asyncio.create_task(blockipc.connect(sock, name, retry=True, timeout=10)._open())
    try:
        for _ in range(20):  # it keeps trying (no socket yet) instead of failing
            await asyncio.sleep(0.01)
        assert not connecting.done()
        async with coordinator(sock) as coord:
            client = await connecting
            try:
                block = await client.alloc(10)
                await client.write(block, b"up at last")
                assert await client.read(block) == b"up at last"
                assert name in coord.stats().processes
            finally:
                await client.close()
    finally:
        connecting.cancel()


async def test_retry_waits_through_a_stale_socket(stale_socket: Path) -> None:
    connecting = asyncio.create_task(
        blockipc.connect(stale_socket, unique_name("early"), retry=True, timeout=10)._open()
    )
    try:
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not connecting.done()  # ECONNREFUSED: tried again
        async with coordinator(stale_socket):  # (it replaces the stale socket)
            client = await connecting
            await client.close()
    finally:
        connecting.cancel()


@pytest.mark.parametrize("timeout", [None, 5])
async def test_without_retry_a_missing_coordinator_fails_at_once(
    sock: Path, timeout: float | None
) -> None:
    with pytest.raises(blockipc.ConnectionClosed, match="no coordinator is listening"):
        await blockipc.connect(sock, unique_name("c"), timeout=timeout, retry=False)


async def test_retry_gives_up_after_the_timeout_saying_why(sock: Path) -> None:
    want = f"no coordinator at {sock} within 0.2 s (the last attempt: no coordinator is listening"
    with pytest.raises(blockipc.ConnectionClosed, match=re.escape(want)):
        await blockipc.connect(sock, unique_name("c"), retry=True, timeout=0.2)


async def test_retry_gives_up_on_a_stale_socket_too(stale_socket: Path) -> None:
    with pytest.raises(blockipc.ConnectionClosed, match=r"within 0\.2 s .*a socket left by one"):
        await blockipc.connect(stale_socket, unique_name("c"), retry=True, timeout=0.2)


async def test_retry_does_not_wait_for_what_is_no_socket(short_dir: Path) -> None:
    plain = short_dir / "file"
    plain.write_text("not a socket")
    for path, what in ((plain, "is not a socket"), (short_dir, "is a directory")):
        with pytest.raises(blockipc.ConnectionClosed, match=what):  # at once, not in 60 s
            await blockipc.connect(path, unique_name("c"), retry=True, timeout=60)


async def test_timeout_bounds_the_handshake(sock: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never answers
    try:
        silent.bind(str(sock))
        silent.listen()
        with pytest.raises(
            blockipc.ConnectionClosed, match=r"did not complete the handshake within 0\.2 s"
        ):
            await blockipc.connect(sock, unique_name("c"), timeout=0.2)
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds or None, not str"),
        ({"timeout": True}, TypeError, "timeout must be a number of seconds or None, not bool"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number of seconds"),
        ({"timeout": -1.5}, ValueError, "timeout must be a positive number of seconds"),
        ({"timeout": math.nan}, ValueError, "timeout must be a positive number of seconds"),
        ({"retry": 1}, TypeError, "retry must be True or False, not 1"),
        ({"reconnect": "yes"}, TypeError, "reconnect must be True or False, not 'yes'"),
    ],
)
def test_connect_checks_its_arguments(
    sock: Path, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        blockipc.connect(sock, "c", **kwargs)  # type: ignore[arg-type]


# -- reconnect=True ----------------------------------------------------------------------
async def test_reconnect_after_a_restart(sock: Path) -> None:
    name = unique_name("survivor")
    async with coordinator(sock) as first:
        client = await blockipc.connect(sock, name, reconnect=True)
        try:
            old = await client.alloc(4096)
            await client.write(old, b"before")
            await client.put({"v": 1}, "json", name="obj")
            assert await client.get("obj") == {"v": 1}  # (now in the client's cache)
            sent = await client.alloc(10)
            await client.send(sent, to=name)  # a message in the inbox, never received
            received = (await client.recv()).block
            pending = asyncio.create_task(client.recv())  # in flight when it goes
            await wait_until(lambda: first.stats().leases == 0 and len(client._pending) > 0)
        except BaseException:
            await client.close()
            raise
    try:
        with pytest.raises(blockipc.ConnectionClosed):
            await pending
        assert not client.closed  # usable: the next call reconnects
        async with coordinator(sock) as second:
            assert name in await client.peers()  # the same name, on the new coordinator
            assert name in second.stats().processes
            # nothing of the old connection is used on the new one
            for stale in (old, old.id, received):
                with pytest.raises(blockipc.BlockNotFound, match="was lost"):
                    await client.read(stale)
            with pytest.raises(blockipc.BlockNotFound, match="was lost"):
                await client.write(old, b"x")
            with pytest.raises(blockipc.BlockNotFound, match="was lost"):
                client.lease(old)
            with pytest.raises(blockipc.BlockNotFound):  # the new coordinator has no "obj"
                await client.get("obj")
            block = await client.alloc(4096)  # a new pool, mapped afresh
            await client.write(block, b"after")
            assert await client.read(block, 0, 5) == b"after"
            await client.put({"v": 2}, "json", name="obj")
            assert await client.get("obj") == {"v": 2}
            # the inbox of the old connection is gone: this is the one just sent
            await client.send(await client.alloc(3), to=name, header={"n": 2})
            assert (await client.recv()).header == {"n": 2}
            await client.close()
        assert client.closed
    finally:
        await client.close()


async def test_a_lease_held_across_a_restart_is_dead(sock: Path) -> None:
    async with coordinator(sock):
        client = await blockipc.connect(sock, unique_name("leaser"), reconnect=True)
        try:
            block = await client.alloc(8192)
            lease = client.lease(block, "w")
            view = await lease.__aenter__()
            view[:4] = b"mine"
        except BaseException:
            await client.close()
            raise
    try:
        # the coordinator ended: the view is released, it cannot reach the old mapping
        with pytest.raises(ValueError, match="released"):
            view[:4] = b"late"
        async with coordinator(sock) as second:
            new = await client.alloc(8192)  # the same id, likely: the new pool numbers afresh
            async with client.lease(new, "w") as fresh:
                await lease.__aexit__(None, None, None)  # ends nothing of the new connection
                fresh[:3] = b"new"
                assert second.stats().leases == 1
            assert await client.read(new, 0, 3) == b"new"
    finally:
        await client.close()


async def test_an_old_block_never_names_a_new_one(sock: Path) -> None:
    async with coordinator(sock):
        client = await blockipc.connect(sock, unique_name("c"), reconnect=True)
        old = await client.alloc(4096)
    try:
        async with coordinator(sock):
            new = await client.alloc(4096)
            await client.write(new, b"new data")
            with pytest.raises(blockipc.BlockNotFound):
                await client.read(old, 0, 8)
    finally:
        await client.close()


async def test_no_reconnect_after_close(sock: Path) -> None:
    async with coordinator(sock):
        client = await blockipc.connect(sock, unique_name("c"), reconnect=True)
        await client.close()
        assert client.closed
        with pytest.raises(blockipc.ConnectionClosed, match="is closed"):
            await client.alloc(10)


async def test_close_while_the_coordinator_is_down(sock: Path) -> None:
    async with coordinator(sock):
        client = await blockipc.connect(sock, unique_name("c"), reconnect=True)
    assert not client.closed
    await client.close()
    assert client.closed
    async with coordinator(sock) as second:
        with pytest.raises(blockipc.ConnectionClosed):
            await client.alloc(10)
        assert not second.stats().processes


async def test_without_reconnect_a_restart_still_ends_the_client(sock: Path) -> None:
    async with coordinator(sock):
        client = await blockipc.connect(sock, unique_name("c"))
    try:
        await wait_until(lambda: client.closed)
        async with coordinator(sock):
            with pytest.raises(blockipc.ConnectionClosed, match="lost"):
                await client.alloc(10)
    finally:
        await client.close()


async def test_reconnect_surfaces_a_taken_name_then_recovers(sock: Path) -> None:
    name = unique_name("contested")
    async with coordinator(sock):
        client = await blockipc.connect(sock, name, reconnect=True)
    try:
        async with coordinator(sock):
            thief = await blockipc.connect(sock, name)  # took the name while it was away
            with pytest.raises(blockipc.NameTaken):
                await client.alloc(10)
            assert not client.closed
            await thief.close()
            block = await client.alloc(10)  # the next call tries again
            assert block.owner == name
    finally:
        await client.close()


async def test_reconnect_gives_up_after_the_timeout_and_tries_again_later(sock: Path) -> None:
    async with coordinator(sock):
        client = await blockipc.connect(sock, unique_name("c"), timeout=0.3, reconnect=True)
    try:
        calls = [client.alloc(10), client.peers()]  # callers share the one attempt
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            assert isinstance(result, blockipc.ConnectionClosed), result
            assert "within 0.3 s" in str(result)
        assert not client.closed
        async with coordinator(sock):
            assert client.name in await client.peers()
    finally:
        await client.close()


# A reconnecting client inherited by a forked child never reconnects there (it would
# register the parent's name from the child): connected or lost when the fork came.
FORK = """
import asyncio, multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
import blockipc

path = sys.argv[1]
state = {}

def in_child():
    async def attempt():
        client = state["client"]
        try:
            await client.alloc(10)
        except blockipc.UsedAfterFork:
            return "UsedAfterFork, closed" if client.closed else "UsedAfterFork, open"
        except blockipc.BlockIPCError as exc:
            return repr(exc)
        return "reconnected in the child"
    return asyncio.run(attempt())

async def fork_and_try():
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, in_child)

async def main():
    async with blockipc.Coordinator(path=path, pool_size="8MiB"):
        client = await blockipc.connect(path, "parent", timeout=1, reconnect=True)
        state["client"] = client
        print("connected:", await fork_and_try())
    print("lost:", await fork_and_try())
    async with blockipc.Coordinator(path=path, pool_size="8MiB"):
        print("parent:", await client.peers())
        await client.close()

asyncio.run(main())
"""


def test_a_forked_child_never_reconnects(sock: Path) -> None:
    result = run_python(FORK, str(sock))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "connected: UsedAfterFork, closed",
        "lost: UsedAfterFork, closed",
        "parent: ['parent']",
    ]


# -- blockipc serve, killed -------------------------------------------------------------
@pytest.fixture
def serve(sock: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """``blockipc serve`` processes started by a test: each is stopped at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def start_serve(sock: Path, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock), "--pool-size", "8MiB"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


async def test_reconnect_through_a_sigkilled_blockipc_serve(
    sock: Path, serve: list[subprocess.Popen[str]]
) -> None:
    server = start_serve(sock, serve)
    name = unique_name("web")
    client = await blockipc.connect(sock, name, timeout=20, retry=True, reconnect=True)
    try:
        old = await client.put(b"value", "raw", name="k")
        pending = asyncio.create_task(client.recv())
        await wait_until(lambda: len(client._pending) > 0)
        server.send_signal(signal.SIGKILL)
        server.wait()
        with pytest.raises(blockipc.ConnectionClosed):
            await pending
        start_serve(sock, serve)  # not waited for: the reconnect waits (stale socket first)
        assert name in await client.peers()
        with pytest.raises(blockipc.BlockNotFound, match="was lost"):
            await client.read(old)
        await client.put(b"again", "raw", name="k")
        assert await client.get("k") == b"again"
    finally:
        await client.close()
