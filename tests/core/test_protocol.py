"""Tests of the sans-IO wire protocol, table-driven in the style of h11's ``test_io.py``.

Everything here is synchronous: bytes go in, events come out. Valid example arguments
are generated from ``_SCHEMAS`` so that a new op or field is covered without editing
this file (a new field *type* fails loudly in ``EXAMPLES``/``BAD_VALUES`` until it gets
an entry).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockipc._core.limits import MAX_INT
from blockipc._core.protocol import (
    _BODY_FIXED,
    _COMPACT,
    _DICTLIST,
    _ERROR_SCHEMA,
    _HANDSHAKE_OPS,
    _INTLIST,
    _JOBLIST,
    _LINKLIST,
    _LIST_LIMITS,
    _MAX_TOKEN,
    _MSGLIST,
    _PROCLIST,
    _QUEUELIST,
    _ROWS,
    _SCHEMAS,
    _SEGLIST,
    _STRLIST,
    CANCELLED,
    HEADER,
    MAX_BATCH,
    MAX_FRAME_SIZE,
    MAX_LIST,
    MAX_STR,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    Event,
    Kind,
    Op,
    Reply,
    Request,
    Role,
    State,
    fit_lists,
)
from blockipc._exceptions import ErrorCode, ProtocolError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no example database: fuzz runs stay independent of each other
    suppress_health_check=[HealthCheck.too_slow],
)

REQ, REP, ERR = Kind.REQUEST, Kind.REPLY, Kind.ERROR
ALL_OPS = list(Op)
_OP_VALUES = frozenset(op.value for op in Op)
READY_OPS = [op for op in Op if op not in _HANDSHAKE_OPS]
REQ_ID = 1

# -- example values, generated from the schema table ------------------------------

EXAMPLES: dict[Any, Any] = {
    int: 7,
    bool: True,
    str: "x",
    bytes: b"tok",
    dict: {"k": "v", "n": [1, 2.5, None, True], "m": {"x": b"raw"}},
    _STRLIST: ["a", "b"],
    _INTLIST: [1, 2],
    _SEGLIST: [[0, 4096], [1, 8192]],
    _MSGLIST: [[1, 100, 4096, 0, 0, "owner", "sender", {"k": 1}, "", "", {}]],
    _LINKLIST: [["b", "up", 0, 1, 2, 3, 4, 5, 6, 7]],
    _PROCLIST: [["worker", 4242, 1, 4096, 0, 2, 8192, 1, 37]],
    _QUEUELIST: [["jobs", "jobs.dead", 3, 1, 0, 0, 9, 5, 1024, 5]],
    _DICTLIST: [{}, {"shape": [2, 3]}],
    _JOBLIST: [[1, 2, 100, 4096, 0, 0, 3, 0, "raw", "producer", {"nbytes": 100}, {"k": 1}, True]],
}

# Largest and smallest values that must still be accepted.
BOUNDARY_VALUES: dict[Any, list[Any]] = {
    int: [0, MAX_INT],
    bool: [False, True],
    str: ["", "x" * MAX_STR, "é" * MAX_STR],
    bytes: [b"", b"x" * _MAX_TOKEN],
    dict: [{}, {"k": {"nested": [b"", -1, 2**64 - 1]}}],
    _STRLIST: [[], ["x" * MAX_STR], ["a"] * MAX_LIST],
    _INTLIST: [[], [0, MAX_INT], [0] * MAX_LIST],
    _SEGLIST: [[], [[0, MAX_INT]], [[0, 1]] * MAX_LIST],
    _LINKLIST: [[], [["x" * MAX_STR, "", *[MAX_INT] * 8]], [["b", "up", *[0] * 8]] * MAX_LIST],
    _PROCLIST: [[], [["x" * MAX_STR, *[MAX_INT] * 8]], [["p", *[0] * 8]] * MAX_LIST],
    _QUEUELIST: [[], [["x" * MAX_STR, "", *[MAX_INT] * 8]], [["q", "", *[0] * 8]] * MAX_LIST],
    _MSGLIST: [
        [[0, 0, 0, 0, 0, "", "", {}, "", "", {}]],
        [[MAX_INT] * 5 + ["x" * MAX_STR] * 2 + [{"k": [1]}, "x" * MAX_STR, "x" * MAX_STR, {}]],
        [[0, 64, 3, 0, 0, "", "s", {}, "", "raw", {"shape": [2]}]],  # a run of inline ones
        [[MAX_INT] * 5 + ["o", "s", {}, "t", "", {}]] * MAX_BATCH,
    ],
    _DICTLIST: [[], [{"k": [1]}], [{}] * MAX_BATCH],
    _JOBLIST: [
        [[0] * 8 + ["", "", {}, {}, False]],
        [[MAX_INT] * 8 + ["x" * MAX_STR] * 2 + [{"k": [1]}, {"h": "x"}, True]],
        [[1] * 8 + ["raw", "p", {}, {}, True]] * MAX_BATCH,
    ],
}

# Values that must be rejected for a field of each type.
BAD_VALUES: dict[Any, list[Any]] = {
    int: ["7", True, False, -1, MAX_INT + 1, 2**64 - 1, 1.5, 7.0, None, b"7", [7]],
    bool: [0, 1, None, "true", 1.0, [True]],
    str: [1, b"x", None, "x" * (MAX_STR + 1), ["x"]],
    bytes: ["tok", 1, None, b"x" * (_MAX_TOKEN + 1), [1]],
    dict: [[], "x", None, 1, {b"k": 1}, {"a": 1, b"k": 1}],
    _STRLIST: ["a", None, [1], [b"a"], [None], ["x" * (MAX_STR + 1)], ["a"] * (MAX_LIST + 1)],
    _INTLIST: [1, None, [-1], [True], ["1"], [1.0], [MAX_INT + 1], [0] * (MAX_LIST + 1)],
    _SEGLIST: [
        [1, 2],
        None,
        [[1]],
        [[1, 2, 3]],
        [[-1, 0]],
        [[True, 0]],
        [["0", 1]],
        [[0, 1.0]],
        [{"a": 1}],
        [[0, 1]] * (MAX_LIST + 1),
    ],
    _LINKLIST: [
        None,
        ["b"],
        [["b", "up", *[0] * 7]],  # 9 items
        [["b", "up", *[0] * 9]],  # 11 items
        [[1, "up", *[0] * 8]],
        [["b", None, *[0] * 8]],
        [["b", "up", -1, *[0] * 7]],
        [["b", "up", True, *[0] * 7]],
        [["b", "up", 1.0, *[0] * 7]],
        [["x" * (MAX_STR + 1), "up", *[0] * 8]],
        [["b", "up", *[0] * 8]] * (MAX_LIST + 1),
    ],
    _PROCLIST: [
        None,
        [["p", *[0] * 7]],  # 8 items
        [["p", "x", *[0] * 7]],  # a str where the pid goes
        [[1, *[0] * 8]],
        [["p", -1, *[0] * 7]],
        [["p", *[0] * 7, True]],
        [["x" * (MAX_STR + 1), *[0] * 8]],
        [["p", *[0] * 8]] * (MAX_LIST + 1),
    ],
    _QUEUELIST: [
        None,
        [["q", "d", *[0] * 7]],  # 9 items
        [["q", 1, *[0] * 8]],  # an int where the dead-letter queue goes
        [["q", "d", -1, *[0] * 7]],
        [["q", "d", *[0] * 7, None]],
        [["x" * (MAX_STR + 1), "d", *[0] * 8]],
        [["q", "d", *[0] * 8]] * (MAX_LIST + 1),
    ],
    _MSGLIST: [
        [],  # a reply carries at least one message
        None,
        [[1, 2, 3, 4, 5, "o", "s", {}]],  # 8 items
        [[1, 2, 3, 4, 5, "o", "s", {}, ""]],  # 9 items: the rows before inline messages
        [[-1, 2, 3, 4, 5, "o", "s", {}, "", "", {}]],
        [[1, 2, 3, 4, True, "o", "s", {}, "", "", {}]],
        [[1, 2, 3, 4, 5, 1, "s", {}, "", "", {}]],
        [[1, 2, 3, 4, 5, "o", "s", [], "", "", {}]],
        [[1, 2, 3, 4, 5, "o", "s", {1: 2}, "", "", {}]],
        [[1, 2, 3, 4, 5, "o", "s", {}, None, "", {}]],
        [[1, 2, 3, 4, 5, "o", "x" * (MAX_STR + 1), {}, "", "", {}]],
        [[1, 2, 3, 4, 5, "o", "s", {}, "", 1, {}]],  # codec not a str
        [[1, 2, 3, 4, 5, "o", "s", {}, "", "raw", []]],  # meta not a map
        [[1, 2, 3, 4, 5, "o", "s", {}, "", "raw", {1: 2}]],
        [[1, 2, 3, 4, 5, "o", "s", {}, "", "", {}]] * (MAX_BATCH + 1),
    ],
    _DICTLIST: [None, {}, [1], [[]], [{1: 2}], [None], [{}] * (MAX_BATCH + 1)],
    _JOBLIST: [
        [],  # a reply carries at least one job
        None,
        [[0] * 8 + ["", "", {}, {}]],  # 12 items
        [[-1] + [0] * 7 + ["", "", {}, {}, False]],
        [[True] + [0] * 7 + ["", "", {}, {}, False]],
        [[0] * 8 + [1, "", {}, {}, False]],
        [[0] * 8 + ["", "x" * (MAX_STR + 1), {}, {}, False]],
        [[0] * 8 + ["", "", [], {}, False]],
        [[0] * 8 + ["", "", {}, {1: 2}, False]],
        [[0] * 8 + ["", "", {}, {}, 0]],
        [[0] * 8 + ["", "", {}, {}, False]] * (MAX_BATCH + 1),
    ],
}


def example_fields(schema: dict[str, Any]) -> dict[str, Any]:
    return {name: EXAMPLES[kind] for name, kind in schema.items()}


def example_event(kind: Kind, op: Op, req_id: int = REQ_ID) -> Event:
    if kind is Kind.ERROR:
        return ErrorReply(req_id, op, 4, "denied")
    schema, data_ok = _SCHEMAS[(kind, op)]
    fields = example_fields(schema)
    if (kind, op) == (Kind.REQUEST, Op.HELLO):
        fields["version"] = PROTOCOL_VERSION
    data = b"payload\x00\xff" if data_ok else b""
    if kind is Kind.REQUEST:
        return Request(req_id, op, fields, data)
    return Reply(req_id, op, fields, data)


# -- connection helpers ----------------------------------------------------------


def drain(conn: Connection) -> list[Event]:
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, Request | Reply | ErrorReply)
        events.append(event)
    return events


def transfer(data: bytes, conn: Connection) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def handshake(**kwargs: Any) -> tuple[Connection, Connection]:
    """A client and a server in READY; the HELLO used request id 0."""
    client, server = Connection(Role.CLIENT, **kwargs), Connection(Role.SERVER, **kwargs)
    transfer(client.send(example_event(Kind.REQUEST, Op.HELLO, 0)), server)
    transfer(server.send(example_event(Kind.REPLY, Op.HELLO, 0)), client)
    assert client.state is server.state is State.READY
    return client, server


def pair_for(op: Op) -> tuple[Connection, Connection]:
    """A fresh pair for a handshake op, else a pair in READY."""
    if op in _HANDSHAKE_OPS:
        return Connection(Role.CLIENT), Connection(Role.SERVER)
    return handshake()


def receiver_for(kind: int, op: int) -> Connection:
    """The side that receives a frame of this kind/op, in a state that accepts it:
    a server (fresh for a handshake op, else READY), or a client with ``REQ_ID`` of
    that op in flight."""
    if kind in (Kind.REPLY, Kind.ERROR) and op in _OP_VALUES:
        client, _ = pair_for(Op(op))
        client.send(example_event(Kind.REQUEST, Op(op)))
        return client
    if op in _HANDSHAKE_OPS:
        return Connection(Role.SERVER)
    return handshake()[1]


def frame(
    kind: int,
    op: int,
    meta: Any = None,
    data: bytes = b"",
    *,
    req_id: int = REQ_ID,
    raw_meta: bytes | None = None,
    body_len: int | None = None,
    meta_len: int | None = None,
) -> bytes:
    """Hand-pack a frame, valid or not, without going through ``Connection.send``."""
    compact = _COMPACT.get((kind, op))  # type: ignore[call-overload]  # raw ints hash alike
    if raw_meta is not None:
        packed = raw_meta
    elif (
        compact is not None
        and isinstance(meta, dict)
        and list(meta) == list(compact[1])
        and all(type(v) is int and 0 <= v < 2**64 for v in meta.values())
    ):
        packed = compact[0].pack(*meta.values())  # the wire form of all-int metas
    else:
        packed = msgpack.packb(meta, use_bin_type=True)
    if body_len is None:
        body_len = _BODY_FIXED + len(packed) + len(data)
    if meta_len is None:
        meta_len = len(packed)
    return HEADER.pack(body_len, kind, op, req_id, meta_len) + packed + data


def encode(event: Event) -> bytes:
    """The frame of an event, packed by hand (no ``Connection`` state involved)."""
    if isinstance(event, ErrorReply):
        meta = {"code": event.code, "message": event.message}
        return frame(Kind.ERROR, event.op, meta, req_id=event.req_id)
    if isinstance(event, Request):
        return frame(Kind.REQUEST, event.op, event.args, event.data, req_id=event.req_id)
    return frame(Kind.REPLY, event.op, event.result, event.data, req_id=event.req_id)


def valid_frame(kind: Kind, op: Op) -> bytes:
    return encode(example_event(kind, op))


def states(*conns: Connection) -> set[State]:
    return {conn.state for conn in conns}


def fields_of(event: Request | Reply) -> dict[str, Any]:
    fields: dict[str, Any] = event.args if isinstance(event, Request) else event.result
    return fields


def assert_poisoned(conn: Connection, exc: ProtocolError) -> None:
    """The connection is in ERROR and every later call raises that same error."""
    assert conn.state is State.ERROR
    assert conn.error is exc
    calls: list[Callable[[], object]] = [
        lambda: conn.send(example_event(Kind.REQUEST, Op.STATS, 999)),
        lambda: conn.send(example_event(Kind.REPLY, Op.STATS, 999)),
        lambda: conn.receive_data(b"x"),
        lambda: conn.receive_data(b""),
        conn.next_event,
    ]
    for call in calls:
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value is exc
    assert conn.state is State.ERROR


# -- 1. round trips ---------------------------------------------------------------


def test_schema_table_covers_request_and_reply_of_every_op() -> None:
    assert set(_SCHEMAS) == {(kind, op) for kind in (Kind.REQUEST, Kind.REPLY) for op in Op}
    field_types = {kind for schema, _ in _SCHEMAS.values() for kind in schema.values()}
    assert field_types <= EXAMPLES.keys() == BAD_VALUES.keys() == BOUNDARY_VALUES.keys()


@pytest.mark.parametrize("outcome", [Kind.REPLY, Kind.ERROR], ids=["reply", "error"])
@pytest.mark.parametrize("op", ALL_OPS, ids=lambda op: op.name)
def test_round_trip(op: Op, outcome: Kind) -> None:
    client, server = pair_for(op)
    request = example_event(Kind.REQUEST, op, req_id=5)
    assert transfer(client.send(request), server) == [request]
    assert client.in_flight == server.in_flight == 1
    reply = example_event(outcome, op, req_id=5)
    assert transfer(server.send(reply), client) == [reply]
    assert client.in_flight == server.in_flight == 0
    assert client.state is server.state


@pytest.mark.parametrize("key", sorted(_SCHEMAS), ids=lambda k: f"{k[0].name}-{k[1].name}")
def test_boundary_values_are_accepted(key: tuple[Kind, Op]) -> None:
    kind, op = key
    schema, _ = _SCHEMAS[key]
    for name, field_kind in schema.items():
        for value in BOUNDARY_VALUES[field_kind]:
            meta = {**example_fields(schema), name: value}
            conn = receiver_for(kind, op)
            events = transfer(frame(kind, op, meta), conn)
            assert len(events) == 1, (name, value)
            assert isinstance(events[0], Request | Reply)
            assert fields_of(events[0]) == meta


def test_req_id_uses_all_32_bits() -> None:
    client, server = handshake()
    for req_id in (0, 0xFFFFFFFF):
        request = example_event(Kind.REQUEST, Op.STATS, req_id)
        assert transfer(client.send(request), server) == [request]
        reply = example_event(Kind.REPLY, Op.STATS, req_id)
        assert transfer(server.send(reply), client) == [reply]


_MSGPACK_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_UINT = st.integers(0, MAX_INT)
VALID_VALUE: dict[Any, st.SearchStrategy[Any]] = {
    int: _UINT,
    bool: st.booleans(),
    str: st.text(max_size=40),
    bytes: st.binary(max_size=_MAX_TOKEN),
    dict: st.dictionaries(st.text(max_size=8), _MSGPACK_VALUE, max_size=4),
    _STRLIST: st.lists(st.text(max_size=8), max_size=4),
    _INTLIST: st.lists(_UINT, max_size=4),
    _SEGLIST: st.lists(st.lists(_UINT, min_size=2, max_size=2), max_size=4),
    # rows of as many strings and ints as the schema says (a row type that grows its
    # counters grows them here too)
    **{
        kind: st.lists(
            st.tuples(*[st.text(max_size=8)] * strings, *[_UINT] * ints).map(list), max_size=3
        )
        for kind, (strings, ints) in _ROWS.items()
    },
    _MSGLIST: st.lists(
        st.tuples(
            _UINT,
            _UINT,
            _UINT,
            _UINT,
            _UINT,
            st.text(max_size=8),
            st.text(max_size=8),
            st.dictionaries(st.text(max_size=8), _MSGPACK_VALUE, max_size=2),
            st.text(max_size=8),
            st.text(max_size=8),
            st.dictionaries(st.text(max_size=8), _MSGPACK_VALUE, max_size=2),
        ).map(list),
        min_size=1,
        max_size=3,
    ),
    _DICTLIST: st.lists(
        st.dictionaries(st.text(max_size=8), _MSGPACK_VALUE, max_size=2), max_size=3
    ),
    _JOBLIST: st.lists(
        st.tuples(
            *[_UINT] * 8,
            st.text(max_size=8),
            st.text(max_size=8),
            st.dictionaries(st.text(max_size=8), _MSGPACK_VALUE, max_size=2),
            st.dictionaries(st.text(max_size=8), _MSGPACK_VALUE, max_size=2),
            st.booleans(),
        ).map(list),
        min_size=1,
        max_size=3,
    ),
}


@st.composite
def valid_events(draw: st.DrawFn, kind: Kind, op: Op, req_id: int = REQ_ID) -> Event:
    if kind is Kind.ERROR:
        return ErrorReply(req_id, op, draw(_UINT), draw(st.text(max_size=40)))
    schema, data_ok = _SCHEMAS[(kind, op)]
    fields = {name: draw(VALID_VALUE[field_kind]) for name, field_kind in schema.items()}
    data = draw(st.binary(min_size=1, max_size=64)) if data_ok else b""
    cls = Request if kind is Kind.REQUEST else Reply
    return cls(req_id, op, fields, data)


@FUZZ
@given(st.data())
def test_round_trip_of_arbitrary_valid_values(data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(ALL_OPS))
    req_id = data.draw(st.integers(0, 0xFFFFFFFF))
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    if op not in _HANDSHAKE_OPS:
        client, server = handshake()
    request = data.draw(valid_events(Kind.REQUEST, op, req_id))
    assert transfer(client.send(request), server) == [request]
    reply = data.draw(
        valid_events(data.draw(st.sampled_from([Kind.REPLY, Kind.ERROR])), op, req_id)
    )
    assert transfer(server.send(reply), client) == [reply]


# -- 2. handshake state machine ---------------------------------------------------


def test_hello_moves_both_sides_to_ready() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    assert states(client, server) == {State.HANDSHAKE}
    transfer(client.send(example_event(Kind.REQUEST, Op.HELLO)), server)
    assert states(client, server) == {State.HANDSHAKE}
    transfer(server.send(example_event(Kind.REPLY, Op.HELLO)), client)
    assert states(client, server) == {State.READY}


@pytest.mark.parametrize(
    ("op", "outcome"),
    [
        (Op.ATTACH, Kind.REPLY),
        (Op.ATTACH, Kind.ERROR),
        (Op.HELLO, Kind.ERROR),
    ],
    ids=["attach-reply", "attach-error", "hello-error"],
)
def test_handshake_ends_in_closed(op: Op, outcome: Kind) -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    transfer(client.send(example_event(Kind.REQUEST, op)), server)
    transfer(server.send(example_event(outcome, op)), client)
    assert client.state is server.state is State.CLOSED
    # A closed connection takes no more requests, on either side.
    with pytest.raises(ProtocolError):
        client.send(example_event(Kind.REQUEST, Op.STATS, 2))
    with pytest.raises(ProtocolError):
        transfer(valid_frame(Kind.REQUEST, Op.STATS), server)


@pytest.mark.parametrize("outcome", [Kind.REPLY, Kind.ERROR], ids=["reply", "error"])
def test_bye_reply_closes_both_sides(outcome: Kind) -> None:
    client, server = handshake()
    transfer(client.send(example_event(Kind.REQUEST, Op.BYE)), server)
    assert states(client, server) == {State.READY}
    transfer(server.send(example_event(outcome, Op.BYE)), client)
    assert states(client, server) == {State.CLOSED}
    with pytest.raises(ProtocolError):
        client.send(example_event(Kind.REQUEST, Op.STATS, 2))
    with pytest.raises(ProtocolError):
        transfer(valid_frame(Kind.REQUEST, Op.STATS), server)


def test_replies_to_requests_pipelined_before_bye_still_arrive() -> None:
    client, server = handshake()
    stats, bye = example_event(Kind.REQUEST, Op.STATS, 1), example_event(Kind.REQUEST, Op.BYE, 2)
    transfer(client.send(stats) + client.send(bye), server)
    transfer(server.send(example_event(Kind.REPLY, Op.BYE, 2)), client)
    assert client.state is server.state is State.CLOSED
    reply = example_event(Kind.REPLY, Op.STATS, 1)
    assert transfer(server.send(reply), client) == [reply]
    assert client.in_flight == server.in_flight == 0


@pytest.mark.parametrize("op", READY_OPS, ids=lambda op: op.name)
def test_non_handshake_op_during_handshake(op: Op) -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(ProtocolError) as info:
        client.send(example_event(Kind.REQUEST, op))
    assert_poisoned(client, info.value)

    server = Connection(Role.SERVER)
    with pytest.raises(ProtocolError) as info:
        transfer(valid_frame(Kind.REQUEST, op), server)
    assert_poisoned(server, info.value)


@pytest.mark.parametrize("op", sorted(_HANDSHAKE_OPS), ids=lambda op: op.name)
def test_handshake_op_after_ready(op: Op) -> None:
    client, server = handshake()
    with pytest.raises(ProtocolError) as info:
        client.send(example_event(Kind.REQUEST, op))
    assert_poisoned(client, info.value)
    with pytest.raises(ProtocolError) as info:
        transfer(valid_frame(Kind.REQUEST, op), server)
    assert_poisoned(server, info.value)


def _send(*events: Event) -> Callable[[Connection], object]:
    return lambda conn: [conn.send(event) for event in events]


def _feed(*frames: bytes) -> Callable[[Connection], object]:
    return lambda conn: transfer(b"".join(frames), conn)


def _fresh_client() -> Connection:
    return Connection(Role.CLIENT)


def _fresh_server() -> Connection:
    return Connection(Role.SERVER)


def _ready_client() -> Connection:
    return handshake()[0]


def _ready_server() -> Connection:
    return handshake()[1]


def _small_ready_client() -> Connection:
    return handshake(max_frame_size=256)[0]


def _close_mid_frame(conn: Connection) -> None:
    conn.receive_data(valid_frame(Kind.REQUEST, Op.STATS)[:-1])
    conn.receive_data(b"")


_ALLOC_REQ = example_event(Kind.REQUEST, Op.ALLOC)
_STATS_REQ = example_event(Kind.REQUEST, Op.STATS)
_ALLOC_REP = example_event(Kind.REPLY, Op.ALLOC)
_HELLO_1, _HELLO_2 = (example_event(Kind.REQUEST, Op.HELLO, i) for i in (1, 2))
_BIG_WRITE = Request(1, Op.WRITE, {"block": 1, "offset": 0}, b"x" * 256)

# Every way a connection can fail: (make the connection, act on it). After each, the
# connection must be in ERROR and keep raising the same error object.
FAILURES: list[Any] = [
    pytest.param(_fresh_client, _send(_ALLOC_REQ), id="client-sends-alloc-in-handshake"),
    pytest.param(_fresh_server, _feed(encode(_ALLOC_REQ)), id="server-gets-alloc-in-handshake"),
    pytest.param(_fresh_client, _send(_HELLO_1, _HELLO_2), id="client-pipelines-in-handshake"),
    pytest.param(
        _fresh_server, _feed(encode(_HELLO_1), encode(_HELLO_2)), id="server-gets-2-hellos"
    ),
    pytest.param(_ready_client, _send(_HELLO_1), id="client-sends-hello-when-ready"),
    pytest.param(_ready_server, _feed(encode(_HELLO_1)), id="server-gets-hello-when-ready"),
    pytest.param(_ready_client, _send(_STATS_REQ, _ALLOC_REQ), id="client-sends-duplicate-id"),
    pytest.param(_ready_server, _feed(encode(_STATS_REQ), encode(_ALLOC_REQ)), id="server-dup-id"),
    pytest.param(_ready_client, _feed(encode(_ALLOC_REP)), id="client-gets-reply-not-in-flight"),
    pytest.param(_ready_client, _feed(valid_frame(ERR, Op.ALLOC)), id="client-gets-stray-error"),
    pytest.param(_ready_client, _feed(encode(_ALLOC_REQ)), id="client-gets-request"),
    pytest.param(_ready_server, _feed(encode(_ALLOC_REP)), id="server-gets-reply"),
    pytest.param(_ready_server, _send(_ALLOC_REQ), id="server-sends-request"),
    pytest.param(_ready_client, _send(_ALLOC_REP), id="client-sends-reply"),
    pytest.param(_ready_server, _send(_ALLOC_REP), id="server-replies-not-in-flight"),
    pytest.param(_ready_server, _send(example_event(ERR, Op.ALLOC)), id="server-errors-stray"),
    pytest.param(_ready_server, _feed(b"\xff" * 64), id="garbage"),
    pytest.param(_ready_server, _close_mid_frame, id="peer-closes-mid-frame"),
]


@pytest.mark.parametrize(("make", "action"), FAILURES)
def test_any_protocol_error_poisons_the_connection(
    make: Callable[[], Connection], action: Callable[[Connection], object]
) -> None:
    conn = make()
    with pytest.raises(ProtocolError) as info:
        action(conn)
    assert_poisoned(conn, info.value)


# -- 3. pipelining and framing ----------------------------------------------------


def test_pipelined_requests_matched_to_out_of_order_replies() -> None:
    client, server = handshake()
    rng = random.Random(1234)
    ops = [op for op in READY_OPS if op is not Op.BYE]  # BYE would close the connection
    requests = [example_event(Kind.REQUEST, ops[i % len(ops)], i + 1) for i in range(60)]
    wire = b"".join(client.send(r) for r in requests)
    assert client.in_flight == 60
    assert transfer(wire, server) == requests
    assert server.in_flight == 60

    replies = [
        example_event(rng.choice([Kind.REPLY, Kind.ERROR]), r.op, r.req_id) for r in requests
    ]
    rng.shuffle(replies)
    wire = b"".join(server.send(r) for r in replies)
    assert transfer(wire, client) == replies
    assert client.in_flight == server.in_flight == 0
    assert client.state is server.state is State.READY


def test_cancel_gets_its_own_reply_and_the_target_an_error() -> None:
    client, server = handshake()
    lease = example_event(Kind.REQUEST, Op.LEASE, 1)
    cancel = Request(2, Op.CANCEL, {"target": 1})
    transfer(client.send(lease) + client.send(cancel), server)
    replies: list[Event] = [ErrorReply(1, Op.LEASE, CANCELLED, "cancelled"), Reply(2, Op.CANCEL)]
    assert transfer(b"".join(server.send(r) for r in replies), client) == replies
    assert client.in_flight == 0


def test_request_id_may_be_reused_once_answered() -> None:
    client, server = handshake()
    for _ in range(3):
        request = example_event(Kind.REQUEST, Op.ALLOC)
        assert transfer(client.send(request), server) == [request]
        reply = example_event(Kind.REPLY, Op.ALLOC)
        assert transfer(server.send(reply), client) == [reply]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(valid_frame(Kind.REPLY, Op.ALLOC), id="id-not-in-flight"),
        pytest.param(valid_frame(Kind.REPLY, Op.FREE), id="wrong-op-for-id"),
        pytest.param(valid_frame(Kind.ERROR, Op.FREE), id="error-wrong-op-for-id"),
        pytest.param(encode(example_event(REP, Op.STATS, 2)), id="other-id"),
        pytest.param(valid_frame(Kind.REPLY, Op.STATS) * 2, id="second-reply"),
    ],
)
def test_reply_that_answers_no_request_in_flight(wire: bytes) -> None:
    client, _ = handshake()
    client.send(example_event(Kind.REQUEST, Op.STATS))
    with pytest.raises(ProtocolError) as info:
        transfer(wire, client)
    assert_poisoned(client, info.value)


def _stream() -> tuple[bytes, list[Event]]:
    """Several frames of varied size, and the events they carry."""
    client, _ = handshake()
    events = [example_event(Kind.REQUEST, op, i + 1) for i, op in enumerate(READY_OPS)]
    events.append(Request(100, Op.WRITE, {"block": 1, "offset": 0}, bytes(range(256)) * 20))
    return b"".join(client.send(e) for e in events), events


def test_one_byte_at_a_time_and_one_chunk_give_the_same_events() -> None:
    wire, expected = _stream()
    whole = handshake()[1]
    assert transfer(wire, whole) == expected

    trickle = handshake()[1]
    events: list[Event] = []
    for i in range(len(wire)):
        trickle.receive_data(wire[i : i + 1])
        got = drain(trickle)
        assert len(got) <= 1
        events += got
    assert events == expected
    assert trickle.next_event() is NEED_DATA
    assert trickle.in_flight == whole.in_flight == len(expected)


@FUZZ
@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    wire, expected = _stream()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=40)))
    server = handshake()[1]
    events: list[Event] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        events += transfer(wire[start:end], server)
    assert events == expected


_ALLOC = valid_frame(Kind.REQUEST, Op.ALLOC)


@pytest.mark.parametrize(
    "cut",
    [0, 1, HEADER.size - 1, HEADER.size, HEADER.size + 1, len(_ALLOC) - 1],
    ids=["empty", "one-byte", "header-minus-one", "header", "header-plus-one", "frame-minus-one"],
)
def test_need_data_on_partial_frame(cut: int) -> None:
    server = handshake()[1]
    if cut:  # receive_data(b"") would mean the peer closed
        assert transfer(_ALLOC[:cut], server) == []
    assert server.next_event() is NEED_DATA
    assert server.state is State.READY
    assert server.in_flight == 0
    assert transfer(_ALLOC[cut:], server) == [example_event(Kind.REQUEST, Op.ALLOC)]


# -- 4. malformed frames ----------------------------------------------------------

# RECV_MANY: a request whose int field travels in a msgpack map (ALLOC, READ, ... are
# fixed structs, see _COMPACT)
_MAP_META = {"max": 7}
_MAP_META_LEN = len(msgpack.packb(_MAP_META))
_SEND_META = example_fields(_SCHEMAS[(REQ, Op.SEND)][0])
_ERROR_META = {"code": 4, "message": "denied"}
_DEEP = b"\x91" * 1000 + b"\x00"  # [[[...[0]...]]]: deeper than repr() can go, msgpack allows it
_HEADER_DEEP = b"\x83\xa5block\x01\xa2to\xa1x\xa6header\x81\xc4\x01k" + _DEEP  # {b"k": deep}


def _send_with(**fields: Any) -> bytes:
    return frame(REQ, Op.SEND, {**_SEND_META, **fields})


def _error_with(**fields: Any) -> bytes:
    return frame(ERR, Op.ALLOC, {**_ERROR_META, **fields})


def _map_raw(raw_meta: bytes) -> bytes:
    return frame(REQ, Op.RECV_MANY, raw_meta=raw_meta)


# Each frame goes to the side that receives its kind, in a state that accepts its op
# (see ``receiver_for``); kind and op are read back from the frame's own header.
MALFORMED: list[Any] = [
    pytest.param(frame(0, Op.RECV_MANY, _MAP_META), id="kind-0"),
    pytest.param(frame(4, Op.RECV_MANY, _MAP_META), id="kind-4"),
    pytest.param(frame(255, Op.RECV_MANY, _MAP_META), id="kind-255"),
    pytest.param(frame(REQ, 0, {}), id="op-0"),
    pytest.param(frame(REQ, len(Op) + 1, {}), id="op-past-last"),
    pytest.param(frame(REQ, 255, {}), id="op-255"),
    pytest.param(frame(ERR, 99, _ERROR_META), id="error-op-99"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b"", body_len=0), id="body-len-0"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b"", body_len=_BODY_FIXED - 1), id="body-short"),
    pytest.param(frame(REQ, Op.RECV_MANY, _MAP_META, meta_len=_MAP_META_LEN + 1), id="meta-len+1"),
    pytest.param(frame(REQ, Op.RECV_MANY, _MAP_META, meta_len=0xFFFFFFFF), id="meta-len-huge"),
    pytest.param(frame(REQ, Op.RECV_MANY, _MAP_META, meta_len=_MAP_META_LEN - 1), id="meta-len-1"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b""), id="meta-empty"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b"\xc1"), id="meta-reserved-byte"),
    pytest.param(_map_raw(b"\x81\xa4si"), id="meta-truncated"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b"\x80\x80"), id="meta-trailing-bytes"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b"\xdd\xff\xff\xff\xff"), id="meta-huge-array"),
    pytest.param(frame(REQ, Op.STATS, raw_meta=b"\x91" * 5000 + b"\x00"), id="meta-too-deep"),
    pytest.param(frame(REQ, Op.STATS, msgpack.ExtType(1, b"x")), id="meta-ext-type"),
    pytest.param(frame(REQ, Op.STATS, None), id="meta-nil"),
    pytest.param(frame(REQ, Op.STATS, []), id="meta-array"),
    pytest.param(frame(REQ, Op.RECV_MANY, [["max", 7]]), id="meta-pairs"),
    pytest.param(frame(REQ, Op.RECV_MANY, 7), id="meta-int"),
    pytest.param(frame(REQ, Op.RECV_MANY, "max"), id="meta-str"),
    pytest.param(frame(REQ, Op.RECV_MANY, b"max"), id="meta-bin"),
    pytest.param(frame(REQ, Op.RECV_MANY, {}), id="missing-field"),
    pytest.param(frame(REQ, Op.RECV_MANY, {"max": 7, "x": 1}), id="unknown-field"),
    pytest.param(frame(REQ, Op.STATS, {"x": 1}), id="unknown-field-empty-schema"),
    pytest.param(frame(REQ, Op.RECV_MANY, {b"max": 7}), id="bytes-key"),
    pytest.param(frame(REQ, Op.RECV_MANY, {1: 7}), id="int-key"),
    pytest.param(frame(REQ, Op.RECV_MANY, {"max": "7"}), id="str-for-int"),
    pytest.param(frame(REQ, Op.RECV_MANY, {"max": True}), id="bool-for-int"),
    pytest.param(frame(REQ, Op.RECV_MANY, {"max": -1}), id="negative-int"),
    pytest.param(frame(REQ, Op.RECV_MANY, {"max": 2**63}), id="int-too-large"),
    pytest.param(frame(REQ, Op.RECV_MANY, {"max": 7.0}), id="float-for-int"),
    pytest.param(_map_raw(b"\x81\xa3max" + _DEEP), id="deeply-nested-for-int"),
    pytest.param(_send_with(to="x" * (MAX_STR + 1)), id="string-too-long"),
    pytest.param(_send_with(to=b"x"), id="bin-for-str"),
    pytest.param(_send_with(header={1: "a"}), id="header-int-key"),
    pytest.param(_send_with(header={b"k": 1}), id="header-bytes-key"),
    pytest.param(_send_with(header={"a": {2: 1}}), id="header-nested-int-key"),
    pytest.param(_send_with(header={"a": {(1, 2): 1}}), id="header-nested-array-key"),
    pytest.param(_send_with(header=[]), id="header-not-map"),
    pytest.param(frame(REQ, Op.SEND, raw_meta=_HEADER_DEEP), id="header-deep-bytes-key"),
    pytest.param(frame(REQ, Op.RECV_MANY, _MAP_META, b"x"), id="data-on-recv-many"),
    pytest.param(
        frame(REQ, Op.READ, {"block": 1, "offset": 0, "size": 1}, b"x"), id="data-on-read"
    ),
    pytest.param(frame(REP, Op.WRITE, {"written": 1}, b"x"), id="data-on-write-reply"),
    pytest.param(frame(ERR, Op.READ, _ERROR_META, b"x"), id="data-on-error"),
    pytest.param(frame(ERR, Op.ALLOC, {"code": 4}), id="error-missing-message"),
    pytest.param(_error_with(x=1), id="error-extra-field"),
    pytest.param(_error_with(code=-1), id="error-negative-code"),
    pytest.param(_error_with(code="4"), id="error-str-code"),
    pytest.param(_error_with(message=4), id="error-int-message"),
    pytest.param(_error_with(message="x" * (MAX_STR + 1)), id="error-long-message"),
    pytest.param(frame(REQ, Op.ATTACH, {"token": "tok", "segments": []}), id="str-for-token"),
    pytest.param(frame(REQ, Op.ATTACH, {"token": b"t" * 65, "segments": []}), id="token-too-long"),
    pytest.param(frame(REQ, Op.ATTACH, {"token": b"t", "segments": [-1]}), id="intlist-negative"),
    pytest.param(frame(REP, Op.ATTACH, {"segments": [[1, 2, 3]]}), id="seglist-triple"),
]


@pytest.mark.parametrize("wire", MALFORMED)
def test_malformed_frame_is_a_protocol_error(wire: bytes) -> None:
    _, kind, op, _, _ = HEADER.unpack_from(wire)
    conn = receiver_for(kind, op)
    with pytest.raises(ProtocolError) as info:
        transfer(wire, conn)
    assert_poisoned(conn, info.value)


@pytest.mark.parametrize("key", sorted(_SCHEMAS), ids=lambda k: f"{k[0].name}-{k[1].name}")
def test_the_malformed_table_helpers_build_valid_frames(key: tuple[Kind, Op]) -> None:
    # The malformed cases differ from these in one respect only, so they fail for it.
    kind, op = key
    for k in (kind, Kind.ERROR):
        conn = receiver_for(k, op)
        assert transfer(valid_frame(k, op), conn) == [example_event(k, op)]


@pytest.mark.parametrize("key", sorted(_SCHEMAS), ids=lambda k: f"{k[0].name}-{k[1].name}")
def test_every_field_rejects_every_bad_value(key: tuple[Kind, Op]) -> None:
    kind, op = key
    schema, _ = _SCHEMAS[key]
    compact = _COMPACT.get(key)
    for name, field_kind in schema.items():
        if compact is not None:
            # a fixed struct of u64 has no types to get wrong: only the range can be
            st, names = compact
            meta = st.pack(*[2**63 if n == name else 7 for n in names])
            conn = receiver_for(kind, op)
            with pytest.raises(ProtocolError):
                transfer(frame(kind, op, raw_meta=meta), conn)
            assert conn.state is State.ERROR, name
            continue
        for value in BAD_VALUES[field_kind]:
            conn = receiver_for(kind, op)
            with pytest.raises(ProtocolError):
                transfer(frame(kind, op, {**example_fields(schema), name: value}), conn)
            assert conn.state is State.ERROR, (name, value)
    for name in _ERROR_SCHEMA:
        conn = receiver_for(Kind.ERROR, op)
        with pytest.raises(ProtocolError):
            transfer(frame(Kind.ERROR, op, {"code": 1, "message": "m", name: None}), conn)


def test_data_is_rejected_wherever_the_table_forbids_it() -> None:
    for (kind, op), (schema, data_ok) in _SCHEMAS.items():
        conn = receiver_for(kind, op)
        wire = frame(kind, op, example_fields(schema), b"x")
        if data_ok:
            assert len(transfer(wire, conn)) == 1
        else:
            with pytest.raises(ProtocolError):
                transfer(wire, conn)


# -- 5. send checks the schema as receive does: a frame that breaks it is refused ----


def _sendable_on(kind: Kind, op: Op, **kwargs: Any) -> tuple[Connection, Connection]:
    """(sender, receiver) where the sender may send a frame of (kind, op) now, with
    ``REQ_ID`` in flight on both sides for a reply or an error."""
    client, server = (
        (Connection(Role.CLIENT, **kwargs), Connection(Role.SERVER, **kwargs))
        if op in _HANDSHAKE_OPS
        else handshake(**kwargs)
    )
    if kind is Kind.REQUEST:
        return client, server
    transfer(client.send(example_event(Kind.REQUEST, op)), server)
    return server, client


def _event(kind: Kind, op: Op, meta: dict[str, Any], data: bytes = b"") -> Event:
    if kind is Kind.ERROR:
        return ErrorReply(REQ_ID, op, meta["code"], meta["message"])
    if kind is Kind.REQUEST:
        return Request(REQ_ID, op, meta, data)
    return Reply(REQ_ID, op, meta, data)


def assert_refused_and_usable(
    sender: Connection, receiver: Connection, event: Event, kind: Kind
) -> None:
    """``send(event)`` raises ProtocolError, changes nothing, and the very same request
    (or its reply) can then be sent correctly and arrives."""
    state, in_flight = sender.state, sender.in_flight
    with pytest.raises(ProtocolError, match="cannot send"):
        sender.send(event)
    assert sender.error is None
    assert (sender.state, sender.in_flight) == (state, in_flight)
    good = example_event(kind, event.op)
    assert transfer(sender.send(good), receiver) == [good]


_ALLOC_FLOAT = {**example_fields(_SCHEMAS[(REP, Op.ALLOC)][0]), "size": 1.0}
_STATS_META = example_fields(_SCHEMAS[(REP, Op.STATS)][0])
_LIST_OVER: dict[Any, int] = dict.fromkeys(_LIST_LIMITS, MAX_LIST + 1)
_LIST_OVER[_MSGLIST] = _LIST_OVER[_DICTLIST] = _LIST_OVER[_JOBLIST] = MAX_BATCH + 1
# (kind, op, meta, data) of frames that break their schema, for every way to break one
REFUSED: list[Any] = [
    pytest.param(REP, Op.STATS, {**_STATS_META, "names": ["n"] * (MAX_LIST + 1)}, b"", id="list+1"),
    pytest.param(REP, Op.PEERS, {"names": ["p"] * (MAX_LIST + 1)}, b"", id="peers-list+1"),
    pytest.param(REP, Op.STATS, {**_STATS_META, "names": "n"}, b"", id="str-for-list"),
    pytest.param(REP, Op.STATS, {**_STATS_META, "blocks": "1"}, b"", id="str-for-int"),
    pytest.param(REP, Op.STATS, {**_STATS_META, "blocks": 2**63}, b"", id="int-too-large"),
    pytest.param(REP, Op.STATS, {**_STATS_META, "extra": 1}, b"", id="unknown-field"),
    pytest.param(REP, Op.PEERS, {}, b"", id="missing-field"),
    pytest.param(REP, Op.PEERS, {"names": ["x" * (MAX_STR + 1)]}, b"", id="string-too-long"),
    pytest.param(REQ, Op.SEND, {**_SEND_META, "header": {"k": {1, 2}}}, b"", id="unencodable"),
    pytest.param(REQ, Op.SEND, {**_SEND_META, "to": "\udcff"}, b"", id="lone-surrogate"),
    pytest.param(REQ, Op.STATS, {}, b"x", id="data-on-stats"),
    pytest.param(ERR, Op.STATS, {"code": 4, "message": "x" * (MAX_STR + 1)}, b"", id="error-long"),
    pytest.param(ERR, Op.STATS, {"code": -1, "message": "m"}, b"", id="error-negative-code"),
    # the fixed-struct frames of the hot path: their struct checks them
    pytest.param(REQ, Op.READ, {"block": 1, "offset": 0, "size": -1}, b"", id="hot-negative"),
    pytest.param(REQ, Op.READ, {"block": 1, "offset": 0, "size": "1"}, b"", id="hot-str"),
    pytest.param(REQ, Op.READ, {"block": 1, "offset": 0, "size": 2**64}, b"", id="hot-2**64"),
    pytest.param(REQ, Op.READ, {"block": 1, "offset": 0}, b"", id="hot-missing"),
    pytest.param(REQ, Op.READ, {"block": 1, "offset": 0, "size": 1, "x": 1}, b"", id="hot-extra"),
    pytest.param(REQ, Op.READ, {"block": 1, "offset": 0, "size": 1}, b"x", id="hot-data"),
    pytest.param(REP, Op.ALLOC, _ALLOC_FLOAT, b"", id="hot-reply-float"),
]


@pytest.mark.parametrize(("kind", "op", "meta", "data"), REFUSED)
def test_send_refuses_a_frame_that_breaks_its_schema(
    kind: Kind, op: Op, meta: dict[str, Any], data: bytes
) -> None:
    sender, receiver = _sendable_on(kind, op)
    assert_refused_and_usable(sender, receiver, _event(kind, op, meta, data), kind)


@pytest.mark.parametrize("key", sorted(_SCHEMAS), ids=lambda k: f"{k[0].name}-{k[1].name}")
def test_send_refuses_every_bad_value_receive_rejects(key: tuple[Kind, Op]) -> None:
    # The same table as test_every_field_rejects_every_bad_value, from the sending side:
    # one check, so send refuses exactly what the receiver would reject.
    kind, op = key
    schema, _ = _SCHEMAS[key]
    for name, field_kind in schema.items():
        bad = BAD_VALUES[field_kind]
        if key in _COMPACT:  # a u64 struct: types and 0..2**64-1 only (the range: receive)
            bad = ["7", -1, 2**64, 1.5, None, b"7", [7]]
        for value in bad:
            sender, receiver = _sendable_on(kind, op)
            event = _event(kind, op, {**example_fields(schema), name: value})
            assert_refused_and_usable(sender, receiver, event, kind)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(Request(2**32, Op.STATS), id="req-id-too-large"),
        pytest.param(Request(-1, Op.STATS), id="req-id-negative"),
        pytest.param(_BIG_WRITE, id="frame-too-large"),
    ],
)
def test_send_refuses_a_frame_it_cannot_encode(event: Event) -> None:
    client, server = handshake(max_frame_size=256)
    with pytest.raises(ProtocolError, match="cannot send"):
        client.send(event)
    assert client.error is None and client.state is State.READY and client.in_flight == 0
    stats = Request(REQ_ID, Op.STATS)
    assert transfer(client.send(stats), server) == [stats]


def test_an_int_enum_is_sent_as_its_int() -> None:
    client, server = handshake()
    transfer(client.send(Request(5, Op.PEERS)), server)
    [got] = transfer(server.send(ErrorReply(5, Op.PEERS, ErrorCode.INTERNAL, "m")), client)
    assert got == ErrorReply(5, Op.PEERS, 1, "m") and type(got.code) is int


def test_a_refused_reply_leaves_its_request_to_answer_with_an_error() -> None:
    # what the coordinator does: the request stays in flight until an error reply answers it
    client, server = handshake()
    transfer(client.send(Request(5, Op.PEERS)), server)
    with pytest.raises(ProtocolError):
        server.send(Reply(5, Op.PEERS, {"names": ["p"] * (MAX_LIST + 1)}))
    assert server.in_flight == 1
    error = ErrorReply(5, Op.PEERS, 1, "internal error: the reply does not fit")
    assert transfer(server.send(error), client) == [error]
    assert client.in_flight == server.in_flight == 0


def _lists_over_the_limit(schema: dict[str, Any]) -> dict[str, Any]:
    """Example fields with every list longer than its limit, its items numbered so the
    first ones can be told from the rest."""
    fields = example_fields(schema)
    for name, kind in schema.items():
        if kind in _LIST_LIMITS:
            item = EXAMPLES[kind][0]
            fields[name] = [item] * _LIST_OVER[kind]
            if kind == _STRLIST:
                fields[name] = [f"{i:05}" for i in range(_LIST_OVER[kind])]
    return fields


_REPLIES_WITH_LISTS = [
    op for op in Op if any(kind in _LIST_LIMITS for kind in _SCHEMAS[(REP, op)][0].values())
]


@pytest.mark.parametrize("op", _REPLIES_WITH_LISTS, ids=lambda op: op.name)
def test_fit_lists_cuts_every_list_of_a_reply_to_its_limit(op: Op) -> None:
    # STATS names, processes, usage and links, PEERS names, and any list a reply gets later
    schema = _SCHEMAS[(REP, op)][0]
    result = _lists_over_the_limit(schema)
    sender, receiver = _sendable_on(REP, op)
    with pytest.raises(ProtocolError):
        sender.send(Reply(REQ_ID, op, result))
    fitted = fit_lists(op, result)
    assert result == _lists_over_the_limit(schema)  # the caller's dict is left alone
    [got] = transfer(sender.send(Reply(REQ_ID, op, fitted)), receiver)
    assert isinstance(got, Reply)
    for name, kind in schema.items():
        if kind in _LIST_LIMITS:
            assert got.result[name] == result[name][: _LIST_LIMITS[kind]], name
        else:
            assert got.result[name] == result[name], name


def test_fit_lists_keeps_lists_within_the_limit_as_they_are() -> None:
    at_limit = {"names": ["p"] * MAX_LIST}
    assert fit_lists(Op.PEERS, at_limit) == at_limit
    assert fit_lists(Op.PEERS, {"names": []}) == {"names": []}
    stats = fit_lists(Op.STATS, _STATS_META)
    assert stats == _STATS_META


@pytest.mark.parametrize("max_frame_size", [64, 4096, MAX_FRAME_SIZE])
def test_oversized_frame_is_rejected_from_its_header_alone(max_frame_size: int) -> None:
    # The size check needs no state; a 64-byte limit could not even carry a HELLO reply.
    server = Connection(Role.SERVER, max_frame_size=max_frame_size)
    body_len = max_frame_size - 4 + 1  # one byte over: u32 length prefix + body
    server.receive_data(HEADER.pack(body_len, Kind.REQUEST, Op.HELLO, REQ_ID, 0))
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert "max_frame_size" in str(info.value)
    assert_poisoned(server, info.value)


def test_frame_of_exactly_max_frame_size_is_accepted() -> None:
    meta = {"block": 1, "offset": 0}
    overhead = len(frame(Kind.REQUEST, Op.WRITE, meta))
    client, server = handshake(max_frame_size=overhead + 100)
    request = Request(REQ_ID, Op.WRITE, meta, b"d" * 100)
    wire = client.send(request)
    assert len(wire) == overhead + 100
    assert transfer(wire, server) == [request]


def test_length_prefix_at_u32_max_is_rejected_before_any_body() -> None:
    server = handshake()[1]
    server.receive_data(HEADER.pack(0xFFFFFFFF, Kind.REQUEST, Op.WRITE, REQ_ID, 0))
    with pytest.raises(ProtocolError):
        server.next_event()


# -- peer closing -----------------------------------------------------------------


def _in_flight_on_client() -> Connection:
    client, _ = handshake()
    client.send(example_event(Kind.REQUEST, Op.STATS))
    return client


def _in_flight_on_server() -> Connection:
    client, server = handshake()
    transfer(client.send(example_event(Kind.REQUEST, Op.STATS)), server)
    return server


def _hello_in_flight() -> Connection:
    client = Connection(Role.CLIENT)
    client.send(example_event(Kind.REQUEST, Op.HELLO))
    return client


def _partial(cut: int) -> Callable[[], Connection]:
    def make() -> Connection:
        server = handshake()[1]
        server.receive_data(_ALLOC[:cut])
        assert server.next_event() is NEED_DATA
        return server

    return make


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_partial(1), id="mid-header"),
        pytest.param(_partial(HEADER.size), id="after-header"),
        pytest.param(_partial(len(_ALLOC) - 1), id="mid-body"),
        pytest.param(_in_flight_on_client, id="client-awaits-reply"),
        pytest.param(_in_flight_on_server, id="server-owes-reply"),
        pytest.param(_hello_in_flight, id="during-handshake"),
    ],
)
def test_peer_closing_uncleanly_is_a_protocol_error(make: Callable[[], Connection]) -> None:
    conn = make()
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(b"")
    assert_poisoned(conn, info.value)


def _after_bye() -> Connection:
    client, server = handshake()
    transfer(client.send(example_event(Kind.REQUEST, Op.BYE)), server)
    server.send(example_event(Kind.REPLY, Op.BYE))
    return server


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_fresh_server, id="before-handshake"),
        pytest.param(_fresh_client, id="client-before-handshake"),
        pytest.param(_ready_server, id="ready-server"),
        pytest.param(_ready_client, id="ready-client"),
        pytest.param(_after_bye, id="after-bye"),
    ],
)
def test_peer_closing_cleanly(make: Callable[[], Connection]) -> None:
    conn = make()
    conn.receive_data(b"")
    assert conn.state is State.CLOSED
    assert conn.error is None
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")  # a second EOF is harmless
    assert conn.state is State.CLOSED


# -- 5. fuzzing -------------------------------------------------------------------


def fuzz_feed(conn: Connection, chunks: Iterable[bytes]) -> list[Event]:
    """Feed chunks; only events or a ProtocolError (which poisons) may come out."""
    events: list[Event] = []
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            events += drain(conn)
    except ProtocolError as exc:
        assert conn.state is State.ERROR
        assert conn.error is exc
    return events


def _client_with_everything_in_flight() -> Connection:
    client, _ = handshake()
    for i, op in enumerate(READY_OPS):
        client.send(example_event(Kind.REQUEST, op, i + 1))
    return client


def _check_events(conn: Connection, events: list[Event]) -> None:
    """Whatever got through is well formed for the receiving side."""
    for event in events:
        if isinstance(event, ErrorReply):
            assert conn.role is Role.CLIENT
            continue
        assert isinstance(event, Request if conn.role is Role.SERVER else Reply)
        kind = Kind.REQUEST if isinstance(event, Request) else Kind.REPLY
        schema, data_ok = _SCHEMAS[(kind, event.op)]
        assert fields_of(event).keys() == schema.keys()
        assert data_ok or not event.data


_chunks = st.lists(st.binary(min_size=1, max_size=64), max_size=8)


@FUZZ
@given(_chunks, st.booleans())
def test_fuzz_arbitrary_bytes(chunks: list[bytes], to_client: bool) -> None:
    conn = _client_with_everything_in_flight() if to_client else handshake()[1]
    _check_events(conn, fuzz_feed(conn, chunks))


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """Frames with a sane header around arbitrary msgpack, so validation is reached."""
    kind = draw(st.sampled_from([*Kind, 0, 4]))
    op = draw(st.sampled_from([*Op, 0, 14]))
    meta = draw(
        st.dictionaries(
            st.sampled_from(["size", "block", "offset", "to", "header", "x"]), _MSGPACK_VALUE
        )
        | _MSGPACK_VALUE
    )
    data = draw(st.binary(max_size=16))
    return frame(kind, op, meta, data, req_id=draw(st.integers(0, 20)))


@FUZZ
@given(st.lists(plausible_frames(), min_size=1, max_size=6), st.booleans())
def test_fuzz_plausible_frames(frames: list[bytes], to_client: bool) -> None:
    conn = _client_with_everything_in_flight() if to_client else handshake()[1]
    _check_events(conn, fuzz_feed(conn, frames))


@st.composite
def mutated_valid_frames(draw: st.DrawFn) -> tuple[bool, list[bytes]]:
    """A few valid frames for the receiving side, then bytes flipped, cut or appended."""
    to_client = draw(st.booleans())
    ops = draw(st.lists(st.sampled_from(READY_OPS), min_size=1, max_size=3, unique=True))
    wire = bytearray()
    for op in ops:
        if to_client:
            req_id = READY_OPS.index(op) + 1
            kind = draw(st.sampled_from([Kind.REPLY, Kind.ERROR]))
        else:
            req_id, kind = draw(st.integers(1, 50)), Kind.REQUEST
        wire += encode(draw(valid_events(kind, op, req_id)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(wire) - 1))
        wire[i] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        del wire[draw(st.integers(0, len(wire))) :]
    wire += draw(st.binary(max_size=16))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=5)))
    chunks = [bytes(wire[a:b]) for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    return to_client, [c for c in chunks if c]


@FUZZ
@given(mutated_valid_frames())
def test_fuzz_mutated_valid_frames(case: tuple[bool, list[bytes]]) -> None:
    to_client, chunks = case
    conn = _client_with_everything_in_flight() if to_client else handshake()[1]
    _check_events(conn, fuzz_feed(conn, chunks))


@FUZZ
@given(st.integers(MAX_FRAME_SIZE - 4 + 1, 0xFFFFFFFF), st.integers(0, 255), st.integers(0, 255))
def test_fuzz_incomplete_input_is_bounded(body_len: int, kind: int, op: int) -> None:
    server = handshake()[1]
    server.receive_data(HEADER.pack(body_len, kind, op, REQ_ID, 0))
    with pytest.raises(ProtocolError):
        server.next_event()


@pytest.mark.parametrize("key", sorted(_COMPACT), ids=lambda k: f"{k[0].name}-{k[1].name}")
def test_compact_metas_have_an_exact_length(key: tuple[Kind, Op]) -> None:
    kind, op = key
    st, names = _COMPACT[key]
    for meta in (st.pack(*[7] * len(names)) + b"\0", st.pack(*[7] * len(names))[:-1]):
        if not names and not meta:
            continue
        conn = receiver_for(kind, op)
        with pytest.raises(ProtocolError, match="expected"):
            transfer(frame(kind, op, raw_meta=meta), conn)
