"""The work queues' rules (``_core/queues.py``) over a routing table, synchronous: FIFO,
competing takers, bounds, redelivery to the front, dead letters, a consumer gone, and
the holds and leases a job's block goes through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from blockipc import AccessDenied, BlockNotFound, InvalidRequest, QuotaExceeded
from blockipc._core.limits import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_SIZE,
    MAX_NAME,
    MAX_QUEUE_INLINE_BYTES,
    MAX_QUEUES,
)
from blockipc._core.protocol import REPLY_LISTS_BUDGET
from blockipc._core.queues import DEAD_SUFFIX, Inline, QueueTable, dead_letter_name
from blockipc._core.routing import BlockRecord, ProcessRecord, RoutingTable


class World:
    """A routing table, its queues, a producer and two consumers."""

    def __init__(self) -> None:
        self.table = RoutingTable()
        self.queues = QueueTable(self.table)
        self.producer = self.table.register("producer", pid=1, uid=0)
        self.c1 = self.table.register("c1", pid=2, uid=0)
        self.c2 = self.table.register("c2", pid=3, uid=0)
        self._offsets: Iterator[int] = iter(range(0, 1 << 40, 4096))

    def block(self, proc: ProcessRecord | None = None) -> BlockRecord:
        return self.table.add_block(
            proc or self.producer, segment=0, offset=next(self._offsets), capacity=4096, size=10
        )

    def put(self, queue: str, n: int = 1) -> list[BlockRecord]:
        q = self.queues.queue(queue)
        recs = [self.block() for _ in range(n)]
        for rec in recs:
            assert self.queues.enqueue(self.producer, rec, q, {"n": rec.id}) is None
        return recs


@pytest.fixture
def w() -> World:
    return World()


def test_fifo_and_each_job_to_one_consumer(w: World) -> None:
    recs = w.put("jobs", 3)
    q = w.queues.queue("jobs")
    got = [w.queues.take(c, q, object()) for c in (w.c1, w.c2, w.c1)]
    assert [j.block for j in got if j is not None] == recs
    assert (len(q.ready), len(q.taken)) == (0, 3)
    # the block: the job holds it, its consumer has a read grant and a read lease
    rec, job = recs[1], got[1]
    assert job is not None and job.consumer is w.c2 and rec.owner is None
    assert rec.grants == {w.c2.key: (w.c2, "r")} and rec.id in w.c2.blocks
    assert [lease.holder for lease in rec.leases.values()] == [w.c2]
    assert rec.id not in w.producer.blocks  # moved: the producer gave it up


def test_a_waiting_take_gets_the_next_job_in_order(w: World) -> None:
    q = w.queues.queue("jobs")
    first, second = object(), object()
    assert w.queues.take(w.c1, q, first) is None
    assert w.queues.take(w.c2, q, second) is None
    rec = w.block()
    handed = w.queues.enqueue(w.producer, rec, q, {})
    assert handed is not None and handed.token is first and handed.job.consumer is w.c1
    assert not q.ready and len(q.takers) == 1
    w.queues.withdraw_taker(q, second)
    assert not q.takers


def test_ack_frees_the_block_and_only_its_consumer_may(w: World) -> None:
    (rec,) = w.put("jobs")
    q = w.queues.queue("jobs")
    job = w.queues.take(w.c1, q, object())
    assert job is not None
    with pytest.raises(BlockNotFound, match="not taken by this process"):
        w.queues.ack(w.c2, job.id)
    outcome = w.queues.ack(w.c1, job.id)
    assert outcome.freed == (rec,) and rec.id not in w.table.blocks
    assert not w.c1.blocks and not w.c1.leases and q.acked == 1
    with pytest.raises(BlockNotFound):
        w.queues.ack(w.c1, job.id)  # once


def test_ack_keeps_a_block_the_consumer_shared(w: World) -> None:
    (rec,) = w.put("jobs")
    job = w.queues.take(w.c1, w.queues.queue("jobs"), object())
    assert job is not None
    w.table.grant(w.c1, rec, w.c2, "r")  # (as a shared send to c2 would)
    assert not w.queues.ack(w.c1, job.id).freed
    assert rec.held() and rec.id in w.c2.blocks and rec.id not in w.c1.blocks


def test_nack_puts_it_back_in_front_and_counts_an_attempt(w: World) -> None:
    recs = w.put("jobs", 2)
    q = w.queues.queue("jobs")
    job = w.queues.take(w.c1, q, object())
    assert job is not None
    assert w.queues.nack(w.c1, job.id) == []
    assert [j.block for j in q.ready] == recs and q.ready[0].attempts == 1
    assert q.redelivered == 1 and not w.c1.blocks and not w.c1.leases
    again = w.queues.take(w.c2, q, object())
    assert again is job and again.attempts == 1


def test_a_cancelled_take_gives_back_without_an_attempt(w: World) -> None:
    w.put("jobs")
    q = w.queues.queue("jobs")
    job = w.queues.take(w.c1, q, object())
    assert job is not None
    w.queues.nack(w.c1, job.id, failed=False)
    assert q.ready[0] is job and job.attempts == 0


def test_after_max_attempts_a_job_is_dead_lettered(w: World) -> None:
    q = w.queues.declare("jobs", max_attempts=2)
    dead = w.queues.queues["jobs" + DEAD_SUFFIX]
    assert dead.max_attempts is None  # a dead-letter queue made for it never dead-letters
    (rec,) = w.put("jobs")
    waiting = object()
    assert w.queues.take(w.c2, dead, waiting) is None
    for attempt in range(2):
        job = w.queues.take(w.c1, q, object())
        assert job is not None and job.attempts == attempt
        handed = w.queues.nack(w.c1, job.id)
    assert [h.token for h in handed] == [waiting]  # straight to the dead-letter's taker
    assert handed[0].job.block is rec and handed[0].job.attempts == 0
    assert (q.redelivered, q.dead_lettered, len(q.ready)) == (1, 1, 0)
    assert w.queues.ack(w.c2, handed[0].job.id).freed == (rec,)


def test_max_attempts_none_puts_back_for_ever(w: World) -> None:
    q = w.queues.declare("jobs", max_attempts=None)
    assert q.dead_letter == "" and "jobs" + DEAD_SUFFIX not in w.queues.queues
    w.put("jobs")
    for _ in range(DEFAULT_MAX_ATTEMPTS + 3):
        job = w.queues.take(w.c1, q, object())
        assert job is not None
        w.queues.nack(w.c1, job.id)
    assert q.ready[0].attempts == DEFAULT_MAX_ATTEMPTS + 3 and q.dead_lettered == 0


def test_a_consumer_gone_gives_its_jobs_back_oldest_first(w: World) -> None:
    recs = w.put("jobs", 4)
    q = w.queues.queue("jobs")
    mine = [w.queues.take(w.c1, q, object()) for _ in range(3)]
    waiting = object()
    w.queues.take(w.c2, q, object())  # the 4th, c2's
    assert w.queues.take(w.c2, q, waiting) is None
    count, handed = w.queues.release_consumer(w.c1)
    assert count == 3 and [h.token for h in handed] == [waiting]
    assert handed[0].job is mine[0] and handed[0].job.attempts == 1
    assert [j.block for j in q.ready] == recs[1:3]  # the others, in order, in front
    assert q.redelivered == 3 and len(q.taken) == 2
    assert not w.c1.leases and not w.c1.blocks
    outcome = w.table.unregister(w.c1)
    assert not outcome.freed and not outcome.leases  # the jobs hold their blocks


def test_room_for_putters_in_order(w: World) -> None:
    q = w.queues.declare("jobs", maxsize=2)
    w.put("jobs", 2)
    assert not w.queues.has_room(q)
    a, b = object(), object()
    w.queues.park_putter(q, a)
    w.queues.park_putter(q, b)
    assert w.queues.next_putter(q) is None  # still full
    w.queues.take(w.c1, q, object())
    assert w.queues.next_putter(q) is a
    w.put("jobs")  # (the server runs each putter's enqueue before it asks for the next)
    assert w.queues.next_putter(q) is None
    w.queues.withdraw_putter(q, b)
    assert not q.putters
    # a job given back gets in past maxsize
    job = next(iter(q.taken.values()))
    w.queues.nack(w.c1, job.id)
    assert len(q.ready) == 3 > q.maxsize


@pytest.mark.parametrize(
    "share",
    ["grant", "lease", "waiting lease"],
)
def test_only_a_block_of_its_producers_alone_becomes_a_job(w: World, share: str) -> None:
    rec = w.block()
    q = w.queues.queue("jobs")
    if share == "grant":
        w.table.grant(w.producer, rec, w.c1, "r")
    elif share == "lease":
        w.table.request_lease(w.producer, rec, "r", "t")
    else:
        w.table.request_lease(w.producer, rec, "w", "t1")
        w.table.request_lease(w.c1, rec, "r", "t2")
    with pytest.raises(AccessDenied):
        w.queues.enqueue(w.producer, rec, q, {})
    assert rec.owner is w.producer and not rec.job and not q.ready and q.enqueued == 0


def test_ack_refused_under_another_lease_of_its_consumer(w: World) -> None:
    (rec,) = w.put("jobs")
    job = w.queues.take(w.c1, w.queues.queue("jobs"), object())
    assert job is not None
    extra = w.table.request_lease(w.c1, rec, "r", "mine")
    assert extra is not None
    for answer in (lambda: w.queues.ack(w.c1, job.id), lambda: w.queues.nack(w.c1, job.id)):
        with pytest.raises(AccessDenied, match="end them before ack or nack"):
            answer()
    w.table.release(extra)
    assert w.queues.ack(w.c1, job.id).freed == (rec,)


def test_a_job_block_is_nobodys_to_use(w: World) -> None:
    (rec,) = w.put("jobs")
    with pytest.raises(AccessDenied, match="a job in a work queue"):
        w.table.lookup(w.producer, rec.id, "r")


def test_settings(w: World) -> None:
    q = w.queues.queue("auto")
    assert (q.maxsize, q.max_attempts, q.dead_letter, q.declared) == (
        DEFAULT_QUEUE_SIZE,
        DEFAULT_MAX_ATTEMPTS,
        "auto" + DEAD_SUFFIX,
        False,
    )
    again = w.queues.declare("auto", maxsize=7, max_attempts=3, dead_letter="graveyard")
    assert again is q and (q.maxsize, q.max_attempts, q.dead_letter, q.declared) == (
        7,
        3,
        "graveyard",
        True,
    )
    assert "graveyard" in w.queues.queues
    with pytest.raises(InvalidRequest, match="its own dead-letter queue"):
        w.queues.declare("x", dead_letter="x")
    with pytest.raises(InvalidRequest, match="maxsize"):
        w.queues.declare("x", maxsize=0)
    with pytest.raises(InvalidRequest, match="queue name"):
        w.queues.queue("")


def test_a_name_too_long_for_its_dead_letter_queue(w: World) -> None:
    longest = "q" * MAX_NAME
    assert dead_letter_name("q" * (MAX_NAME - len(DEAD_SUFFIX))).endswith(DEAD_SUFFIX)
    with pytest.raises(InvalidRequest, match="too long for its default dead-letter queue"):
        w.queues.queue(longest)
    assert w.queues.declare(longest, max_attempts=None).dead_letter == ""
    assert w.queues.declare(longest, dead_letter="dl").dead_letter == "dl"


def test_the_number_of_queues_is_bounded(w: World) -> None:
    for i in range(MAX_QUEUES // 2):  # each with its dead-letter queue
        w.queues.queue(f"q{i}")
    assert len(w.queues.queues) == MAX_QUEUES
    with pytest.raises(QuotaExceeded, match="work queues"):
        w.queues.declare("one-more", max_attempts=None)
    assert "one-more" not in w.queues.queues
    w.queues.declare("q0", maxsize=5)  # an existing one may still be declared


def test_take_many_is_bounded_by_what_one_reply_holds(w: World) -> None:
    q = w.queues.declare("jobs", maxsize=200)
    big = {"pad": "x" * 15_000}  # near the header rule's 16 KiB: ~70 such jobs per reply
    recs = [w.block() for _ in range(150)]
    w.queues.enqueue_many(w.producer, recs, q, big)
    jobs = w.queues.take_many(w.c1, q, object(), 150)
    assert 1 < len(jobs) < 150
    assert sum(job.cost for job in jobs) <= REPLY_LISTS_BUDGET
    assert sum(job.cost for job in jobs) + q.ready[0].cost > REPLY_LISTS_BUDGET
    assert [job.block for job in jobs] == recs[: len(jobs)]  # the oldest, in order


def test_waiting_takes_of_many_are_dealt_jobs_in_turn(w: World) -> None:
    q = w.queues.queue("jobs")
    first, second, single = object(), object(), object()
    assert w.queues.take_many(w.c1, q, first, 3) == []
    assert w.queues.take_many(w.c2, q, second, 10) == []
    assert w.queues.take(w.c2, q, single) is None
    recs = [w.block() for _ in range(6)]
    handed = w.queues.enqueue_many(w.producer, recs, q, {})
    got = [(token, job.block) for token, job in handed]
    assert got == [
        (first, recs[0]),
        (second, recs[1]),
        (single, recs[2]),
        (first, recs[3]),
        (second, recs[4]),
        (first, recs[5]),
    ]
    assert not q.takers and not q.ready  # each served take left the takers


def test_a_batch_is_queued_whole_or_not_at_all(w: World) -> None:
    q = w.queues.declare("jobs", maxsize=4)
    mine = w.block()
    shared = w.block()
    w.table.grant(w.producer, shared, w.c1, "r")
    with pytest.raises(AccessDenied):
        w.queues.enqueue_many(w.producer, [mine, shared], q, {})
    assert not q.ready and mine.job == 0 and mine.owner is w.producer
    with pytest.raises(InvalidRequest, match="same block twice"):
        w.queues.enqueue_many(w.producer, [mine, mine], q, {})
    assert not w.queues.has_room(q, 5) and w.queues.has_room(q, 4)
    token = object()
    w.put("jobs", 2)
    w.queues.park_putter(q, token, 3)
    assert w.queues.next_putter(q) is None  # room for 2, not 3
    w.queues.take(w.c1, q, object())
    assert w.queues.next_putter(q) is token


# -- inline jobs: bytes in the coordinator, no block, no lease ------------------------
def inline(data: bytes) -> Inline:
    return Inline(data, "raw", {"nbytes": len(data), "codec": {}})


def test_an_inline_job_holds_no_block_and_its_bytes_are_counted_until_acked(w: World) -> None:
    q = w.queues.queue("jobs")
    assert w.queues.inline_limit == MAX_QUEUE_INLINE_BYTES
    first = w.queues.next_id
    assert w.queues.enqueue_many(w.producer, [inline(b"ab"), inline(b"cde")], q, {}) == []
    assert [j.id for j in q.ready] == [first, first + 1]  # consecutive ids: next_id
    assert w.queues.inline_bytes == 5 and not w.table.blocks and not w.producer.blocks
    job = w.queues.take(w.c1, q, object())
    assert job is not None and job.block is None and job.lease is None
    assert job.inline is not None and job.inline.data == b"ab" and job.consumer is w.c1
    assert not w.c1.blocks and not w.c1.leases and len(q.taken) == 1
    with pytest.raises(BlockNotFound, match="not taken by this process"):
        w.queues.ack(w.c2, job.id)
    assert w.queues.ack(w.c1, job.id) == ((), (), (), (), (), 0)  # nothing to free
    assert w.queues.inline_bytes == 3 and q.acked == 1 and not q.taken
    with pytest.raises(BlockNotFound):
        w.queues.ack(w.c1, job.id)  # once
    # (its TAKE_MANY row is counted with its bytes, as a small block's)
    assert q.ready[0].cost >= 3


def test_inline_jobs_are_nacked_given_back_and_dead_lettered_as_block_jobs(w: World) -> None:
    q = w.queues.declare("jobs", max_attempts=2)
    dead = w.queues.queues["jobs" + DEAD_SUFFIX]
    w.queues.enqueue_many(w.producer, [inline(b"x"), w.block(), inline(b"yz")], q, {})
    got = w.queues.take_many(w.c1, q, object(), 3)
    assert [j.block is None for j in got] == [True, False, True]
    w.queues.nack(w.c1, got[0].id)  # a failed attempt: back to the front
    assert q.ready[0] is got[0] and got[0].attempts == 1 and q.redelivered == 1
    count, handed = w.queues.release_consumer(w.c1)  # c1 is gone with two in hand
    assert (count, handed) == (2, [])
    # (the ones given back go in front, oldest first, of the one nacked before)
    assert [j.inline.data if j.inline else None for j in q.ready] == [None, b"yz", b"x"]
    assert [j.attempts for j in q.ready] == [1, 1, 1] and q.redelivered == 3
    assert not w.c1.blocks and not w.c1.leases and w.c1.key not in w.queues.by_consumer
    again = w.queues.take_many(w.c2, q, object(), 3)
    assert again == [got[1], got[2], got[0]]
    w.queues.ack(w.c2, got[1].id)
    w.queues.ack(w.c2, got[2].id)
    job = got[0]
    w.queues.nack(w.c2, job.id)  # its second failure: dead-lettered, its bytes kept
    assert dead.ready[0] is job and job.attempts == 0 and q.dead_lettered == 1
    assert w.queues.inline_bytes == 1
    job = w.queues.take(w.c2, dead, object())
    assert job is not None and job.inline is not None and job.inline.data == b"x"
    w.queues.ack(w.c2, job.id)
    assert w.queues.inline_bytes == 0 and not w.table.blocks


def test_inline_bytes_past_the_limit_go_into_blocks(w: World) -> None:
    queues = QueueTable(w.table, inline_limit=10)
    assert queues.inline_fits([4, 4, 4, 2]) == [True, True, False, True]  # in order
    queues.enqueue(w.producer, inline(b"123456"), queues.queue("jobs"), {})
    assert queues.inline_fits([4, 5]) == [True, False]
    assert queues.inline_fits([0]) == [True]
