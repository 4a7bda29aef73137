"""Work queues: QUEUE_DECLARE, ENQUEUE, ENQUEUE_MANY, ENQUEUE_COMMIT, TAKE, TAKE_MANY,
ACK, NACK; the waits a TAKE (on an empty queue) and an ENQUEUE (on a full one) park
as; a consumer's jobs given back when it goes (``give_back_jobs``, from reclaim).
The rules are in ``_core/queues.py``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from ..._core.codecs import CODEC_NAMES, get_codec
from ..._core.limits import (
    MAX_INLINE_PAYLOAD,
    check_batch,
    check_batch_bytes,
    check_refill,
    pack_header,
)
from ..._core.protocol import NO_BLOCK, Op, Reply, Request
from ..._core.queues import Handed, Inline, JobRecord, QueueRecord, group_handed
from ..._core.routing import BlockRecord, ProcessRecord
from ..._exceptions import AccessDenied, BlockIPCError, InboxFull, InvalidRequest
from ..._log import get_logger
from ..._types import QueueStats
from ..parking import Parked
from ..session import Session, block_fields, error_reply
from ..state import ServerState
from .requests import _checked_payload as checked_payload

__all__ = ["HANDLERS", "EnqueueWait", "TakeWait", "give_back_jobs", "queue_row"]

log = get_logger("blockipc.coordinator")


@dataclass(eq=False, slots=True)
class TakeWait(Parked):
    """A TAKE (or TAKE_MANY) waiting for a job, in order among its queue's takers (the
    token the queue table hands back with the job)."""

    queue: QueueRecord

    def given(self, jobs: list[JobRecord]) -> None:
        self.unpark()
        if self.request.op is Op.TAKE_MANY:
            self.session.reply(_jobs_reply(self.state, self.request, self.queue, jobs))
        else:
            (job,) = jobs
            self.session.reply(_job_reply(self.state, self.request, job))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.queues.withdraw_taker(self.queue, self)


@dataclass(eq=False, slots=True)
class EnqueueWait(Parked):
    """An ENQUEUE (ENQUEUE_MANY, ENQUEUE_COMMIT: ``block``, its block committed)
    waiting for room in a full queue, in order among its putters; when room comes it
    runs again (the blocks checked again: they are still the producer's)."""

    queue: QueueRecord
    block: int | None = None

    def room(self) -> None:
        self.unpark()
        try:
            if self.request.op is Op.ENQUEUE_MANY:
                _enqueue_many_now(self.state, self.session, self.request, self.queue)
            else:
                _enqueue_now(self.state, self.session, self.request, self.queue, self.block)
        except BlockIPCError as exc:
            self.session.reply(error_reply(self.request, exc))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.queues.withdraw_putter(self.queue, self)


def _job_reply(state: ServerState, req: Request, job: JobRecord) -> Reply:
    """A TAKE's answer: the job, and its bytes inline: an inline job's (block
    NO_BLOCK, no lease), or its block's when the block is at most
    ``MAX_INLINE_PAYLOAD`` (read as a routed READ reads: nobody may write a job's
    block), so that the consumer decodes the value with no mapping of its own."""
    rec, lease = job.block, job.lease
    if rec is None:
        assert job.inline is not None
        data, codec, meta = job.inline
        fields: dict[str, Any] = {
            "job": job.id,
            "block": NO_BLOCK,
            "size": len(data),
            "capacity": 0,
            "segment": 0,
            "offset": 0,
            "lease": 0,
            "codec": codec,
            "meta": meta,
            "header": job.header,
            "attempts": job.attempts,
            "queue": job.queue.name,
            "producer": job.producer,
            "inline": True,
        }
        return Reply(req.req_id, Op.TAKE, fields, data)
    assert lease is not None
    inline = rec.size <= MAX_INLINE_PAYLOAD
    data = b""
    if inline:
        with state.pool.view(rec.segment, rec.offset, rec.size) as view:
            data = bytes(view)
    fields = {
        "job": job.id,
        **block_fields(rec),
        "lease": lease.id,
        "codec": rec.codec,
        "meta": rec.meta,
        "header": job.header,
        "attempts": job.attempts,
        "queue": job.queue.name,
        "producer": job.producer,
        "inline": inline,
    }
    return Reply(req.req_id, Op.TAKE, fields, data)


def _jobs_reply(state: ServerState, req: Request, q: QueueRecord, jobs: list[JobRecord]) -> Reply:
    """A TAKE_MANY's answer: a row per job (as a TAKE's fields), the inline jobs' bytes
    one after the other in the data (within the frame: ``JobRecord.cost``)."""
    rows: list[list[Any]] = []
    parts: list[bytes] = []
    for job in jobs:
        rec, lease = job.block, job.lease
        if rec is None:
            assert job.inline is not None
            data, codec, meta = job.inline
            parts.append(data)
            row = [job.id, NO_BLOCK, len(data), 0, 0, 0, 0, job.attempts, codec, job.producer]
            rows.append([*row, meta, job.header, True])
            continue
        assert lease is not None
        inline = rec.size <= MAX_INLINE_PAYLOAD
        if inline:
            with state.pool.view(rec.segment, rec.offset, rec.size) as view:
                parts.append(bytes(view))
        rows.append(
            [
                job.id,
                rec.id,
                rec.size,
                rec.capacity,
                rec.segment,
                rec.offset,
                lease.id,
                job.attempts,
                rec.codec,
                job.producer,
                rec.meta,
                job.header,
                inline,
            ]
        )
    return Reply(req.req_id, Op.TAKE_MANY, {"queue": q.name, "jobs": rows}, b"".join(parts))


def queue_row(q: QueueStats) -> list[Any]:
    """A queue's row of a STATS reply (the client's ``Client.stats`` reads it back)."""
    return [
        q.name,
        q.dead_letter or "",
        q.depth,
        q.in_flight,
        q.redelivered,
        q.dead_lettered,
        q.enqueued,
        q.acked,
        q.maxsize,
        q.max_attempts or 0,
    ]


def _hand(state: ServerState, handed: Iterable[Handed]) -> None:
    """Answer the waiting takes that got a job."""
    for token, jobs in group_handed(list(handed)):
        cast(TakeWait, token).given(jobs)


def _room(state: ServerState, q: QueueRecord) -> None:
    """Let the waiting enqueues that now fit go, in order."""
    # (one that could never fit, a declare having shrunk maxsize, runs to be refused)
    while (putter := state.queues.next_putter(q)) is not None:
        cast(EnqueueWait, putter).room()


def declare(state: ServerState, session: Session, req: Request) -> None:
    a = req.args
    q = state.queues.declare(
        a["queue"],
        maxsize=a["maxsize"],
        max_attempts=a["max_attempts"] or None,
        dead_letter=a["dead_letter"] or None,
    )
    session.reply(Reply(req.req_id, Op.QUEUE_DECLARE))
    _room(state, q)  # it may have grown


def enqueue(state: ServerState, session: Session, req: Request) -> None:
    """Move a block of the caller's into a queue as a job, or (``block`` NO_BLOCK) the
    frame's inline payload, which the job keeps as it is (or, past the coordinator's
    inline bytes, ``QueueTable.inline_fits``, writes into a new block of the job's)
    when it goes in; now or once there is room (``nowait``: :class:`InboxFull` instead
    of waiting)."""
    a = req.args
    pack_header(a["header"])
    if checked_payload(state, session.proc, req) is None:
        get_codec(a["codec"])  # an unknown codec is refused here, not by the consumer
    q = state.queues.queue(a["queue"])
    if state.queues.has_room(q):
        _enqueue_now(state, session, req, q)
        return
    if a["nowait"]:
        raise InboxFull(
            f"work queue {q.name!r:.80} is full ({len(q.ready)} jobs waiting, maxsize {q.maxsize})"
        )
    wait = EnqueueWait(state, session, req, q)
    wait.park()
    state.queues.park_putter(q, wait)


def _inline_block(state: ServerState, proc: ProcessRecord, req: Request) -> BlockRecord:
    """A new block of ``proc``'s holding an inline ENQUEUE's payload, its codec and meta
    recorded as a ``put`` would record them (the bytes written as a routed WRITE does)."""
    a, data = req.args, req.data
    rec = state.new_block(proc, max(len(data), 1))
    if data:
        with state.pool.view(rec.segment, rec.offset, len(data)) as view:
            view[:] = data
    rec.codec, rec.meta = a["codec"], {"nbytes": len(data), "codec": a["meta"]}
    state.table.bump(rec)
    return rec


def _enqueue_now(
    state: ServerState, session: Session, req: Request, q: QueueRecord, block: int | None = None
) -> None:
    """An ENQUEUE (or, ``block`` given, an ENQUEUE_COMMIT of that block) with room now."""
    a, proc = req.args, session.proc
    inline = block is None and a["block"] == NO_BLOCK
    job_id = state.queues.next_id
    if inline and state.queues.inline_fits([len(req.data)])[0]:
        meta = {"nbytes": len(req.data), "codec": a["meta"]}
        handed = state.queues.enqueue(proc, Inline(req.data, a["codec"], meta), q, a["header"])
        session.reply(Reply(req.req_id, req.op, {"job": job_id}))
        if handed is not None:
            _hand(state, (handed,))
        return
    bid = a["block"] if block is None else block
    rec = _inline_block(state, proc, req) if inline else state.table.lookup(proc, bid)
    try:
        handed = state.queues.enqueue(proc, rec, q, a["header"])
    except BaseException:
        if inline:  # (a new block is never refused; still, it must not leak)
            state.settle(state.table.release_hold(proc, rec))
        raise
    if req.op is Op.ENQUEUE_COMMIT:
        fields = {"job": job_id, **_refill(state, proc, a["refill"])}
        session.reply(Reply(req.req_id, req.op, fields))
    else:
        session.reply(Reply(req.req_id, req.op, {"job": job_id}))
    if handed is not None:
        _hand(state, (handed,))


def _refill(state: ServerState, proc: ProcessRecord, size: int) -> dict[str, int]:
    """An ENQUEUE_COMMIT's ``refill``: a new block of ``size`` bytes with its write
    lease, as a PUT makes, for the producer's next job (its PUT saved), or none (0, or
    the pool or the producer's quota has no room now: the enqueue is done all the same,
    and the producer PUTs its next job)."""
    if size:
        try:
            rec = state.new_block(proc, size, quiet=True)
        except BlockIPCError:
            pass
        else:
            lease = state.table.request_lease(proc, rec, "w", None)
            assert lease is not None  # a new block is uncontended
            return {"lease": lease.id, **block_fields(rec)}
    return {"lease": 0, **block_fields(None)}


def enqueue_commit(state: ServerState, session: Session, req: Request) -> None:
    """A PUT's block committed (its codec and meta recorded, its write lease ended, as
    an unnamed COMMIT does) and enqueued as ENQUEUE enqueues a block, in one request:
    a large job's producer saves a round trip. Refused before the commit, the lease is
    the caller's still; refused after it (a full queue and ``nowait``, a cancelled
    wait), the block is, committed: either way the caller frees what it made. Enqueued,
    the reply brings a new block for the producer's next job when it asks (``refill``:
    :func:`_refill`), so that a run of large jobs costs one round trip each."""
    a, proc = req.args, session.proc
    check_refill(a["refill"])
    lease = state.table.find_lease(proc, a["lease"])
    rec = lease.block
    if lease.mode != "w" or rec.owner is not proc or rec.job:
        raise AccessDenied(f"lease {lease.id} is not a write lease on a block you own")
    if a["codec"] not in CODEC_NAMES:
        raise InvalidRequest(f"unknown codec {a['codec']!r}; known: {', '.join(CODEC_NAMES)}")
    pack_header(a["meta"], "codec meta")
    pack_header(a["header"])
    q = state.queues.queue(a["queue"])
    rec.codec, rec.meta = a["codec"], a["meta"]
    state.settle(state.table.end_lease(lease))  # bumps the generation, as COMMIT's
    if state.queues.has_room(q):
        _enqueue_now(state, session, req, q, rec.id)
        return
    if a["nowait"]:
        raise InboxFull(
            f"work queue {q.name!r:.80} is full ({len(q.ready)} jobs waiting, maxsize {q.maxsize})"
        )
    wait = EnqueueWait(state, session, req, q, rec.id)
    wait.park()
    state.queues.park_putter(q, wait)


def enqueue_many(state: ServerState, session: Session, req: Request) -> None:
    """A batch of jobs, in order, all of them or none: each a block of the caller's
    (moved) or an inline payload (kept as it is, or, past the coordinator's inline
    bytes, a new block: ``QueueTable.inline_fits``). Checked whole before anything changes
    (its length, 1 to ``MAX_BATCH``; each inline payload and the data; the header and
    metas; the blocks, movable); a batch larger than the queue's ``maxsize`` could never
    fit and is refused. With room for all of them it goes now; else it waits, whole, in
    order among the putters (``nowait``: :class:`InboxFull`, nothing enqueued)."""
    a = req.args
    _check_many(state, session.proc, req)
    q = state.queues.queue(a["queue"])
    count = len(a["blocks"])
    _check_fits(q, count)
    if state.queues.has_room(q, count):
        _enqueue_many_now(state, session, req, q)
        return
    if a["nowait"]:
        raise InboxFull(
            f"work queue {q.name!r:.80} has room for {max(q.maxsize - len(q.ready), 0)} "
            f"jobs, not the batch's {count} (maxsize {q.maxsize}); nothing was enqueued"
        )
    wait = EnqueueWait(state, session, req, q)
    wait.park()
    state.queues.park_putter(q, wait, count)


def _check_fits(q: QueueRecord, count: int) -> None:
    if count > q.maxsize:
        raise InvalidRequest(
            f"a batch of {count} jobs can never fit work queue {q.name!r:.80} "
            f"(maxsize {q.maxsize}); nothing was enqueued: send smaller batches"
        )


def _check_many(state: ServerState, proc: ProcessRecord, req: Request) -> None:
    """Every refusal of an ENQUEUE_MANY that the request alone decides."""
    a = req.args
    blocks, sizes, metas = a["blocks"], a["sizes"], a["metas"]
    count = check_batch(len(blocks), "a batch's number of jobs")
    if len(sizes) != count or len(metas) != count:
        raise InvalidRequest("a batch has one block, size and meta per job")
    inline = 0
    for bid, size in zip(blocks, sizes, strict=True):
        if bid != NO_BLOCK:
            if size:
                raise InvalidRequest("a job of a batch is a block or inline data, not both")
            continue
        if size > MAX_INLINE_PAYLOAD:
            raise InvalidRequest(
                f"an inline job of {size} bytes is over the limit of {MAX_INLINE_PAYLOAD}: "
                "enqueue a larger one as a block"
            )
        inline += size
    check_batch_bytes(inline)
    if inline != len(req.data):
        raise InvalidRequest(
            f"a batch's sizes add up to {inline} bytes, its data is {len(req.data)}"
        )
    pack_header(a["header"])
    for meta in metas:
        if meta:
            pack_header(meta, "codec meta")
    if NO_BLOCK in blocks:
        get_codec(a["codec"])  # an unknown codec is refused here, not by the consumer
    moved = [b for b in blocks if b != NO_BLOCK]
    if len(set(moved)) != len(moved):
        raise InvalidRequest("a batch names the same block twice")
    for bid in moved:
        state.table.check_queueable(proc, state.table.lookup(proc, bid, "own"))


def _enqueue_many_now(state: ServerState, session: Session, req: Request, q: QueueRecord) -> None:
    a, proc, data = req.args, session.proc, req.data
    blocks, sizes = a["blocks"], a["sizes"]
    _check_fits(q, len(blocks))  # (again after a wait: a declare may have shrunk it)
    made: list[BlockRecord] = []
    items: list[BlockRecord | Inline] = []
    codec = a["codec"]
    inline = [s for b, s in zip(blocks, sizes, strict=True) if b == NO_BLOCK]
    keep = iter(state.queues.inline_fits(inline))
    job_id = state.queues.next_id
    try:
        at = 0
        for bid, size, meta in zip(blocks, sizes, a["metas"], strict=True):
            if bid != NO_BLOCK:
                items.append(state.table.lookup(proc, bid, "own"))
                continue
            if next(keep):
                items.append(Inline(data[at : at + size], codec, {"nbytes": size, "codec": meta}))
                at += size
                continue
            rec = state.new_block(proc, max(size, 1))
            made.append(rec)
            if size:
                with state.pool.view(rec.segment, rec.offset, size) as view:
                    view[:] = data[at : at + size]
            at += size
            rec.codec, rec.meta = codec, {"nbytes": size, "codec": meta}
            state.table.bump(rec)
            items.append(rec)
        handed = state.queues.enqueue_many(proc, items, q, a["header"])
    except BaseException:
        for rec in made:  # all or none: the new blocks go (an unmoved block stays)
            if rec.job == 0:
                state.settle(state.table.release_hold(proc, rec))
        raise
    jobs = list(range(job_id, job_id + len(items)))  # (consecutive: QueueTable.next_id)
    session.reply(Reply(req.req_id, Op.ENQUEUE_MANY, {"jobs": jobs}))
    _hand(state, handed)


def take(state: ServerState, session: Session, req: Request) -> None:
    """The next job of a queue, now or when one comes (``CANCEL`` withdraws the wait).
    A TAKE that carries an ``ack`` (a job id, 0: none) acks that job first, as ACK
    does: refused, the TAKE fails with the ack's error and takes nothing; done, the
    TAKE is answered with a job or, withdrawn, as cancelled. So the client knows from
    the answer alone whether its ack was done (``Client.take(..., ack=job)``)."""
    q = state.queues.queue(req.args["queue"])
    wait = TakeWait(state, session, req, q)
    wait.park()  # first: a full registry refuses it with nothing to undo
    if req.args["ack"]:
        try:
            _ack(state, session.proc, req.args["ack"])
        except BaseException:
            wait.unpark()
            raise
    job = state.queues.take(session.proc, q, wait)
    if job is None:
        return
    wait.given([job])
    _room(state, q)


def take_many(state: ServerState, session: Session, req: Request) -> None:
    """Up to ``max`` jobs of a queue (1 to ``MAX_BATCH``, and what one reply holds): the
    jobs there are now, or, parked, those there are when the first comes. Its ``acks``
    are acked first, as TAKE's ``ack``, all of them or (one refused: its error) none."""
    a, proc = req.args, session.proc
    most = check_batch(a["max"], "take_many max_jobs")
    acks = a["acks"]
    if acks:
        check_batch(len(acks), "take_many's acks")
        if len(set(acks)) != len(acks):
            raise InvalidRequest("take_many's acks name the same job twice")
    q = state.queues.queue(a["queue"])
    wait = TakeWait(state, session, req, q)
    wait.park()  # first: a full registry refuses it with nothing to undo
    if acks:
        try:
            for job_id in acks:  # every refusal before any ack is done
                state.queues.check_answer(proc, job_id)
            for job_id in acks:
                _ack(state, proc, job_id)
        except BaseException:
            wait.unpark()
            raise
    jobs = state.queues.take_many(proc, q, wait, most)
    if not jobs:
        return
    wait.given(jobs)
    _room(state, q)


def _ack(state: ServerState, proc: ProcessRecord, job_id: int) -> None:
    state.settle(state.queues.ack(proc, job_id))


def ack(state: ServerState, session: Session, req: Request) -> None:
    _ack(state, session.proc, req.args["job"])
    session.reply(Reply(req.req_id, Op.ACK))


def nack(state: ServerState, session: Session, req: Request) -> None:
    job = state.queues.find(session.proc, req.args["job"])
    q = job.queue
    handed = state.queues.nack(session.proc, job.id, failed=req.args["failed"])
    session.reply(Reply(req.req_id, Op.NACK))
    _hand(state, handed)
    _room(state, q)


def give_back_jobs(state: ServerState, proc: ProcessRecord) -> None:
    """``proc`` is gone (reclaim, before ``unregister``): the jobs it took and did not
    ack go back to their queues at once, and waiting takes of others get them."""
    queues = {id(j.queue): j.queue for j in state.queues.by_consumer.get(proc.key, {}).values()}
    count, handed = state.queues.release_consumer(proc)
    if not count:
        return
    _hand(state, handed)
    for q in queues.values():
        _room(state, q)
    log.info("queue.jobs_returned", name=proc.name, pid=proc.pid, jobs=count)


HANDLERS = {
    Op.QUEUE_DECLARE: declare,
    Op.ENQUEUE: enqueue,
    Op.ENQUEUE_MANY: enqueue_many,
    Op.ENQUEUE_COMMIT: enqueue_commit,
    Op.TAKE: take,
    Op.TAKE_MANY: take_many,
    Op.ACK: ack,
    Op.NACK: nack,
}
