"""The wire protocol between clients and a coordinator, sans-IO.

Theory of operation
-------------------
This module turns bytes into events and events into bytes; it never touches a
socket, a loop or a file descriptor (a test imports it with those modules blocked).
Both ends use the same :class:`Connection` class, in the ``CLIENT`` or ``SERVER``
role, the way h11 does for HTTP.

A frame is a fixed little-endian header followed by two parts::

    u32 body_len | u8 kind | u8 op | u32 req_id | u32 meta_len | meta | data
                 '---------------- body_len bytes ------------------------'

``meta`` is a msgpack map whose keys and value types are fixed per (kind, op) in the
``_SCHEMAS`` table and checked field by field on receipt: missing, unknown or
ill-typed fields are protocol errors (but for a field added later with a default in
``_DEFAULTS``, e.g. HELLO's ``access``, which a frame may leave out: it then holds the
default, on both ends). ``data`` is raw bytes, allowed only where the
table says so (a WRITE request, a READ reply). There is no pickle on the wire.
``send`` makes the same check (``_check_frame``) before it encodes a frame, so neither
side emits what the other would refuse; a frame that fails it is refused with a
:class:`ProtocolError` and the connection is untouched (nothing was sent). The hot
frames' fixed structs (below) are checked on send by ``struct`` alone: types and
0..2**64-1, not the 2**63-1 bound the receiver checks (measured: +13-28% on such a send).
Lists hold at most ``MAX_LIST`` items; :func:`fit_lists` cuts a reply's lists to it, and
to :data:`REPLY_LISTS_BUDGET` encoded bytes together, so a reply that lists the pool's
names or processes always fits a frame, however long they are (RECV_MANY's batches keep
to the same budget, counting each message with :func:`message_bound`).

Every variable-size field is bounded: a str by ``MAX_STR`` characters, bytes (a token)
by 64, a list by its item limit, and a dict (a message header, a codec meta) by the
header rule of ``_core/limits.py`` (``MAX_HEADER`` encoded), which its op's handler
applies (``pack_header``): the schema checks its shape, not its size, so that a hot
SEND does not encode its header twice. ``tests/core/test_field_bounds.py`` checks that
every reply stays under ``MAX_FRAME_SIZE`` whatever its requests held.

Access: a connection is read-write (``access="rw"``, the default) or read-only
(``"r"``, said in HELLO). :func:`read_only_refusal` is the one home of which requests
need write access (they write a block's bytes or hand data on); the coordinator checks
it for every request of a read-only connection before any handler runs, and the client
checks it too, before it sends.

Every request carries a client-chosen id and gets exactly one reply (a ``Reply`` or an
``ErrorReply``) with the same id, so requests pipeline and replies come back in
whatever order they complete. A ``CANCEL`` request asks the server to drop a request
that is waiting (for a contended lease, for an inbox message); the dropped request is
answered with an ``ErrorReply`` of code ``CANCELLED``, and ``CANCEL`` itself too gets a
reply, so the rule "one reply per request" has no exception.

States: a connection starts in ``HANDSHAKE``, where only ``HELLO`` (register a
process) or ``ATTACH`` (a short side connection that fetches segment file descriptors)
may be sent. A successful ``HELLO`` reply moves both sides to ``READY``; an ``ATTACH``
reply, an error reply during the handshake, or a ``BYE`` reply moves them to
``CLOSED``. Any violation puts the side that saw it in ``ERROR``, and every later call
on it raises the same :class:`ProtocolError`. Incomplete input is bounded by
``max_frame_size``.
"""

from __future__ import annotations

import bisect
import enum
import reprlib
import struct
from collections.abc import Callable
from typing import Any, Final, NamedTuple, NoReturn

import msgpack

from .._exceptions import ProtocolError
from .limits import MAX_BATCH, MAX_HEADER, MAX_INT, MAX_LIST, MAX_STR

__all__ = [
    "CANCELLED",
    "HEADER",
    "MAX_BATCH",  # (MAX_*: the limits' home is _core/limits.py; the schema applies them)
    "MAX_LIST",
    "MAX_STR",
    "fit_lists",
    "job_bound",
    "message_bound",
    "MAX_FRAME_SIZE",
    "ACCESS_MODES",
    "read_only_refusal",
    "REPLY_LISTS_BUDGET",
    "NEED_DATA",
    "NeedData",
    "NO_BLOCK",
    "PROTOCOL_VERSION",
    "Connection",
    "ErrorReply",
    "Event",
    "Kind",
    "Op",
    "Reply",
    "Request",
    "Role",
    "State",
]

PROTOCOL_VERSION: Final = 1
NO_BLOCK: Final = 0
"""The block id of a SEND or PUBLISH that carries a header alone, and of its message in
RECV and RECV_MANY replies (with size, capacity, segment and offset 0, no owner): block
ids start at 1."""
HEADER: Final = struct.Struct("<IBBII")
_BODY_FIXED: Final = HEADER.size - 4  # kind, op, req_id, meta_len
MAX_FRAME_SIZE: Final = (1 << 20) + 65536
REPLY_LISTS_BUDGET: Final = MAX_FRAME_SIZE - 65536
"""Encoded bytes the list fields of one reply may take together, at most: what
:func:`fit_lists` cuts to, and what one RECV_MANY batch counts against (the other 64 KiB
of a frame hold the header and the reply's other fields)."""
_MAX_TOKEN: Final = 64  # bytes of a HELLO token
CANCELLED: Final = 0
"""Error code of a request dropped by a ``CANCEL``; never raised to users as such."""


