"""The coordinator-to-coordinator link, sans-IO: configuration, frames, send state.

Theory of operation
-------------------
No socket, loop or zmq import here (a test enforces it): this module decides, the
link in ``_link/link.py`` does the I/O.

**Frames.** Remote sends travel as ZeroMQ multipart messages from the sending
node's DEALER to the receiving node's ROUTER, each carrying 1 to :data:`MAX_BLOCKS`
blocks: ``[b"BLKS", meta, data_1, ..., data_k]``. libzmq delivers a multipart message
whole or not at all, so a receiver never sees part of a block. ``meta`` is a msgpack
map ``{"node": NAME, "blocks": [[seq, from, to, size, header], ...]}``, one entry per
data frame, in order, each checked field by field like the client protocol's; a data
frame must be exactly ``size`` bytes. The receiver answers every block with
``[b"ACK1", meta]``
(``seq``, ``code``, ``message``): code 0 means the block is in the receiver's inbox,
any other code is a :class:`~blockipc.BlockIPCError` code and nothing was delivered.
Several blocks delivered at once may be answered by one ``[b"ACKS", seqs]`` instead
(``seqs``: unsigned 64-bit little-endian integers, each a code-0 ack).

**Across nodes** (publish and named objects). A block entry may have a sixth field,
a topic: ``[seq, from, "", size, header, topic]`` is a *publish*, which the receiving
node fans out to its own subscribers of ``topic`` (never further: a published block
crosses one link at most), answered by ``[b"ACKP", {seq, delivered}]`` once every one
of them took it (errors by ``ACK1``). What a node subscribes to travels the other way,
from the ROUTER to a DEALER that asked with ``[b"SUBQ", {node}]`` (on every
handshake): ``[b"SUBS", {reset, add, remove}]``, the whole set first (``reset``,
split over as many messages as :data:`MAX_META` needs), then each change; a sender
keeps at most :data:`MAX_PEER_TOPICS` of a peer's topics and patterns. A named object
is asked for with ``[b"GETQ", {node, seq, name, max_size}]`` and answered with
``[b"GETR", {seq, code, message, codec, meta, size}, data]`` (no data frame when
``code`` is not 0): a copy of the object's bytes and its codec.

**Frame bounds.** libzmq refuses (disconnects) a peer whose frame is over the socket's
``ZMQ_MAXMSGSIZE``, before it allocates it: a receiving node's ROUTER takes frames up
to :func:`max_frame` (its largest block), and so does a sender's DEALER, which receives
acks (:data:`MAX_ACK_FRAME` at most) and the answers to its gets (an object no larger
than its own largest block: it says how large in the ``GETQ``, and the peer refuses a
larger one). The bound is per frame: a message of many large frames is
still read whole before :func:`decode_blocks` refuses more than :data:`MAX_BLOCKS`.

**Sending** (:class:`OutboundState`, one per peer). A send is *queued* until the
link to the peer is up and the window has room (a bound on blocks and bytes written
but not acknowledged), then *in flight* until its ack. Nothing is ever sent twice:

* the link going down fails every in-flight send at once (its block may or may not
  have reached the peer; it is not retried, so it is never delivered twice);
* a queued send fails with ``PeerUnreachable`` once the link has been down for
  ``timeout`` seconds of its life;
* a peer that refuses this node's key fails every queued and in-flight send with
  ``AccessDenied``, and later ones at once, until a handshake succeeds.

A slow receiver holds its acks back; the window then stops the sender, so neither
side buffers more than the window, whatever the backlog.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import reprlib
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from .._exceptions import (
    AccessDenied,
    BlockIPCError,
    InvalidRequest,
    PeerUnreachable,
    ProtocolError,
    error_from_code,
)
from .limits import (
    MAX_HEADER,
    MAX_INT,
    check_header_size,
    check_name,
    check_node_name,
    is_process_name,
)
from .protocol import _STRLIST, _validate
from .topics import check_pattern, check_topic

__all__ = [
    "ACK",
    "ACKP",
    "ACKS",
    "BLOCKS",
    "GETQ",
    "GETR",
    "MAX_PEER_TOPICS",
    "SUBQ",
    "SUBS",
    "GetAnswer",
    "GetAsk",
    "SubsUpdate",
    "FRAME_SLACK",
    "MAX_ACK_FRAME",
    "MAX_BLOCKS",
    "Ack",
    "BlockFrame",
    "Endpoint",
    "LinkConfig",
    "OutboundState",
    "Pending",
    "decode_ack",
    "decode_acks",
    "decode_blocks",
    "decode_get_answer",
    "decode_get_ask",
    "decode_subq",
    "decode_subs",
    "encode_ack",
    "encode_ackp",
    "encode_acks",
    "encode_blocks",
    "encode_get_answer",
    "encode_get_ask",
    "encode_subq",
    "encode_subs",
    "make_config",
    "max_frame",
    "parse_endpoint",
]

BLOCKS: Final = b"BLKS"
MAX_BLOCKS: Final = 64
"""Blocks one link message carries at most (a sender batches what its window lets
through at once: one message, one meta to parse, one ack for all of them)."""
ACK: Final = b"ACK1"
ACKS: Final = b"ACKS"
ACKP: Final = b"ACKP"
"""The answer to a publish: how many of the receiving node's subscribers took it."""
SUBQ: Final = b"SUBQ"
"""A DEALER asks the peer's ROUTER for what its processes subscribe to."""
SUBS: Final = b"SUBS"
"""A node's subscriptions (the whole set, or a change), ROUTER to DEALER."""
GETQ: Final = b"GETQ"
"""A DEALER asks the peer for a named object."""
GETR: Final = b"GETR"
"""The answer to a GETQ: the object's codec, meta and bytes, or an error."""
MAX_PEER_TOPICS: Final = 65536
"""Topics and patterns of one peer node a sender keeps, at most (its processes may
subscribe to up to ``MAX_SUBSCRIPTIONS`` each, and a node has many processes: beyond
this bound, further ones are ignored and logged)."""
MAX_META: Final = MAX_HEADER + 4096
"""An ack's meta, and a block meta's share per block, at most (a block meta carries
up to :data:`MAX_BLOCKS` entries: ``MAX_META * MAX_BLOCKS`` bytes)."""
FRAME_SLACK: Final = 4096
"""Added to a frame bound for what a security mechanism wraps around a frame (CURVE:
about 40 bytes, checked by libzmq before it decrypts)."""
MAX_ACK_FRAME: Final = MAX_META + FRAME_SLACK
"""The largest ack frame (a sender's DEALER takes larger frames only as the data of
the answer to a get, see :func:`max_frame`)."""


