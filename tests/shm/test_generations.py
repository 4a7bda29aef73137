"""The generation table's memfd: clients can read it and nothing else (issue 14: a
client's ``ftruncate`` on it killed the coordinator with SIGBUS, and a write to a slot
made other clients' ``get`` return stale values)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import anyio

import blockipc
from blockipc._core.protocol import PROTOCOL_VERSION, Connection, Op, Reply, Request, Role
from blockipc._handshake import close_fds, receive_event
from blockipc._shm.generations import GenerationTable, GenerationView

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _refused(fd: int) -> list[str]:
    """Every way to change the memfd behind ``fd`` that went through."""
    done = []
    for what, attempt in (
        ("truncate", lambda: os.ftruncate(fd, 0)),
        ("grow", lambda: os.ftruncate(fd, 1 << 30)),
        ("write", lambda: os.pwrite(fd, b"\xff" * 8, 0)),
        ("map writable", lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED).close()),
    ):
        try:
            attempt()
        except (PermissionError, OSError):
            continue
        done.append(what)
    if _libc.fallocate(fd, _PUNCH_HOLE, ctypes.c_long(0), ctypes.c_long(4096)) == 0:
        done.append("punch a hole")
    reopened = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        os.pwrite(reopened, b"\xff" * 8, 0)
        done.append("write through /proc/self/fd")
    except PermissionError:
        pass
    finally:
        os.close(reopened)
    return done


def test_the_table_is_sealed_and_its_owner_still_writes() -> None:
    table = GenerationTable(1024)
    try:
        assert _refused(table.fd) == []
        view = GenerationView(table.fd, table.size)
        try:
            table.set(3, 41)
            assert view.get(3) == 41  # the coordinator's own mapping writes on
        finally:
            view.close()
    finally:
        table.close()


async def test_a_client_cannot_truncate_or_write_the_table_it_is_given() -> None:
    async with blockipc.Coordinator(pool_size="4MiB") as coord:
        stream = await anyio.connect_unix(coord.address)
        conn = Connection(Role.CLIENT)
        args = {"version": PROTOCOL_VERSION, "name": "raw", "pid": os.getpid()}
        hello = Request(1, Op.HELLO, {**args, "inbox_messages": 8, "inbox_bytes": 1 << 20})
        await stream.send(conn.send(hello))
        event, fds = await receive_event(stream, conn, with_fds=True)
        try:
            assert isinstance(event, Reply)
            gens_fd = fds[-1]  # after the segments' fds
            assert os.fstat(gens_fd).st_size == event.result["gen_size"]
            assert _refused(gens_fd) == []
        finally:
            close_fds(fds)
            await stream.aclose()
        # the coordinator is unharmed: allocating (which reads the table) works
        async with blockipc.connect(coord.address, name="good") as good:
            block = await good.alloc(4096)
            await good.put(b"v1", name="k")
            assert await good.get("k") == b"v1"
            await good.free(block)
