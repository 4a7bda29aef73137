"""A single-producer single-consumer ring of messages inside one pool block, no I/O.

Theory of operation
-------------------
A channel (see :mod:`blockipc._client.channel`) moves messages from one process to another
without the coordinator: the coordinator only hands out the ring's block and two
eventfds, and both ends then read and write the ring directly. This module is the ring
itself, on a ``memoryview`` of the block; it never sleeps, signals or touches a file
descriptor, so it is tested on a bytearray alone.

Layout: the first :data:`CTL_SIZE` bytes are a control page of little-endian u64
words, the rest is the data area of ``size`` bytes (a multiple of 8)::

    word 0  magic            word 8   head       (producer)   word 16  tail      (consumer)
    word 1  data size        word 9   want_space (producer)   word 17  want_data (consumer)
    word 2  version          word 10  closed     (producer)   word 18  closed    (consumer)
                             word 11  aborted    (producer)   word 19  aborted   (consumer)

Each word has exactly one writer (the coordinator writes a ``closed`` word only for an
end whose process is gone, and the ``aborted`` words only), and the producer's and the
consumer's words sit on different cache lines. An end that closes sets its ``closed``
word itself; one whose process ended without closing is marked by the coordinator
(:func:`mark_closed` with ``aborted``): ``aborted`` (``1``), then ``closed``, so a reader
that sees ``closed`` sees ``aborted`` too, and can tell a stream cut short (a producer
killed mid-stream) from a complete one. A reader accepts only ``0`` or ``1`` there.
``head`` and ``tail`` count bytes ever published and released; a position in the data
area is ``count % size``. A record is 8-aligned::

    u32 payload_len | u32 header_len | header (msgpack, padded to 8) | payload (padded to 8)

A record never wraps: when it does not fit before the end of the data area, the
producer writes a wrap marker (``payload_len == 0xFFFFFFFF``) and the record starts
again at position 0. A record's payload is therefore one contiguous slice, handed to
the consumer as a ``memoryview`` with no copy.

Ordering: the producer writes a record, then stores ``head``; the consumer reads
``head``, then the record; it releases by storing ``tail``. x86-64 keeps stores in
order and loads in order (TSO), which is all this needs; the one reordering it allows
(a store, then a load of another word) is what :func:`fence` closes, in the sleep/wake
handshake of :mod:`blockipc._client.channel`. A peer that scribbles over the control page or
a record gets a :class:`~blockipc._exceptions.ProtocolError` at this end, never a read
outside the block.
"""

from __future__ import annotations

import platform
import struct
import threading
from typing import Final

from .._exceptions import ProtocolError

__all__ = [
    "CTL_SIZE",
    "MAX_PAYLOAD",
    "Record",
    "RingReader",
    "RingWriter",
    "fence",
    "fence_acquire",
    "fence_release",
    "init_ring",
    "mark_closed",
    "published",
    "record_size",
    "supported",
]

CTL_SIZE: Final = 4096
MAGIC: Final = int.from_bytes(b"BIPCRING", "little")
VERSION: Final = 1
WRAP: Final = 0xFFFFFFFF
MAX_PAYLOAD: Final = WRAP - 1
_PREFIX: Final = struct.Struct("<II")
_unpack_prefix: Final = _PREFIX.unpack_from
_pack_prefix: Final = _PREFIX.pack_into