def max_frame(max_block: int) -> int:
    """The largest frame a receiving node's ROUTER accepts (``ZMQ_MAXMSGSIZE``, which
    libzmq applies to each frame of a multipart message, not to the message): a data
    frame of the node's largest block, or a block meta of :data:`MAX_BLOCKS` entries.

    A peer that sends a larger frame is disconnected by libzmq before it allocates
    the frame (no block that large could be delivered here anyway).

    >>> max_frame(64 << 20) == (64 << 20) + FRAME_SLACK
    True
    """
    return max(max_block, MAX_META * MAX_BLOCKS) + FRAME_SLACK


WINDOW_BLOCKS: Final = 8
"""Blocks written to a peer and not yet acknowledged, at most."""
WINDOW_BYTES: Final = 64 << 20
"""Bytes written to a peer and not yet acknowledged, at most (one block may exceed it)."""
SMALL_WINDOW_BLOCKS: Final = 64
SMALL_WINDOW_BYTES: Final = 512 << 10
"""Small blocks may have up to :data:`SMALL_WINDOW_BLOCKS` in flight while those add up
to at most this many bytes: their rate is bound by round trips, not by bytes (a 4 KiB
block behind a window of 8 waits for a round trip every 32 KiB)."""

_BLOCKS_KEYS: Final = frozenset({"node", "blocks"})
IO_NICE: Final = 10
"""Added by default to the nice value of a receiving node's libzmq I/O thread."""
_ACK_SCHEMA: Final = {"seq": int, "code": int, "message": str}
_ACKP_SCHEMA: Final = {"seq": int, "delivered": int}
_SUBQ_SCHEMA: Final = {"node": str}
_SUBS_SCHEMA: Final = {"reset": bool, "add": _STRLIST, "remove": _STRLIST}
_GETQ_SCHEMA: Final = {"node": str, "seq": int, "name": str, "max_size": int}
_GETR_SCHEMA: Final = {
    "seq": int,
    "code": int,
    "message": str,
    "codec": str,
    "meta": dict,
    "size": int,
}
_packer = msgpack.Packer(use_bin_type=True)


