"""Test-side helpers shared by tests in several folders (the child processes and the
helpers that run them are in ``_procs.py``).

Imported as ``from _helpers import ...`` from any folder (the root conftest puts
``tests/`` on ``sys.path`` and has pytest rewrite this file's asserts, as in a test).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from blockipc._core.protocol import PROTOCOL_VERSION, Connection, Op, Reply, Request, Role
from blockipc._handshake import close_fds, receive_event
from blockipc._link.keys import keygen
from blockipc.testing import unique_name

T = TypeVar("T")


def check_each(cases: Iterable[T], check: Callable[[T], object]) -> None:
    """Run ``check`` on every case; fail listing all the cases that failed.

    Tables run as one pytest item each: the conftest's per-test fd-leak check (two
    full gc.collect() calls) costs far more than these checks.
    """
    failures = []
    for case in cases:
        try:
            check(case)
        except (AssertionError, pytest.fail.Exception) as exc:
            failures.append(f"{case!r}: {type(exc).__name__}: {exc}")
        except Exception as exc:
            exc.add_note(f"in case {case!r}")
            raise
    assert not failures, "failing cases:\n" + "\n".join(failures)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def connected(
    coord: blockipc.Coordinator, prefix: str, **kwargs: Any
) -> AsyncIterator[blockipc.Client]:
    async with blockipc.connect(coord.address, name=unique_name(prefix), **kwargs) as c:
        yield c


async def enter_lease(client: blockipc.Client, block: Any, mode: Any) -> None:
    async with client.lease(block, mode):
        pytest.fail("the lease should not have been granted")


async def raw_hello(address: str, name: str) -> tuple[UNIXSocketStream, Connection]:
    """A connection that did a correct handshake by hand (the sans-IO protocol on a
    socket) and holds no segment fd."""
    stream = await anyio.connect_unix(address)
    conn = Connection(Role.CLIENT)
    hello = Request(
        1,
        Op.HELLO,
        {
            "version": PROTOCOL_VERSION,
            "name": name,
            "pid": os.getpid(),
            "inbox_messages": 8,
            "inbox_bytes": 1 << 20,
        },
    )
    await stream.send(conn.send(hello))
    event, fds = await receive_event(stream, conn, with_fds=True)
    close_fds(fds)
    assert isinstance(event, Reply), event
    return stream, conn


def node_keys(root: Path, *nodes: str) -> dict[str, Path]:
    """One key directory per node, each holding its pair and every other public key."""
    made = root / "made"
    for name in nodes:
        keygen(name, made)
    dirs = {}
    for name in nodes:
        d = root / name
        d.mkdir(mode=0o700)
        for other in nodes:
            shutil.copy(made / f"{other}.key", d)
        shutil.copy(made / f"{name}.key_secret", d)
        os.chmod(d / f"{name}.key_secret", 0o600)
        dirs[name] = d
    return dirs
