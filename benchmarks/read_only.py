"""What a read-only connection (``connect(..., access="r")``) stops, and what it does
not: the figures behind ``docs/reliability.md`` ("Isolating the data plane").

    python benchmarks/read_only.py               # as this user
    python benchmarks/read_only.py --as nobody   # run as root: coordinator and reader as nobody

An embedded coordinator and a writer client fill a 1 MiB block; a reader process of the
same uid connects read-only and tries, with real system calls, to write the pool: first
through what blockipc gave it (its segment fds and its mapping), then as a hostile
process would (reopening its fd read-write through ``/proc/self/fd``, after changing the
memfd's mode; the coordinator's fds and memory through ``/proc/PID``). Each line says
what the kernel answered; the last, whether the writer's block kept its bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import json
import mmap
import os
import pwd
import signal
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
PR_SET_DUMPABLE = 4
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def attempt(call: Callable[[], Any]) -> str:
    try:
        result = call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    if isinstance(result, int) and result < 0:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    return "allowed"


def punch(fd: int) -> int:
    return int(libc.fallocate(fd, FALLOC_PUNCH, 0, os.fstat(fd).st_size))


def store(addr: int) -> str:
    """A one-byte store at ``addr``, in a forked child: what ended it."""
    pid = os.fork()
    if pid == 0:
        ctypes.memset(addr, 0x58, 1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else "allowed"


def memfd_fds(pid: str) -> list[int]:
    """The fds of process ``pid`` that are pool segments."""
    found = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{n}").startswith("/memfd:blockipc-seg"):
                found.append(int(n))
    return found


async def reader(address: str, coord_pid: int) -> dict[str, str]:
    import blockipc

    async with blockipc.connect(address, "reader", access="r"):
        fd = memfd_fds("self")[0]
        with open("/proc/self/maps") as maps:
            span = next(line.split()[0] for line in maps if "/memfd:blockipc-seg" in line)
        start, end = (int(x, 16) for x in span.split("-"))
        out = {
            "store a byte through its mapping": store(start),
            "mprotect its mapping read-write": attempt(
                lambda: libc.mprotect(start, end - start, mmap.PROT_READ | mmap.PROT_WRITE)
            ),
            "ftruncate its fd": attempt(lambda: os.ftruncate(fd, 0)),
            "fallocate(PUNCH_HOLE) its fd": attempt(lambda: punch(fd)),
            "pwrite its fd": attempt(lambda: os.pwrite(fd, b"X", 0)),
            "a writable mapping of its fd": attempt(
                lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            ),
            "reopen /proc/self/fd/N read-write": attempt(
                lambda: os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDWR))
            ),
        }
        coord_fd = memfd_fds(str(coord_pid))[0]
        out["reopen the coordinator's /proc/PID/fd/N read-write"] = attempt(
            lambda: os.close(os.open(f"/proc/{coord_pid}/fd/{coord_fd}", os.O_RDWR))
        )
        out["open the coordinator's /proc/PID/mem read-write"] = attempt(
            lambda: os.close(os.open(f"/proc/{coord_pid}/mem", os.O_RDWR))
        )
        out["fchmod its fd 0600 (the memfd is its uid's)"] = attempt(lambda: os.fchmod(fd, 0o600))
        rw = -1
        with contextlib.suppress(OSError):
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        out["then reopen it read-write"] = "allowed" if rw >= 0 else "EACCES"
        if rw >= 0:
            out["then fallocate(PUNCH_HOLE) the reopened fd"] = attempt(lambda: punch(rw))
            os.close(rw)
    return out


def run_reader(address_pipe: int, result_pipe: int, coord_pid: int) -> None:
    """The reader's process (forked before any loop runs: it has all it imports)."""
    with os.fdopen(address_pipe) as r:
        address = r.read()
    results = asyncio.run(reader(address, coord_pid))
    with os.fdopen(result_pipe, "w") as w:
        w.write(json.dumps(results))


async def main(address_pipe: int, result_pipe: int) -> None:
    import blockipc

    with tempfile.TemporaryDirectory(prefix="bipc-ro-") as tmp:
        async with (
            blockipc.Coordinator(path=f"{tmp}/s", pool_size="8MiB") as coord,
            blockipc.connect(coord.address, "writer") as writer,
        ):
            block = await writer.alloc("1MiB")
            await writer.write(block, b"\x5a" * (1 << 20))
            with os.fdopen(address_pipe, "w") as w:
                w.write(coord.address)
            loop = asyncio.get_running_loop()
            with os.fdopen(result_pipe) as r:
                results = json.loads(await loop.run_in_executor(None, r.read))
            width = max(map(len, results))
            print(f"uid {os.getuid()}: a read-only reader of the same uid tries to")
            for what, answer in results.items():
                print(f"  {what:<{width}}  {answer}")
            data = await writer.read(block)
            kept = {b"\x5a" * (1 << 20): "kept its bytes", bytes(1 << 20): "was zeroed"}
            kept = kept.get(data, "was changed")
            print(f"the writer's 1 MiB block {kept}")
            await writer.free(block)


async def warm_up() -> None:
    """A coordinator, a read-only client and a thread: what the run imports."""
    import blockipc

    with tempfile.TemporaryDirectory(prefix="bipc-ro-") as tmp:
        async with (
            blockipc.Coordinator(path=f"{tmp}/s", pool_size="1MiB") as coord,
            blockipc.connect(coord.address, "warm-up", access="r"),
        ):
            await asyncio.get_running_loop().run_in_executor(None, int)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--as", dest="user", help="switch to this user first (needs root)")
    args = parser.parse_args()
    if args.user:  # import everything first: the venv may not be readable by that user
        asyncio.run(warm_up())
        entry = pwd.getpwnam(args.user)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        # a process that changed its uid is made non-dumpable (its /proc/PID root's);
        # one started as that user is dumpable: be that
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    a_read, a_write = os.pipe()
    r_read, r_write = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(a_write)
        os.close(r_read)
        code = 0
        try:
            run_reader(a_read, r_write, parent)
        except BaseException:  # noqa: BLE001 -- the forked child reports, then _exits
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(a_read)
    os.close(r_write)
    asyncio.run(main(a_write, r_read))
    os.waitpid(child, 0)
