"""Child processes for the tests of inline messages (``send_value``, ``send_many``)
across processes.

Run as ``python tests/_inbox_procs.py ROLE ARGS...``; each child reports one JSON object
per line on stdout (``_procs.report``), and the test side's :func:`spawn` always kills
the child and waits for it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import anyio

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_inbox_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


async def inline_producer(address: str, name: str, to: str, count: str, batch: str) -> None:
    """Send ``count`` messages ``{"p": name, "seq": i}`` (msgpack) to ``to``: one
    ``send_value`` each (``batch`` 0), else ``send_many`` of ``batch`` at a time; waits
    for ``to`` to register; reports ``ready``, then ``done``."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        n, size = int(count), int(batch)
        if size == 0:
            for i in range(n):
                await client.send_value(to, {"p": name, "seq": i}, wait_for_peer=30)
        else:
            for start in range(0, n, size):
                objs = [{"p": name, "seq": i} for i in range(start, min(n, start + size))]
                await client.send_many(to, objs, wait_for_peer=30)
        report("done")
        await anyio.sleep_forever()


async def inline_consumer(address: str, name: str, inbox: str, take: str) -> None:
    """Register with ``inbox_messages=inbox``, receive ``take`` messages (reporting
    ``got`` with their seqs), then never receive again: killed with a full inbox."""
    import blockipc

    async with blockipc.connect(address, name=name, inbox_messages=int(inbox)) as client:
        report("ready")
        got: list[int] = []
        while len(got) < int(take):
            got += [msg.value["seq"] for msg in await client.recv_many(int(take) - len(got))]
        report("got", seqs=got)
        await anyio.sleep_forever()


ROLES = {"inline_producer": inline_producer, "inline_consumer": inline_consumer}


def main() -> None:
    import blockipc

    blockipc.configure_logging("debug")  # a failing test shows the child's events
    role, *args = sys.argv[1:]
    blockipc.run(lambda: ROLES[role](*args))


if __name__ == "__main__":
    main()
