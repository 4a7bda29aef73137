"""Child processes for the tests of request/reply across processes.

Run as ``python tests/_rr_procs.py ROLE ARGS...``; each child reports one JSON object
per line on stdout (``_procs.report``), and the test side's :func:`spawn` always kills
the child and waits for it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import anyio

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_rr_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


def _summary(value: Any) -> Any:
    """What a responder says it got: a value, or a long bytes value's length."""
    if isinstance(value, bytes) and len(value) > 64:
        return {"bytes": len(value), "first": value[0]}
    return value


async def responder(address: str, name: str, hold: str) -> None:
    """Answer requests as ``name``: a request whose value is ``[..., "hang"]`` (or a long
    bytes value starting with ``b"H"``) is held and never answered (``holding``, with
    how many it holds), any other is answered with ``{"echo": value}`` (json). Once it
    holds ``hold`` requests it stops receiving (reports ``full``) and sleeps until killed."""
    import blockipc

    held: list[blockipc.IncomingRequest] = []
    async with blockipc.connect(address, name=name) as client:
        report("ready")
        async for req in client.requests():
            value = req.value
            hang = (isinstance(value, list) and value[-1:] == ["hang"]) or (
                isinstance(value, bytes) and len(value) > 64 and value[:1] == b"H"
            )
            if not hang:
                await req.reply({"echo": _summary(value), "sender": req.sender}, codec="json")
                continue
            held.append(req)
            report("holding", held=len(held), block=req.block is not None)
            if len(held) >= int(hold):
                break
        report("full")
        await anyio.sleep_forever()


async def requester(address: str, name: str, to: str, timeout: str) -> None:
    """Ask ``to`` once (``ok``), then once more with ``[name, "hang"]`` and a generous
    ``timeout``; report how the second request ended (``raised``: the exception's
    class name and message)."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        got = await client.request(to, [name, "ok"], codec="json", timeout=float(timeout))
        report("ok", reply=got)
        try:
            await client.request(to, [name, "hang"], codec="json", timeout=float(timeout))
        except Exception as exc:  # noqa: BLE001 -- reported to the test, which checks it
            report("raised", error=type(exc).__name__, message=str(exc))
        else:
            report("answered")


ROLES = {"responder": responder, "requester": requester}


if __name__ == "__main__":
    import blockipc

    blockipc.configure_logging("debug")  # a failing test shows the child's events
    role, *args = sys.argv[1:]
    blockipc.run(lambda: ROLES[role](*args))