# word indexes of the control page (u64 each)
W_MAGIC, W_SIZE, W_VERSION = 0, 1, 2
W_HEAD, W_WANT_SPACE, W_PRODUCER_CLOSED, W_PRODUCER_ABORTED = 8, 9, 10, 11
W_TAIL, W_WANT_DATA, W_CONSUMER_CLOSED, W_CONSUMER_ABORTED = 16, 17, 18, 19

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier: a locked instruction on x86-64 (the lock's atomic
    compare-and-swap), which orders an earlier store before a later load."""
    _fence_lock.acquire()
    _fence_lock.release()


fence_acquire: Final = _fence_lock.acquire
"""With :data:`fence_release` right after it, :func:`fence` without its call (hot paths)."""
fence_release: Final = _fence_lock.release


def supported() -> bool:
    """Whether this CPU keeps the store and load order the ring relies on."""
    return platform.machine().lower() in ("x86_64", "amd64")


def _align8(n: int) -> int:
    return (n + 7) & ~7


def record_size(payload_len: int, header_len: int) -> int:
    """Bytes a record of this payload and encoded header takes in the data area."""
    return 8 + _align8(header_len) + _align8(payload_len)


def init_ring(block: memoryview) -> int:
    """Format a fresh ring in ``block`` (the coordinator does this); returns its data size."""
    size = (len(block) - CTL_SIZE) & ~7
    if size < 64:
        raise ValueError(f"a ring needs at least {CTL_SIZE + 64} bytes, not {len(block)}")
    ctl = block[:CTL_SIZE].cast("Q")
    try:
        for i in range(len(ctl)):
            ctl[i] = 0
        ctl[W_MAGIC], ctl[W_SIZE], ctl[W_VERSION] = MAGIC, size, VERSION
    finally:
        ctl.release()
    return size


class _Ring:
    """What both ends share: the control words and the data area of one block."""

    __slots__ = ("ctl", "data", "size")

    def __init__(self, block: memoryview) -> None:
        ctl = block[:CTL_SIZE].cast("Q")
        size = (len(block) - CTL_SIZE) & ~7
        if ctl[W_MAGIC] != MAGIC or ctl[W_VERSION] != VERSION or ctl[W_SIZE] != size:
            ctl.release()
            raise ProtocolError("the channel's block does not hold a ring of this version")
        self.ctl = ctl
        self.data = block[CTL_SIZE : CTL_SIZE + size]
        self.size = size

    def max_payload(self, header_len: int = 0) -> int:
        return min(MAX_PAYLOAD, self.size - 8 - _align8(header_len)) & ~7

    def release(self) -> None:
        """Drop the views into the block (before its mapping is closed)."""
        self.ctl.release()
        self.data.release()

    @property
    def producer_closed(self) -> bool:
        return bool(self.ctl[W_PRODUCER_CLOSED])

    @property
    def consumer_closed(self) -> bool:
        return bool(self.ctl[W_CONSUMER_CLOSED])

    def _aborted(self, word: int, end: str) -> bool:
        value = self.ctl[word]
        if value > 1:
            raise ProtocolError(f"the {end}'s aborted word holds {value}: ring corrupted")
        return value == 1

    @property
    def producer_aborted(self) -> bool:
        """The producer's process ended without closing (read once ``closed`` is seen)."""
        return self._aborted(W_PRODUCER_ABORTED, "producer")

    @property
    def consumer_aborted(self) -> bool:
        """The consumer's process ended without closing (read once ``closed`` is seen)."""
        return self._aborted(W_CONSUMER_ABORTED, "consumer")


class RingWriter(_Ring):
    """The producer's end: reserve room for a record, fill it, publish it."""

    __slots__ = ("head", "tail")

    def __init__(self, block: memoryview) -> None:
        super().__init__(block)
        self.head = self.ctl[W_HEAD]
        self.tail = self.ctl[W_TAIL]
        if self.head != 0 or self.tail != 0:
            self.release()
            raise ProtocolError("the channel's ring is already in use")

    def _load_tail(self) -> int:
        tail = self.ctl[W_TAIL]
        if tail & 7 or not self.tail <= tail <= self.head:
            raise ProtocolError(
                f"the consumer released to {tail}, outside [{self.tail}, {self.head}]: "
                "ring corrupted"
            )
        self.tail = tail
        return tail

    def reserve(self, payload_len: int, header: bytes) -> int | None:
        """Room for one record: the payload's offset in :attr:`data`, with the prefix
        and header written; ``None`` if the ring is too full now (wait for space).

        Nothing is visible to the consumer before :meth:`commit`. A wrap marker may be
        published on the way, when the record cannot fit before the end of the data area
        even in an empty ring.
        """
        need = record_size(payload_len, len(header))
        if need > self.size or payload_len > MAX_PAYLOAD:
            raise ValueError(
                f"a {payload_len}-byte payload with a {len(header)}-byte header does not fit "
                f"in this channel (largest payload {self.max_payload(len(header))} bytes); "
                "open it with a larger capacity"
            )
        size, head = self.size, self.head
        pos = head % size
        to_end = size - pos
        wrap = need > to_end
        total = to_end + need if wrap else need
        if size - (head - self.tail) < total and size - (head - self._load_tail()) < total:
            if wrap and total > size and size - (head - self.tail) >= to_end:
                # never fits from here: publish the wrap marker alone, then wait for the
                # consumer to step over it
                _PREFIX.pack_into(self.data, pos, WRAP, 0)
                self.head = head + to_end
                self.ctl[W_HEAD] = self.head
            return None
        if wrap:
            _PREFIX.pack_into(self.data, pos, WRAP, 0)
            self.head = head = head + to_end
            pos = 0
        _PREFIX.pack_into(self.data, pos, payload_len, len(header))
        at = pos + 8
        if header:
            self.data[at : at + len(header)] = header
            at += _align8(len(header))
        return at

    def put(self, src: bytes | memoryview, payload_len: int) -> bool:
        """Write and publish a record of ``src`` (``payload_len`` bytes, no header) if
        it fits now before the end of the data area: :meth:`reserve`, the copy and
        :meth:`commit` in one call, the sender's hot path. ``False`` (nothing written):
        take the general path, which waits, wraps and says why a record cannot fit."""
        size, head = self.size, self.head
        pos = head % size
        need = 8 + ((payload_len + 7) & ~7)
        if need > size - pos or (
            size - (head - self.tail) < need and size - (head - self._load_tail()) < need
        ):
            return False
        data = self.data
        _pack_prefix(data, pos, payload_len, 0)
        data[pos + 8 : pos + 8 + payload_len] = src
        self.head = head + need
        self.ctl[W_HEAD] = head + need
        return True

    def commit(self, payload_offset: int, payload_len: int) -> None:
        """Publish the record whose payload starts at ``payload_offset``."""
        self.head = self.head - self.head % self.size + payload_offset + _align8(payload_len)
        self.ctl[W_HEAD] = self.head

    def free_bytes(self) -> int:
        """Room in the ring now (validating the consumer's ``tail`` on the way)."""
        return self.size - (self.head - self._load_tail())

    def wants_data(self) -> bool:
        return bool(self.ctl[W_WANT_DATA])

    def set_want_space(self, on: bool) -> None:
        self.ctl[W_WANT_SPACE] = int(on)

    def close(self) -> None:
        self.ctl[W_PRODUCER_CLOSED] = 1


