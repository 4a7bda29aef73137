"""The sans-IO ring of a channel (``blockipc._core.ring``) on a plain bytearray: random
sequences of reserve/commit/next/release deliver every payload intact and in order,
across many wrap-arounds, without a write ever landing on unreleased data; and a ring
whose control words or records were scribbled over gives ``ProtocolError``, never an
``IndexError``, a ``struct.error`` or a view outside the data area."""

from __future__ import annotations

import contextlib
import random
import struct
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from blockipc._core.ring import (
    CTL_SIZE,
    W_CONSUMER_ABORTED,
    W_HEAD,
    W_PRODUCER_ABORTED,
    W_PRODUCER_CLOSED,
    W_TAIL,
    WRAP,
    RingReader,
    RingWriter,
    init_ring,
    mark_closed,
    published,
    record_size,
)
from blockipc._exceptions import ProtocolError


def make_ring(data_size: int) -> tuple[bytearray, RingWriter, RingReader]:
    buf = bytearray(CTL_SIZE + data_size)
    assert init_ring(memoryview(buf)) == data_size
    return buf, RingWriter(memoryview(buf)), RingReader(memoryview(buf))


def fill(seq: int, n: int) -> bytes:
    return random.Random(seq).randbytes(n)


def ctl_word(buf: bytearray, word: int) -> int:
    value: int = struct.unpack_from("<Q", buf, word * 8)[0]
    return value


def set_ctl_word(buf: bytearray, word: int, value: int) -> None:
    struct.pack_into("<Q", buf, word * 8, value)


def send(w: RingWriter, payload: bytes, header: bytes = b"") -> bool:
    at = w.reserve(len(payload), header)
    if at is None:
        return False
    w.data[at : at + len(payload)] = payload
    w.commit(at, len(payload))
    return True


def check_record(r: RingReader, rec: Any) -> None:
    """A record the reader hands out always lies inside the data area."""
    offset, length, header, end = rec
    assert offset >= 0 and offset + length <= r.size, rec
    assert isinstance(header, bytes)
    assert end <= r.head


# -- basics ------------------------------------------------------------------------------
def test_init_and_layout() -> None:
    buf, w, r = make_ring(1024)
    assert w.size == r.size == 1024
    assert record_size(0, 0) == 8
    assert record_size(1, 1) == 24
    assert record_size(8, 0) == 16
    assert w.max_payload() == 1024 - 8
    assert w.max_payload(5) == 1024 - 16
    assert r.next() is None
    assert not w.consumer_closed and not r.producer_closed
    mark_closed(memoryview(buf), producer=True)
    assert r.producer_closed and not w.consumer_closed
    r.close()
    assert w.consumer_closed
    w.release()
    r.release()


@pytest.mark.parametrize("producer", [True, False])
def test_an_end_gone_without_closing_is_marked_aborted(producer: bool) -> None:
    # the coordinator's hand: aborted (an end gone that had not closed), then closed
    buf, w, r = make_ring(4096)
    assert not (r.producer_aborted or w.consumer_aborted)
    assert mark_closed(memoryview(buf), producer=producer, gone=True)
    assert (r.producer_closed, r.producer_aborted) == (producer, producer)
    assert (w.consumer_closed, w.consumer_aborted) == (not producer, not producer)


def test_an_end_that_closed_itself_stays_closed_cleanly() -> None:
    buf, w, r = make_ring(4096)
    w.close()  # then its process went
    assert not mark_closed(memoryview(buf), producer=True, gone=True)
    assert r.producer_closed and not r.producer_aborted
    assert not mark_closed(memoryview(buf), producer=False)  # a CHANNEL_CLOSE: clean
    assert w.consumer_closed and not w.consumer_aborted


@pytest.mark.parametrize("word", [W_PRODUCER_ABORTED, W_CONSUMER_ABORTED])
@pytest.mark.parametrize("value", [2, 1 << 63, (1 << 64) - 1])
def test_a_scribbled_aborted_word_is_a_protocol_error(word: int, value: int) -> None:
    buf, w, r = make_ring(4096)
    set_ctl_word(buf, word, value)
    with pytest.raises(ProtocolError, match="aborted word holds"):
        _ = r.producer_aborted if word == W_PRODUCER_ABORTED else w.consumer_aborted


def test_published_says_whether_the_producer_wrote_anything() -> None:
    buf, w, _ = make_ring(4096)
    assert not published(memoryview(buf))
    assert send(w, b"x")
    assert published(memoryview(buf))
    assert ctl_word(buf, W_PRODUCER_CLOSED) == 0


