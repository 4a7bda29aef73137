"""Child processes for the tests of ``blockipc stats --watch`` (tests/test_watch.py).

Run as ``python tests/_watch_procs.py ROLE ARGS...``; each child reports one JSON object
per line on stdout (``_procs.report``), and the test side's :func:`spawn` always kills
the child and waits for it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import anyio

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_watch_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


async def busy(address: str, name: str, size: str, burst: str) -> None:
    """Hold a block of ``size`` bytes and report ``ready``; then, at each SIGUSR1, make
    ``burst`` requests (``peers()``: one round trip each, nothing else) and report
    ``burst`` when they are answered."""
    import blockipc

    with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
        async with blockipc.connect(address, name=name) as client:
            await client.alloc(int(size))
            report("ready")
            async for _ in signals:
                for _ in range(int(burst)):
                    await client.peers()
                report("burst")


ROLES = {"busy": busy}


if __name__ == "__main__":
    import blockipc

    blockipc.configure_logging("debug")  # a failing test shows the child's events
    role, *args = sys.argv[1:]
    blockipc.run(lambda: ROLES[role](*args))
