"""Helpers for testing your own code against blockipc.

An isolated coordinator on a private socket, with unique process names::

    import blockipc.testing

    async def test_my_worker() -> None:
        async with blockipc.testing.isolated_coordinator(pool_size="16MiB") as coord:
            async with blockipc.connect(coord.address, name=blockipc.testing.unique_name()) as c:
                ...
            blockipc.testing.assert_pool_clean(coord)

As a pytest fixture::

    @pytest.fixture
    async def coord():
        async with blockipc.testing.isolated_coordinator() as c:
            yield c
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator

from ._log import capture_logs
from ._server.coordinator import Coordinator

__all__ = ["assert_pool_clean", "capture_logs", "isolated_coordinator", "shm_files", "unique_name"]

_counter = itertools.count(1)


def unique_name(prefix: str = "proc") -> str:
    """A process name no other call in this interpreter returns."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


@contextlib.asynccontextmanager
async def isolated_coordinator(
    pool_size: int | str = "16MiB", max_pool_size: int | str | None = None, min_block: int = 4096
) -> AsyncIterator[Coordinator]:
    """An embedded coordinator on a private socket, closed (and checked) on exit."""
    before = shm_files()
    async with Coordinator(
        pool_size=pool_size, max_pool_size=max_pool_size, min_block=min_block
    ) as coord:
        yield coord
    leaked = shm_files() - before
    if leaked:
        raise AssertionError(f"files left in /dev/shm: {sorted(leaked)}")


def assert_pool_clean(coord: Coordinator) -> None:
    """Raise ``AssertionError`` unless every block is free and no lease is held."""
    stats = coord.stats()
    if stats.used_bytes or stats.blocks or stats.leases:
        raise AssertionError(f"pool not clean: {stats}")
    if stats.free_bytes != stats.pool_size:
        raise AssertionError(f"pool accounting off: {stats}")


def shm_files() -> set[str]:
    """Names in ``/dev/shm`` now (blockipc must never add any).

    POSIX named semaphores (``sem.*``) and ``multiprocessing.shared_memory`` segments
    (``psm_*``) are left out: blockipc makes neither (its memory is memfd only), and
    other programs on the machine (any ``multiprocessing`` user, the benchmarks'
    baselines) create and remove theirs at any moment, which would make a before/after
    comparison fail at random.
    """
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return set()
    return {name for name in names if not name.startswith(("sem.", "psm_"))}