def test_init_rejects_a_tiny_block_and_attach_rejects_a_foreign_one() -> None:
    with pytest.raises(ValueError):
        init_ring(memoryview(bytearray(CTL_SIZE + 8)))
    with pytest.raises(ProtocolError):
        RingReader(memoryview(bytearray(CTL_SIZE + 1024)))  # no magic
    buf = bytearray(CTL_SIZE + 1024)
    init_ring(memoryview(buf))
    with pytest.raises(ProtocolError):  # a ring of another size than the block
        RingWriter(memoryview(buf)[: CTL_SIZE + 512])
    set_ctl_word(buf, W_HEAD, 8)
    with pytest.raises(ProtocolError):  # a writer never attaches to a used ring
        RingWriter(memoryview(buf))


def test_payload_too_large_is_a_value_error() -> None:
    _, w, r = make_ring(256)
    with pytest.raises(ValueError):
        w.reserve(256, b"")
    with pytest.raises(ValueError):
        w.reserve(w.max_payload(8) + 1, b"h" * 8)
    # the largest payload fits, in an empty ring, header or not
    assert send(w, fill(1, w.max_payload()))
    rec = r.next()
    assert rec is not None
    assert bytes(r.data[rec[0] : rec[0] + rec[1]]) == fill(1, w.max_payload())
    r.release_to(rec[3])
    assert send(w, fill(2, w.max_payload(3)), b"abc")
    rec = r.next()
    assert rec is not None and rec[2] == b"abc" and rec[1] == w.max_payload(3)
    w.release()
    r.release()


def test_a_record_that_does_not_fit_before_the_end_wraps() -> None:
    _, w, r = make_ring(128)
    assert send(w, fill(1, 40))  # 48 bytes at 0
    assert send(w, fill(2, 40))  # 48 bytes at 48; 32 bytes left before the end
    for seq in (1, 2):
        rec = r.next()
        assert rec is not None and bytes(r.data[rec[0] : rec[0] + rec[1]]) == fill(seq, 40)
        r.release_to(rec[3])
    assert send(w, fill(3, 40))  # does not fit in the last 32: a wrap marker, then at 0
    rec = r.next()
    assert rec is not None
    assert rec[0] == 8  # at the start of the data area
    assert bytes(r.data[8:48]) == fill(3, 40)
    w.release()
    r.release()


def test_put_writes_what_reserve_and_commit_write_or_leaves_it_to_them() -> None:
    """The sender's one-call hot path: the same bytes as reserve + copy + commit, and
    ``False`` with nothing written where that path would wrap or wait."""
    buf_a, wa, ra = make_ring(128)
    buf_b, wb, rb = make_ring(128)
    for seq, n in ((1, 40), (2, 13)):  # 48 + 24 bytes
        assert wa.put(fill(seq, n), n)
        assert send(wb, fill(seq, n))
    assert buf_a == buf_b and wa.head == wb.head == 72
    assert not wa.put(fill(3, 80), 80)  # 88 bytes: it fits only wrapped, or not at all
    assert not wa.put(fill(3, 60), 60)  # 68 > the 56 bytes left: wait for the reader
    assert buf_a == buf_b and wa.head == 72  # nothing written
    for seq, n in ((1, 40), (2, 13)):
        rec = ra.next()
        assert rec is not None and bytes(ra.data[rec[0] : rec[0] + n]) == fill(seq, n)
        ra.release_to(rec[3])
    assert not wa.put(fill(4, 56), 56)  # room now, but only wrapped: reserve's job
    assert wa.put(fill(4, 48), 48)  # exactly the 56 bytes to the end
    rec = ra.next()
    assert rec is not None and bytes(ra.data[rec[0] : rec[0] + 48]) == fill(4, 48)
    for end in (wa, ra, wb, rb):
        end.release()


def test_a_record_that_never_fits_from_here_publishes_the_marker_alone() -> None:
    """Empty ring, position near the end, a record larger than the rest and than the
    start: the writer publishes the wrap marker, the reader steps over it, and then the
    record fits at 0."""
    _, w, r = make_ring(128)
    assert send(w, fill(1, 56))  # 64 bytes
    rec = r.next()
    assert rec is not None
    r.release_to(rec[3])
    big = fill(2, 100)  # 112 bytes: not before the end (64 left), and 64 + 112 > 128
    assert w.reserve(len(big), b"") is None
    assert r.next() is None  # the marker alone: nothing to hand out
    r.release_to(r.pos)  # what ChannelReceiver._skip_markers does
    assert send(w, big)
    rec = r.next()
    assert rec is not None and bytes(r.data[rec[0] : rec[0] + rec[1]]) == big
    w.release()
    r.release()