Record = tuple[int, int, bytes, int]
"""One record read from the ring: payload offset and length in the data area, the
encoded header, and the count to release up to (a plain tuple: one is made per message)."""


class RingReader(_Ring):
    """The consumer's end: read the next record, release records in order."""

    __slots__ = ("head", "pos", "tail")

    def __init__(self, block: memoryview) -> None:
        super().__init__(block)
        tail, head = self.ctl[W_TAIL], self.ctl[W_HEAD]
        if tail & 7 or head & 7 or not tail <= head <= tail + self.size:
            self.release()
            raise ProtocolError(f"ring counters head {head}, tail {tail} are inconsistent")
        self.pos = self.tail = tail
        self.head = head

    def _load_head(self) -> int:
        head = self.ctl[W_HEAD]
        if head & 7 or not self.pos <= head <= self.tail + self.size:
            raise ProtocolError(
                f"the producer published up to {head}, outside "
                f"[{self.pos}, {self.tail + self.size}]: ring corrupted"
            )
        self.head = head
        return head

    def next(self) -> Record | None:
        """The next record, or ``None`` if the producer has published nothing more."""
        pos = self.pos
        if pos == self.head and pos == self._load_head():
            return None
        size = self.size
        at = pos % size
        length, hlen = _unpack_prefix(self.data, at)
        if length == WRAP:
            self.pos = pos + size - at
            if self.pos > self.head:
                raise ProtocolError("a wrap marker past the published end: ring corrupted")
            return self.next()
        hpad = (hlen + 7) & ~7
        rlen = 8 + hpad + ((length + 7) & ~7)
        end = pos + rlen
        if end > self.head or at + rlen > size:
            raise ProtocolError(
                f"a record of {length} + {hlen} bytes at {pos} runs past the published "
                "data or the ring's end: ring corrupted"
            )
        self.pos = end
        if hlen:
            return (at + 8 + hpad, length, bytes(self.data[at + 8 : at + 8 + hlen]), end)
        return (at + 8, length, b"", end)

    def release_to(self, count: int) -> None:
        """Give the bytes before ``count`` back to the producer."""
        self.tail = count
        self.ctl[W_TAIL] = count

    def wants_space(self) -> bool:
        return bool(self.ctl[W_WANT_SPACE])

    def set_want_data(self, on: bool) -> None:
        self.ctl[W_WANT_DATA] = int(on)

    def close(self) -> None:
        self.ctl[W_CONSUMER_CLOSED] = 1


def mark_closed(block: memoryview, *, producer: bool, gone: bool = False) -> bool:
    """The coordinator's hand on a ring whose end closed, or whose process is ``gone``.
    Returns whether that end was aborted: gone without having closed itself in the ring
    (then marked ``aborted``, so the other end does not take the stream for complete;
    an end that closed itself, e.g. its client's ``aclose()``, stays closed cleanly)."""
    ctl = block[:CTL_SIZE].cast("Q")
    closed = W_PRODUCER_CLOSED if producer else W_CONSUMER_CLOSED
    try:
        aborted = gone and not ctl[closed]
        if aborted:
            ctl[W_PRODUCER_ABORTED if producer else W_CONSUMER_ABORTED] = 1
        ctl[closed] = 1  # after aborted: TSO keeps the two stores in this order
        return aborted
    finally:
        ctl.release()


def published(block: memoryview) -> bool:
    """Whether the producer of the ring in ``block`` has published anything yet (the
    coordinator's look: a ring never accepted and empty can go without losing a message)."""
    ctl = block[:CTL_SIZE].cast("Q")
    try:
        return bool(ctl[W_HEAD])
    finally:
        ctl.release()
