"""Child processes for tests/client/test_read_only.py: a read-only client that tries,
with real system calls, to write the pool through everything its process holds.

Run as ``python tests/_read_only_procs.py ROLE ADDRESS ARGS...``; like tests/_procs.py
(whose :func:`~_procs.report` and ``main`` this reuses), a child reports one JSON object
per line on stdout and logs to stderr. The test side uses :func:`spawn`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import signal
from pathlib import Path
from typing import Any

import anyio

import _procs
from _procs import Child, report, sha256

HERE = Path(__file__).resolve()

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_read_only_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


def _outcome(call: Any, *args: Any) -> str:
    """``"ok"``, or the errno name a call failed with."""
    try:
        call(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _libc_outcome(result: int) -> str:
    return "ok" if result == 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def segment_fds() -> dict[int, str]:
    """Every fd of this process that is a pool segment (memfd ``blockipc-seg*``)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("/memfd:blockipc-seg"):
                found[int(name)] = target
    return found


def segment_mappings() -> list[tuple[int, int, str]]:
    """(start, end, permissions) of every mapping of a pool segment in this process."""
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "/memfd:blockipc-seg" in line:
                span, perms = line.split()[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                maps.append((start, end, perms))
    return maps


def _punch(fd: int, size: int) -> str:
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    return _libc_outcome(_libc.fallocate(fd, mode, 0, size))


def _store_in_forked_child(addr: int) -> str:
    """A one-byte store at ``addr`` in a forked child: how it ended (``"SIGSEGV"``, or
    ``"stored"`` when the store went through)."""
    pid = os.fork()
    if pid == 0:  # the child: store, then leave without running anything of the parent's
        _libc.memset(addr, 0x58, 1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return "stored"


async def ro_prober(address: str, name: str, obj: str) -> None:
    """Connect read-only; receive one block and read it, get ``obj``; then try every way
    to write the pool through this process's fds and mappings, and report each outcome."""
    import blockipc

    async with blockipc.connect(address, name, access="r") as client:
        report("ready", access=client.access)
        msg = await client.recv()
        received = await client.read(msg.block)
        value = await client.get(obj)
        await client.free(msg.block)
        fds = segment_fds()
        probes: dict[str, Any] = {
            "received": sha256(received),
            "got": sha256(value),
            "fds": len(fds),
            "access_modes": sorted({fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE for fd in fds}),
            "file_modes": sorted({os.fstat(fd).st_mode & 0o777 for fd in fds}),
            "ftruncate": sorted({_outcome(os.ftruncate, fd, 0) for fd in fds}),
            "punch_hole": sorted({_punch(fd, os.fstat(fd).st_size) for fd in fds}),
            "write": sorted({_outcome(os.pwrite, fd, b"X", 0) for fd in fds}),
            "map_writable": sorted(
                {
                    _outcome(mmap.mmap, fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                    for fd in fds
                }
            ),
        }
        maps = segment_mappings()
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        probes["mappings"] = sorted({perms for _, _, perms in maps})
        probes["mprotect"] = sorted(
            {_libc_outcome(_libc.mprotect(start, end - start, rw)) for start, end, _ in maps}
        )
        try:
            seg = next(iter(client._segments.values()))
            seg.buffer[0:1] = b"X"
            probes["view_write"] = "stored"
        except TypeError:
            probes["view_write"] = "TypeError"
        probes["store"] = sorted({_store_in_forked_child(start) for start, _, _ in maps})
        report("probed", **probes)
        await anyio.sleep_forever()


_procs.ROLES.update(ro_prober=ro_prober)


if __name__ == "__main__":
    _procs.main()
