"""Work queues: competing consumers, at-least-once delivery, no I/O.

Theory of operation
-------------------
A work queue is a FIFO of *jobs*, local to one coordinator. A job is a block with a
header, or an *inline* job: its encoded bytes (at most ``MAX_INLINE_PAYLOAD``) kept
here, in the coordinator's memory, with no block and no lease (:class:`Inline`).
``enqueue`` moves the producer's block into the queue (the producer gives it up), or
keeps the inline bytes; ``take`` hands the oldest job to one consumer, which holds a
block job's block (a read grant and a read lease, :meth:`RoutingTable.lend_job`) until
it answers (an inline job's bytes travel in the take's reply: it holds nothing):

* ``ack``: the job is done and its block is freed (unless the consumer shared it), or
  its inline bytes dropped;
* ``nack``, or the consumer's process ends (closed, crashed, ``kill -9``): the job goes
  back to the *front* of its queue at once with one more failed attempt, so the next
  ``take`` gets it (``redelivered`` counts these). A job that has failed
  ``max_attempts`` times goes to the back of its queue's *dead-letter queue* instead
  (``dead_lettered``), with its attempts counted afresh there.

So a job leaves the system only by an ack: at least once, never lost to a dead worker.

Waiting. A ``take`` on an empty queue queues its *token* here (FIFO among consumers),
and a job that arrives is handed to the first one (:class:`Handed`: the caller answers
it). A queue is bounded by ``maxsize`` jobs waiting (taken jobs do not count); an
``enqueue`` to a full queue queues its token as a *putter*, and each take that makes
room lets the first putter go (:meth:`QueueTable.next_putter`). Jobs given back and
dead-lettered always get in, past ``maxsize``: they hold their memory already.

Settings. A queue is created by :meth:`QueueTable.declare` or, with the defaults, on
first use by ``enqueue`` or ``take``. A queue with ``max_attempts`` has a dead-letter
queue, by default its name with :data:`DEAD_SUFFIX`; it is created with the queue (so
that dead-lettering never fails), with the default size and no ``max_attempts`` of its
own unless it was declared. Declaring an existing queue changes its settings (the last
declare wins); the jobs in it stay. Queues live as long as their coordinator.

Inline bytes. What the inline jobs of a coordinator's queues hold together, waiting,
taken or dead-lettered, is counted (:attr:`QueueTable.inline_bytes`) and bounded by
``inline_limit`` (:data:`MAX_QUEUE_INLINE_BYTES`): an inline payload that would pass it
goes into a block of the pool instead (:meth:`QueueTable.inline_fits` says which; the
caller makes the block), so the coordinator's own memory stays bounded and no enqueue
is ever refused for it. The consumer sees the same job either way, but for
``Job.block``.

Holds and leases change only in the routing table; this module decides when, and calls
its work-queue methods.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from .._exceptions import BlockNotFound, InvalidRequest, QuotaExceeded
from .._types import QueueStats
from .limits import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_SIZE,
    MAX_INLINE_PAYLOAD,
    MAX_QUEUE_INLINE_BYTES,
    MAX_QUEUES,
    check_name,
    check_queue_settings,
    pack_header,
)
from .protocol import REPLY_LISTS_BUDGET, job_bound
from .routing import NOTHING, BlockRecord, Lease, Outcome, ProcessRecord, RoutingTable

__all__ = [
    "DEAD_SUFFIX",
    "Handed",
    "Inline",
    "JobRecord",
    "QueueRecord",
    "QueueTable",
    "dead_letter_name",
    "group_handed",
]

DEAD_SUFFIX = ".dead"
"""A queue's default dead-letter queue is its name with this suffix: ``jobs.dead``."""


def dead_letter_name(queue: str) -> str:
    """The default dead-letter queue of ``queue``; :class:`InvalidRequest` when that
    name would be too long (declare the queue with a ``dead_letter`` of its own).

    >>> dead_letter_name("jobs")
    'jobs.dead'
    """
    name = queue + DEAD_SUFFIX
    try:
        return check_name(name, "dead-letter queue name")
    except InvalidRequest:
        raise InvalidRequest(
            f"queue name {queue!r:.80} is too long for its default dead-letter queue "
            f"(its name + {DEAD_SUFFIX!r}): declare it with dead_letter=... "
            "or max_attempts=None"
        ) from None


