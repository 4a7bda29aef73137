"""Child processes for the tests of ``get_or_put`` (single flight across processes).

Run as ``python tests/_flight_procs.py ROLE ARGS...``; each child reports one JSON
object per line on stdout (``_procs.report``), and the test side's :func:`spawn` always
kills the child and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_flight_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


async def flight(address: str, name: str, key: str, calls: str, hang: str, go: str) -> None:
    """Connect as ``name``, report ``ready``, wait until an object named ``go`` exists
    (``-``: no wait), then run ``calls`` concurrent ``get_or_put(key, ...)``: the
    factory reports ``factory`` and returns ``{"by": name}`` after 0.2 s (``hang`` "1":
    never returns, so that the test can kill this process mid-computation). Reports
    ``done`` with every result."""
    import blockipc

    async def factory() -> dict[str, str]:
        report("factory", by=name)
        await asyncio.sleep(3600 if hang == "1" else 0.2)
        return {"by": name}

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        while go != "-":
            try:
                await client.get(go)
                break
            except blockipc.BlockNotFound:
                await asyncio.sleep(0.005)
        results = await asyncio.gather(
            *(client.get_or_put(key, factory, codec="json") for _ in range(int(calls)))
        )
        report("done", results=results)


ROLES = {"flight": flight}


if __name__ == "__main__":
    import blockipc

    role, *args = sys.argv[1:]
    blockipc.run(lambda: ROLES[role](*args))
