"""Every limit shared by client, coordinator, routing table, channels, link and wire
protocol, and its check, in one place (pure: no I/O).

Each rule below has this one home; the other modules import it rather than restate it
(``tests/core/test_limits_rules.py`` fails when a literal limit creeps back in):

* **names**: a process, a node, a topic and a named object each have a name of 1 to
  :data:`MAX_NAME` characters (:func:`check_name`); a process or node name is also
  printable and has no ``/`` (:func:`is_process_name`, :func:`check_process_name`,
  :func:`check_node_name`). A
  process on another node is reached as ``"node/name"``, so a remote target is up to
  ``2 * MAX_NAME + 1`` characters long: :func:`split_target` checks its two parts each
  against its own limit, never the whole.
* **modes**: a lease or a grant is ``"r"`` or ``"w"`` (:data:`MODES`, :func:`check_mode`).
* **ints**: block ids, offsets, sizes and every int field of a frame are ``0`` to
  :data:`MAX_INT`; a range inside a block is checked by :func:`check_range`.
* **message headers**: a dict with str keys, at most :data:`MAX_HEADER` bytes encoded
  (:func:`pack_header`, :func:`check_header_size`); a named object's codec ``meta``
  (COMMIT, echoed by every GET) follows the same rule, so no reply that carries one
  can outgrow a frame.
* **frames**: a string field holds at most :data:`MAX_STR` characters, a list field at
  most :data:`MAX_LIST` items; the protocol's schema applies them to every frame sent
  and received. A batch (RECV_MANY, FREE_MANY, ENQUEUE_MANY, TAKE_MANY) has 1 to
  :data:`MAX_BATCH` items (:func:`check_batch`); an ENQUEUE_MANY's inline jobs are
  at most :data:`MAX_BATCH_BYTES` together (:func:`check_batch_bytes`).
* **quotas** (:class:`Quotas`, off unless set): the bytes and blocks one process holds,
  the processes of one uid connected at once.
* **waiting**: one connection has at most :data:`MAX_PARKED` requests waiting at once
  (the coordinator's parking registry refuses the next with ``QuotaExceeded``).
* **channel offers**: a process has at most :data:`MAX_OFFERS` channels opened to it
  that it has not accepted yet (:func:`check_offers`: the next ``open_channel`` to it is
  refused with ``QuotaExceeded``, nothing allocated).
* **subscriptions**: a process subscribes to at most :data:`MAX_SUBSCRIPTIONS` topics or
  patterns at once (:func:`check_subscriptions`: the next is refused with
  ``QuotaExceeded``).
* **claims**: a process holds at most :data:`MAX_CLAIMS` claims on object names at once
  (``get_or_put``; :func:`check_claims`: the next is refused with ``QuotaExceeded``).
* **work queues**: a queue's name is a name (:func:`check_name`); it holds at most
  ``maxsize`` jobs waiting (1 to :data:`MAX_QUEUE_SIZE`, default
  :data:`DEFAULT_QUEUE_SIZE`), and a job is dead-lettered after ``max_attempts``
  failed deliveries (1 to :data:`MAX_ATTEMPTS`, default :data:`DEFAULT_MAX_ATTEMPTS`;
  ``None``: never) (:func:`check_queue_settings`); a coordinator has at most
  :data:`MAX_QUEUES` queues. An inline job (an ``enqueue`` of at most
  :data:`MAX_INLINE_PAYLOAD` bytes encoded) keeps its bytes in the coordinator's own
  memory, the inline jobs of all its queues together at most
  :data:`MAX_QUEUE_INLINE_BYTES` (``QueueTable.inline_fits``); one that would pass it
  goes into a block of the pool instead, never refused for it. An ENQUEUE_COMMIT may
  ask for its producer's next block (``refill``) of at most :data:`MAX_REFILL` bytes
  (:func:`check_refill`): a client holds at most one such spare block.
* **reclaim**: a process that disconnects is out of every lookup at once, and what
  it held goes back :data:`RECLAIM_SLICE` blocks at a time, the coordinator serving the
  other clients between slices (one that held no more than that, at once).
* **request/reply**: a request's or a reply's payload travels inside its frame when
  it is at most :data:`MAX_INLINE_PAYLOAD` bytes encoded, else as a block; a responder
  has at most :data:`MAX_QUEUED_REQUESTS` requests waiting that it has not received
  (the next request to it raises ``InboxFull``) and at most :data:`MAX_IN_HAND`
  received and not answered (its next receive raises ``QuotaExceeded``)
  (:func:`check_queued_requests`, :func:`check_in_hand`).
* **inline messages** (``send_value``, ``send_many``): one message's payload, or one
  batch's payloads together, is at most :data:`MAX_INLINE_PAYLOAD` bytes encoded, and a
  batch has 1 to :data:`MAX_BATCH` messages (:func:`check_inline_batch`); in the inbox
  they count against the receiver's ``inbox_messages`` and ``inbox_bytes`` (their
  payload's bytes) like blocks, and a batch is admitted whole.
* **stalls**: a connection that has sent part of a frame, then nothing for
  :data:`IDLE_FRAME_TIMEOUT` seconds, is closed by the coordinator (``Coordinator``'s
  ``idle_frame_timeout``); one that idles between frames is never closed for it.

A limit only one module knows (the protocol's token length, the link's blocks per
message) stays in that module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack

from .._exceptions import InboxFull, InvalidRequest, OutOfBounds, QuotaExceeded

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_QUEUE_SIZE",
    "IDLE_FRAME_TIMEOUT",
    "LISTEN_BACKLOG",
    "MAX_ATTEMPTS",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "MAX_CLAIMS",
    "MAX_HEADER",
    "MAX_DIRECT_ADDRESS",
    "MAX_INLINE_PAYLOAD",
    "check_inline_batch",
    "MAX_IN_HAND",
    "MAX_INT",
    "MAX_LIST",
    "MAX_NAME",
    "MAX_OFFERS",
    "MAX_PARKED",
    "MAX_QUEUES",
    "MAX_QUEUE_INLINE_BYTES",
    "MAX_REFILL",
    "MAX_QUEUED_REQUESTS",
    "MAX_QUEUE_SIZE",
    "MAX_STR",
    "MAX_SUBSCRIPTIONS",
    "MODES",
    "Mode",
    "Quotas",
    "RECLAIM_SLICE",
    "check_batch",
    "check_batch_bytes",
    "check_claims",
    "check_header_size",
    "check_in_hand",
    "check_mode",
    "check_name",
    "check_node_name",
    "check_offers",
    "check_process_name",
    "check_queue_settings",
    "check_refill",
    "check_queued_requests",
    "check_range",
    "check_subscriptions",
    "is_process_name",
    "pack_header",
    "split_target",
]

# -- names -------------------------------------------------------------------------
MAX_NAME: Final = 255
"""Characters in a process, node, topic or object name, at most."""


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a str of 1 to :data:`MAX_NAME` characters; else raise
    :class:`TypeError` (not a str) or :class:`InvalidRequest` saying ``what`` it names.

    >>> check_name("weights", "object name")
    'weights'
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME:
        raise InvalidRequest(f"{what} {name!r:.80} must be 1 to {MAX_NAME} characters long")
    return name


def is_process_name(name: Any) -> bool:
    """Whether ``name`` can name a process or a node: 1 to :data:`MAX_NAME` printable
    characters, no ``/`` (which joins the two in ``"node/name"``)."""
    return (
        type(name) is str and 0 < len(name) <= MAX_NAME and "/" not in name and name.isprintable()
    )


def check_process_name(name: str, what: str = "process name") -> str:
    """Return ``name`` if :func:`is_process_name`; else raise :class:`InvalidRequest`."""
    if not is_process_name(name):
        raise InvalidRequest(
            f"{what} {name!r:.80} is invalid: 1-{MAX_NAME} printable characters, no '/'"
        )
    return name


def check_node_name(name: str, what: str = "node name") -> str:
    """Return ``name`` if it can name a node: as a process name (1 to :data:`MAX_NAME`
    printable characters, no ``/``), without leading or trailing spaces."""
    if not is_process_name(name) or name != name.strip():
        raise InvalidRequest(
            f"{what} {name!r:.80} is invalid: 1-{MAX_NAME} printable characters, no '/', "
            "no leading or trailing spaces"
        )
    return name


def split_target(to: str) -> tuple[str, str]:
    """``"b/consumer"`` -> ``("b", "consumer")``: a node name and a process name, each
    checked against its own limit (so ``to`` may be up to ``2 * MAX_NAME + 1`` long).

    >>> split_target("b/consumer")
    ('b', 'consumer')
    """
    if not isinstance(to, str):
        raise TypeError(f"remote receiver must be a str, not {type(to).__name__}")
    node, sep, name = to.partition("/")
    if not sep or not node or not name or "/" in name:
        raise InvalidRequest(f"remote receiver {to!r:.80} is not of the form NODE/NAME")
    check_node_name(node, f"the node name of remote receiver {to!r:.80}:")
    check_process_name(name, f"the process name of remote receiver {to!r:.80}:")
    return node, name


# -- lease and grant modes ---------------------------------------------------------
Mode = Literal["r", "w"]
MODES: Final[tuple[Mode, ...]] = ("r", "w")
"""A lease or grant mode: ``"r"`` (shared reads) or ``"w"`` (exclusive, reads and writes)."""


def check_mode(kind: str, mode: object) -> Mode:
    """Return ``mode`` if it is one of :data:`MODES`; else raise :class:`InvalidRequest`
    naming the ``kind`` of mode (``"lease"``, ``"grant"``).

    >>> check_mode("lease", "w")
    'w'
    """
    if mode not in MODES:
        raise InvalidRequest(f"{kind} mode must be 'r' or 'w', not {mode!r}")
    return "r" if mode == "r" else "w"


# -- ints and ranges ---------------------------------------------------------------
MAX_INT: Final = (1 << 63) - 1
"""Largest block id, offset, size or int field of a frame (msgpack's signed 64 bits)."""


def check_range(block: int, offset: int, size: int, block_size: int) -> None:
    """Raise :class:`OutOfBounds` unless ``size`` bytes from ``offset`` lie inside
    ``block`` of ``block_size`` bytes (``offset`` and ``size`` are ints >= 0)."""
    if offset + size > block_size:
        raise OutOfBounds(
            f"offset {offset} + size {size} is outside block {block} of size {block_size}"
        )


# -- message headers ---------------------------------------------------------------
MAX_HEADER: Final = 16 * 1024
"""Largest message header (msgpack-encoded) a send, a publish, a channel record or a
link block may carry; also the largest codec ``meta`` a named object may record."""


def check_header_size(nbytes: int, what: str = "header") -> None:
    """Raise :class:`InvalidRequest` if ``what`` (a header, or what follows the header
    rule: a codec meta) is over :data:`MAX_HEADER` at ``nbytes`` encoded."""
    if nbytes > MAX_HEADER:
        raise InvalidRequest(f"{what} is {nbytes} bytes encoded; the limit is {MAX_HEADER}")


_EMPTY_MAP: Final[bytes] = b"\x80"  # msgpack.packb({}): the empty header, encoded


def pack_header(header: dict[str, Any] | None, what: str = "header") -> bytes:
    """A message header, checked and encoded: a dict with str keys that msgpack encodes
    and decodes back with strict map keys (what every receiver does), at most
    :data:`MAX_HEADER` bytes. ``None`` is the empty header. ``what`` names the dict in
    errors (``"codec meta"``: a named object's meta follows the same rule).

    >>> pack_header({"k": 1})
    b'\\x81\\xa1k\\x01'

    :raises InvalidRequest: for anything else.
    """
    if header is None or (type(header) is dict and not header):
        return _EMPTY_MAP  # most messages (send_value, recv): no packb/unpackb each time
    hdr = {} if header is None else header
    if not isinstance(hdr, dict):
        raise InvalidRequest(f"{what} must be a dict")
    if not all(type(key) is str for key in hdr):  # the wire protocol requires it
        raise InvalidRequest(f"{what} keys must be str")
    try:
        packed: bytes = msgpack.packb(hdr, use_bin_type=True)
        msgpack.unpackb(packed, raw=False, strict_map_key=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{what} cannot be sent: {exc}") from exc
    check_header_size(len(packed), what)
    return packed


# -- frames ------------------------------------------------------------------------
MAX_STR: Final = 1024
"""Longest string (in characters) any field of a frame may hold."""
MAX_LIST: Final = 4096
"""Most items any list field of a frame may hold (but a batch: :data:`MAX_BATCH`);
a reply that may list more (STATS, PEERS) is cut to it with ``_protocol.fit_lists``."""
MAX_BATCH: Final = 1024
"""Most messages one RECV_MANY reply carries, and blocks one FREE_MANY frees."""


MAX_BATCH_BYTES: Final = 1 << 20
"""Encoded bytes of the inline jobs one ENQUEUE_MANY carries, at most (what a frame,
``MAX_FRAME_SIZE``, holds besides 64 KiB of its other fields)."""


def check_batch_bytes(nbytes: int) -> None:
    """Raise :class:`InvalidRequest` if a batch's inline jobs are over
    :data:`MAX_BATCH_BYTES` at ``nbytes`` encoded."""
    if nbytes > MAX_BATCH_BYTES:
        raise InvalidRequest(
            f"a batch of jobs is {nbytes} bytes encoded; the limit is {MAX_BATCH_BYTES}: "
            "split it into smaller batches"
        )


MAX_PARKED: Final = 4096
"""Most requests one connection may have waiting in the coordinator at once."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """What one client process may hold, and how many may connect; ``None``: no bound
    (the default). ``Coordinator(max_client_bytes=, max_client_blocks=,
    max_connections=)`` and ``blockipc serve --max-client-bytes ...`` set them.

    >>> Quotas(max_blocks=2).check_hold(blocks=2, held_bytes=0, capacity=4096)
    Traceback (most recent call last):
    ...
    blockipc._exceptions.QuotaExceeded: this process holds 2 blocks, its quota (max_client_blocks)
    """

    max_bytes: int | None = None  # capacity of the blocks one process holds
    max_blocks: int | None = None  # blocks one process holds
    max_connections: int | None = None  # processes of one uid connected at once

    @classmethod
    def make(
        cls, max_bytes: int | None, max_blocks: int | None, max_connections: int | None
    ) -> Quotas:
        """Checked: each a positive int, or None."""
        for what, value in (
            ("max_client_bytes", max_bytes),
            ("max_client_blocks", max_blocks),
            ("max_connections", max_connections),
        ):
            if value is not None and (type(value) is not int or not 0 < value <= MAX_INT):
                raise InvalidRequest(f"{what} must be a positive int or None, not {value!r}")
        return cls(max_bytes, max_blocks, max_connections)

    def check_hold(self, *, blocks: int, held_bytes: int, capacity: int) -> None:
        """Raise :class:`QuotaExceeded` if a process that holds ``blocks`` blocks of
        ``held_bytes`` in all may not take one more of ``capacity`` bytes."""
        if self.max_blocks is not None and blocks >= self.max_blocks:
            raise QuotaExceeded(
                f"this process holds {blocks} blocks, its quota (max_client_blocks)"
            )
        if self.max_bytes is not None and held_bytes + capacity > self.max_bytes:
            raise QuotaExceeded(
                f"this process holds {held_bytes} bytes of blocks; {capacity} more would pass "
                f"its quota of {self.max_bytes} (max_client_bytes)"
            )

    def check_connect(self, uid: int, connected: Iterable[int]) -> None:
        """Raise :class:`QuotaExceeded` if one more process of ``uid`` may not connect;
        ``connected`` are the uids of the processes connected now (read only when
        there is such a quota)."""
        if self.max_connections is None:
            return
        count = sum(other == uid for other in connected)
        if count >= self.max_connections:
            raise QuotaExceeded(
                f"{count} processes of this user are connected, the coordinator's "
                "quota (max_connections)"
            )


# -- channel offers ----------------------------------------------------------------
MAX_OFFERS: Final = 64
"""Most channels opened to one process that it has not accepted yet (each holds a ring
in the pool and two eventfds in the coordinator)."""


def check_offers(pending: int, to: str) -> None:
    """Raise :class:`QuotaExceeded` if ``to`` already has :data:`MAX_OFFERS` channels
    offered that it has not accepted (``pending`` of them)."""
    if pending >= MAX_OFFERS:
        raise QuotaExceeded(
            f"{to!r:.80} has {pending} channels offered it has not accepted (the limit is "
            f"{MAX_OFFERS}); nothing was opened: it must accept some first"
        )


MAX_SUBSCRIPTIONS: Final = 1024
"""Topics and patterns one process is subscribed to at once, at most (each costs the
coordinator a set entry and, for a pattern, trie nodes, as long as it lasts)."""


def check_subscriptions(current: int, name: str) -> None:
    """Raise :class:`QuotaExceeded` if process ``name`` already has ``current`` >=
    :data:`MAX_SUBSCRIPTIONS` subscriptions."""
    if current >= MAX_SUBSCRIPTIONS:
        raise QuotaExceeded(
            f"{name!r:.80} is subscribed to {current} topics or patterns (the limit is "
            f"{MAX_SUBSCRIPTIONS}): unsubscribe some first"
        )


MAX_CLAIMS: Final = 256
"""Names one process may hold claims on at once (``get_or_put`` computing them)."""


def check_claims(held: int) -> None:
    """Raise :class:`QuotaExceeded` if a process already holds ``held`` >=
    :data:`MAX_CLAIMS` claims on object names."""
    if held >= MAX_CLAIMS:
        raise QuotaExceeded(
            f"this process already computes {held} named objects (get_or_put; the limit "
            f"is {MAX_CLAIMS}): let some finish first"
        )


def check_batch(count: int, what: str) -> int:
    """Return ``count`` if it is 1 to :data:`MAX_BATCH`; else raise :class:`InvalidRequest`
    saying ``what`` it counts."""
    if not 1 <= count <= MAX_BATCH:
        raise InvalidRequest(f"{what} must be 1 to {MAX_BATCH}, not {count}")
    return count


# -- work queues -------------------------------------------------------------------
DEFAULT_QUEUE_SIZE: Final = 1024
"""Jobs a work queue holds waiting when it was not declared with a ``maxsize``."""
MAX_QUEUE_SIZE: Final = 1 << 20
"""Largest ``maxsize`` of a work queue (jobs waiting in it)."""
DEFAULT_MAX_ATTEMPTS: Final = 5
"""Failed deliveries (a nack, a consumer gone) after which a job is dead-lettered,
when its queue was not declared with a ``max_attempts``."""
MAX_ATTEMPTS: Final = 1_000_000
"""Largest ``max_attempts`` of a work queue."""
MAX_QUEUES: Final = 1024
"""Most work queues one coordinator holds (dead-letter queues included)."""
MAX_REFILL: Final = 8 << 20
"""Largest block an ENQUEUE_COMMIT gets back for its producer's next job of the same
size (``refill``): a producer of large jobs holds at most one spare block this large
between two enqueues (``Client.enqueue``), its PUT saved."""
MAX_QUEUE_INLINE_BYTES: Final = 64 << 20
"""Bytes the inline jobs of one coordinator's work queues hold in its own memory
together (waiting, taken and dead-lettered, until acked), at most; past it an inline
job goes into a block of the pool, as a larger one does."""


def check_refill(size: int) -> int:
    """``size`` if it is 0 (no refill) or 1 to :data:`MAX_REFILL`; else
    :class:`InvalidRequest`.

    >>> check_refill(1 << 20)
    1048576
    """
    if not 0 <= size <= MAX_REFILL:
        raise InvalidRequest(f"an enqueue's refill must be 0 to {MAX_REFILL} bytes, not {size}")
    return size


def check_queue_settings(maxsize: object, max_attempts: object) -> None:
    """Raise :class:`InvalidRequest` unless ``maxsize`` is an int of 1 to
    :data:`MAX_QUEUE_SIZE` and ``max_attempts`` one of 1 to :data:`MAX_ATTEMPTS` or
    ``None`` (never dead-letter).

    >>> check_queue_settings(64, None)
    """
    if type(maxsize) is not int or not 1 <= maxsize <= MAX_QUEUE_SIZE:
        raise InvalidRequest(f"a queue's maxsize must be 1 to {MAX_QUEUE_SIZE}, not {maxsize!r}")
    if max_attempts is not None and (
        type(max_attempts) is not int or not 1 <= max_attempts <= MAX_ATTEMPTS
    ):
        raise InvalidRequest(
            f"a queue's max_attempts must be 1 to {MAX_ATTEMPTS} or None, not {max_attempts!r}"
        )


# -- request/reply -----------------------------------------------------------------
MAX_INLINE_PAYLOAD: Final = 64 * 1024
"""Encoded bytes of a request's or a reply's payload that travel inside its frame, at
most; a larger payload goes as a block of the pool, moved to the other side (zero-copy)."""
MAX_QUEUED_REQUESTS: Final = 1024
"""Requests waiting for one responder that it has not received yet, at most (each
holds its inline payload in the coordinator, or a block in transit)."""
MAX_IN_HAND: Final = 1024
"""Requests one responder has received and not answered yet, at most."""
MAX_DIRECT_ADDRESS: Final = 108
"""Characters of a responder's direct socket address (a Unix socket's ``sun_path``)."""


def check_queued_requests(queued: int, to: str) -> None:
    """Raise :class:`InboxFull` if responder ``to`` already has ``queued`` >=
    :data:`MAX_QUEUED_REQUESTS` requests waiting that it has not received."""
    if queued >= MAX_QUEUED_REQUESTS:
        raise InboxFull(
            f"{to!r:.80} has {queued} requests waiting that it has not received (the "
            f"limit is {MAX_QUEUED_REQUESTS}); nothing was sent: try again later"
        )


def check_in_hand(in_hand: int) -> None:
    """Raise :class:`QuotaExceeded` if a responder already holds ``in_hand`` >=
    :data:`MAX_IN_HAND` requests it has received and not answered."""
    if in_hand >= MAX_IN_HAND:
        raise QuotaExceeded(
            f"this process holds {in_hand} requests it has not answered (the limit is "
            f"{MAX_IN_HAND}): reply to (or fail) some first"
        )


def check_inline_batch(sizes: list[int], nbytes: int) -> None:
    """Raise :class:`InvalidRequest` unless ``sizes`` (the payloads of an inline
    message or batch) are 1 to :data:`MAX_BATCH`, add up to ``nbytes`` (the frame's
    data) and that is at most :data:`MAX_INLINE_PAYLOAD`.

    >>> check_inline_batch([64] * 1024, 65536)
    """
    check_batch(len(sizes), "an inline batch's messages")
    if sum(sizes) != nbytes:
        raise InvalidRequest(f"an inline batch's sizes add up to {sum(sizes)}, not {nbytes}")
    if nbytes > MAX_INLINE_PAYLOAD:
        raise InvalidRequest(
            f"an inline payload of {nbytes} bytes is over the limit of "
            f"{MAX_INLINE_PAYLOAD}: send a larger one as a block (or a smaller batch)"
        )


# -- stalls ------------------------------------------------------------------------
LISTEN_BACKLOG: Final = 1024
"""Connections the kernel queues for the coordinator's accept loop (``listen(2)``'s
backlog; the kernel caps it at ``net.core.somaxconn``). A client past it waits in
``connect`` (or, with ``connect(retry=True)``, retries), never queued without bound."""
IDLE_FRAME_TIMEOUT: Final = 30.0
"""Seconds a connection may hold part of a frame with no byte more before the
coordinator closes it (the default of ``Coordinator(idle_frame_timeout=...)``). Between
frames there is no limit: a client may wait in ``recv()`` for hours."""


# -- reclaim -----------------------------------------------------------------------
RECLAIM_SLICE: Final = 1024
"""Most blocks (held or leased) of a disconnected process that the coordinator gives
back in one step; between steps it serves the other clients (about 3 ms of work per
step: reclaiming 262,144 blocks is 256 steps, not one 0.8 s stall)."""