class Kind(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    ERROR = 3


@enum.unique
class Op(enum.IntEnum):
    HELLO = 1
    ATTACH = 2
    ALLOC = 3
    FREE = 4
    WRITE = 5
    READ = 6
    LEASE = 7
    RELEASE = 8
    SEND = 9
    RECV = 10
    STATS = 11
    CANCEL = 12
    BYE = 13
    # copy, grants and pub/sub (14-29)
    COPY = 14
    GRANT = 15
    REVOKE = 16
    SUBSCRIBE = 17
    UNSUBSCRIBE = 18
    PUBLISH = 19
    PEERS = 20
    RECV_MANY = 21
    FREE_MANY = 22
    # a RELEASE whose lease's view outlived it (an array or slice made from it still
    # lives): the coordinator keeps that block's memory out of the pool until UNEXPORT
    # or this process disconnects (see RoutingTable.mark_exported). An op of its own, not a
    # field of RELEASE: every field of a frame is required, and RELEASE is a hot frame.
    RELEASE_EXPORTED = 23
    # the last view of a block that outlived its leases in this process is gone (sent
    # once per block, after its RELEASE_EXPORTED): the coordinator may give its memory
    # back (see RoutingTable.unexport); fire and forget, like a RELEASE of a cancelled call
    UNEXPORT = 28
    # a LEASE whose reply also says how the block is encoded (its codec and meta, as
    # GET's does): a lease with a codec, in either mode (LEASE's reply is a hot struct)
    LEASE_CODEC = 29
    # codecs and named objects (30-39)
    PUT = 30
    COMMIT = 31
    GET = 32
    DELETE = 33
    TOUCH = 34  # blocks a client's own cache served: the pool's LRU order sees those uses
    CLAIM = 35  # get_or_put: compute a missing named object, or wait for who does
    UNCLAIM = 36  # give such a claim up (the factory raised, or was cancelled)
    # remote sends through the coordinators' link (40-49)
    REMOTE_SEND = 40
    # channels: rings in the pool that messages cross without the coordinator (50-59)
    CHANNEL_OPEN = 50
    CHANNEL_ACCEPT = 51
    CHANNEL_CLOSE = 52
    # work queues: competing consumers, at-least-once (60-69)
    QUEUE_DECLARE = 60
    ENQUEUE = 61
    TAKE = 62
    ACK = 63
    NACK = 64
    # a batch of jobs in one request (ENQUEUE_MANY: all of them or none) and up to
    # ``max`` jobs in one reply (TAKE_MANY, its acks folded); a PUT's block committed
    # and enqueued in one (ENQUEUE_COMMIT: a large job's second round trip saved)
    ENQUEUE_MANY = 65
    TAKE_MANY = 66
    ENQUEUE_COMMIT = 67
    # request/reply: a request routed to a responder, answered by its reply (70-79)
    REQUEST = 70  # the requester's: answered with the reply (or the responder's failure)
    SERVE = 71  # the responder's: answered with the next request to it
    RESPOND = 72  # the responder's answer to a request it received
    # inline messages: small payloads that travel in the frames into an inbox (80-89)
    SEND_DATA = 80  # one message whose payload is the frame's data
    SEND_MANY = 81  # a batch of them into one inbox, admitted together


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


# Events are immutable NamedTuples rather than frozen dataclasses: four are made per
# round trip, and a frozen dataclass costs twice as much to construct (measured:
# 0.46 against 0.22 us). The shared empty-dict defaults are never mutated.
_EMPTY: Final[dict[str, Any]] = {}


class Request(NamedTuple):
    """A client's request: ``args`` are the op's fields, ``data`` raw bytes (WRITE)."""

    req_id: int
    op: Op
    args: dict[str, Any] = _EMPTY
    data: bytes = b""


class Reply(NamedTuple):
    """A successful answer to the request with the same ``req_id``."""

    req_id: int
    op: Op
    result: dict[str, Any] = _EMPTY
    data: bytes = b""


class ErrorReply(NamedTuple):
    """A failed answer: ``code`` is an :class:`~blockipc._exceptions.ErrorCode`."""

    req_id: int
    op: Op
    code: int
    message: str


Event = Request | Reply | ErrorReply

# Field types of the schema language: python types, or tags for lists.
_SEGLIST: Final = "seglist"  # list of [segment id, size] pairs
_STRLIST: Final = "strlist"
_INTLIST: Final = "intlist"
_LINKLIST: Final = "linklist"  # [[node, state, 8 counters], ...]: Stats.links
_PROCLIST: Final = "proclist"  # [[name, pid, 7 counters], ...]: Stats.usage
# rows of a few strings, then ints: (strings, ints) per row
_QUEUELIST: Final = "queuelist"  # [[name, dead_letter, 8 counters], ...]: Stats.queues
_ROWS: Final = {_LINKLIST: (2, 8), _PROCLIST: (1, 8), _QUEUELIST: (2, 8)}
_DICTLIST: Final = "dictlist"  # ENQUEUE_MANY: one codec meta per job
_JOBLIST: Final = "joblist"  # TAKE_MANY: [job, block, size, capacity, segment, offset,
# lease, attempts, codec, producer, meta, header, inline] per job
_MSGLIST: Final = "msglist"  # RECV_MANY: [block, size, capacity, segment, offset,
# owner, sender, header, topic, codec, meta] per message; or, codec not "", a run of
# inline messages of one sender with one header, topic, codec and meta: [NO_BLOCK,
# bytes, messages, 0, 0, "", sender, header, topic, codec, meta], their sizes the next
# ``messages`` of the reply's ``sizes``, their bytes the next ``bytes`` of its data
# the most items a list field of each type holds: checked by _check_value, applied by fit_lists
_LIST_LIMITS: Final[dict[str, int]] = {
    _SEGLIST: MAX_LIST,
    _STRLIST: MAX_LIST,
    _INTLIST: MAX_LIST,
    _LINKLIST: MAX_LIST,
    _PROCLIST: MAX_LIST,
    _QUEUELIST: MAX_LIST,
    _MSGLIST: MAX_BATCH,
    _DICTLIST: MAX_BATCH,
    _JOBLIST: MAX_BATCH,
}
_Schema = dict[str, Any]

_STATS_FIELDS: Final[_Schema] = {
    "pool_size": int,
    "max_pool_size": int,
    "free_bytes": int,
    "used_bytes": int,
    "blocks": int,
    "segments": int,
    "processes": _STRLIST,
    "leases": int,
    "cache_hits": int,
    "cache_misses": int,
    "cache_evictions": int,
    "names": _STRLIST,
    "channels": int,
    "links": _LINKLIST,
    "usage": _PROCLIST,
    "names_total": int,  # names and processes (and usage) hold MAX_LIST of these at most
    "processes_total": int,
    "queues": _QUEUELIST,
    "largest_free": int,
    "queue_inline_bytes": int,
}
_BLOCK_FIELDS: Final[_Schema] = {
    "block": int,
    "size": int,
    "capacity": int,
    "segment": int,
    "offset": int,
}

# (kind, op) -> (schema of meta, data allowed)
_SCHEMAS: Final[dict[tuple[Kind, Op], tuple[_Schema, bool]]] = {
    (Kind.REQUEST, Op.HELLO): (
        {
            "version": int,
            "name": str,
            "pid": int,
            "inbox_messages": int,
            "inbox_bytes": int,
            "access": str,  # "rw" or "r" (ACCESS_MODES): a read-only connection
        },
        False,
    ),
    (Kind.REPLY, Op.HELLO): (
        {
            "version": int,
            "token": bytes,
            "min_block": int,
            "max_inline": int,
            "segments": _SEGLIST,
            "gen_size": int,  # the generation table's fd follows the segments' fds
        },
        False,
    ),
    # channel: also fetch that channel's two eventfds (0: none); they follow the
    # segments' fds, the receiver's ("data") first, then the sender's ("space")
    (Kind.REQUEST, Op.ATTACH): ({"token": bytes, "segments": _INTLIST, "channel": int}, False),
    (Kind.REPLY, Op.ATTACH): ({"segments": _SEGLIST, "bells": int}, False),
    (Kind.REQUEST, Op.ALLOC): ({"size": int}, False),
    (Kind.REPLY, Op.ALLOC): (_BLOCK_FIELDS, False),
    (Kind.REQUEST, Op.FREE): ({"block": int}, False),
    (Kind.REPLY, Op.FREE): ({}, False),
    (Kind.REQUEST, Op.WRITE): ({"block": int, "offset": int}, True),
    (Kind.REPLY, Op.WRITE): ({"written": int}, False),
    (Kind.REQUEST, Op.READ): ({"block": int, "offset": int, "size": int}, False),
    (Kind.REPLY, Op.READ): ({}, True),
    (Kind.REQUEST, Op.LEASE): ({"block": int, "mode": str}, False),
    (Kind.REPLY, Op.LEASE): ({"lease": int, **_BLOCK_FIELDS}, False),
    (Kind.REQUEST, Op.RELEASE): ({"lease": int}, False),
    (Kind.REPLY, Op.RELEASE): ({}, False),
    (Kind.REQUEST, Op.RELEASE_EXPORTED): ({"lease": int}, False),
    (Kind.REPLY, Op.RELEASE_EXPORTED): ({}, False),
    (Kind.REQUEST, Op.UNEXPORT): ({"block": int}, False),
    (Kind.REPLY, Op.UNEXPORT): ({}, False),
    (Kind.REQUEST, Op.LEASE_CODEC): ({"block": int, "mode": str}, False),
    (Kind.REPLY, Op.LEASE_CODEC): (
        {
            "lease": int,
            **_BLOCK_FIELDS,
            "owner": str,
            "generation": int,
            "slot": int,
            "codec": str,
            "meta": dict,
        },
        False,
    ),
    (Kind.REQUEST, Op.SEND): (
        # wait_ms: how long to wait for a receiver that has not registered yet (0: no wait)
        {"block": int, "to": str, "header": dict, "move": bool, "nowait": bool, "wait_ms": int},
        False,
    ),
    (Kind.REPLY, Op.SEND): ({}, False),
    (Kind.REQUEST, Op.RECV): ({}, False),
    # codec "": a block (or, with block NO_BLOCK, a header alone); else an inline
    # message: block NO_BLOCK, its ``size`` bytes of payload the frame's data, which
    # ``codec`` and ``meta`` (the codec's meta) decode
    (Kind.REPLY, Op.RECV): (
        {
            **_BLOCK_FIELDS,
            "owner": str,
            "sender": str,
            "header": dict,
            "topic": str,
            "codec": str,
            "meta": dict,
        },
        True,
    ),
    (Kind.REQUEST, Op.RECV_MANY): ({"max": int}, False),
    (Kind.REPLY, Op.RECV_MANY): ({"messages": _MSGLIST, "sizes": _INTLIST}, True),
    # inline messages (client.send_value, send_many): the payload is the frame's data,
    # at most MAX_INLINE_PAYLOAD bytes (a batch's together), encoded with ``codec``
    # (``meta``: the codec's meta, the same for every message of a batch); ``sizes``
    # cuts a batch's data into its messages, in order
    (Kind.REQUEST, Op.SEND_DATA): (
        {"to": str, "header": dict, "codec": str, "meta": dict, "nowait": bool, "wait_ms": int},
        True,
    ),
    (Kind.REPLY, Op.SEND_DATA): ({}, False),
    (Kind.REQUEST, Op.SEND_MANY): (
        {
            "to": str,
            "header": dict,
            "codec": str,
            "meta": dict,
            "sizes": _INTLIST,
            "nowait": bool,
            "wait_ms": int,
        },
        True,
    ),
    (Kind.REPLY, Op.SEND_MANY): ({}, False),
    (Kind.REQUEST, Op.FREE_MANY): ({"blocks": _INTLIST}, False),
    (Kind.REPLY, Op.FREE_MANY): ({}, False),
    (Kind.REQUEST, Op.COPY): (
        {
            "src": int,
            "dst": int,
            "src_offset": int,
            "dst_offset": int,
            "size": int,
            "to_end": bool,  # size = the rest of src, from src_offset
        },
        False,
    ),
    (Kind.REPLY, Op.COPY): ({"copied": int}, False),
    (Kind.REQUEST, Op.GRANT): ({"block": int, "to": str, "mode": str}, False),
    (Kind.REPLY, Op.GRANT): ({}, False),
    (Kind.REQUEST, Op.REVOKE): ({"block": int, "to": str}, False),
    (Kind.REPLY, Op.REVOKE): ({}, False),
    (Kind.REQUEST, Op.SUBSCRIBE): ({"topic": str}, False),
    (Kind.REPLY, Op.SUBSCRIBE): ({}, False),
    (Kind.REQUEST, Op.UNSUBSCRIBE): ({"topic": str}, False),
    (Kind.REPLY, Op.UNSUBSCRIBE): ({}, False),
    (Kind.REQUEST, Op.PUBLISH): (
        {"block": int, "topic": str, "header": dict, "nowait": bool},
        False,
    ),
    (Kind.REPLY, Op.PUBLISH): ({"delivered": int}, False),
    (Kind.REQUEST, Op.PUT): ({"size": int}, False),
    (Kind.REPLY, Op.PUT): ({"lease": int, **_BLOCK_FIELDS}, False),
    (Kind.REQUEST, Op.COMMIT): (
        # if_absent: refuse (NameTaken) if the name is bound; ttl_ms: unbind it after
        # that long (0: never)
        {
            "lease": int,
            "codec": str,
            "meta": dict,
            "name": str,
            "cacheable": bool,
            "if_absent": bool,
            "ttl_ms": int,
        },
        False,
    ),
    (Kind.REPLY, Op.COMMIT): ({"generation": int, "slot": int}, False),
    (Kind.REQUEST, Op.GET): ({"block": int, "name": str}, False),
    # claimed: this process computes the object now; else it is bound (GET it)
    (Kind.REQUEST, Op.CLAIM): ({"name": str}, False),
    (Kind.REPLY, Op.CLAIM): ({"claimed": bool}, False),
    (Kind.REQUEST, Op.UNCLAIM): ({"name": str}, False),
    (Kind.REPLY, Op.UNCLAIM): ({}, False),
    (Kind.REPLY, Op.GET): (
        {
            "lease": int,
            **_BLOCK_FIELDS,
            "owner": str,
            "generation": int,
            "slot": int,
            "codec": str,
            "meta": dict,
        },
        False,
    ),
    (Kind.REQUEST, Op.DELETE): ({"name": str}, False),
    (Kind.REPLY, Op.DELETE): ({}, False),
    (Kind.REQUEST, Op.TOUCH): ({"blocks": _INTLIST}, False),
    (Kind.REPLY, Op.TOUCH): ({}, False),
    (Kind.REQUEST, Op.PEERS): ({}, False),
    (Kind.REPLY, Op.PEERS): ({"names": _STRLIST}, False),
    (Kind.REQUEST, Op.REMOTE_SEND): (
        {"block": int, "to": str, "header": dict, "move": bool},
        False,
    ),
    (Kind.REPLY, Op.REMOTE_SEND): ({}, False),
    (Kind.REQUEST, Op.CHANNEL_OPEN): ({"to": str, "capacity": int, "wait_ms": int}, False),
    (Kind.REPLY, Op.CHANNEL_OPEN): ({"channel": int, **_BLOCK_FIELDS}, False),
    (Kind.REQUEST, Op.CHANNEL_ACCEPT): ({}, False),
    (Kind.REPLY, Op.CHANNEL_ACCEPT): ({"channel": int, "sender": str, **_BLOCK_FIELDS}, False),
    (Kind.REQUEST, Op.CHANNEL_CLOSE): ({"channel": int}, False),
    (Kind.REPLY, Op.CHANNEL_CLOSE): ({}, False),
    # max_attempts 0: never dead-lettered; dead_letter "": the default name
    (Kind.REQUEST, Op.QUEUE_DECLARE): (
        {"queue": str, "maxsize": int, "max_attempts": int, "dead_letter": str},
        False,
    ),
    (Kind.REPLY, Op.QUEUE_DECLARE): ({}, False),
    # the job's payload as a REQUEST's (below): ``block``, moved into the queue, or
    # inline (block NO_BLOCK), which the coordinator writes into a new block of the job's
    (Kind.REQUEST, Op.ENQUEUE): (
        {"block": int, "codec": str, "meta": dict, "queue": str, "header": dict, "nowait": bool},
        True,
    ),
    (Kind.REPLY, Op.ENQUEUE): ({"job": int}, False),
    # ack: a job of the caller's to ack first (0: none); refused, the TAKE fails with
    # its error; done, the TAKE is answered with a job or as cancelled (ops/queues.take)
    (Kind.REQUEST, Op.TAKE): ({"queue": str, "ack": int}, False),
    # inline: the block's ``size`` bytes are the frame's data (at most MAX_INLINE_PAYLOAD)
    (Kind.REPLY, Op.TAKE): (
        {
            "job": int,
            **_BLOCK_FIELDS,
            "lease": int,
            "codec": str,
            "meta": dict,
            "header": dict,
            "attempts": int,
            "queue": str,
            "producer": str,
            "inline": bool,
        },
        True,
    ),
    # ENQUEUE_MANY: job i is ``blocks[i]`` (moved), or (NO_BLOCK) the next ``sizes[i]``
    # bytes of the frame's data, decoded with ``codec`` and ``metas[i]``; all the jobs
    # go in together (room for all of them) or none (checks: ops/queues.enqueue_many)
    (Kind.REQUEST, Op.ENQUEUE_MANY): (
        {
            "queue": str,
            "blocks": _INTLIST,
            "sizes": _INTLIST,
            "codec": str,
            "metas": _DICTLIST,
            "header": dict,
            "nowait": bool,
        },
        True,
    ),
    (Kind.REPLY, Op.ENQUEUE_MANY): ({"jobs": _INTLIST}, False),
    # acks: jobs of the caller's to ack first, all or (one refused) none; the reply's
    # data is the inline jobs' bytes, in order
    (Kind.REQUEST, Op.TAKE_MANY): ({"queue": str, "max": int, "acks": _INTLIST}, False),
    (Kind.REPLY, Op.TAKE_MANY): ({"queue": str, "jobs": _JOBLIST}, True),
    # COMMIT's lease, codec and meta (a PUT's block, unnamed), then ENQUEUE's block;
    # refill: the bytes of a new block (with its write lease, as a PUT's) that the reply
    # brings for the producer's next job (0: none; the reply's block NO_BLOCK: none made)
    (Kind.REQUEST, Op.ENQUEUE_COMMIT): (
        {
            "lease": int,
            "codec": str,
            "meta": dict,
            "queue": str,
            "header": dict,
            "nowait": bool,
            "refill": int,
        },
        False,
    ),
    (Kind.REPLY, Op.ENQUEUE_COMMIT): ({"job": int, "lease": int, **_BLOCK_FIELDS}, False),
    (Kind.REQUEST, Op.ACK): ({"job": int}, False),
    (Kind.REPLY, Op.ACK): ({}, False),
    # failed False: a take whose caller was cancelled gives its job back, not counted
    (Kind.REQUEST, Op.NACK): ({"job": int, "failed": bool}, False),
    (Kind.REPLY, Op.NACK): ({}, False),
    # A payload is the frame's data when ``block`` is NO_BLOCK (at most
    # MAX_INLINE_PAYLOAD bytes; ``codec`` and ``meta``, the codec's meta, decode it), else
    # that block, moved to the other side (its recorded codec and meta decode it: the
    # coordinator fills them in).
    (Kind.REQUEST, Op.REQUEST): (
        {"to": str, "block": int, "codec": str, "meta": dict, "wait_ms": int},
        True,
    ),
    # direct: the responder's direct socket ("" none; _client/direct.py), learnt by the
    # requester with each reply; a SERVE registers its process's
    (Kind.REPLY, Op.REQUEST): (
        {**_BLOCK_FIELDS, "codec": str, "meta": dict, "direct": str},
        True,
    ),
    (Kind.REQUEST, Op.SERVE): ({"direct": str}, False),
    (Kind.REPLY, Op.SERVE): (
        {"request": int, "sender": str, **_BLOCK_FIELDS, "codec": str, "meta": dict},
        True,
    ),
    # error 0: a reply, its payload as a REQUEST's; else the error code the requester
    # raises (RemoteError: req.fail(); PeerUnreachable) with ``message``, no payload
    (Kind.REQUEST, Op.RESPOND): (
        {
            "request": int,
            "block": int,
            "codec": str,
            "meta": dict,
            "error": int,
            "message": str,
        },
        True,
    ),
    (Kind.REPLY, Op.RESPOND): ({}, False),
    (Kind.REQUEST, Op.STATS): ({}, False),
    (Kind.REPLY, Op.STATS): (_STATS_FIELDS, False),
    (Kind.REQUEST, Op.CANCEL): ({"target": int}, False),
    (Kind.REPLY, Op.CANCEL): ({}, False),
    (Kind.REQUEST, Op.BYE): ({}, False),
    (Kind.REPLY, Op.BYE): ({}, False),
}
_ERROR_SCHEMA: Final[_Schema] = {"code": int, "message": str}
_DEFAULTS: Final[dict[tuple[Kind, Op], dict[str, Any]]] = {
    # fields added after a frame's first version: a frame without them holds these
    (Kind.REQUEST, Op.HELLO): {"access": "rw"},
    (Kind.REPLY, Op.REQUEST): {"direct": ""},
    (Kind.REQUEST, Op.SERVE): {"direct": ""},
    (Kind.REPLY, Op.RECV): {"codec": "", "meta": {}},  # (inline messages came later)
    (Kind.REPLY, Op.RECV_MANY): {"sizes": []},
    (Kind.REPLY, Op.STATS): {"queue_inline_bytes": 0},
    (Kind.REQUEST, Op.ENQUEUE_COMMIT): {"refill": 0},
    (Kind.REPLY, Op.ENQUEUE_COMMIT): dict.fromkeys(("lease", *_BLOCK_FIELDS), 0),
}

ACCESS_MODES: Final = ("rw", "r")
"""What a connection may be (HELLO's ``access``): read-write, or read-only."""

# The requests a read-only connection may not make, and why: each writes a block's bytes
# (or makes a block it could not fill) or hands data on to another process. LEASE and
# LEASE_CODEC are here for their "w" mode only (see read_only_refusal). Everything in
# _READ_ONLY_OK (reads, read leases, get, recv, subscribe, free, release, unexport,
# revoke, stats, ...) is allowed; every op is in one of the two
# (tests/server/test_access_check.py), so a new op is decided.
_NEEDS_WRITE: Final[dict[Op, str]] = {
    Op.ALLOC: "ALLOC refused (a new block it could not fill)",
    Op.WRITE: "WRITE refused",
    Op.LEASE: "a write LEASE refused",
    Op.LEASE_CODEC: "a write LEASE_CODEC refused (a writable array over a block)",
    Op.COPY: "COPY refused (it writes into a block)",
    Op.PUT: "PUT refused (it writes a new block)",
    Op.COMMIT: "COMMIT refused (it binds what a PUT wrote)",
    Op.DELETE: "DELETE refused (it unbinds a name other processes read)",
    Op.CLAIM: "CLAIM refused (get_or_put: it computes an object to put)",
    Op.ENQUEUE: "ENQUEUE refused (it hands a block on; an inline one writes a new block)",
    Op.ENQUEUE_MANY: "ENQUEUE_MANY refused (it hands blocks on; inline ones write new blocks)",
    Op.ENQUEUE_COMMIT: "ENQUEUE_COMMIT refused (it binds what a PUT wrote and hands it on)",
    Op.QUEUE_DECLARE: "QUEUE_DECLARE refused (it changes a queue other processes use)",
    Op.SEND: "SEND refused (it hands a block on)",
    Op.SEND_DATA: "SEND_DATA refused (it hands data on to another process)",
    Op.SEND_MANY: "SEND_MANY refused (it hands data on to another process)",
    Op.REMOTE_SEND: "REMOTE_SEND refused (it hands a block on)",
    Op.PUBLISH: "PUBLISH refused (it hands a block on)",
    Op.GRANT: "GRANT refused (it hands a block on)",
    Op.CHANNEL_OPEN: "CHANNEL_OPEN refused (a channel's sender writes its ring)",
    Op.CHANNEL_ACCEPT: (
        "CHANNEL_ACCEPT refused (a channel's receiver writes the ring's read position "
        "in the pool; receive blocks with recv() instead)"
    ),
    # for a block only: an inline payload travels in the frame, never in the pool
    Op.REQUEST: "a REQUEST carrying a block refused (it hands a block on; inline is allowed)",
    Op.RESPOND: "a RESPOND carrying a block refused (it hands a block on; inline is allowed)",
}
_INLINE_OK: Final = frozenset({Op.REQUEST, Op.RESPOND})  # refused only with a block
_READ_ONLY_OK: Final = frozenset(
    {
        Op.HELLO,
        Op.ATTACH,
        Op.FREE,
        Op.READ,
        Op.RELEASE,
        Op.RECV,
        Op.STATS,
        Op.CANCEL,
        Op.BYE,
        Op.REVOKE,
        Op.SUBSCRIBE,
        Op.UNSUBSCRIBE,
        Op.PEERS,
        Op.RECV_MANY,
        Op.FREE_MANY,
        Op.GET,
        Op.TOUCH,
        Op.UNCLAIM,
        Op.RELEASE_EXPORTED,
        Op.UNEXPORT,
        Op.TAKE,  # a read-only consumer of a work queue reads its jobs, acks or nacks them
        Op.TAKE_MANY,
        Op.ACK,
        Op.NACK,
        Op.CHANNEL_CLOSE,
        Op.SERVE,  # a responder receives requests (its answer is RESPOND's to decide)
    }
)


_BY_MODE: Final = (Op.LEASE, Op.LEASE_CODEC)  # refused for a write lease only


def read_only_refusal(op: Op, args: dict[str, Any]) -> str | None:
    """Why a read-only connection (``access="r"``) may not make request ``op`` with
    ``args``, or ``None`` when it may: the one rule of which requests need write access.

    >>> read_only_refusal(Op.WRITE, {"block": 1, "offset": 0})
    "this connection is read-only (access='r'): WRITE refused"
    >>> read_only_refusal(Op.LEASE, {"block": 1, "mode": "r"}) is None
    True
    """
    why = _NEEDS_WRITE.get(op)
    if (
        why is None
        or (op in _BY_MODE and args.get("mode") == "r")
        or (op in _INLINE_OK and args.get("block") == NO_BLOCK)
    ):
        return None
    return f"this connection is read-only (access='r'): {why}"


# Frames whose fields are all ints (the hot path: READ, WRITE, ALLOC, FREE, LEASE,
# RELEASE, ...) carry their meta as a fixed little-endian struct of u64 in schema order
# instead of a msgpack map: parsing and checking it costs a fraction of a validated map,
# and the length alone proves the shape. An empty schema is an empty struct.
_HOT: Final = (
    (Kind.REQUEST, Op.READ),
    (Kind.REPLY, Op.READ),
    (Kind.REQUEST, Op.WRITE),
    (Kind.REPLY, Op.WRITE),
    (Kind.REQUEST, Op.ALLOC),
    (Kind.REPLY, Op.ALLOC),
    (Kind.REQUEST, Op.FREE),
    (Kind.REPLY, Op.FREE),
    (Kind.REPLY, Op.LEASE),
    (Kind.REQUEST, Op.RELEASE),
    (Kind.REPLY, Op.RELEASE),
)
_COMPACT: Final[dict[tuple[Kind, Op], tuple[struct.Struct, tuple[str, ...]]]] = {
    key: (struct.Struct("<" + "Q" * len(_SCHEMAS[key][0])), tuple(_SCHEMAS[key][0])) for key in _HOT
}
assert all(kind is int for key in _HOT for kind in _SCHEMAS[key][0].values())
_Compact = tuple[struct.Struct, tuple[str, ...]]
# Everything about a frame's (kind, op) in one lookup (an enum's hash is Python code):
# its schema, whether it may carry data, its fixed struct (None: a msgpack map).
_FRAMES: Final[dict[tuple[Kind, Op], tuple[_Schema, bool, _Compact | None]]] = {
    **{key: (schema, data_ok, _COMPACT.get(key)) for key, (schema, data_ok) in _SCHEMAS.items()},
    **{(Kind.ERROR, op): (_ERROR_SCHEMA, False, None) for op in Op},
}
_HANDSHAKE_OPS: Final = frozenset({Op.HELLO, Op.ATTACH})
_KINDS: Final = {k.value: k for k in Kind}  # dict lookups: Kind(v)/Op(v) cost 3x more
_OPS: Final = {o.value: o for o in Op}


def _check_value(name: str, value: Any, kind: Any) -> None:
    ok: bool
    if kind is int:  # an IntEnum (ErrorCode) is sent as the int it is; a bool is not an int
        ok = isinstance(value, int) and type(value) is not bool and 0 <= value <= MAX_INT
    elif kind is bool:
        ok = type(value) is bool
    elif kind is str:
        ok = type(value) is str and len(value) <= MAX_STR
    elif kind is bytes:
        ok = type(value) is bytes and len(value) <= _MAX_TOKEN
    elif kind is dict:
        ok = type(value) is dict and all(type(k) is str for k in value)
    elif kind == _STRLIST:
        ok = (
            type(value) is list
            and len(value) <= _LIST_LIMITS[kind]
            and all(type(v) is str and len(v) <= MAX_STR for v in value)
        )
    elif kind == _INTLIST:  # (checked in C: a batch's sizes are a thousand of them)
        ok = (
            type(value) is list
            and len(value) <= _LIST_LIMITS[kind]
            and (not value or (set(map(type, value)) == {int} and min(value) >= 0))
            and (not value or max(value) <= MAX_INT)
        )
    elif kind in _ROWS:
        strings, ints = _ROWS[kind]
        ok = (
            type(value) is list
            and len(value) <= _LIST_LIMITS[kind]
            and all(
                type(v) is list
                and len(v) == strings + ints
                and all(type(x) is str and len(x) <= MAX_STR for x in v[:strings])
                and all(type(x) is int and 0 <= x <= MAX_INT for x in v[strings:])
                for v in value
            )
        )
    elif kind == _MSGLIST:
        ok = (
            type(value) is list
            and 0 < len(value) <= _LIST_LIMITS[kind]
            and all(
                type(m) is list
                and len(m) == 11
                and all(type(x) is int and 0 <= x <= MAX_INT for x in m[:5])
                and all(type(x) is str and len(x) <= MAX_STR for x in (m[5], m[6], m[8], m[9]))
                and type(m[7]) is dict
                and all(type(k) is str for k in m[7])
                and type(m[10]) is dict
                and all(type(k) is str for k in m[10])
                for m in value
            )
        )
    elif kind == _DICTLIST:
        ok = (
            type(value) is list
            and len(value) <= _LIST_LIMITS[kind]
            and all(type(v) is dict and all(type(k) is str for k in v) for v in value)
        )
    elif kind == _JOBLIST:
        ok = (
            type(value) is list
            and 0 < len(value) <= _LIST_LIMITS[kind]
            and all(map(_is_job_row, value))
        )
    else:  # _SEGLIST
        ok = (
            type(value) is list
            and len(value) <= _LIST_LIMITS[_SEGLIST]
            and all(
                type(v) is list
                and len(v) == 2
                and all(type(x) is int and 0 <= x <= MAX_INT for x in v)
                for v in value
            )
        )
    if not ok:
        # reprlib bounds depth and length: a plain repr() of a deeply nested msgpack value
        # raises RecursionError instead of this ProtocolError.
        raise ProtocolError(f"field {name!r} has an invalid value: {reprlib.repr(value)}")


def _is_job_row(j: Any) -> bool:
    """One row of a TAKE_MANY reply: eight ints, two strs, two dicts, a bool (a plain
    loop: a batch of rows is checked on both sides of every TAKE_MANY)."""
    if type(j) is not list or len(j) != 13:
        return False
    for x in j[:8]:
        if type(x) is not int or not 0 <= x <= MAX_INT:
            return False
    for x in j[8:10]:
        if type(x) is not str or len(x) > MAX_STR:
            return False
    for x in j[10:12]:
        if type(x) is not dict:
            return False
        for k in x:
            if type(k) is not str:
                return False
    return type(j[12]) is bool


def _validate(meta: Any, schema: _Schema, where: Callable[[], str]) -> dict[str, Any]:
    """Check ``meta`` against ``schema``; ``where()`` names the frame in errors only."""
    if type(meta) is not dict:
        raise ProtocolError(f"{where()}: meta is not a map")
    if len(meta) != len(schema):
        _wrong_fields(meta, schema, where)
    try:  # as many fields as the schema, and each of them: the same fields
        for name, kind in schema.items():
            value = meta[name]
            # ints, strs and dicts are most fields: checked inline, the rest by _check_value
            if kind is int:
                if type(value) is int and 0 <= value <= MAX_INT:
                    continue
            elif kind is str:
                if type(value) is str and len(value) <= MAX_STR:
                    continue
            elif kind is dict and type(value) is dict and all(type(k) is str for k in value):
                continue
            try:
                _check_value(name, value, kind)
            except ProtocolError as exc:
                raise ProtocolError(f"{where()}: {exc}") from None
    except KeyError:
        _wrong_fields(meta, schema, where)
    return meta


def _wrong_fields(meta: dict[Any, Any], schema: _Schema, where: Callable[[], str]) -> NoReturn:
    missing = sorted(schema.keys() - meta.keys())
    unknown = sorted(str(k) for k in meta.keys() - schema.keys())
    raise ProtocolError(f"{where()}: missing fields {missing}, unknown fields {unknown}")


def _check_frame(
    schema: _Schema, data_ok: bool, meta: Any, data: bytes, where: Callable[[], str]
) -> dict[str, Any]:
    """The schema check of a frame that is not a fixed struct, sent or received alike:
    ``meta`` against the fields of its (kind, op) in the table, ``data`` only where the
    table allows it (``schema, data_ok`` from ``_FRAMES``)."""
    if data and not data_ok:
        raise ProtocolError(f"{where()}: unexpected data")
    return _validate(meta, schema, where)


def _with_defaults(kind: Kind, op: Op, meta: Any) -> Any:
    """``meta`` with the fields ``_DEFAULTS`` gives its frame filled in where missing."""
    defaults = _DEFAULTS.get((kind, op))
    if defaults is None or type(meta) is not dict:
        return meta
    return {**defaults, **meta}


def _sending(kind: Kind, op: Op, req_id: int) -> str:
    return f"cannot send {kind.name} {op.name} #{req_id}"


def _refuse(kind: Kind, op: Op, req_id: int, why: str) -> NoReturn:
    """A frame ``send`` will not encode: an error for the caller, the connection unchanged."""
    raise ProtocolError(f"{_sending(kind, op, req_id)}: {why}")


def _encoded_bound(value: Any) -> int:
    """At least the bytes msgpack takes for ``value`` (a str, an int >= 0, a bool, bytes,
    or a list of them): the list items of a reply, counted without encoding them."""
    if type(value) is str:
        return 5 + len(value.encode("utf-8", "surrogatepass"))
    if type(value) is list:
        return 5 + sum(_encoded_bound(v) for v in value)
    if type(value) is bytes:
        return 5 + len(value)
    if type(value) is int:
        return 1 if value < 128 else 3 if value < 65536 else 5 if value < 1 << 32 else 9
    return 1  # a bool


def message_bound(
    owner: str,
    sender: str,
    topic: str,
    header: dict[str, Any],
    codec: str = "",
    meta: dict[str, Any] | None = None,
    payload: int = 0,
) -> int:
    """At least the bytes one message of a RECV_MANY reply takes encoded: its five ints,
    its four names, its header and its codec's meta, each dict counted at the header
    rule's largest (a non-empty one) since it is not encoded here, and the ``payload``
    bytes of an inline message (the reply's data)."""
    return (
        5
        + 5 * 9
        + _encoded_bound([owner, sender, topic, codec])
        + (MAX_HEADER if header else 1)
        + (MAX_HEADER if meta else 1)
        + payload
    )


def job_bound(inline: int, codec: str, producer: str, meta_bytes: int, header_bytes: int) -> int:
    """At least the bytes one job of a TAKE_MANY reply takes: its row (eight ints, two
    names, its codec meta and header, ``meta_bytes`` and ``header_bytes`` encoded) and
    its ``inline`` bytes of the frame's data; the jobs of one reply together stay
    within :data:`REPLY_LISTS_BUDGET` (``_core/queues.py`` counts them)."""
    return 5 + 8 * 9 + _encoded_bound([codec, producer]) + meta_bytes + header_bytes + 1 + inline


def fit_lists(op: Op, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of a reply to ``op`` with every list field cut to the protocol's limit
    for it (:data:`MAX_LIST` items) and the list fields together to
    :data:`REPLY_LISTS_BUDGET` encoded bytes (shared out: what a short list leaves, the
    longer ones get), the first items kept; ``result`` is left as it is.

    What a reply that may list more than a frame carries (STATS, PEERS) does: the
    coordinator sorts, then fits, so a reply never breaks its schema or outgrows a
    frame for its length, however many or long the names it lists.

    >>> len(fit_lists(Op.PEERS, {"names": ["p"] * 5000})["names"])
    4096
    >>> len(fit_lists(Op.PEERS, {"names": ["p" * 255] * 4096})["names"])
    4032
    """
    fitted = dict(result)
    sizes: list[tuple[int, str, list[int]]] = []  # total, name, size of each prefix
    for name, kind in _SCHEMAS[(Kind.REPLY, op)][0].items():
        limit = _LIST_LIMITS.get(kind)
        if limit is None or name not in fitted:
            continue
        prefix, total = [], 0
        for item in fitted[name][:limit]:
            total += _encoded_bound(item)
            prefix.append(total)
        sizes.append((total, name, prefix))
    # the budget shared out, the smallest lists first: what one leaves, the others get
    remaining = REPLY_LISTS_BUDGET
    for i, (total, name, prefix) in enumerate(sorted(sizes)):
        share = remaining // (len(sizes) - i)
        count = len(prefix) if total <= share else bisect.bisect_right(prefix, share)
        if count < len(fitted[name]):
            fitted[name] = fitted[name][:count]
        remaining -= prefix[count - 1] if count else 0
    return fitted


class Connection:
    """One side of a blockipc connection: bytes in, events out; events in, bytes out.

    >>> client = Connection(Role.CLIENT)
    >>> client.send(Request(1, Op.STATS))  # refused before a byte is sent
    Traceback (most recent call last):
    ...
    blockipc._exceptions.ProtocolError: STATS is not allowed during the handshake
    """

    def __init__(self, role: Role, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.role = role
        self.max_frame_size = max_frame_size
        self.state = State.HANDSHAKE
        self.error: ProtocolError | None = None
        self._buffer = bytearray()
        # Requests sent (client) or received (server) that have no reply yet.
        self._in_flight: dict[int, Op] = {}
        self._packer = msgpack.Packer(use_bin_type=True)

    # -- receiving ---------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes received that no event has taken yet: once :meth:`next_event` has
        returned ``NEED_DATA``, the start of a frame that has not all arrived (``0``
        between frames).

        >>> conn = Connection(Role.SERVER)
        >>> conn.receive_data(b"\\x10\\x00")
        >>> conn.next_event(), conn.buffered
        (NEED_DATA, 2)
        """
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer. ``b""`` means the peer closed."""
        self._check_usable()
        if not data:
            if self.state is not State.CLOSED and (self._buffer or self._in_flight):
                self._fail("peer closed the connection mid-frame or with requests in flight")
            self.state = State.CLOSED
            return
        self._buffer += data

    def next_event(self) -> Event | NeedData:
        """Return the next complete event, or ``NEED_DATA``."""
        if self.error is not None:
            raise self.error
        buf = self._buffer
        if len(buf) < HEADER.size:
            return NEED_DATA
        body_len, kind_v, op_v, req_id, meta_len = HEADER.unpack_from(buf)
        frame_len = body_len + 4
        if frame_len > self.max_frame_size:
            self._fail(f"frame of {frame_len} bytes exceeds max_frame_size {self.max_frame_size}")
        if body_len < _BODY_FIXED or meta_len > body_len - _BODY_FIXED:
            self._fail(f"inconsistent frame lengths (body {body_len}, meta {meta_len})")
        if len(buf) < frame_len:
            return NEED_DATA
        kind, op = _KINDS.get(kind_v), _OPS.get(op_v)
        if kind is None or op is None:
            self._fail(f"unknown frame kind {kind_v} or op {op_v}")
        meta_end = HEADER.size + meta_len
        schema, data_ok, compact = _FRAMES[(kind, op)]
        if compact is not None:  # the hot path: no msgpack, no per-field checks
            st, names = compact
            if meta_len != st.size:
                self._fail(
                    f"{kind.name} {op.name} #{req_id}: meta of {meta_len} bytes, expected {st.size}"
                )
            values = st.unpack_from(buf, HEADER.size)
            if values and max(values) > MAX_INT:
                self._fail(f"{kind.name} {op.name} #{req_id}: field out of range")
            if frame_len > meta_end:
                if not data_ok:
                    self._fail(f"{kind.name} {op.name} #{req_id}: unexpected data")
                with memoryview(buf) as view:
                    data = bytes(view[meta_end:frame_len])
            else:
                data = b""
            del buf[:frame_len]
            fields = dict(zip(names, values, strict=True))
            event: Event = (
                Request(req_id, op, fields, data)
                if kind is Kind.REQUEST
                else Reply(req_id, op, fields, data)
            )
            self._on_received(event)
            return event
        with memoryview(buf) as view:
            try:
                meta = msgpack.unpackb(
                    view[HEADER.size : meta_end], raw=False, strict_map_key=True, use_list=True
                )
            except Exception as exc:  # noqa: BLE001 -- msgpack raises many unrelated types
                self._fail(f"meta is not valid msgpack: {exc}")
            data = bytes(view[meta_end:frame_len]) if frame_len > meta_end else b""
        del buf[:frame_len]
        try:
            event = self._parse(kind, op, req_id, meta, data, schema, data_ok)
        except ProtocolError as exc:
            self._fail(str(exc))
        self._on_received(event)
        return event

    def _parse(
        self,
        kind: Kind,
        op: Op,
        req_id: int,
        meta: Any,
        data: bytes,
        schema: _Schema,
        data_ok: bool,
    ) -> Event:
        def where() -> str:
            return f"{kind.name} {op.name} #{req_id}"

        fields = _check_frame(schema, data_ok, _with_defaults(kind, op, meta), data, where)
        if kind is Kind.ERROR:
            return ErrorReply(req_id, op, fields["code"], fields["message"])
        if kind is Kind.REQUEST:
            return Request(req_id, op, fields, data)
        return Reply(req_id, op, fields, data)

    def _on_received(self, event: Event) -> None:
        if isinstance(event, Request):
            if self.role is not Role.SERVER:
                self._fail("a client received a request")
            self._check_request_allowed(event.op)
            if event.req_id in self._in_flight:
                self._fail(f"request id {event.req_id} is already in flight")
            self._in_flight[event.req_id] = event.op
        else:
            if self.role is not Role.CLIENT:
                self._fail("a server received a reply")
            op = self._in_flight.pop(event.req_id, None)
            if op is not event.op:
                self._fail(f"reply #{event.req_id} ({event.op.name}) answers no request in flight")
            self._after_reply(event)

    # -- sending -----------------------------------------------------------------
    def send(self, event: Event) -> bytes:
        """Return the bytes that carry ``event`` to the peer.

        A frame that is not allowed now (a request on a closed connection, a reply that
        answers nothing) is a protocol error like any other: the connection is in
        ``ERROR`` from then on. A frame that does not fit its own schema, the same check
        its receiver makes (a field missing, ill-typed or too long, data where none is
        allowed, too large a frame), is refused: :class:`ProtocolError`, nothing sent,
        and the connection stays as it was (a server then answers that request with an
        error reply instead). The fixed-struct frames of the hot path are checked by
        their struct alone (ints from 0 to 2**64-1).
        """
        if self.error is not None:
            raise self.error
        if isinstance(event, Request):
            if self.role is not Role.CLIENT:
                self._fail("only a client sends requests")
            self._check_request_allowed(event.op)
            if event.req_id in self._in_flight:
                self._fail(f"request id {event.req_id} is already in flight")
            kind, meta, data = Kind.REQUEST, event.args, event.data
        else:
            if self.role is not Role.SERVER:
                self._fail("only a server sends replies")
            if self._in_flight.get(event.req_id) is not event.op:
                self._fail(f"reply #{event.req_id} answers no request in flight")
            if isinstance(event, Reply):
                kind, meta, data = Kind.REPLY, event.result, event.data
            else:
                kind = Kind.ERROR
                meta, data = {"code": event.code, "message": event.message}, b""
        op, req_id = event.op, event.req_id
        if not 0 <= req_id <= 0xFFFFFFFF:
            _refuse(kind, op, req_id, "request id out of range")
        schema, data_ok, compact = _FRAMES[(kind, op)]
        if compact is not None:  # the hot path: the struct checks the fields' types
            st, names = compact
            try:
                if len(meta) != len(names):
                    raise KeyError(sorted(meta))
                packed = st.pack(*[meta[name] for name in names])
            except (KeyError, struct.error) as exc:
                _refuse(kind, op, req_id, f"fields do not fit the schema: {exc}")
            if data and not data_ok:
                _refuse(kind, op, req_id, "unexpected data")
        else:
            meta = _with_defaults(kind, op, meta)
            _check_frame(schema, data_ok, meta, data, lambda: _sending(kind, op, req_id))
            try:
                packed = self._packer.pack(meta)
            except (TypeError, ValueError, OverflowError) as exc:  # e.g. in a header dict
                _refuse(kind, op, req_id, f"cannot be encoded: {exc}")
        body_len = _BODY_FIXED + len(packed) + len(data)
        if body_len + 4 > self.max_frame_size:
            _refuse(
                kind,
                op,
                req_id,
                f"frame of {body_len + 4} bytes exceeds max_frame_size {self.max_frame_size}",
            )
        frame = b"".join((HEADER.pack(body_len, kind, op, req_id, len(packed)), packed, data))
        if isinstance(event, Request):
            self._in_flight[req_id] = op
        else:
            del self._in_flight[req_id]
            self._after_reply(event)
        return frame

    # -- state -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Number of requests that have no reply yet."""
        return len(self._in_flight)

    def _check_request_allowed(self, op: Op) -> None:
        if self.state is State.HANDSHAKE:
            if op not in _HANDSHAKE_OPS or self._in_flight:
                self._fail(f"{op.name} is not allowed during the handshake")
        elif self.state is State.READY:
            if op in _HANDSHAKE_OPS:
                self._fail(f"{op.name} is only allowed during the handshake")
        else:
            self._fail(f"{op.name} request on a {self.state.value} connection")

    def _after_reply(self, event: Reply | ErrorReply) -> None:
        if self.state is State.HANDSHAKE:
            if isinstance(event, Reply) and event.op is Op.HELLO:
                self.state = State.READY
            else:
                self.state = State.CLOSED
        elif event.op is Op.BYE:
            self.state = State.CLOSED

    def _check_usable(self) -> None:
        if self.error is not None:
            raise self.error

    def _fail(self, message: str) -> NoReturn:
        self.state = State.ERROR
        self.error = ProtocolError(message)
        raise self.error
