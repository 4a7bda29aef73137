"""The protocol's limits seen through a real coordinator: replies that could list more
than a frame carries (STATS, PEERS) are cut to the limit and say how many there are, and
a reply the coordinator's own protocol refuses costs that one request, not the
connection. (The cutting itself, for every list of every reply, and send's refusals are
tested without I/O in test_protocol.py.)"""

from __future__ import annotations

import asyncio

import anyio

import blockipc
from _helpers import raw_hello
from _procs import wait_until
from blockipc._core.protocol import (
    MAX_LIST,
    MAX_STR,
    ErrorReply,
    Op,
    Reply,
    Request,
)
from blockipc._exceptions import ErrorCode
from blockipc._handshake import receive_event
from blockipc.testing import capture_logs, unique_name


async def _gather_chunked(calls: list[object], chunk: int = 512) -> None:
    for i in range(0, len(calls), chunk):
        await asyncio.gather(*calls[i : i + chunk])  # type: ignore[arg-type]  # coroutines


async def test_stats_and_peers_with_more_names_than_a_frame_lists(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    names = [f"obj-{i:05}" for i in range(MAX_LIST + 3)]
    await _gather_chunked([client.put(b"x", "raw", name=name) for name in names])
    try:
        for _ in range(2):  # and again: the connection is as good as new
            stats = await client.stats()
            assert stats.names == tuple(names[:MAX_LIST])  # sorted, the first ones
            assert stats.names_total == len(names)
            assert stats.processes == (client.name,) and stats.processes_total == 1
            assert [u.name for u in stats.usage] == [client.name]
            assert await client.peers() == [client.name]
        assert await client.get(names[-1]) == b"x"  # one the list left out
        assert len(coord.stats().names) == coord.stats().names_total == len(names)
    finally:
        await _gather_chunked([client.delete(name) for name in names])
    stats = await client.stats()
    assert stats.names == () and stats.names_total == 0


async def test_a_reply_that_breaks_its_schema_is_an_error_reply(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    # A handler bug: a reply that breaks its own schema. (No request can make one any
    # more: an error message that quotes a long field is cut to fit, see
    # tests/server/test_field_bounds.py; so the bug is played by hand, on the session
    # of a RECV that waits.) The coordinator's protocol refuses that reply; the request
    # gets an internal error instead, it is logged, and the connection goes on.
    name = unique_name("raw")
    stream, conn = await raw_hello(coord.address, name)
    async with stream:
        await stream.send(conn.send(Request(2, Op.RECV)))
        state = coord._state
        proc = state.table.processes[name]
        await wait_until(lambda: bool(state.sessions[proc.key].recv_waits))
        session = state.sessions[proc.key]
        wait = session.recv_waits.popleft()
        wait.unpark()
        with capture_logs() as logs:
            session.reply(Reply(2, Op.RECV, {"message": "x" * (MAX_STR + 1)}))
            with anyio.fail_after(5):
                error, _ = await receive_event(stream, conn)
        assert isinstance(error, ErrorReply), error
        assert (error.req_id, error.op, error.code) == (2, Op.RECV, ErrorCode.INTERNAL)
        assert error.message.startswith("internal error: the coordinator's reply does not fit")
        assert len(error.message) <= MAX_STR
        [event] = [e for e in logs if e["event"] == "coordinator.reply_refused"]
        assert event["op"] == "RECV" and event["log_level"] == "error"
        await stream.send(conn.send(Request(3, Op.PEERS)))
        with anyio.fail_after(5):
            peers, _ = await receive_event(stream, conn)
        assert isinstance(peers, Reply) and client.name in peers.result["names"]
