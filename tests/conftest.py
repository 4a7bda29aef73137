"""Shared fixtures: both event loops, an isolated coordinator, leak checks.

Every async test runs twice, on asyncio's default loop and on uvloop, through
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (overriding the
``event_loop_policy`` fixture is deprecated in pytest-asyncio 1.x, and event loop
policies themselves are deprecated from Python 3.14). A test marked ``one_loop`` runs
on uvloop only: what it tests runs in other processes, which pick their own loops, so a
second run on the test process's other loop would test the same thing again.

The tests sit in folders named like the package's (``core/`` for ``blockipc._core``,
``shm/``, ``server/``, ``client/``, ``link/``, ``bench/``; ``integration/`` runs the whole
system as a user does; a top-level module's test is here at the root). There are no
``__init__.py`` files: pytest puts this file's folder on ``sys.path``, so a test in any
folder imports the shared helpers next to it (``from _procs import ...``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

import blockipc
from _procs import wait_until
from blockipc._link.keys import KEYS_ENV
from blockipc.testing import assert_pool_clean, isolated_coordinator, shm_files, unique_name

# the shared helpers' asserts explain themselves as a test's do (test modules import it later)
pytest.register_assert_rewrite("_helpers")

LOOP_FACTORIES: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("one_loop") is not None:
        return {"uvloop": LOOP_FACTORIES["uvloop"]}
    return LOOP_FACTORIES


@pytest.fixture(scope="session", autouse=True)
def _private_key_dir() -> Iterator[Path]:
    """Nodes started without ``keys`` make and use the default key directory: this
    session's own (``$BLOCKIPC_KEYS``, inherited by child processes), never the real
    ``~/.config/blockipc/keys``."""
    path = Path(tempfile.mkdtemp(prefix="bipc-keys-"))  # (mode 0700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEYS_ENV, str(path))
        yield path
    shutil.rmtree(path, ignore_errors=True)


# -- leak checks -------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _dev_shm_unchanged() -> Iterator[None]:
    """blockipc never leaves (or makes) anything in /dev/shm, whoever crashes."""
    # libuv opens a process-wide pipe (for signal handling) with its first loop and
    # keeps it: open it now, so the per-test fd check does not count it.
    uvloop.new_event_loop().close()
    before = shm_files()
    yield
    after = shm_files()
    assert after == before, f"/dev/shm changed: +{sorted(after - before)} -{sorted(before - after)}"


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the fd listdir itself used
            continue
    return fds


# What an event loop may keep open between tests (its selector, wake-up pipes and
# signal fds) even though blockipc is not involved. A memfd, a Unix socket to a
# coordinator or a pipe to a child process is never in this set.
_LOOP_FD_KINDS = ("anon_inode:[eventpoll]", "anon_inode:[eventfd]", "anon_inode:[signalfd]")


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    """The test process holds no more fds after a test than before it.

    A full ``gc.collect()`` runs only once an fd looks leaked (it may be held by garbage
    in a reference cycle): collecting before and after every test was 70 ms a call, more
    than half of the suite's time."""
    before = _open_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = {
            fd: target
            for fd, target in _open_fds().items()
            if before.get(fd) != target and target not in _LOOP_FD_KINDS
        }
        if not leaked or time.monotonic() > deadline:
            break
        gc.collect()
        time.sleep(0.02)
    assert not leaked, f"file descriptors leaked by this test: {leaked}"


# -- coordinator -------------------------------------------------------------------
@pytest.fixture
async def coord() -> AsyncIterator[blockipc.Coordinator]:
    """An embedded 64 MiB coordinator; at teardown, once every client is gone, the pool
    must be exactly as it started. (pytest-asyncio runs setup and teardown in two
    different tasks: the coordinator must not mind.)"""
    async with isolated_coordinator(pool_size="64MiB") as c:
        yield c
        # (a process that held many blocks leaves `processes` before its reclaim is done)
        await wait_until(lambda: not c.stats().processes and not c._state.reclaims)
        assert_pool_clean(c)


@pytest.fixture
async def client(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with blockipc.connect(coord.address, name=unique_name("client")) as c:
        yield c


@pytest.fixture
async def other(coord: blockipc.Coordinator) -> AsyncIterator[blockipc.Client]:
    async with blockipc.connect(coord.address, name=unique_name("other")) as c:
        yield c


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for socket paths (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bipc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