# -- the state machine -------------------------------------------------------------------
class RingMachine(RuleBasedStateMachine):
    """One writer and one reader on a bytearray. The model: what was committed and not
    yet read (in order), what was read and not yet released (in order, each checked
    in place at every step), and at most one reservation being filled."""

    def __init__(self) -> None:
        super().__init__()
        self.buf: bytearray | None = None

    @rule(data_size=st.sampled_from([64, 72, 128, 200, 256, 1024]))
    @precondition(lambda self: self.buf is None)
    def setup(self, data_size: int) -> None:
        self.buf, self.w, self.r = make_ring(data_size)
        self.seq = 0
        self.committed: deque[tuple[bytes, bytes]] = deque()  # (payload, header)
        self.held: deque[tuple[Any, bytes, bytes]] = deque()  # (record, payload, header)
        self.pending: tuple[int, bytes, bytes] | None = None  # (offset, payload, header)
        self.delivered = 0

    @precondition(lambda self: self.buf is not None and self.pending is None)
    @rule(data=st.data())
    def reserve(self, data: st.DataObject) -> None:
        hlen = data.draw(st.sampled_from([0, 0, 0, 1, 5, 8, 13]))
        limit = self.w.max_payload(hlen)
        n = data.draw(st.one_of(st.integers(0, 24), st.integers(0, limit)))
        self.seq += 1
        header = fill(-self.seq, hlen)
        payload = fill(self.seq, n)
        at = self.w.reserve(n, header)
        if at is None:
            return
        assert at >= 0 and at + n <= self.w.size
        # the reservation may only cover room the reader gave back
        self.w.data[at : at + n] = payload
        self.pending = (at, payload, header)

    @precondition(lambda self: self.buf is not None and self.pending is not None)
    @rule()
    def commit(self) -> None:
        assert self.pending is not None
        at, payload, header = self.pending
        self.w.commit(at, len(payload))
        self.committed.append((payload, header))
        self.pending = None

    @precondition(lambda self: self.buf is not None)
    @rule()
    def next(self) -> None:
        rec = self.r.next()
        if rec is None:
            assert not self.committed, "a committed record was not seen"
            return
        check_record(self.r, rec)
        assert self.committed, f"a record nobody committed: {rec}"
        payload, header = self.committed.popleft()
        offset, length, got_header, _ = rec
        assert length == len(payload)
        assert got_header == header
        assert bytes(self.r.data[offset : offset + length]) == payload
        self.held.append((rec, payload, header))

    @precondition(lambda self: self.buf is not None and bool(self.held))
    @rule()
    def release_oldest(self) -> None:
        rec, _, _ = self.held.popleft()
        self.delivered += 1
        # as ChannelReceiver does: up to this record, or past read wrap markers too
        self.r.release_to(rec[3] if self.held else self.r.pos)

    @precondition(lambda self: self.buf is not None and not self.held)
    @rule()
    def skip_markers(self) -> None:
        self.r.release_to(self.r.pos)

    @precondition(lambda self: self.buf is not None and self.pending is None)
    @rule()
    def drain_then_a_fitting_record_gets_room(self) -> None:
        """Liveness: once the reader has read and released everything, any record that
        fits in the ring gets room (after at most one wrap marker)."""
        while self.committed:
            self.next()
        while self.held:
            self.release_oldest()
        self.skip_markers()
        n = self.w.max_payload()
        self.seq += 1
        payload = fill(self.seq, n)
        for _ in range(2):
            at = self.w.reserve(n, b"")
            if at is not None:
                break
            assert self.r.next() is None  # only a wrap marker was published
            self.skip_markers()
        assert at is not None, "an empty ring refused a record that fits"
        self.w.data[at : at + n] = payload
        self.w.commit(at, n)
        self.committed.append((payload, b""))

    @invariant()
    def held_records_intact(self) -> None:
        if self.buf is None:
            return
        for (offset, length, _, _), payload, _ in self.held:
            assert bytes(self.r.data[offset : offset + length]) == payload, "overwritten"
        if self.pending is not None:
            at, payload, _ = self.pending
            assert bytes(self.w.data[at : at + len(payload)]) == payload

    @invariant()
    def counters_consistent(self) -> None:
        if self.buf is None:
            return
        head, tail = ctl_word(self.buf, W_HEAD), ctl_word(self.buf, W_TAIL)
        assert tail <= self.r.pos <= head <= tail + self.w.size
        assert head % 8 == 0 and tail % 8 == 0
        assert 0 <= self.w.free_bytes() <= self.w.size

    def teardown(self) -> None:
        if self.buf is not None:
            self.w.release()
            self.r.release()


RingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingMachine = RingMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(
    data_size=st.sampled_from([64, 128, 248, 1000]),
    sizes=st.lists(st.integers(0, 300), min_size=20, max_size=200),
    lag=st.integers(0, 6),
    seed=st.integers(0, 2**32),
)
def test_stream_delivers_everything_in_order_with_many_wraps(
    data_size: int, sizes: list[int], lag: int, seed: int
) -> None:
    """A writer that sends as fast as it can and a reader that keeps up to ``lag``
    records held (released out of order, the room coming back in order): every payload
    arrives intact and in order, and the position laps the ring."""
    _, w, r = make_ring(data_size)
    rng = random.Random(seed)
    todo = deque((i, min(n, w.max_payload())) for i, n in enumerate(sizes))
    got: list[int] = []
    held: list[list[Any]] = []  # [record, seq, released]
    steps = 0
    while todo or held or r.pos != w.head:
        steps += 1
        assert steps < 100_000, "no progress"
        if todo:
            seq, n = todo[0]
            if send(w, fill(seq, n)):
                todo.popleft()
        rec = r.next()
        if rec is not None:
            check_record(r, rec)
            seq = len(got)
            assert bytes(r.data[rec[0] : rec[0] + rec[1]]) == fill(seq, sizes_at(sizes, w, seq))
            got.append(seq)
            held.append([rec, seq, False])
        if held and (len(held) > lag or rec is None):
            # release a random held record; the room returns up to the oldest unreleased
            rng.choice(held)[2] = True
            while held and held[0][2]:
                done = held.pop(0)
                r.release_to(done[0][3] if held else r.pos)
        for (off, length, _, _), seq, _ in held:
            assert bytes(r.data[off : off + length]) == fill(seq, sizes_at(sizes, w, seq))
        if not held and rec is None:
            r.release_to(r.pos)
    assert got == list(range(len(sizes)))
    assert w.head >= sum(record_size(sizes_at(sizes, w, i), 0) for i in range(len(sizes)))
    w.release()
    r.release()


def sizes_at(sizes: list[int], w: RingWriter, seq: int) -> int:
    return min(sizes[seq], w.max_payload())


# -- corruption ----------------------------------------------------------------------------
def drain(r: RingReader, limit: int = 1000) -> list[Any]:
    """Read until ``None``; every record checked to lie inside the data area."""
    out = []
    for _ in range(limit):
        rec = r.next()
        if rec is None:
            return out
        check_record(r, rec)
        out.append(rec)
        r.release_to(rec[3])
    raise AssertionError(f"the reader handed out {limit} records from a {r.size}-byte ring")


def filled_ring(data_size: int = 256) -> tuple[bytearray, RingWriter, RingReader]:
    buf, w, r = make_ring(data_size)
    for seq in range(3):
        assert send(w, fill(seq, 20), b"hdr")
    return buf, w, r


@pytest.mark.parametrize(
    "head",
    [10**12, 2**64 - 1, 256 + 8 + 1, 3],  # past the ring, huge, beyond tail+size, unaligned
)
def test_scribbled_head_is_a_protocol_error(head: int) -> None:
    buf, w, r = filled_ring()
    set_ctl_word(buf, W_HEAD, head)
    with pytest.raises(ProtocolError):
        drain(r)
    w.release()
    r.release()


def test_head_going_backwards_is_a_protocol_error() -> None:
    buf, w, r = filled_ring()
    assert r.next() is not None
    assert r.next() is not None
    assert r.next() is not None
    set_ctl_word(buf, W_HEAD, 8)  # behind what the reader already read
    with pytest.raises(ProtocolError):
        r.next()
    w.release()
    r.release()


@pytest.mark.parametrize("tail", [10**12, 2**64 - 1, 8])  # past head; far past; backwards
def test_scribbled_tail_is_a_protocol_error(tail: int) -> None:
    buf, w, r = make_ring(256)
    for seq in range(4):
        assert send(w, fill(seq, 40))  # 4 x 48 bytes
    for _ in range(2):
        rec = r.next()
        assert rec is not None
        r.release_to(rec[3])
    assert w.free_bytes() == 256 - 96
    set_ctl_word(buf, W_TAIL, tail)
    with pytest.raises(ProtocolError):
        w.free_bytes()
    with pytest.raises(ProtocolError):
        # a record that needs the released room: the writer must look at the tail
        for seq in range(10):
            send(w, fill(seq, 100))
    w.release()
    r.release()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payload_len", 1000),
        ("payload_len", 0xFFFFFFFE),
        ("payload_len", 249),
        ("header_len", 1000),
        ("header_len", 0xFFFFFFFF),
        ("payload_len", WRAP),  # a wrap marker in the middle of the published data
    ],
)
def test_scribbled_record_length_is_a_protocol_error(field: str, value: int) -> None:
    buf, w, r = make_ring(256)
    assert send(w, fill(1, 20), b"hdr")  # 40 bytes at 0
    rec = r.next()
    assert rec is not None
    r.release_to(rec[3])
    assert send(w, fill(2, 20), b"hdr")  # 40 bytes at 40: the corrupted one
    # corrupt the second record's prefix, at data offset 40
    at = CTL_SIZE + 40 + (0 if field == "payload_len" else 4)
    struct.pack_into("<I", buf, at, value)
    with pytest.raises(ProtocolError):
        drain(r)
    w.release()
    r.release()


