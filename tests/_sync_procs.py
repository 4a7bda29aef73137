"""Worker functions for the ``ProcessPoolExecutor`` test of :mod:`blockipc.sync`
(importable by name: the pool's workers are started with ``spawn``)."""

from __future__ import annotations

import os
from typing import Any

import blockipc.sync

_client: blockipc.sync.Client | None = None


def connect_once(address: str) -> None:
    """The pool's initializer: one blocking client per worker, for its lifetime."""
    global _client
    _client = blockipc.sync.connect(address, f"worker-{os.getpid()}", timeout=30)


def square_named(name: str) -> tuple[str, int]:
    """Read the list put under ``name``, put the squares under ``name + '.out'``, send
    a block holding their sum to the parent; return (this worker's name, its pid)."""
    assert _client is not None
    numbers: list[int] = _client.get(name)
    squares = [n * n for n in numbers]
    _client.put(squares, name=f"{name}.out")
    block = _client.alloc(64)
    _client.write(block, str(sum(squares)).encode())
    _client.send(block, to="parent", header={"task": name})
    return _client.name, os.getpid()


def worker_names() -> Any:
    """The coordinator's view of who is connected."""
    assert _client is not None
    return _client.peers()
