"""Child processes for the tests of parked requests whose client dies.

Run as ``python tests/_peer_wait_procs.py ROLE ARGS...``; like tests/_procs.py (whose
:class:`~_procs.Child` and :func:`~_procs.report` this reuses) a child reports one JSON
object per line on stdout. The test side uses :func:`spawn`, which always kills the
child and waits for it.

``dying_senders`` forks processes of a few clients each from one interpreter that
imported blockipc already: a fork costs milliseconds where starting Python costs a few
hundred, so 200 clients that park a request and die take seconds, not a minute.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
from pathlib import Path

import anyio

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()
_PR_SET_PDEATHSIG = 1


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_peer_wait_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


async def _park_sends(address: str, prefix: str, clients: int, to: str, ready: int) -> None:
    """Connect ``clients`` clients named ``PREFIX-j``, each parking a ``send`` that
    waits (practically forever) for a process named ``to``; write one byte to
    ``ready`` per client once the coordinator holds its send, then wait to be killed."""
    import blockipc

    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        for j in range(clients):
            client = await stack.enter_async_context(
                blockipc.connect(address, name=f"{prefix}-{j}")
            )
            block = await client.alloc(100)
            tg.start_soon(functools.partial(client.send, block, to=to, wait_for_peer=1e6))
            await client.peers()  # answered in order: the SEND before it is parked
            os.write(ready, b"!")
        await anyio.sleep_forever()


def dying_senders(address: str, prefix: str, procs: str, clients: str, to: str) -> None:
    """Fork ``procs`` processes of ``clients`` clients each (named ``PREFIX-i-j``),
    each client parking a send to ``to``; report "ready" with the pids once every send
    is parked, then "reaped" once all the processes have died (the test kills them).
    Each dies with this process too (``PR_SET_PDEATHSIG``)."""
    import uvloop  # noqa: F401 -- imported once here, not in every child

    import blockipc

    r, w = os.pipe()
    pids = []
    for i in range(int(procs)):
        pid = os.fork()
        if pid == 0:  # the child: park, never return
            try:
                os.close(r)
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() == 1:  # the forker died before prctl
                    os._exit(1)
                blockipc.run(_park_sends(address, f"{prefix}-{i}", int(clients), to, w))
            finally:  # a forked child never returns into the forker's code
                os._exit(1)
        pids.append(pid)
    os.close(w)
    expected, got = len(pids) * int(clients), 0
    while got < expected:
        chunk = os.read(r, expected - got)
        if not chunk:
            report("failed", parked=got)
            return
        got += len(chunk)
    report("ready", pids=pids)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    report("reaped", killed=sum(os.WIFSIGNALED(s) for s in statuses))


ROLES = {"dying_senders": dying_senders}


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    ROLES[role](*args)