# -- configuration -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed ``tcp://HOST:PORT``; ``port`` 0 means "pick a free port"."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and ``localhost``; ``*`` and 0.0.0.0 are not."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def zmq(self, *, bind: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "*" if bind and self.port == 0 else str(self.port)
        return f"tcp://{host}:{port}"

    def __str__(self) -> str:
        return self.zmq(bind=False)


_ENDPOINT_RE = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})")


def parse_endpoint(text: str, *, listen: bool = False) -> Endpoint:
    """Parse ``tcp://HOST:PORT`` (``[v6]`` hosts in brackets; ``*`` only to listen).

    >>> parse_endpoint("tcp://127.0.0.1:7100")
    Endpoint(host='127.0.0.1', port=7100)
    """
    match = _ENDPOINT_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequest(f"link address {text!r} is not of the form tcp://HOST:PORT")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if port > 65535 or (port == 0 and not listen):
        raise InvalidRequest(f"link address {text!r} has an invalid port")
    if host == "*" and not listen:
        raise InvalidRequest(f"link address {text!r}: '*' is only valid for listen")
    return Endpoint(host, port)


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """A checked link configuration (see :func:`make_config`)."""

    node: str
    listen: Endpoint | None
    peers: dict[str, Endpoint]
    keys: Path | None
    """The key directory; ``None``: the default one, or none at all with ``insecure``."""
    timeout: float
    insecure: bool
    io_nice: int = IO_NICE

    @property
    def plain(self) -> bool:
        """No CURVE: ``insecure`` and no ``keys`` (the only way to a plain link)."""
        return self.insecure and self.keys is None


def make_config(
    node: str | None,
    listen: str | None,
    peers: Mapping[str, str] | None,
    keys: str | os.PathLike[str] | None,
    link_timeout: float,
    insecure: bool,
    io_nice: int = IO_NICE,
) -> LinkConfig | None:
    """Check the link arguments of a coordinator; ``None`` when it has no link.

    ``io_nice`` (0 to 19) is added to the nice value of the receiving node's libzmq I/O
    thread (see ``_link/link.py``); 0 leaves it alone.

    Every link uses CURVE unless ``insecure`` is true: with ``keys``, that key
    directory; without, this user's default one (made at the node's first start, see
    ``_link/keys.py``). A plain link, with ``insecure`` and no ``keys``, accepts blocks
    from anyone who can reach its port, on loopback too (any local user).
    """
    if node is None:
        if listen is not None or peers or keys is not None:
            raise InvalidRequest("listen, peers and keys need a node name (node=...)")
        return None
    check_node_name(node)
    if isinstance(link_timeout, bool) or not isinstance(link_timeout, int | float):
        raise InvalidRequest(f"link_timeout must be a number of seconds, not {link_timeout!r}")
    if not (link_timeout > 0 and math.isfinite(link_timeout)):
        raise InvalidRequest(f"link_timeout must be positive and finite, not {link_timeout!r}")
    if type(io_nice) is not int or not 0 <= io_nice <= 19:
        raise InvalidRequest(f"link_io_nice must be an int from 0 to 19, not {io_nice!r}")
    where = None if listen is None else parse_endpoint(listen, listen=True)
    parsed: dict[str, Endpoint] = {}
    for name, address in (peers or {}).items():
        check_node_name(name, "peer name")
        if name == node:
            raise InvalidRequest(f"peer {name!r} has this node's own name")
        parsed[name] = parse_endpoint(address)
    return LinkConfig(
        node,
        where,
        parsed,
        None if keys is None else Path(keys),
        float(link_timeout),
        bool(insecure),
        io_nice,
    )