class Inline(NamedTuple):
    """An inline job's payload as the producer's frame carried it: its encoded bytes
    (at most ``MAX_INLINE_PAYLOAD``), its codec, and the meta a block of it would have
    recorded (``{"nbytes": len(data), "codec": ...}``, as a ``put`` records it)."""

    data: bytes
    codec: str
    meta: dict[str, Any]


@dataclass(eq=False, slots=True)
class JobRecord:
    """One job: its block (or, ``block`` None, its ``inline`` payload), where it is,
    and how often it failed."""

    id: int
    block: BlockRecord | None  # None: an inline job
    queue: QueueRecord
    header: dict[str, Any]
    producer: str
    attempts: int = 0  # failed deliveries (nack, consumer gone) in this queue
    consumer: ProcessRecord | None = None  # while taken
    lease: Lease | None = None  # the consumer's read lease, while taken
    granted: bool = False  # the consumer's read grant is the job's (dropped on return)
    _cost: int = 0  # job_bound of its TAKE_MANY row, once counted
    header_bytes: int = -1  # its header encoded, when known (one count for a batch's)
    inline: Inline | None = None  # an inline job's payload (block None)

    @property
    def cost(self) -> int:
        """At least the bytes this job takes in a TAKE_MANY reply (:func:`job_bound`)."""
        if not self._cost:
            rec, inline = self.block, self.inline
            if rec is None:
                assert inline is not None
                size, codec, meta = len(inline.data), inline.codec, inline.meta
            else:
                size, codec, meta = rec.size, rec.codec, rec.meta
            self._cost = job_bound(
                size if size <= MAX_INLINE_PAYLOAD else 0,
                codec,
                self.producer,
                len(msgpack.packb(meta)),  # (checked when it was recorded)
                self.header_bytes if self.header_bytes >= 0 else len(pack_header(self.header)),
            )
        return self._cost


@dataclass(eq=False, slots=True)
class QueueRecord:
    """One work queue: its settings, its jobs, who waits on it, its counters."""

    name: str
    maxsize: int
    max_attempts: int | None  # None: never dead-lettered
    dead_letter: str  # "" when max_attempts is None
    declared: bool = False
    ready: deque[JobRecord] = field(default_factory=deque)
    taken: dict[int, JobRecord] = field(default_factory=dict)
    # (consumer, token, most jobs it takes at once: 1 for a TAKE, max for a TAKE_MANY)
    takers: deque[tuple[ProcessRecord, Hashable, int]] = field(default_factory=deque)
    putters: deque[tuple[Hashable, int]] = field(default_factory=deque)  # (token, jobs)
    enqueued: int = 0
    acked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0

    def stats(self) -> QueueStats:
        return QueueStats(
            self.name,
            depth=len(self.ready),
            in_flight=len(self.taken),
            redelivered=self.redelivered,
            dead_lettered=self.dead_lettered,
            enqueued=self.enqueued,
            acked=self.acked,
            maxsize=self.maxsize,
            max_attempts=self.max_attempts,
            dead_letter=self.dead_letter or None,
        )


class Handed(NamedTuple):
    """A waiting take (its ``token``) that got ``job``: the caller answers it (a take of
    many jobs may appear in several, one per job, in order: :func:`group_handed`)."""

    token: Hashable
    job: JobRecord


def group_handed(handed: list[Handed]) -> list[tuple[Hashable, list[JobRecord]]]:
    """``handed`` as (token, its jobs in order), each token once, in first-served order."""
    grouped: dict[int, tuple[Hashable, list[JobRecord]]] = {}
    for token, job in handed:
        grouped.setdefault(id(token), (token, []))[1].append(job)
    return list(grouped.values())


