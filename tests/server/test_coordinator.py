"""The coordinator against misbehaving connections, its accounting when clients end,
and pool growth. Every test runs on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgpack
import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import raw_hello
from _procs import payload, sha256, wait_until
from blockipc import ConnectionClosed, PoolExhausted
from blockipc._core.limits import MAX_BATCH, MAX_HEADER, MAX_NAME
from blockipc._core.protocol import (
    _COMPACT,
    HEADER,
    MAX_FRAME_SIZE,
    ErrorReply,
    Kind,
    Op,
    Reply,
    Request,
)
from blockipc._exceptions import ErrorCode
from blockipc._handshake import receive_event
from blockipc.testing import assert_pool_clean, isolated_coordinator, unique_name

MiB = 1 << 20


def frame(kind: int, op: int, req_id: int, meta: bytes, data: bytes = b"") -> bytes:
    body = HEADER.size - 4 + len(meta) + len(data)
    return HEADER.pack(body, kind, op, req_id, len(meta)) + meta + data


def request(op: Op, req_id: int, args: dict[str, Any]) -> bytes:
    compact = _COMPACT.get((Kind.REQUEST, op))
    if compact is not None:  # the hot requests' fixed structs of ints
        st, names = compact
        return frame(Kind.REQUEST, op, req_id, st.pack(*(args[name] for name in names)))
    return frame(Kind.REQUEST, op, req_id, msgpack.packb(args))


async def assert_closed_by_peer(stream: UNIXSocketStream) -> None:
    """The coordinator ends this connection (promptly)."""
    with anyio.fail_after(5):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


GARBAGE: dict[str, bytes] = {
    "garbage": b"\xff" * 64,
    "oversized_length": HEADER.pack(MAX_FRAME_SIZE, Kind.REQUEST, Op.ALLOC, 2, 0),
    "huge_length": HEADER.pack(0xFFFFFFFF, Kind.REQUEST, Op.ALLOC, 2, 0) + b"x" * 100,
    "inconsistent_lengths": HEADER.pack(10, Kind.REQUEST, Op.ALLOC, 2, 1000) + b"x" * 6,
    # RECV_MANY's meta is a msgpack map (ALLOC's, READ's, ... are fixed structs)
    "bad_msgpack_meta": frame(Kind.REQUEST, Op.RECV_MANY, 2, b"\xc1\xc1\xc1"),
    "truncated_msgpack_meta": frame(Kind.REQUEST, Op.RECV_MANY, 2, b"\x81\xa3max"),
    "meta_not_a_map": frame(Kind.REQUEST, Op.RECV_MANY, 2, msgpack.packb([1, 2])),
    "unknown_op": frame(Kind.REQUEST, 200, 2, msgpack.packb({})),
    "unknown_kind": frame(99, Op.RECV_MANY, 2, msgpack.packb({"max": 1})),
    "a_reply": frame(Kind.REPLY, Op.ALLOC, 2, msgpack.packb({})),
    "ill_typed_field": request(Op.RECV_MANY, 2, {"max": "1MiB"}),
    "negative_field": request(Op.RECV_MANY, 2, {"max": -1}),
    "unknown_field": request(Op.RECV_MANY, 2, {"max": 1, "extra": 1}),
    "missing_field": frame(Kind.REQUEST, Op.READ, 2, struct.pack("<QQ", 1, 0)),
    "struct_too_short": frame(Kind.REQUEST, Op.ALLOC, 2, struct.pack("<I", 1)),
    "struct_field_too_large": frame(Kind.REQUEST, Op.ALLOC, 2, struct.pack("<Q", 2**63)),
    "data_where_none_allowed": frame(
        Kind.REQUEST, Op.RECV_MANY, 2, msgpack.packb({"max": 1}), b"data"
    ),
    "data_on_a_struct_request": frame(Kind.REQUEST, Op.ALLOC, 2, struct.pack("<Q", 1), b"data"),
}
AFTER_HANDSHAKE = {
    **GARBAGE,
    "hello_again": request(
        Op.HELLO,
        2,
        {"version": 1, "name": "again", "pid": 1, "inbox_messages": 1, "inbox_bytes": 1},
    ),
    "request_id_in_flight": request(Op.RECV, 5, {}) + request(Op.RECV, 5, {}),
}


@pytest.mark.parametrize("bad", list(AFTER_HANDSHAKE.values()), ids=list(AFTER_HANDSHAKE))
async def test_malformed_frame_after_handshake(
    coord: blockipc.Coordinator, client: blockipc.Client, bad: bytes
) -> None:
    name = unique_name("raw")
    stream, _conn = await raw_hello(coord.address, name)
    async with stream:
        # the raw connection owns a block first: it must be freed with the connection
        await stream.send(request(Op.ALLOC, 4, {"size": MiB}))
        await wait_until(lambda: coord.stats().blocks == 1)
        with blockipc.testing.capture_logs() as logs:
            await stream.send(bad)
            await assert_closed_by_peer(stream)
            await wait_until(lambda: name not in coord.stats().processes)
    errors = [e for e in logs if e["event"] == "protocol.error"]
    assert errors, logs
    assert errors[0]["log_level"] in ("warning", "error")
    assert coord.stats().blocks == 0
    await check_still_serving(coord, client)


@pytest.mark.parametrize("bad", list(GARBAGE.values()), ids=list(GARBAGE))
async def test_malformed_frame_instead_of_handshake(
    coord: blockipc.Coordinator, client: blockipc.Client, bad: bytes
) -> None:
    stream = await anyio.connect_unix(coord.address)
    async with stream:
        with blockipc.testing.capture_logs() as logs:
            await stream.send(bad)
            await assert_closed_by_peer(stream)
            await wait_until(lambda: any(e["event"] == "protocol.error" for e in logs))
    assert coord.stats().processes == (client.name,)
    await check_still_serving(coord, client)


async def test_bad_handshakes(coord: blockipc.Coordinator, client: blockipc.Client) -> None:
    cases = {
        "wrong_version": request(
            Op.HELLO,
            1,
            {"version": 999, "name": "v", "pid": 1, "inbox_messages": 1, "inbox_bytes": 1},
        ),
        "attach_bad_token": request(Op.ATTACH, 1, {"token": b"x" * 16, "segments": [0]}),
        "request_before_hello": request(Op.ALLOC, 1, {"size": 1}),
    }
    for bad in cases.values():
        stream = await anyio.connect_unix(coord.address)
        async with stream:
            await stream.send(bad)
            await assert_closed_by_peer(stream)
    assert coord.stats().processes == (client.name,)
    await check_still_serving(coord, client)


async def test_peer_closing_mid_frame(coord: blockipc.Coordinator, client: blockipc.Client) -> None:
    name = unique_name("raw")
    stream, _conn = await raw_hello(coord.address, name)
    async with stream:
        await stream.send(request(Op.ALLOC, 5, {"size": 4096}))
        await stream.send(request(Op.RECV, 6, {}))  # left waiting in the coordinator
        await stream.send(request(Op.ALLOC, 7, {"size": 4096})[:9])
        await wait_until(lambda: coord.stats().blocks == 1)
    await wait_until(lambda: name not in coord.stats().processes)
    assert coord.stats().blocks == 0
    await check_still_serving(coord, client)


async def check_still_serving(coord: blockipc.Coordinator, client: blockipc.Client) -> None:
    block = await client.alloc(100)
    await client.write(block, b"still here")
    assert await client.read(block, 0, 10) == b"still here"
    await client.free(block)
    async with blockipc.connect(coord.address, name=unique_name("new")) as fresh:
        assert (await fresh.stats()).blocks == 0


# -- CANCEL ---------------------------------------------------------------------------
async def test_cancel_of_a_request_that_is_not_parked_is_harmless(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """The client sends CANCEL for any call it abandons: a CANCEL whose target was
    answered already, never existed, or is a CANCEL changes nothing but its own reply;
    one whose target is parked answers the target as cancelled, once."""
    stream, conn = await raw_hello(coord.address, unique_name("raw"))
    try:

        async def events(n: int) -> list[tuple[int, Op, bool]]:
            got = []
            with anyio.fail_after(5):
                for _ in range(n):
                    event, _fds = await receive_event(stream, conn)
                    assert isinstance(event, Reply | ErrorReply), event
                    got.append((event.req_id, event.op, isinstance(event, ErrorReply)))
            return got

        def req(req_id: int, op: Op, args: dict[str, Any]) -> bytes:
            return conn.send(Request(req_id, op, args))

        await stream.send(
            req(2, Op.ALLOC, {"size": 100})
            + req(3, Op.CANCEL, {"target": 2})  # answered already
            + req(4, Op.CANCEL, {"target": 99})  # never sent
            + req(5, Op.CANCEL, {"target": 5})  # itself
            + req(6, Op.RECV, {})  # parks
            + req(7, Op.CANCEL, {"target": 6})
            + req(8, Op.CANCEL, {"target": 6})  # withdrawn already
            + req(9, Op.STATS, {})
        )
        assert await events(8) == [
            (2, Op.ALLOC, False),
            (3, Op.CANCEL, False),
            (4, Op.CANCEL, False),
            (5, Op.CANCEL, False),
            (6, Op.RECV, True),  # CANCELLED
            (7, Op.CANCEL, False),
            (8, Op.CANCEL, False),
            (9, Op.STATS, False),
        ]
        assert coord.stats().blocks == 1  # the ALLOC stands
    finally:
        await stream.aclose()
    await wait_until(lambda: coord.stats().blocks == 0)
    await check_still_serving(coord, client)


# -- accounting when a client ends ----------------------------------------------------
async def test_abrupt_disconnect_reclaims_everything(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    start = await client.stats()
    victim = await blockipc.connect(coord.address, name=unique_name("victim"))
    blocks = [await victim.alloc(size) for size in (1, 5000, MiB, 3 * MiB)]
    for block in blocks:
        await victim.write(block, b"x")
    held = asyncio.Event()
    waiting = asyncio.Event()
    release = asyncio.Event()

    async def hold_lease() -> None:
        async with victim.lease(blocks[2], "w"):
            held.set()
            await release.wait()

    async def wait_lease() -> None:
        waiting.set()
        with pytest.raises(ConnectionClosed):
            async with victim.lease(blocks[2], "r"):
                pass

    async def recv() -> None:
        with pytest.raises(ConnectionClosed):
            await victim.recv()

    with blockipc.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_lease)
            await held.wait()
            tg.start_soon(wait_lease)
            await waiting.wait()
            tg.start_soon(recv)
            await asyncio.sleep(0.05)
            assert coord.stats().leases == 1
            assert victim._proto is not None and victim._proto.transport is not None
            victim._proto.transport.abort()  # as if the process died
            await wait_until(lambda: victim.name not in coord.stats().processes)
            release.set()
    assert victim.closed
    with pytest.raises(ConnectionClosed):
        await victim.alloc(1)
    await victim.close()
    assert await client.stats() == start
    (disconnect,) = [e for e in logs if e["event"] == "client.disconnect"]
    assert disconnect["blocks_freed"] == 4
    assert disconnect["leases_reclaimed"] == 1
    assert any(e["event"] == "lease.reclaimed" for e in logs)


async def test_close_with_blocks_leases_and_unreceived_messages(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    start = coord.stats()
    name = unique_name("closer")
    closer = await blockipc.connect(coord.address, name=name)
    await closer.alloc(MiB)
    kept = await closer.alloc(100)
    for _ in range(3):  # messages sent to it that it never receives: freed with it
        block = await client.alloc(2 * MiB)
        await client.send(block, to=name)
    lease = closer.lease(kept, "w")
    await lease.__aenter__()
    assert coord.stats().blocks == 5
    await closer.close()
    await wait_until(lambda: name not in coord.stats().processes)
    assert coord.stats() == start
    await lease.__aexit__(None, None, None)  # after close: a no-op, never raises


async def test_blocks_in_flight_stay_with_receiver(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    sender = await blockipc.connect(coord.address, name=unique_name("sender"))
    block = await sender.alloc(MiB)
    data = payload(MiB, 3)
    await sender.write(block, data)
    await sender.send(block, to=client.name, header={"sha256": sha256(data)})
    await sender.alloc(4096)  # its own block goes with it
    await sender.close()
    await wait_until(lambda: sender.name not in coord.stats().processes)
    assert coord.stats().blocks == 1
    msg = await client.recv()
    assert (msg.sender, msg.block.id, msg.block.owner) == (sender.name, block.id, client.name)
    assert sha256(await client.read(msg.block)) == msg.header["sha256"]
    await client.free(msg.block)


# -- the coordinator going away ---------------------------------------------------------
async def test_coordinator_close_ends_every_pending_await() -> None:
    async with isolated_coordinator(pool_size="4MiB") as c:
        client = await blockipc.connect(c.address, name="pending")
        block = await client.alloc(100)
        outcomes: dict[str, BaseException | None] = {}
        held = asyncio.Event()
        release = asyncio.Event()

        async def run(name: str, call: Callable[[], Awaitable[Any]]) -> None:
            try:
                await call()
                outcomes[name] = None
            except BaseException as exc:  # noqa: BLE001 -- recorded and checked below
                outcomes[name] = exc

        async def hold() -> None:
            async with client.lease(block, "w"):
                held.set()
                await release.wait()

        async def contend() -> None:
            async with client.lease(block, "w"):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await held.wait()
            tg.start_soon(run, "recv", client.recv)
            tg.start_soon(run, "lease", contend)
            await asyncio.sleep(0.05)
            assert not outcomes
            closed_at = time.monotonic()
            await c.aclose()
            with anyio.fail_after(1):
                await wait_until(lambda: len(outcomes) == 2, timeout=1)
            assert time.monotonic() - closed_at < 1
            release.set()
        for exc in outcomes.values():
            assert isinstance(exc, ConnectionClosed), outcomes
        with pytest.raises(ConnectionClosed):
            await client.alloc(1)
        await client.close()


# -- pool growth ------------------------------------------------------------------------
async def test_pool_grows_by_segments_up_to_the_limit() -> None:
    async with isolated_coordinator(pool_size="4MiB", max_pool_size="16MiB") as c:
        async with blockipc.connect(c.address, name="grower") as client:
            stats = await client.stats()
            assert (stats.pool_size, stats.max_pool_size, stats.segments) == (4 * MiB, 16 * MiB, 1)
            first = await client.alloc(4 * MiB)  # fills segment 0
            assert len(client._segments) == 1
            second = await client.alloc(MiB)  # a new 4 MiB segment
            stats = await client.stats()
            assert (stats.pool_size, stats.segments, stats.used_bytes) == (8 * MiB, 2, 5 * MiB)
            # the client maps the new segment (over the ATTACH side channel) on first use
            data = payload(MiB, 11)
            await client.write(second, data)
            assert len(client._segments) == 2
            assert await client.read(second) == data
            third = await client.alloc(8 * MiB)  # the rest of the room: an 8 MiB segment
            stats = await client.stats()
            assert (stats.pool_size, stats.segments, stats.free_bytes) == (16 * MiB, 3, 3 * MiB)
            with pytest.raises(PoolExhausted):
                await client.alloc(4 * MiB)  # 3 MiB free, but no 4 MiB block and no room
            with pytest.raises(PoolExhausted):
                await client.alloc(16 * MiB)  # larger than any block could ever be
            assert (await client.stats()) == stats
            async with client.lease(third, "w") as view:
                view[-4:] = b"tail"
            assert len(client._segments) == 3
            async with blockipc.connect(c.address, name="late") as late:  # gets all at HELLO
                assert len(late._segments) == 3
            for block in (first, second, third):
                await client.free(block)
            stats = await client.stats()
            assert (stats.free_bytes, stats.segments, stats.pool_size) == (16 * MiB, 3, 16 * MiB)
        await wait_until(lambda: not c.stats().processes)
        assert_pool_clean(c)


async def test_the_coordinator_applies_the_shared_limits(coord: blockipc.Coordinator) -> None:
    # Requests a Client never sends (it checks them first, with the same _limits
    # functions), each refused by the coordinator with InvalidRequest; the
    # connection goes on after every one.
    name = unique_name("raw")
    stream, conn = await raw_hello(coord.address, name)
    req_id = iter(range(2, 1000))

    async def call(op: Op, args: dict[str, Any]) -> Reply | ErrorReply:
        await stream.send(conn.send(Request(next(req_id), op, args)))
        with anyio.fail_after(5):
            event, _ = await receive_event(stream, conn)
        assert isinstance(event, Reply | ErrorReply), event
        return event

    async with stream:
        alloc = await call(Op.ALLOC, {"size": 100})
        assert isinstance(alloc, Reply), alloc
        block = alloc.result["block"]
        put = await call(Op.PUT, {"size": 10})
        assert isinstance(put, Reply), put
        long_name = "n" * (MAX_NAME + 1)
        send = {"block": block, "to": name, "move": False, "nowait": True, "wait_ms": 0}
        refused = [
            (Op.LEASE, {"block": block, "mode": "x"}, "lease mode must be 'r' or 'w'"),
            (Op.GRANT, {"block": block, "to": name, "mode": "rw"}, "grant mode must be"),
            (Op.SUBSCRIBE, {"topic": ""}, f"topic '' must be 1 to {MAX_NAME}"),
            (Op.UNSUBSCRIBE, {"topic": long_name}, f"must be 1 to {MAX_NAME}"),
            (Op.RECV_MANY, {"max": 0}, f"must be 1 to {MAX_BATCH}"),
            (Op.RECV_MANY, {"max": MAX_BATCH + 1}, f"must be 1 to {MAX_BATCH}"),
            (Op.FREE_MANY, {"blocks": []}, f"must be 1 to {MAX_BATCH}"),
            (Op.FREE_MANY, {"blocks": [block] * (MAX_BATCH + 1)}, f"must be 1 to {MAX_BATCH}"),
            (Op.FREE_MANY, {"blocks": [block, block]}, "distinct"),
            (Op.SEND, {**send, "header": {"k": "x" * MAX_HEADER}}, f"limit is {MAX_HEADER}"),
            (
                Op.PUBLISH,
                {"block": block, "topic": "t", "header": {"k": "x" * MAX_HEADER}, "nowait": True},
                f"limit is {MAX_HEADER}",
            ),
            (
                Op.COMMIT,
                {
                    "lease": put.result["lease"],
                    "codec": "raw",
                    "meta": {},
                    "name": long_name,
                    "cacheable": False,
                    "if_absent": False,
                    "ttl_ms": 0,
                },
                f"object name '{long_name[:10]}",
            ),
        ]
        for op, args, match in refused:
            error = await call(op, args)
            assert isinstance(error, ErrorReply), (op, error)
            assert error.code == ErrorCode.INVALID_REQUEST, (op, error)
            assert match in error.message, (op, error.message)
        # and what fits the same limits is done
        ok = await call(Op.SEND, {**send, "header": {"k": "x" * (MAX_HEADER - 100)}})
        assert isinstance(ok, Reply), ok
        ok = await call(Op.SUBSCRIBE, {"topic": "t" * MAX_NAME})
        assert isinstance(ok, Reply), ok
    await wait_until(lambda: name not in coord.stats().processes)
    assert coord.stats().blocks == 0
