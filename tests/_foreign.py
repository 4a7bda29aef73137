"""Another user on this machine, for the tests of who may be at the other end of a socket.

:func:`squatter` runs a child process that drops to ``nobody`` (uid 65534) and listens
on a socket path before anyone else does, as a hostile local user would under ``/tmp``.
It accepts every connection and records what each sends; it hangs up on a connection as
soon as that sends anything (so a client that spoke waits for no reply). Needs root:
:data:`needs_root` skips a test otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

NOBODY = 65534

needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="a second uid (nobody) is needed: only root can switch to it"
)

# Everything is imported before setuid: the venv may not be readable by nobody.
_SQUATTER = """
import json, os, selectors, socket, sys
path = sys.argv[1]
try:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
except OSError as exc:
    print(json.dumps({"event": "cannot_setuid", "error": str(exc)}), flush=True)
    sys.exit(0)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(16)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
print(json.dumps({"event": "ready", "uid": os.getuid()}), flush=True)
connections, received = 0, b""
while sys.stdin in [k.fileobj for k in sel.get_map().values()]:
    for key, _ in sel.select():
        if key.fileobj is srv:
            conn, _ = srv.accept()
            connections += 1
            sel.register(conn, selectors.EVENT_READ)
        elif key.fileobj is sys.stdin:
            sel.unregister(sys.stdin)  # the test is done: report
        else:
            data = key.fileobj.recv(65536)
            received += data
            sel.unregister(key.fileobj)
            key.fileobj.close()  # hang up at once: a client that spoke waits for nothing
print(json.dumps({"event": "done", "connections": connections, "received": received.hex()}),
      flush=True)
"""


class Squatter:
    """The running child; :meth:`report` ends it and returns what it saw."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with anyio.fail_after(20):
            raw = await self.proc.stdout.readline()
        assert raw, f"the squatter exited ({await self.proc.wait()}) without reporting"
        result: dict[str, Any] = json.loads(raw)
        return result

    async def report(self) -> tuple[int, bytes]:
        """``(connections accepted, bytes received)``; the child exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        done = await self.line()
        assert done["event"] == "done", done
        return done["connections"], bytes.fromhex(done["received"])


@contextlib.asynccontextmanager
async def squatter(path: Path) -> AsyncIterator[Squatter]:
    """A process of ``nobody`` listening on ``path`` (whose directory must let nobody in:
    the caller makes it 0777). Skips the test if this process cannot switch uid."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SQUATTER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        child = Squatter(proc)
        first = await child.line()
        if first["event"] == "cannot_setuid":
            pytest.skip(f"cannot switch to uid {NOBODY}: {first['error']}")
        assert first == {"event": "ready", "uid": NOBODY}, first
        yield child
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with anyio.fail_after(20):
                await proc.communicate()


_INTRUDER = """
import json, os, socket, sys
path, data = sys.argv[1], bytes.fromhex(sys.argv[2])
try:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
except OSError as exc:
    print(json.dumps({"event": "cannot_setuid", "error": str(exc)}), flush=True)
    sys.exit(0)
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.settimeout(20)
    sock.connect(path)
    answer = b""
    try:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            answer += chunk
    except (BrokenPipeError, ConnectionResetError):  # hung up on (our bytes perhaps unread)
        pass
print(json.dumps({"event": "answer", "answer": answer.hex()}), flush=True)
"""


async def run_intruder(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` (code that switches to ``nobody`` first, then prints one JSON
    object) in a child process and return that object; killed on the way out. Skips the
    test if the child could not switch uid (it printed ``cannot_setuid``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        with anyio.fail_after(30):
            out, _ = await proc.communicate()
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.communicate()
    assert proc.returncode == 0, f"the intruder failed ({proc.returncode}): {out!r}"
    result: dict[str, Any] = json.loads(out)
    if result["event"] == "cannot_setuid":
        pytest.skip(f"cannot switch to uid {NOBODY}: {result['error']}")
    return result


async def say_as_nobody(path: Path, data: bytes) -> bytes:
    """Connect to ``path`` as ``nobody``, send ``data`` and return everything the server
    answers until it hangs up. Skips the test if this process cannot switch uid."""
    result = await run_intruder(_INTRUDER, str(path), data.hex())
    return bytes.fromhex(result["answer"])
