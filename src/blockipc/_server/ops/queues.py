"""Work queues: QUEUE_DECLARE, ENQUEUE, TAKE, ACK, NACK; the waits a TAKE (on an
empty queue) and an ENQUEUE (on a full one) park as; a consumer's jobs given back when
it goes (``give_back_jobs``, from reclaim). The rules are in ``_core/queues.py``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from ..._core.codecs import get_codec
from ..._core.limits import MAX_INLINE_PAYLOAD, pack_header
from ..._core.protocol import NO_BLOCK, Op, Reply, Request
from ..._core.queues import Handed, JobRecord, QueueRecord
from ..._core.routing import BlockRecord, ProcessRecord
from ..._exceptions import BlockIPCError, InboxFull
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
    """A TAKE waiting for a job, in order among its queue's takers (the token the
    queue table hands back with the job)."""

    queue: QueueRecord

    def given(self, job: JobRecord) -> None:
        self.unpark()
        self.session.reply(_job_reply(self.state, self.request, job))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.queues.withdraw_taker(self.queue, self)


@dataclass(eq=False, slots=True)
class EnqueueWait(Parked):
    """An ENQUEUE waiting for room in a full queue, in order among its putters; when
    room comes it runs again (the block checked again: it is still the producer's)."""

    queue: QueueRecord

    def room(self) -> None:
        self.unpark()
        try:
            _enqueue_now(self.state, self.session, self.request, self.queue)
        except BlockIPCError as exc:
            self.session.reply(error_reply(self.request, exc))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.queues.withdraw_putter(self.queue, self)


def _job_reply(state: ServerState, req: Request, job: JobRecord) -> Reply:
    """A TAKE's answer: the job, and its block's bytes inline when the block is at most
    ``MAX_INLINE_PAYLOAD`` (read as a routed READ reads: nobody may write a job's
    block), so that the consumer decodes the value with no mapping of its own."""
    rec, lease = job.block, job.lease
    assert lease is not None
    inline = rec.size <= MAX_INLINE_PAYLOAD
    data = b""
    if inline:
        with state.pool.view(rec.segment, rec.offset, rec.size) as view:
            data = bytes(view)
    fields: dict[str, Any] = {
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
    for token, job in handed:
        cast(TakeWait, token).given(job)


def _room(state: ServerState, q: QueueRecord) -> None:
    """Let the waiting enqueues that now fit go, in order."""
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
    frame's inline payload, which the coordinator writes into a new block of the job's
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


def _enqueue_now(state: ServerState, session: Session, req: Request, q: QueueRecord) -> None:
    a, proc = req.args, session.proc
    inline = a["block"] == NO_BLOCK
    rec = _inline_block(state, proc, req) if inline else state.table.lookup(proc, a["block"])
    try:
        handed = state.queues.enqueue(proc, rec, q, a["header"])
    except BaseException:
        if inline:  # (a new block is never refused; still, it must not leak)
            state.settle(state.table.release_hold(proc, rec))
        raise
    session.reply(Reply(req.req_id, Op.ENQUEUE, {"job": rec.job}))
    if handed is not None:
        _hand(state, (handed,))


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
    wait.given(job)
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
    Op.TAKE: take,
    Op.ACK: ack,
    Op.NACK: nack,
}
