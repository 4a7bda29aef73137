"""Quotas (issue 14, item 11): what one client may hold, and how many may connect."""

from __future__ import annotations

import pytest

import blockipc
from _procs import run_python, wait_until
from blockipc import QuotaExceeded
from blockipc.testing import assert_pool_clean, unique_name

KiB = 1 << 10


async def test_a_client_holds_at_most_max_client_blocks() -> None:
    async with (
        blockipc.Coordinator(pool_size="4MiB", max_client_blocks=3) as coord,
        blockipc.connect(coord.address, name=unique_name("a")) as a,
        blockipc.connect(coord.address, name=unique_name("b")) as b,
    ):
        blocks = [await a.alloc(64) for _ in range(3)]
        with pytest.raises(QuotaExceeded, match="holds 3 blocks"):
            await a.alloc(64)
        with pytest.raises(QuotaExceeded):
            await a.put(b"x", name="k")
        assert coord.stats().blocks == 3  # nothing allocated for the refusals
        other = await b.alloc(64)  # the quota is per client
        await a.free(blocks.pop())
        blocks.append(await a.alloc(64))  # room again
        await a.free_many(blocks)
        await b.free(other)
        # a block sent to a client counts for it once it holds it
        mine = [await a.alloc(64) for _ in range(2)]
        await b.send(await b.alloc(64), to=a.name)
        msg = await a.recv()
        with pytest.raises(QuotaExceeded, match="holds 3 blocks"):
            await a.alloc(64)
        await a.free(msg.block)
        mine.append(await a.alloc(64))
        await a.free_many(mine)
    assert_pool_clean(coord)


async def test_a_client_holds_at_most_max_client_bytes() -> None:
    async with (
        blockipc.Coordinator(pool_size="4MiB", max_client_bytes="64KiB") as coord,
        blockipc.connect(coord.address, name=unique_name("a")) as a,
    ):
        big = await a.alloc(32 * KiB)
        small = await a.alloc(16 * KiB)
        with pytest.raises(QuotaExceeded, match="max_client_bytes"):
            await a.alloc(32 * KiB)  # 48 KiB held, 32 more would pass 64 KiB
        last = await a.alloc(16 * KiB)  # exactly at the quota
        await a.free_many([big, small, last])
        again = await a.alloc(64 * KiB)
        await a.free(again)
    assert_pool_clean(coord)


async def test_at_most_max_connections_clients_connect() -> None:
    async with (
        blockipc.Coordinator(pool_size="1MiB", max_connections=2) as coord,
        blockipc.connect(coord.address, name=unique_name("a")),
        blockipc.connect(coord.address, name=unique_name("b")) as b,
    ):
        with pytest.raises(QuotaExceeded, match="max_connections"):
            await blockipc.connect(coord.address, name=unique_name("c"))
        await b.close()
        await wait_until(lambda: len(coord.stats().processes) == 1)
        async with blockipc.connect(coord.address, name=unique_name("c")) as c:
            await c.free(await c.alloc(64))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_client_blocks": 0},
        {"max_client_blocks": -1},
        {"max_client_blocks": 1.5},
        {"max_client_blocks": True},
        {"max_connections": "3"},
        {"max_client_bytes": "lots"},
        {"max_client_bytes": 0},
    ],
)
def test_quotas_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(blockipc.InvalidRequest):
        blockipc.Coordinator(**kwargs)  # type: ignore[arg-type]


def test_serve_takes_the_quotas() -> None:
    result = run_python("from blockipc._cli import main; main(['serve', '--help'])")
    for flag in ("--max-client-bytes", "--max-client-blocks", "--max-connections"):
        assert flag in result.stdout