# -- frames ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BlockFrame:
    """A block sent over the link, as the receiver parsed it."""

    seq: int
    node: str
    sender: str
    to: str
    size: int
    header: dict[str, Any]
    topic: str = ""
    """A publish (``to`` is empty): fanned out to the receiving node's subscribers."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's answer to block ``seq``: ``code`` 0 for delivered (``delivered``:
    to how many subscribers, for a publish)."""

    seq: int
    code: int
    message: str
    delivered: int = 1

    def error(self) -> BlockIPCError | None:
        return None if self.code == 0 else error_from_code(self.code, self.message)


def encode_blocks(node: str, entries: list[list[Any]]) -> bytes:
    """The meta frame of a message of blocks from ``node``: ``entries`` are
    ``[seq, from, to, size, header]`` (or ``[seq, from, "", size, header, topic]``, a
    publish), their data frames follow in the same order."""
    meta: bytes = _packer.pack({"node": node, "blocks": entries})
    return meta


def _unpack(raw: bytes, limit: int, what: str) -> Any:
    """The msgpack value of a meta frame of at most ``limit`` bytes, or ProtocolError."""
    if len(raw) > limit:
        raise ProtocolError(f"{what}: meta of {len(raw)} bytes is too large")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # noqa: BLE001 -- msgpack raises many unrelated types on garbage
        raise ProtocolError(f"{what}: meta is not valid msgpack: {exc}") from None


def _meta(raw: bytes, schema: dict[str, Any], what: str) -> dict[str, Any]:
    return _validate(_unpack(raw, MAX_META, what), schema, lambda: what)


def decode_blocks(parts: list[bytes], sizes: list[int]) -> list[BlockFrame]:
    """Parse ``[kind, meta]`` of a message of blocks whose data frames are ``sizes``
    long; ``parts`` are the frames after the routing identity, without the data frames.

    >>> meta = encode_blocks("a", [[1, "p", "c", 2, {}], [2, "p", "c", 3, {"k": 1}]])
    >>> [(b.seq, b.size, b.header) for b in decode_blocks([BLOCKS, meta], [2, 3])]
    [(1, 2, {}), (2, 3, {'k': 1})]
    """
    if len(parts) != 2 or parts[0] != BLOCKS:
        raise ProtocolError(f"not a link block message ({len(parts) + len(sizes)} frames)")
    if not 1 <= len(sizes) <= MAX_BLOCKS:
        raise ProtocolError(f"link blocks: {len(sizes)} data frames (1 to {MAX_BLOCKS})")
    raw = parts[1]
    meta = _unpack(raw, MAX_META * len(sizes), "link blocks")
    if type(meta) is not dict or meta.keys() != _BLOCKS_KEYS:
        raise ProtocolError(f"link blocks: meta {reprlib.repr(meta)} is not {{node, blocks}}")
    node, entries = meta["node"], meta["blocks"]
    if not is_process_name(node):
        raise ProtocolError(f"link blocks: invalid node name {node!r:.80}")
    if type(entries) is not list or len(entries) != len(sizes):
        count = len(entries) if type(entries) is list else reprlib.repr(entries)
        raise ProtocolError(f"link blocks: {count} entries for {len(sizes)} data frames")
    # re-encoded, no value grows to twice its size (a float32 becomes 9 bytes, from 5):
    # a small meta needs no second encoding to know that its headers are small enough
    big = len(raw) * 2 > MAX_HEADER
    frames = []
    for entry, size in zip(entries, sizes, strict=True):
        if type(entry) is not list or not 5 <= len(entry) <= 6:
            raise ProtocolError(f"link blocks: entry {reprlib.repr(entry)} is not 5 fields")
        seq, sender, to, n, header = entry[:5]
        topic = entry[5] if len(entry) == 6 else ""
        if type(seq) is not int or not 0 <= seq <= MAX_INT:
            raise ProtocolError(f"link blocks: invalid seq {reprlib.repr(seq)}")
        if type(n) is not int or n != size:
            raise ProtocolError(f"link block {seq}: size {n!r:.20} but {size} data bytes")
        if n < 1:  # no block is empty (alloc refuses size 0): nothing to deliver
            raise ProtocolError(f"link block {seq}: empty")
        if len(entry) == 6:  # a publish: a topic, no receiver
            if to != "" or not _is_topic(topic):
                raise ProtocolError(f"link block {seq}: invalid publish to {topic!r:.80}")
            to = ""
        for what, name in (("from", sender), ("to", to)):
            if what == "to" and topic:
                continue
            if not is_process_name(name):
                raise ProtocolError(f"link block {seq}: invalid {what} name {name!r:.80}")
        if type(header) is not dict or not all(type(k) is str for k in header):
            raise ProtocolError(f"link block {seq}: header {reprlib.repr(header)} is not a map")
        if big:
            try:
                check_header_size(len(_packer.pack(header)))
            except InvalidRequest as exc:
                raise ProtocolError(f"link block {seq}: {exc}") from None
        frames.append(BlockFrame(seq, node, sender, to, size, header, topic))
    return frames