def test_wrap_marker_past_the_published_end_is_a_protocol_error() -> None:
    buf, w, r = make_ring(256)
    assert send(w, fill(1, 8))  # 16 bytes at 0
    struct.pack_into("<II", buf, CTL_SIZE, WRAP, 0)
    with pytest.raises(ProtocolError):
        r.next()
    w.release()
    r.release()


def test_reader_attached_to_a_ring_with_a_scribbled_head_is_a_protocol_error() -> None:
    """The receiver may attach after the sender published (messages sent before
    accept): a head already out of range when the reader attaches must be caught
    too, not walked as garbage records past the published data."""
    buf, w, _ = make_ring(256)
    w.release()
    set_ctl_word(buf, W_HEAD, 10**9)
    with pytest.raises(ProtocolError):
        r = RingReader(memoryview(buf))
        try:
            drain(r)
        finally:
            r.release()


@pytest.mark.parametrize("tail", [256 - 3, 2**63 + 5])
def test_reader_attached_to_a_ring_with_a_scribbled_tail_is_a_protocol_error(
    tail: int,
) -> None:
    """The producer could scribble the consumer's words before it attaches: an
    unaligned or out-of-range tail is a ProtocolError, not a struct.error."""
    buf, w, _ = make_ring(256)
    assert send(w, fill(1, 8))
    w.release()
    set_ctl_word(buf, W_TAIL, tail)
    set_ctl_word(buf, W_HEAD, tail + 16)
    with pytest.raises(ProtocolError):
        r = RingReader(memoryview(buf))
        try:
            drain(r)
        finally:
            r.release()


@settings(max_examples=300, deadline=None)
@given(
    data_size=st.sampled_from([64, 128, 256]),
    sizes=st.lists(st.integers(0, 60), min_size=0, max_size=12),
    read_first=st.integers(0, 12),
    scribbles=st.lists(
        st.tuples(
            st.sampled_from(["head", "tail", "data32", "data64"]),
            st.integers(0, 2**16),
            st.one_of(
                st.integers(0, 2**32 - 1),
                st.sampled_from([0, 7, 8, WRAP, WRAP - 1, 2**32 - 1]),
                st.integers(0, 2**64 - 1),
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_random_scribbles_never_read_outside(
    data_size: int,
    sizes: list[int],
    read_first: int,
    scribbles: list[tuple[str, int, int]],
) -> None:
    """Whatever is scribbled over the head, the tail or the data area, the reader
    returns records inside the data area, ``None``, or raises ProtocolError; the writer
    reserves room inside the data area or raises ProtocolError (or ValueError for a
    record too large). Never IndexError, struct.error, OverflowError."""
    buf, w, r = make_ring(data_size)
    for seq, n in enumerate(sizes):
        send(w, fill(seq, min(n, w.max_payload())))
        if seq < read_first:
            rec = r.next()
            if rec is not None:
                r.release_to(rec[3])
    for where, pos, value in scribbles:
        if where == "head":
            set_ctl_word(buf, W_HEAD, value % 2**64)
        elif where == "tail":
            set_ctl_word(buf, W_TAIL, value % 2**64)
        elif where == "data32":
            at = pos % (data_size - 3)
            struct.pack_into("<I", buf, CTL_SIZE + at, value % 2**32)
        else:
            at = (pos % (data_size // 8)) * 8
            struct.pack_into("<Q", buf, CTL_SIZE + at, value % 2**64)
    with contextlib.suppress(ProtocolError):
        drain(r, limit=4 * data_size)
    try:
        for _ in range(4):
            at = w.reserve(16, b"")
            if at is not None:
                assert at >= 0 and at + 16 <= w.size
                w.commit(at, 16)
    except ProtocolError:
        pass
    w.release()
    r.release()
