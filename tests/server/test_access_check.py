"""Read-only connections on the coordinator's side (issue 14, item 5).

A connection whose HELLO says ``access="r"`` is passed only ``O_RDONLY`` segment fds
(at HELLO and on every ATTACH side connection), and every request of it that needs
write access is refused by the coordinator itself, whatever the client library does:
these tests speak the protocol by hand, so no client-side check is involved.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

import anyio
import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import connected
from _procs import wait_until
from blockipc._core.protocol import (
    _DICTLIST,
    _INTLIST,
    _NEEDS_WRITE,
    _READ_ONLY_OK,
    _SCHEMAS,
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    Kind,
    Op,
    Reply,
    Request,
    Role,
    read_only_refusal,
)
from blockipc._exceptions import ErrorCode
from blockipc._handshake import close_fds, receive_event, send_frame
from blockipc.testing import isolated_coordinator, unique_name

READ_ONLY = "this connection is read-only (access='r')"


def _access_mode(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


async def _hello(
    address: str, name: str, **extra: Any
) -> tuple[UNIXSocketStream, Connection, Reply | ErrorReply, list[int]]:
    """A handshake by hand; returns the stream, its protocol, the reply and the fds
    that came with it (the caller closes them and the stream)."""
    stream = await anyio.connect_unix(address)
    conn = Connection(Role.CLIENT)
    args = {
        "version": PROTOCOL_VERSION,
        "name": name,
        "pid": os.getpid(),
        "inbox_messages": 8,
        "inbox_bytes": 1 << 20,
        **extra,
    }
    await send_frame(stream, conn.send(Request(1, Op.HELLO, args)))
    event, fds = await receive_event(stream, conn, with_fds=True)
    assert isinstance(event, Reply | ErrorReply), event
    return stream, conn, event, fds


async def _attach(address: str, token: bytes, segments: list[int]) -> list[int]:
    """The fds an ATTACH side connection is given for ``segments``."""
    async with await anyio.connect_unix(address) as stream:
        conn = Connection(Role.CLIENT)
        args = {"token": token, "segments": segments, "channel": 0}
        await send_frame(stream, conn.send(Request(1, Op.ATTACH, args)))
        event, fds = await receive_event(stream, conn, with_fds=True)
    assert isinstance(event, Reply), event
    return fds


async def _ask(stream: UNIXSocketStream, conn: Connection, req: Request) -> Reply | ErrorReply:
    await send_frame(stream, conn.send(req))
    event, _ = await receive_event(stream, conn)
    assert isinstance(event, Reply | ErrorReply), event
    return event


def _example_args(op: Op, block: int) -> dict[str, Any]:
    """Fields a request of ``op`` may carry, naming ``block`` (LEASE: a write lease)."""
    schema = _SCHEMAS[(Kind.REQUEST, op)][0]
    values = {
        int: block,
        str: "w",
        bool: False,
        bytes: b"",
        dict: {},
        _INTLIST: [block],
        _DICTLIST: [{}],
    }
    return {name: values[kind] for name, kind in schema.items()}


async def test_a_read_only_hello_is_passed_read_only_segment_fds(
    coord: blockipc.Coordinator,
) -> None:
    # (the generation table's fd, the last, is sealed against writes for everyone)
    for access, want in (("r", os.O_RDONLY), ("rw", os.O_RDWR)):
        stream, _conn, event, fds = await _hello(coord.address, unique_name(access), access=access)
        try:
            assert isinstance(event, Reply), event
            segments = fds[:-1]
            assert len(segments) == len(event.result["segments"]) >= 1
            assert [_access_mode(fd) for fd in segments] == [want] * len(segments), access
        finally:
            close_fds(fds)
            await stream.aclose()


async def test_a_hello_without_access_is_read_write(coord: blockipc.Coordinator) -> None:
    # what a client of before access= sends: the schema's default
    stream = await anyio.connect_unix(coord.address)
    conn = Connection(Role.CLIENT)
    args = {
        "version": PROTOCOL_VERSION,
        "name": unique_name("old"),
        "pid": os.getpid(),
        "inbox_messages": 8,
        "inbox_bytes": 1 << 20,
    }
    try:
        await send_frame(stream, conn.send(Request(1, Op.HELLO, args)))
        event, fds = await receive_event(stream, conn, with_fds=True)
        try:
            assert isinstance(event, Reply), event
            assert _access_mode(fds[0]) == os.O_RDWR
        finally:
            close_fds(fds)
    finally:
        await stream.aclose()


async def test_an_unknown_access_is_refused_at_hello(coord: blockipc.Coordinator) -> None:
    for access in ("w", "", "RW", "rw "):
        name = unique_name("bad")
        stream, _conn, event, fds = await _hello(coord.address, name, access=access)
        close_fds(fds)
        await stream.aclose()
        assert isinstance(event, ErrorReply), access
        assert event.code == ErrorCode.PROTOCOL_ERROR and "'rw', 'r'" in event.message, event
        assert not fds
        assert name not in coord.stats().processes


async def test_attach_passes_a_read_only_process_read_only_fds() -> None:
    # a segment added after HELLO reaches a process through ATTACH: read-only too
    async with (
        isolated_coordinator(pool_size="1MiB", max_pool_size="4MiB") as coord,
        connected(coord, "writer") as writer,
    ):
        r_stream, _c1, ro, ro_fds = await _hello(coord.address, unique_name("ro"), access="r")
        w_stream, _c2, rw, rw_fds = await _hello(coord.address, unique_name("rw"), access="rw")
        close_fds(ro_fds)
        close_fds(rw_fds)
        try:
            assert isinstance(ro, Reply) and isinstance(rw, Reply)
            await writer.alloc("1MiB")
            grown = await writer.alloc("1MiB")  # the first segment is full: a new one
            assert coord.stats().segments == 2
            for token, want in ((ro.result["token"], os.O_RDONLY), (rw.result["token"], os.O_RDWR)):
                fds = await _attach(coord.address, token, [1])
                try:
                    assert len(fds) == 1 and _access_mode(fds[0]) == want
                finally:
                    close_fds(fds)
            await writer.free(grown)
        finally:
            await r_stream.aclose()
            await w_stream.aclose()


async def test_the_coordinator_refuses_every_write_of_a_read_only_connection(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    # raw frames: the client library's own check is not involved
    secret = b"the writer's bytes" * 100
    block = await client.alloc(len(secret))
    await client.write(block, secret)
    obj = unique_name("obj")
    await client.put(b"named", name=obj)
    before = coord.stats()
    ro_name = unique_name("ro")
    stream, conn, event, fds = await _hello(coord.address, ro_name, access="r")
    close_fds(fds)
    try:
        assert isinstance(event, Reply), event
        ids = iter(range(2, 1 << 20))

        async def refused(op: Op) -> None:
            args = _example_args(op, block.id)
            if op is Op.DELETE:
                args["name"] = obj  # a name that exists: it stays
            reply = await _ask(
                stream, conn, Request(next(ids), op, args, b"x" if op is Op.WRITE else b"")
            )
            assert isinstance(reply, ErrorReply), reply
            assert reply.code == ErrorCode.ACCESS_DENIED, reply
            assert reply.message == read_only_refusal(op, args), reply
            assert reply.message.startswith(READ_ONLY), reply

        writing = sorted(_NEEDS_WRITE)
        assert {Op.ALLOC, Op.WRITE, Op.LEASE, Op.COPY, Op.PUT, Op.SEND, Op.PUBLISH} <= set(writing)
        for op in writing:
            await refused(op)
        # and what it may do still works on the same connection (a read of a block it
        # holds no right to is refused by the routing table, as for anyone)
        stats = await _ask(stream, conn, Request(next(ids), Op.STATS, {}))
        assert isinstance(stats, Reply) and ro_name in stats.result["processes"]
        sub = await _ask(stream, conn, Request(next(ids), Op.SUBSCRIBE, {"topic": "t"}))
        assert isinstance(sub, Reply), sub
        read = await _ask(
            stream, conn, Request(next(ids), Op.READ, {"block": block.id, "offset": 0, "size": 4})
        )
        assert isinstance(read, ErrorReply) and read.code == ErrorCode.ACCESS_DENIED
        assert not read.message.startswith(READ_ONLY), read
    finally:
        await stream.aclose()
    await wait_until(lambda: ro_name not in coord.stats().processes)
    after = coord.stats()
    assert (after.blocks, after.used_bytes, after.names) == (
        before.blocks,
        before.used_bytes,
        before.names,
    )
    assert await client.read(block) == secret
    assert await client.get(obj) == b"named"
    await client.delete(obj)
    assert coord._state is not None and not coord._state.read_only  # dropped with its connection
    await client.free(block)


async def test_a_read_only_connection_may_take_a_read_lease_not_a_write_lease(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    stream, conn, event, fds = await _hello(coord.address, unique_name("ro"), access="r")
    close_fds(fds)
    try:
        assert isinstance(event, Reply)
        ro_name = next(p for p in coord.stats().processes if p.startswith("ro"))
        block = await client.alloc(4096)
        await client.grant(block, ro_name, "w")  # even a write grant: the connection is read-only

        w = await _ask(stream, conn, Request(2, Op.LEASE, {"block": block.id, "mode": "w"}))
        assert isinstance(w, ErrorReply) and w.code == ErrorCode.ACCESS_DENIED
        assert w.message == f"{READ_ONLY}: a write LEASE refused"
        r = await _ask(stream, conn, Request(3, Op.LEASE, {"block": block.id, "mode": "r"}))
        assert isinstance(r, Reply), r
        done = await _ask(stream, conn, Request(4, Op.RELEASE, {"lease": r.result["lease"]}))
        assert isinstance(done, Reply), done
        inline = await _ask(
            stream, conn, Request(5, Op.WRITE, {"block": block.id, "offset": 0}, b"x")
        )
        assert isinstance(inline, ErrorReply) and inline.code == ErrorCode.ACCESS_DENIED
    finally:
        await stream.aclose()
    assert await client.read(block, 0, 1) == b"\0"
    await client.free(block)


@pytest.mark.parametrize("op", sorted(_NEEDS_WRITE), ids=lambda op: op.name)
def test_the_rule_names_the_op(op: Op) -> None:
    args = _example_args(op, 1)
    why = read_only_refusal(op, args)
    assert why is not None and why.startswith(READ_ONLY + ": ")
    assert op.name in why


def test_every_op_is_decided_for_read_only_connections() -> None:
    """A new op must be put in _NEEDS_WRITE or _READ_ONLY_OK: none is allowed by
    default, and none is in both."""
    assert not (_NEEDS_WRITE.keys() & _READ_ONLY_OK)
    assert set(Op) == _NEEDS_WRITE.keys() | _READ_ONLY_OK


def test_the_rule_allows_what_only_reads() -> None:
    allowed = [op for kind, op in _SCHEMAS if kind is Kind.REQUEST and op not in _NEEDS_WRITE]
    for op in (Op.READ, Op.GET, Op.RECV, Op.RECV_MANY, Op.SUBSCRIBE, Op.FREE, Op.STATS):
        assert op in allowed
    for op in allowed:
        assert read_only_refusal(op, _example_args(op, 1)) is None, op
    assert read_only_refusal(Op.LEASE, {"block": 1, "mode": "r"}) is None