def _is_topic(topic: Any) -> bool:
    """Whether ``topic`` can be published to (the rule: ``_core/topics.check_topic``)."""
    if type(topic) is not str:
        return False
    try:
        check_topic(topic)
    except InvalidRequest:
        return False
    return True


def peek_seqs(meta: bytes) -> list[int]:
    """The ``seq`` of every entry of a block meta that failed to parse, to answer them
    if possible (garbage has none: there is nobody to answer)."""
    try:
        value = msgpack.unpackb(meta, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 -- garbage: there is nobody to answer
        return []
    entries = value.get("blocks") if type(value) is dict else None
    if type(entries) is not list:
        return []
    seqs = [e[0] for e in entries[:MAX_BLOCKS] if type(e) is list and e]
    return [s for s in seqs if type(s) is int and 0 <= s <= MAX_INT]


def encode_ack(seq: int, code: int = 0, message: str = "") -> list[bytes]:
    return [ACK, _packer.pack({"seq": seq, "code": code, "message": message[:1000]})]


def encode_acks(seqs: list[int]) -> list[bytes]:
    """One message for several code-0 acks (a single one is an ordinary ack)."""
    if len(seqs) == 1:
        return encode_ack(seqs[0])
    return [ACKS, struct.pack(f"<{len(seqs)}Q", *seqs)]


def encode_ackp(seq: int, delivered: int) -> list[bytes]:
    """The answer to a publish that ``delivered`` subscribers of the node took."""
    return [ACKP, _packer.pack({"seq": seq, "delivered": delivered})]


def decode_acks(parts: list[bytes]) -> list[Ack]:
    """The acks of an ``ACK1``, ``ACKS`` or ``ACKP`` message.

    >>> [a.seq for a in decode_acks(encode_acks([3, 4]))]
    [3, 4]
    >>> decode_acks(encode_ackp(5, 2))[0].delivered
    2
    """
    if len(parts) == 2 and parts[0] == ACKP:
        meta = _meta(parts[1], _ACKP_SCHEMA, "link publish ack")
        return [Ack(meta["seq"], 0, "", meta["delivered"])]
    if len(parts) == 2 and parts[0] == ACKS:
        raw = parts[1]
        if not raw or len(raw) % 8 or len(raw) > MAX_META:
            raise ProtocolError(f"link acks: {len(raw)} bytes is not a list of sequence numbers")
        return [Ack(seq, 0, "") for seq in struct.unpack(f"<{len(raw) // 8}Q", raw)]
    return [decode_ack(parts)]


def decode_ack(parts: list[bytes]) -> Ack:
    if len(parts) != 2 or parts[0] != ACK:
        raise ProtocolError(f"not a link ack message ({len(parts)} frames)")
    meta = _meta(parts[1], _ACK_SCHEMA, "link ack")
    return Ack(meta["seq"], meta["code"], meta["message"])


# -- subscriptions and named objects across nodes -------------------------------------
@dataclass(frozen=True, slots=True)
class SubsUpdate:
    """A peer's subscriptions: ``reset`` (forget what it said before), then ``add`` and
    ``remove`` these topics and patterns."""

    reset: bool
    add: list[str]
    remove: list[str]


def encode_subq(node: str) -> list[bytes]:
    """Ask a peer for its subscriptions, now and each change from now on."""
    return [SUBQ, _packer.pack({"node": node})]


def decode_subq(parts: list[bytes]) -> str:
    """The node that asked (checked against its key by the caller)."""
    if len(parts) != 2 or parts[0] != SUBQ:
        raise ProtocolError(f"not a link subscription request ({len(parts)} frames)")
    node = _meta(parts[1], _SUBQ_SCHEMA, "link subscription request")["node"]
    if not is_process_name(node):
        raise ProtocolError(f"link subscription request: invalid node name {node!r:.80}")
    return str(node)


def encode_subs(reset: bool, add: list[str], remove: list[str]) -> list[list[bytes]]:
    """The messages of a subscription update, each of at most :data:`MAX_META` bytes
    (``reset`` is the first one's only).

    >>> [decode_subs(m) for m in encode_subs(True, ["a.*"], [])]
    [SubsUpdate(reset=True, add=['a.*'], remove=[])]
    """
    messages: list[list[bytes]] = []
    chunk: dict[str, list[str]] = {"add": [], "remove": []}
    used = 0
    budget = MAX_META - 64

    def close() -> None:
        nonlocal chunk, used
        meta = {"reset": reset and not messages, **chunk}
        messages.append([SUBS, _packer.pack(meta)])
        chunk, used = {"add": [], "remove": []}, 0

    for key, topics in (("add", add), ("remove", remove)):
        for topic in topics:
            n = len(topic.encode()) + 5
            if used + n > budget:
                close()
            chunk[key].append(topic)
            used += n
    if chunk["add"] or chunk["remove"] or not messages:
        close()
    return messages


def decode_subs(parts: list[bytes]) -> SubsUpdate:
    if len(parts) != 2 or parts[0] != SUBS:
        raise ProtocolError(f"not a link subscription update ({len(parts)} frames)")
    meta = _meta(parts[1], _SUBS_SCHEMA, "link subscription update")
    for key in ("add", "remove"):
        for topic in meta[key]:
            try:
                check_pattern(topic)
            except InvalidRequest as exc:
                raise ProtocolError(f"link subscription update: {exc}") from None
    return SubsUpdate(meta["reset"], meta["add"], meta["remove"])


@dataclass(frozen=True, slots=True)
class GetAsk:
    """A peer asks for the named object ``name`` (no larger than ``max_size``)."""

    node: str
    seq: int
    name: str
    max_size: int


def encode_get_ask(node: str, seq: int, name: str, max_size: int) -> list[bytes]:
    return [GETQ, _packer.pack({"node": node, "seq": seq, "name": name, "max_size": max_size})]


def decode_get_ask(parts: list[bytes]) -> GetAsk:
    """
    >>> decode_get_ask(encode_get_ask("a", 1, "w", 10))
    GetAsk(node='a', seq=1, name='w', max_size=10)
    """
    if len(parts) != 2 or parts[0] != GETQ:
        raise ProtocolError(f"not a link get request ({len(parts)} frames)")
    meta = _meta(parts[1], _GETQ_SCHEMA, "link get request")
    if not is_process_name(meta["node"]):
        raise ProtocolError(f"link get request: invalid node name {meta['node']!r:.80}")
    try:
        check_name(meta["name"], "object name")
    except InvalidRequest as exc:
        raise ProtocolError(f"link get request: {exc}") from None
    return GetAsk(meta["node"], meta["seq"], meta["name"], meta["max_size"])


@dataclass(frozen=True, slots=True)
class GetAnswer:
    """The answer to :class:`GetAsk` ``seq``: code 0 and the object's codec, its meta
    and ``size`` bytes (the frame after the meta), or an error code and message."""

    seq: int
    code: int
    message: str
    codec: str
    meta: dict[str, Any]
    size: int

    def error(self) -> BlockIPCError | None:
        return None if self.code == 0 else error_from_code(self.code, self.message)


def encode_get_answer(
    seq: int,
    *,
    codec: str = "",
    meta: dict[str, Any] | None = None,
    size: int = 0,
    code: int = 0,
    message: str = "",
) -> list[bytes]:
    """The frames before the data frame (a found object: ``size`` bytes follow)."""
    fields = {
        "seq": seq,
        "code": code,
        "message": message[:1000],
        "codec": codec,
        "meta": meta or {},
        "size": size,
    }
    return [GETR, _packer.pack(fields)]


def decode_get_answer(parts: list[bytes], data: int | None) -> GetAnswer:
    """``parts``: the kind and meta; ``data``: the data frame's length (``None``: no
    data frame). A found object's size must be its data frame's.

    >>> decode_get_answer(encode_get_answer(3, codec="raw", size=2), 2).size
    2
    """
    if len(parts) != 2 or parts[0] != GETR:
        raise ProtocolError(f"not a link get answer ({len(parts)} frames)")
    meta = _meta(parts[1], _GETR_SCHEMA, "link get answer")
    if meta["code"] == 0 and (data is None or data != meta["size"] or data < 1):
        raise ProtocolError(f"link get answer: size {meta['size']} but {data} data bytes")
    if meta["code"] != 0 and data is not None:
        raise ProtocolError("link get answer: an error with data")
    return GetAnswer(
        meta["seq"], meta["code"], meta["message"], meta["codec"], meta["meta"], meta["size"]
    )


# -- the sending side's state --------------------------------------------------------
@dataclass(eq=False, slots=True)
class Pending:
    """One send to a peer; ``token`` is the I/O layer's own record of it."""

    size: int
    submitted: float
    token: Any
    seq: int = 0


Failure = tuple[Pending, BlockIPCError]


@dataclass(eq=False)
class OutboundState:
    """Queue, window and failure rules of the sends to one peer (no I/O).

    >>> s = OutboundState("b", timeout=5.0)
    >>> p = s.submit("token", size=100, now=0.0)
    >>> s.next_to_write() is None          # the link is not up yet
    True
    >>> s.up(now=1.0); s.next_to_write() is p
    True
    >>> s.ack(p.seq) is p
    True
    """

    node: str
    timeout: float
    max_blocks: int = WINDOW_BLOCKS
    max_bytes: int = WINDOW_BYTES
    small_blocks: int = SMALL_WINDOW_BLOCKS
    small_bytes: int = SMALL_WINDOW_BYTES
    is_up: bool = False
    down_since: float = 0.0
    refused: str | None = None
    hint: str | None = None  # why handshakes fail, for the timeout's message
    queue: deque[Pending] = field(default_factory=deque)
    in_flight: dict[int, Pending] = field(default_factory=dict)
    in_flight_bytes: int = 0
    _next_seq: int = 1

    def submit(self, token: Any, size: int, now: float) -> Pending:
        """Queue a send; it is written when :meth:`next_to_write` returns it."""
        p = Pending(size, now, token)
        self.queue.append(p)
        return p

    def next_to_write(self) -> Pending | None:
        """The next queued send the window lets through now (it is in flight then)."""
        if not self.is_up or not self.queue:
            return None
        p = self.queue[0]
        if self.in_flight:
            n, nbytes = len(self.in_flight), self.in_flight_bytes + p.size
            if not (n < self.max_blocks and nbytes <= self.max_bytes) and not (
                n < self.small_blocks and nbytes <= self.small_bytes
            ):
                return None
        self.queue.popleft()
        p.seq = self._next_seq
        self._next_seq += 1
        self.in_flight[p.seq] = p
        self.in_flight_bytes += p.size
        return p

    def window(self, size: int) -> int:
        """How many blocks of ``size`` bytes the window lets fly at once (at least 1)."""
        size = max(1, size)
        return max(
            1,
            min(self.max_blocks, self.max_bytes // size),
            min(self.small_blocks, self.small_bytes // size),
        )

    def batch_size(self) -> int:
        """Blocks the next message may carry: half of what the window lets fly at the
        size of the next queued block, so one message travels while the next is read."""
        fly = self.window(self.queue[0].size) if self.queue else 1
        return max(1, min(MAX_BLOCKS, fly // 2))

    def withdraw(self, p: Pending) -> bool:
        """Take back a send that is still queued (not written): True if it was."""
        try:
            self.queue.remove(p)
        except ValueError:
            return False
        return True

    def unwrite(self, p: Pending) -> None:
        """The send of ``p`` could not be written after all: queue it first again."""
        if self.in_flight.pop(p.seq, None) is p:
            self.in_flight_bytes -= p.size
            self.queue.appendleft(p)

    def ack(self, seq: int) -> Pending | None:
        """The send the peer answered, or ``None`` for an unknown (already failed) one."""
        p = self.in_flight.pop(seq, None)
        if p is not None:
            self.in_flight_bytes -= p.size
        return p

    def up(self, now: float) -> None:
        """A handshake with the peer succeeded."""
        self.is_up = True
        self.refused = None
        self.hint = None

    def down(self, now: float) -> list[Failure]:
        """The connection to the peer is gone: fail what is in flight."""
        if self.is_up:
            self.is_up = False
            self.down_since = now
        return self._fail_in_flight(
            lambda: PeerUnreachable(
                f"the link to node {self.node!r} went down with the block in transit; "
                "it was not retried (it may or may not have been delivered, never twice; "
                "a node also disconnects a peer that sends a block larger than its pool "
                "can ever hold)"
            )
        )

    def refuse(self, now: float, reason: str) -> list[Failure]:
        """The peer refused our key (or the handshake failed): fail everything."""
        self.refused = reason
        failures = self.down(now) if self.is_up else []
        failures += self._fail_in_flight(lambda: AccessDenied(reason))
        while self.queue:
            failures.append((self.queue.popleft(), AccessDenied(reason)))
        return failures

    def expire(self, now: float) -> list[Failure]:
        """Queued sends that waited too long for a link that is down."""
        if self.is_up:
            return []
        failures: list[Failure] = []
        if self.refused is not None:
            while self.queue:
                failures.append((self.queue.popleft(), AccessDenied(self.refused)))
            return failures
        keep: deque[Pending] = deque()
        for p in self.queue:
            if now - max(p.submitted, self.down_since) >= self.timeout:
                failures.append(
                    (
                        p,
                        PeerUnreachable(
                            f"node {self.node!r} unreachable: no link to it for "
                            f"{self.timeout:g} s (link_timeout)"
                            + (f"; {self.hint}" if self.hint else "")
                        ),
                    )
                )
            else:
                keep.append(p)
        self.queue = keep
        return failures

    def fail_all(self, exc_factory: Any) -> list[Failure]:
        failures = self._fail_in_flight(exc_factory)
        while self.queue:
            failures.append((self.queue.popleft(), exc_factory()))
        return failures

    def _fail_in_flight(self, exc_factory: Any) -> list[Failure]:
        failures = [(p, exc_factory()) for p in self.in_flight.values()]
        self.in_flight.clear()
        self.in_flight_bytes = 0
        return failures
