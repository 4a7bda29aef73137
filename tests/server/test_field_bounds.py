"""Every variable-size field of the protocol is bounded, so no reply outgrows a frame
(issue 14, item 8: a COMMIT with a 1.1 MB ``meta`` made every later ``get`` of that name
answer with a reply over the frame limit).

Table-driven over the protocol's ``_SCHEMAS``: each field kind has a largest encoding,
every reply's worst case (what its requests may hold at their bounds) fits a frame,
and each dict field of a request, which the schema checks for shape only, is checked
for size by its op's handler: for those, a live coordinator is sent one too large.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import check_each, connected, raw_hello
from _procs import wait_until
from blockipc import BlockNotFound, InvalidRequest
from blockipc._core import protocol
from blockipc._core.limits import MAX_BATCH, MAX_HEADER, MAX_LIST, MAX_NAME, MAX_STR
from blockipc._core.protocol import (
    HEADER,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    REPLY_LISTS_BUDGET,
    Connection,
    ErrorReply,
    Kind,
    Op,
    Reply,
    Request,
    Role,
    fit_lists,
)
from blockipc._handshake import receive_event
from blockipc.testing import unique_name

STR = 5 + 4 * MAX_STR  # a str field at its longest: MAX_STR characters of 4 UTF-8 bytes
INT = 9

# the largest msgpack encoding of one value of each field kind of the schema language
KIND_BOUNDS: dict[Any, int] = {
    int: INT,
    bool: 1,
    str: STR,
    bytes: 5 + protocol._MAX_TOKEN,
    dict: MAX_HEADER,  # the header rule, applied by the handler (see DICT_FIELDS)
}
ITEM_BOUNDS: dict[str, int] = {
    protocol._STRLIST: STR,
    protocol._INTLIST: INT,
    protocol._SEGLIST: 5 + 2 * INT,
    protocol._MSGLIST: 5 + 5 * INT + 4 * STR + 2 * MAX_HEADER,
    protocol._DICTLIST: MAX_HEADER,  # each a codec meta, by the header rule
    protocol._JOBLIST: 5 + 8 * INT + 2 * STR + 2 * MAX_HEADER + 1,
    **{kind: 5 + strings * STR + ints * INT for kind, (strings, ints) in protocol._ROWS.items()},
}
# replies whose lists are cut to REPLY_LISTS_BUDGET encoded bytes together: by
# fit_lists (STATS, PEERS), by the coordinator's RECV_MANY batching (message_bound), by
# TAKE_MANY's (job_bound: its rows and its inline data together)
FITTED = {Op.STATS, Op.PEERS, Op.RECV_MANY, Op.TAKE_MANY}
# every dict field of a request: the handler bounds it by the header rule
DICT_FIELDS = {
    (Op.SEND, "header"),
    (Op.PUBLISH, "header"),
    (Op.REMOTE_SEND, "header"),
    (Op.COMMIT, "meta"),
    (Op.ENQUEUE, "header"),
    (Op.ENQUEUE, "meta"),
    (Op.ENQUEUE_MANY, "header"),
    (Op.ENQUEUE_COMMIT, "header"),
    (Op.ENQUEUE_COMMIT, "meta"),
    (Op.REQUEST, "meta"),
    (Op.RESPOND, "meta"),
    (Op.SEND_DATA, "header"),
    (Op.SEND_DATA, "meta"),
    (Op.SEND_MANY, "header"),
    (Op.SEND_MANY, "meta"),
}


def field_bound(kind: Any) -> int:
    if kind in protocol._LIST_LIMITS:
        return 5 + protocol._LIST_LIMITS[kind] * ITEM_BOUNDS[kind]
    return KIND_BOUNDS[kind]


def reply_bound(op: Op, schema: dict[str, Any]) -> int:
    """The most bytes a frame of this schema takes, every field at its largest."""
    total = HEADER.size + 5
    for name, kind in schema.items():
        total += 5 + len(name)
        if op in FITTED and kind in protocol._LIST_LIMITS:
            total += 5  # the list's own length prefix; its items count against the budget
        else:
            total += field_bound(kind)
    if op in FITTED:
        total += REPLY_LISTS_BUDGET
    return total


def test_every_field_kind_has_a_bound() -> None:
    kinds = {kind for schema, _ in protocol._SCHEMAS.values() for kind in schema.values()}
    assert kinds <= KIND_BOUNDS.keys() | ITEM_BOUNDS.keys(), "a field kind with no bound"
    assert set(protocol._LIST_LIMITS) == set(ITEM_BOUNDS)


def test_every_reply_fits_a_frame() -> None:
    replies = [(op, s) for (kind, op), (s, _) in protocol._SCHEMAS.items() if kind is Kind.REPLY]
    replies += [(op, protocol._ERROR_SCHEMA) for op in Op]

    def fits(case: tuple[Op, dict[str, Any]]) -> None:
        op, schema = case
        assert reply_bound(op, schema) <= MAX_FRAME_SIZE, f"{op.name} may outgrow a frame"

    check_each(replies, fits)


def test_every_dict_field_of_a_request_has_a_size_check() -> None:
    found = {
        (op, name)
        for (kind, op), (schema, _) in protocol._SCHEMAS.items()
        if kind is Kind.REQUEST
        for name, field_kind in schema.items()
        if field_kind is dict
    }
    assert found == DICT_FIELDS, "add the new dict field's size check and a case below"
    assert {(case[0], case[1]) for case in DICT_CASES} == DICT_FIELDS


# -- fit_lists: a reply that lists the pool's names fits, however long they are ---------
def ready_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    hello = {"version": PROTOCOL_VERSION, "name": "n", "pid": 1}
    server.receive_data(
        client.send(Request(1, Op.HELLO, {**hello, "inbox_messages": 1, "inbox_bytes": 1}))
    )
    server.next_event()
    result = {"version": 1, "token": b"t", "min_block": 1, "max_inline": 1, "segments": []}
    client.receive_data(server.send(Reply(1, Op.HELLO, {**result, "gen_size": 0})))
    client.next_event()
    return client, server


LONGEST = "\U0001f600" * MAX_STR  # a str field at its largest encoding


@pytest.mark.parametrize("item", ["p", "p" * MAX_NAME, "\u8a9e" * MAX_NAME, LONGEST])
def test_fitted_stats_and_peers_fit_a_frame(item: str) -> None:
    client, server = ready_pair()
    stats: dict[str, Any] = {name: 0 for name, kind in protocol._STATS_FIELDS.items()}
    stats["processes"] = stats["names"] = [item] * (MAX_LIST + 1)
    stats["links"] = [[item, item, *range(8)]] * (MAX_LIST + 1)
    stats["usage"] = [[item, *range(8)]] * (MAX_LIST + 1)
    stats["queues"] = [[item, item, *range(8)]] * (MAX_LIST + 1)
    for req_id, op, result in ((2, Op.STATS, stats), (3, Op.PEERS, {"names": stats["names"]})):
        server.receive_data(client.send(Request(req_id, op)))
        server.next_event()
        fitted = fit_lists(op, result)
        frame = server.send(Reply(req_id, op, fitted))  # refused if over the frame limit
        assert len(frame) <= MAX_FRAME_SIZE
        for name, kind in protocol._SCHEMAS[(Kind.REPLY, op)][0].items():
            if kind in protocol._LIST_LIMITS:  # the first items, as many as fit
                assert fitted[name] == result[name][: len(fitted[name])]
                assert len(fitted[name]) == MAX_LIST or item != "p"


# -- the handlers' size checks, on a live coordinator -----------------------------------
TOO_BIG = {"k": b"x" * MAX_HEADER}  # MAX_HEADER + 5 bytes encoded
ISSUE = {"k": b"x" * 1_100_000}  # the issue's 1.1 MB: the frame still carries it

DICT_CASES = [
    (Op.SEND, "header", {"to": "", "move": False, "nowait": True, "wait_ms": 0}),
    (Op.PUBLISH, "header", {"topic": "t", "nowait": True}),
    (Op.REMOTE_SEND, "header", {"to": "b/x", "move": False}),
    (
        Op.COMMIT,
        "meta",
        {"codec": "raw", "name": "", "cacheable": False, "if_absent": False, "ttl_ms": 0},
    ),
    (Op.ENQUEUE, "header", {"queue": "", "nowait": True, "codec": "", "meta": {}}),
    (Op.ENQUEUE, "meta", {"queue": "", "nowait": True, "codec": "raw", "header": {}}),
    (Op.ENQUEUE_MANY, "header", {"queue": "", "nowait": True, "codec": "raw", "sizes": [0]}),
    (Op.ENQUEUE_COMMIT, "header", {"queue": "", "nowait": True, "codec": "raw", "meta": {}}),
    (Op.ENQUEUE_COMMIT, "meta", {"queue": "", "nowait": True, "codec": "raw", "header": {}}),
    (Op.REQUEST, "meta", {"to": "", "codec": "raw", "wait_ms": 0}),
    (Op.RESPOND, "meta", {"request": 1, "codec": "raw", "error": 0, "message": ""}),
    (Op.SEND_DATA, "header", {"to": "", "codec": "raw", "meta": {}, "nowait": True, "wait_ms": 0}),
    (Op.SEND_DATA, "meta", {"to": "", "codec": "raw", "header": {}, "nowait": True, "wait_ms": 0}),
    (
        Op.SEND_MANY,
        "header",
        {"to": "", "codec": "raw", "meta": {}, "sizes": [0], "nowait": True, "wait_ms": 0},
    ),
    (
        Op.SEND_MANY,
        "meta",
        {"to": "", "codec": "raw", "header": {}, "sizes": [0], "nowait": True, "wait_ms": 0},
    ),
]
NO_BLOCK_FIELD = {Op.SEND_DATA, Op.SEND_MANY}  # inline: the case needs no block made


class Raw:
    """A hand-made connection: one request at a time, its reply or error back."""

    def __init__(self, stream: UNIXSocketStream, conn: Connection) -> None:
        self.stream, self.conn, self.req_id = stream, conn, 10

    async def call(self, op: Op, args: dict[str, Any]) -> Reply | ErrorReply:
        self.req_id += 1
        await self.stream.send(self.conn.send(Request(self.req_id, op, args)))
        event, _ = await receive_event(self.stream, self.conn)
        assert isinstance(event, Reply | ErrorReply), event
        return event

    async def ok(self, op: Op, args: dict[str, Any]) -> dict[str, Any]:
        reply = await self.call(op, args)
        assert isinstance(reply, Reply), reply
        return reply.result


@pytest.fixture
async def raw(coord: blockipc.Coordinator) -> AsyncIterator[Raw]:
    stream, conn = await raw_hello(coord.address, unique_name("raw"))
    try:
        yield Raw(stream, conn)
    finally:
        await stream.aclose()


@pytest.mark.parametrize("big", [TOO_BIG, ISSUE], ids=["over", "issue"])
@pytest.mark.parametrize(("op", "field", "args"), DICT_CASES, ids=[c[0].name for c in DICT_CASES])
async def test_a_dict_field_over_the_header_rule_is_refused(
    coord: blockipc.Coordinator,
    raw: Raw,
    other: blockipc.Client,
    op: Op,
    field: str,
    args: dict[str, Any],
    big: dict[str, Any],
) -> None:
    made = None
    if op in (Op.COMMIT, Op.ENQUEUE_COMMIT):
        made = await raw.ok(Op.PUT, {"size": 1})
        args = {**args, "lease": made["lease"]}
        if op is Op.COMMIT:
            args["name"] = unique_name("obj")
        else:
            args["queue"] = unique_name("queue")
    elif op in NO_BLOCK_FIELD:
        args = {**args, "to": other.name}
    else:
        made = await raw.ok(Op.ALLOC, {"size": 1})
        if op is Op.ENQUEUE_MANY:
            args = {**args, "blocks": [made["block"]], "metas": [{}]}
        else:
            args = {**args, "block": made["block"]}
        if "to" in args:
            args["to"] = args["to"] or other.name
        if "queue" in args:
            args["queue"] = unique_name("queue")
    before = coord.stats()
    error = await raw.call(op, {**args, field: big})
    assert isinstance(error, ErrorReply) and error.code == InvalidRequest.code, error
    assert "bytes encoded; the limit is" in error.message
    after = coord.stats()
    assert (after.blocks, after.leases, after.names) == (before.blocks, before.leases, ())
    assert after.queues == before.queues  # (ENQUEUE: not even its queue was made)
    if op is Op.COMMIT:  # nothing bound; the lease is still the client's to end
        got = await raw.call(Op.GET, {"block": 0, "name": args["name"]})
        assert isinstance(got, ErrorReply) and got.code == BlockNotFound.code
    if op in (Op.COMMIT, Op.ENQUEUE_COMMIT):
        await raw.ok(Op.RELEASE, {"lease": made["lease"]})
    if made is not None:
        await raw.ok(Op.FREE, {"block": made["block"]})


def wide_record(fields: int) -> np.ndarray[Any, Any]:
    """An array whose dtype alone (the codec's meta) takes ``fields`` * ~45 bytes."""
    return np.zeros(2, dtype=[(f"f{i:04d}" + "x" * 40, "u1") for i in range(fields)])


async def test_put_with_too_large_a_meta_raises_and_the_old_value_stays(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("weights")
    small = wide_record(10)
    await client.put(small, codec="numpy", name=name)
    before = coord.stats()
    with pytest.raises(InvalidRequest, match=r"codec meta is .* bytes encoded"):
        await client.put(wide_record(1000), codec="numpy", name=name)  # ~52 KB of meta
    after = coord.stats()
    assert (after.blocks, after.leases, after.used_bytes) == (
        before.blocks,
        before.leases,
        before.used_bytes,
    )
    # every client still reads the old value (another's get was the one disconnected)
    got = await other.get(name)
    assert got.dtype == small.dtype and got.tobytes() == small.tobytes()
    assert (await client.get(name)).dtype == small.dtype
    await client.delete(name)
    with pytest.raises(InvalidRequest):  # and unnamed, too
        await client.put(wide_record(1000), codec="numpy")


async def test_recv_many_with_the_longest_names_fits_a_frame(coord: blockipc.Coordinator) -> None:
    """A batch whose messages name an owner, a sender and a topic of the longest
    encoding each (an older coordinator counted 1 KiB a message and answered an internal
    error, the messages already taken out of the inbox). The owner is named while a
    publish waits for a stalled subscriber (the publisher keeps its hold till then)."""
    wide = "\U0001f600" * (MAX_NAME - 24)
    topic = "\U0001f600" * MAX_NAME
    count = 700
    async with (
        blockipc.connect(coord.address, name=unique_name(wide)) as pub,
        connected(coord, "sub", inbox_messages=MAX_BATCH) as sub,
    ):
        async with connected(coord, "stalled", inbox_messages=1) as stalled:
            for c in (sub, stalled):
                await c.subscribe(topic)
            blocks = [await pub.alloc(1) for _ in range(count)]
            publishes = [asyncio.create_task(pub.publish(b, topic)) for b in blocks]
            await wait_until(lambda: len(coord._state.table.processes[sub.name].inbox) == count)
            got: list[blockipc.Message] = []
            while len(got) < count:
                batch = await sub.recv_many(MAX_BATCH)
                assert all(m.sender == pub.name for m in batch)
                got += batch
            # all but the first (the stalled one took it): still the publisher's
            assert sum(m.block.owner == pub.name for m in got) == count - 1
        await asyncio.gather(*publishes)  # the stalled one gone, every publish is done
        for msg in got:
            await sub.free(msg.block)


async def test_an_error_that_quotes_a_long_field_keeps_its_class(raw: Raw) -> None:
    # the message quotes the name (MAX_STR characters): cut to fit, not an internal error
    error = await raw.call(Op.GET, {"block": 0, "name": "n" * MAX_STR})
    assert isinstance(error, ErrorReply) and error.code == BlockNotFound.code, error
    assert len(error.message) == MAX_STR and error.message.startswith("no object named 'nnn")
