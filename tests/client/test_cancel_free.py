"""A block can be freed right after a call that leased it was cancelled (found by the
soak: ``try: await read(b) finally: await free(b)`` under a timeout raised
``AccessDenied``, "block N has 1 active lease(s) of yours", when the lease was granted
while the call was being cancelled: its release went out after the free)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import blockipc
from _procs import serving

MiB = 1 << 20


async def test_free_right_after_a_cancelled_leasing_call(short_dir: Path) -> None:
    sock = short_dir / "c.sock"  # a coordinator of its own process, as in production
    with serving(sock, "--socket", str(sock), "--pool-size", "16MiB"):
        async with blockipc.connect(str(sock), name="reader") as client:
            rng = random.Random(7)
            for _ in range(200):
                block = await client.alloc(MiB)  # read() of 1 MiB goes through a lease
                task = asyncio.ensure_future(client.read(block))
                await asyncio.sleep(rng.random() * 0.0004)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await client.free(block)  # never refused for the lease the cancel left
            stats = await client.stats()
            assert (stats.blocks, stats.leases) == (0, 0)