class QueueTable:
    """The work queues of one coordinator, over its routing table.

    >>> table = RoutingTable()
    >>> queues = QueueTable(table)
    >>> producer = table.register("producer", pid=1, uid=0)
    >>> consumer = table.register("consumer", pid=2, uid=0)
    >>> rec = table.add_block(producer, segment=0, offset=0, capacity=4096, size=5)
    >>> q = queues.queue("jobs")
    >>> queues.enqueue(producer, rec, q, {}) is None  # nobody waits: it is queued
    True
    >>> job = queues.take(consumer, q, token="t1")
    >>> queues.ack(consumer, job.id).freed == (rec,)
    True
    >>> queues.enqueue(producer, Inline(b"hi", "raw", {"nbytes": 2}), q, {}) is None
    True
    >>> queues.inline_bytes
    2
    """

    def __init__(self, table: RoutingTable, inline_limit: int = MAX_QUEUE_INLINE_BYTES) -> None:
        self.table = table
        self.queues: dict[str, QueueRecord] = {}
        self.by_consumer: dict[int, dict[int, JobRecord]] = {}  # process key -> taken jobs
        self._next_job = 1
        self.inline_bytes = 0  # what the inline jobs of every queue hold, until acked
        self.inline_limit = inline_limit  # ... at most (else a job goes into a block)

    @property
    def next_id(self) -> int:
        """The id the next job enqueued gets (a batch's jobs get consecutive ids)."""
        return self._next_job

    def inline_fits(self, sizes: list[int]) -> list[bool]:
        """For inline payloads of ``sizes`` bytes enqueued in this order: whether each
        may stay inline (the coordinator's inline bytes, with those kept before it,
        within ``inline_limit``), or must go into a block of the pool instead.

        >>> QueueTable(RoutingTable(), inline_limit=100).inline_fits([60, 50, 40])
        [True, False, True]
        """
        room = self.inline_limit - self.inline_bytes
        keep = []
        for size in sizes:
            fits = size <= room
            if fits:
                room -= size
            keep.append(fits)
        return keep

    # -- settings ----------------------------------------------------------------
    def declare(
        self,
        name: str,
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        dead_letter: str | None = None,
    ) -> QueueRecord:
        """Create the queue ``name``, or change its settings (see the module's
        docstring); its dead-letter queue is created with it if need be."""
        check_name(name, "queue name")
        check_queue_settings(maxsize, max_attempts)
        dead = ""
        if max_attempts is not None:
            dead = dead_letter_name(name) if dead_letter is None else dead_letter
            check_name(dead, "dead-letter queue name")
            if dead == name:
                raise InvalidRequest(f"queue {name!r:.80} cannot be its own dead-letter queue")
        new = [n for n in dict.fromkeys((name, dead)) if n and n not in self.queues]
        if len(self.queues) + len(new) > MAX_QUEUES:
            raise QuotaExceeded(
                f"this coordinator holds {len(self.queues)} work queues, its limit "
                f"({MAX_QUEUES}); nothing was created"
            )
        if dead and dead not in self.queues:
            self.queues[dead] = QueueRecord(dead, DEFAULT_QUEUE_SIZE, None, "")
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = QueueRecord(name, maxsize, max_attempts, dead)
        q.maxsize, q.max_attempts, q.dead_letter = maxsize, max_attempts, dead
        q.declared = True
        return q

    def queue(self, name: str) -> QueueRecord:
        """The queue ``name``, created with the default settings if there is none."""
        q = self.queues.get(name)
        if q is None:
            check_name(name, "queue name")
            q = self.declare(name)
            q.declared = False
        return q

    # -- producers ---------------------------------------------------------------
    @staticmethod
    def has_room(q: QueueRecord, count: int = 1) -> bool:
        """Whether an enqueue of ``count`` jobs may go now: no putter waits before it,
        and the queue has room for all of them (a batch goes in whole or waits whole)."""
        return not q.putters and len(q.ready) + count <= q.maxsize

    def enqueue(
        self,
        proc: ProcessRecord,
        item: BlockRecord | Inline,
        q: QueueRecord,
        header: dict[str, Any],
    ) -> Handed | None:
        """``proc`` moves its block into ``q`` as a new job, or (an :class:`Inline`,
        which the caller checked with :meth:`inline_fits`) an inline job (whether
        there is room is the caller's question: :meth:`has_room`). Returns the waiting
        take it went to, if one waited."""
        handed = self.enqueue_many(proc, [item], q, header)
        return handed[0] if handed else None

    def enqueue_many(
        self,
        proc: ProcessRecord,
        items: list[BlockRecord | Inline],
        q: QueueRecord,
        header: dict[str, Any],
    ) -> list[Handed]:
        """``proc`` moves its blocks into ``q`` (and the :class:`Inline` payloads,
        which the caller checked with :meth:`inline_fits`), one new job each, in
        order: all of them or, refused (a block may not move), none (whether there is
        room for all is the caller's question: :meth:`has_room`). Returns the waiting
        takes served."""
        recs = [item for item in items if isinstance(item, BlockRecord)]
        for rec in recs:  # every refusal before anything changes
            self.table.check_queueable(proc, rec)
        if len({id(rec) for rec in recs}) != len(recs):
            raise InvalidRequest("a batch names the same block twice")
        header_bytes = len(pack_header(header)) if len(items) > 1 else -1
        for item in items:
            job_id = self._next_job
            if isinstance(item, BlockRecord):
                job = JobRecord(job_id, item, q, header, proc.name, header_bytes=header_bytes)
                self.table.queue_job(proc, item, job_id)
            else:
                job = JobRecord(job_id, None, q, header, proc.name, header_bytes=header_bytes)
                job.inline = item
                self.inline_bytes += len(item.data)
            self._next_job += 1
            q.enqueued += 1
            q.ready.append(job)
        return self._dispatch(q)

    def park_putter(self, q: QueueRecord, token: Hashable, count: int = 1) -> None:
        q.putters.append((token, count))

    def withdraw_putter(self, q: QueueRecord, token: Hashable) -> None:
        for entry in q.putters:
            if entry[0] is token:
                q.putters.remove(entry)
                return

    @staticmethod
    def next_putter(q: QueueRecord) -> Hashable | None:
        """The first waiting enqueue, out of the queue, if there is room for all its jobs
        now (or if it could never fit: a declare shrank ``maxsize`` under it; run again,
        it is refused)."""
        if q.putters:
            count = q.putters[0][1]
            if len(q.ready) + count <= q.maxsize or count > q.maxsize:
                return q.putters.popleft()[0]
        return None

    # -- consumers ---------------------------------------------------------------
    def take(self, proc: ProcessRecord, q: QueueRecord, token: Hashable) -> JobRecord | None:
        """The oldest job of ``q``, now ``proc``'s; or None, and ``token`` waits."""
        jobs = self.take_many(proc, q, token, 1)
        return jobs[0] if jobs else None

    def take_many(
        self, proc: ProcessRecord, q: QueueRecord, token: Hashable, most: int
    ) -> list[JobRecord]:
        """The oldest jobs of ``q`` there are, up to ``most`` and to what one reply holds
        (:attr:`JobRecord.cost` against :data:`REPLY_LISTS_BUDGET`: always one), now
        ``proc``'s; or none, and ``token`` waits (served, it gets what there is then:
        jobs are dealt one at a time to the takes waiting, in turn)."""
        if not q.ready or q.takers:
            q.takers.append((proc, token, most))
            return []
        jobs = [self._lend(q.ready.popleft(), proc)]  # (a TAKE: no cost counted)
        cost = jobs[0].cost if most > 1 else 0
        while q.ready and len(jobs) < most:
            cost += q.ready[0].cost
            if cost > REPLY_LISTS_BUDGET:
                break
            jobs.append(self._lend(q.ready.popleft(), proc))
        return jobs

    def withdraw_taker(self, q: QueueRecord, token: Hashable) -> None:
        for entry in q.takers:
            if entry[1] is token:
                q.takers.remove(entry)
                return

    def find(self, proc: ProcessRecord, job_id: int) -> JobRecord:
        job = self.by_consumer.get(proc.key, {}).get(job_id)
        if job is None:
            raise BlockNotFound(
                f"job {job_id} is not taken by this process (acked, nacked, or never taken)"
            )
        return job

    def check_answer(self, proc: ProcessRecord, job_id: int) -> JobRecord:
        """The job ``job_id`` of ``proc``'s, if it may ack or nack it now; else raise
        why not (not taken by it; a block job: a lease of its own on the block, or a
        send of it under way)."""
        job = self.find(proc, job_id)
        if job.block is not None:
            assert job.lease is not None
            self.table.check_job_return(job.block, proc, job.lease)
        return job

    def ack(self, proc: ProcessRecord, job_id: int) -> Outcome:
        """``proc`` is done with the job: it leaves the system; its block is the
        outcome's ``freed`` unless another process holds it (an inline job's bytes
        are dropped)."""
        job = self.check_answer(proc, job_id)
        self._untake(job, proc)
        job.queue.acked += 1
        if job.block is None:
            assert job.inline is not None
            self.inline_bytes -= len(job.inline.data)
            job.inline = None
            return NOTHING
        assert job.lease is not None
        return self.table.end_job(job.block, proc, job.lease, job.granted)

    def nack(self, proc: ProcessRecord, job_id: int, *, failed: bool = True) -> list[Handed]:
        """``proc`` gives the job back (``failed``: a failed attempt; else, a take
        whose caller was cancelled, not counted). Returns the waiting takes served."""
        job = self.check_answer(proc, job_id)
        return self._give_back([job], proc, failed=failed)

    def release_consumer(self, proc: ProcessRecord) -> tuple[int, list[Handed]]:
        """``proc`` is gone: every job it took goes back at once, a failed attempt
        each, oldest first. Returns how many, and the waiting takes served."""
        jobs = sorted(self.by_consumer.get(proc.key, {}).values(), key=lambda j: j.id)
        for q in self.queues.values():  # (its waiting takes are withdrawn already)
            if any(e[0] is proc for e in q.takers):
                q.takers = deque(e for e in q.takers if e[0] is not proc)
        return len(jobs), self._give_back(jobs, proc, failed=True)

    # -- the rules ---------------------------------------------------------------
    def _lend(self, job: JobRecord, proc: ProcessRecord) -> JobRecord:
        if job.block is not None:  # (an inline job: nothing to lend, its bytes travel)
            job.lease, job.granted = self.table.lend_job(job.block, proc)
        job.consumer = proc
        job.queue.taken[job.id] = job
        self.by_consumer.setdefault(proc.key, {})[job.id] = job
        return job

    def _untake(self, job: JobRecord, proc: ProcessRecord) -> None:
        job.queue.taken.pop(job.id, None)
        mine = self.by_consumer.get(proc.key)
        if mine is not None:
            mine.pop(job.id, None)
            if not mine:
                del self.by_consumer[proc.key]
        job.consumer = None

    def _give_back(
        self, jobs: list[JobRecord], proc: ProcessRecord, *, failed: bool
    ) -> list[Handed]:
        touched: dict[int, QueueRecord] = {}
        back: list[JobRecord] = []
        for job in jobs:
            self._untake(job, proc)
            if job.block is not None:
                assert job.lease is not None
                self.table.return_job(job.block, proc, job.lease, job.granted)
                job.lease, job.granted = None, False
            q = job.queue
            touched[id(q)] = q
            if failed:
                job.attempts += 1
            if failed and q.max_attempts is not None and job.attempts >= q.max_attempts:
                dead = self.queues[q.dead_letter]  # created with q (or by its declare)
                q.dead_lettered += 1
                job.queue, job.attempts = dead, 0
                dead.ready.append(job)
                touched[id(dead)] = dead
            else:
                q.redelivered += 1
                back.append(job)
        for job in reversed(back):  # each to the front: the oldest ends up first
            job.queue.ready.appendleft(job)
        return [h for q in touched.values() for h in self._dispatch(q)]

    def _dispatch(self, q: QueueRecord) -> list[Handed]:
        """Hand ``q``'s waiting jobs to its waiting takes, in order, one job at a time
        in turn (a take of many goes to the back for its next, while it wants more
        and its reply holds more); a take served leaves the takers."""
        handed: list[Handed] = []
        served: dict[int, list[int]] = {}  # id(token) -> [jobs, cost]
        while q.ready and q.takers:
            entry = q.takers.popleft()
            proc, token, most = entry
            job = q.ready.popleft()
            handed.append(Handed(token, self._lend(job, proc)))
            if most == 1:  # a TAKE: served
                continue
            got = served.setdefault(id(token), [0, 0])
            got[0] += 1
            got[1] += job.cost
            if got[0] < most and q.ready and got[1] + q.ready[0].cost <= REPLY_LISTS_BUDGET:
                q.takers.append(entry)
        if served and any(id(e[1]) in served for e in q.takers):
            q.takers = deque(e for e in q.takers if id(e[1]) not in served)
        return handed

    def stats(self) -> list[QueueStats]:
        """Every queue, sorted by name."""
        return [q.stats() for _, q in sorted(self.queues.items())]
