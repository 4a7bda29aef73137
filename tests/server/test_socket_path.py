"""Where the coordinator's socket lives: a private directory by default (under
``$XDG_RUNTIME_DIR`` when usable), and an explicit path that another user has touched
is never taken over quietly."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import anyio
import pytest

import blockipc
from _foreign import NOBODY, needs_root, squatter
from blockipc import BlockIPCError
from blockipc._server.listener import listen_at
from blockipc.testing import capture_logs, unique_name


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _stale_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # closed without unlinking: what a crash leaves


async def test_the_default_socket_directory_is_private_under_xdg_runtime_dir(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _mode(short_dir) == 0o700  # as a session manager makes /run/user/UID
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    async with blockipc.Coordinator(pool_size="4MiB") as coord:
        private = Path(coord.address).parent
        assert private.parent == short_dir
        assert _mode(private) == 0o700
        assert private.stat().st_uid == os.getuid()
        async with blockipc.connect(coord.address, name=unique_name("client")) as client:
            assert await client.peers() == [client.name]
    assert list(short_dir.iterdir()) == []  # the private directory went with the coordinator


@pytest.mark.parametrize("mode", [0o755, 0o777])
async def test_an_xdg_runtime_dir_open_to_others_is_not_used(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    short_dir.chmod(mode)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    async with blockipc.Coordinator(pool_size="4MiB") as coord:
        private = Path(coord.address).parent
        assert private.parent == Path(tempfile.gettempdir())
        assert _mode(private) == 0o700


async def test_the_default_socket_directory_is_0700_whatever_the_umask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    old = os.umask(0o277)  # mkdtemp alone would make the directory 0500: no socket in it
    try:
        async with blockipc.Coordinator(pool_size="4MiB") as coord:
            assert _mode(Path(coord.address).parent) == 0o700
            assert Path(coord.address).parent.parent == Path(tempfile.gettempdir())
    finally:
        os.umask(old)


async def test_a_socket_directory_others_may_write_to_is_logged(short_dir: Path) -> None:
    for mode, unsafe in ((0o700, False), (0o1777, False), (0o777, True), (0o770, True)):
        short_dir.chmod(mode)
        with capture_logs() as logs:
            async with blockipc.Coordinator(short_dir / "c.sock", pool_size="4MiB"):
                pass
        warned = [e for e in logs if e["event"] == "coordinator.socket_dir_unsafe"]
        assert bool(warned) == unsafe, (oct(mode), warned)
        if unsafe:
            assert warned[0]["log_level"] == "warning"
            assert warned[0]["path"] == str(short_dir) and warned[0]["mode"] == oct(mode)


async def test_a_stale_socket_of_ours_is_replaced(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    _stale_socket(path)
    with capture_logs() as logs:
        async with blockipc.Coordinator(path, pool_size="4MiB") as coord:
            assert coord.address == str(path)
    assert "coordinator.stale_socket_removed" in [e["event"] for e in logs]


@needs_root
async def test_a_stale_socket_of_another_user_is_not_replaced(short_dir: Path) -> None:
    path = short_dir / "c.sock"
    _stale_socket(path)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(BlockIPCError, match=f"stale socket of uid {NOBODY}") as refused:
        async with blockipc.Coordinator(path, pool_size="4MiB"):
            pytest.fail("started on another user's socket")
    assert f"uid {os.getuid()}" in str(refused.value)
    assert path.lstat().st_uid == NOBODY  # left where it was


@needs_root
async def test_a_path_another_user_serves_is_refused_saying_who(short_dir: Path) -> None:
    short_dir.chmod(0o1777)  # shared like /tmp: nobody listens there first
    path = short_dir / "c.sock"
    async with squatter(path) as nobody:
        with pytest.raises(BlockIPCError, match=f"a process of uid {NOBODY}"):
            async with blockipc.Coordinator(path, pool_size="4MiB"):
                pytest.fail("started on a path another user serves")
        connections, received = await nobody.report()
    assert (connections, received) == (1, b"")  # the probe said nothing


async def test_the_socket_appears_only_once_it_accepts(short_dir: Path) -> None:
    # a client that waits for the path to exist connects at once: bound at the final
    # path, the socket refused connections between bind() and listen() (36 of 50
    # starts, found by a thread connecting as soon as the path appeared)
    for i in range(10):
        path = short_dir / f"c{i}.sock"
        outcome: list[object] = []
        stop = threading.Event()

        def connect_on_sight(
            path: Path = path, outcome: list[object] = outcome, stop: threading.Event = stop
        ) -> None:
            while not stop.is_set() and not outcome:
                if path.exists():
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                        try:
                            sock.connect(str(path))
                            outcome.append("connected")
                        except OSError as exc:
                            outcome.append(exc)

        watcher = threading.Thread(target=connect_on_sight)
        watcher.start()
        try:
            async with blockipc.Coordinator(path, pool_size="1MiB"):
                await anyio.to_thread.run_sync(watcher.join, 10)
        finally:
            stop.set()
            watcher.join()
        assert outcome == ["connected"], i
        assert _mode_of(path) is None  # removed on close
    assert list(short_dir.iterdir()) == []  # no temporary name left behind


def _mode_of(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return None


async def test_the_socket_is_0600_whatever_the_umask(short_dir: Path) -> None:
    old = os.umask(0)
    try:
        async with blockipc.Coordinator(short_dir / "c.sock", pool_size="1MiB") as coord:
            assert _mode_of(Path(coord.address)) == 0o600
    finally:
        os.umask(old)


async def test_a_path_taken_meanwhile_is_not_replaced(short_dir: Path) -> None:
    # the last step cannot replace a socket that appeared after the stale-socket check
    # (two coordinators started on one path at once): the second is refused, the first
    # keeps its socket
    path = short_dir / "c.sock"
    async with blockipc.Coordinator(path, pool_size="1MiB") as first:
        before = path.lstat().st_ino
        with pytest.raises(BlockIPCError, match="already serving"):
            listen_at(path)
        assert path.lstat().st_ino == before
        assert sorted(p.name for p in short_dir.iterdir()) == ["c.sock"]
        async with blockipc.connect(first.address, name=unique_name("client")) as client:
            assert await client.peers() == [client.name]


async def test_closing_removes_only_its_own_socket(short_dir: Path) -> None:
    # A's socket removed by hand and B started at the same path: closing A must not
    # remove B's socket (it did: every later client of B found no coordinator)
    path = short_dir / "c.sock"
    second = blockipc.Coordinator(path, pool_size="1MiB")
    try:
        async with blockipc.Coordinator(path, pool_size="1MiB"):
            path.unlink()
            await second.start()
        assert path.exists()  # A closed: B's socket is still there, and answers
        async with blockipc.connect(second.address, name=unique_name("client")) as client:
            assert await client.peers() == [client.name]
    finally:
        await second.aclose()
    assert not path.exists()  # B removed its own
