"""COPY inside the pool: small and uncontended at once, else in a task, a chunk at a
time, under a read lease on the source and a write lease on the destination."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..._core.protocol import ErrorReply, Event, Op, Reply, Request
from ..._core.routing import BlockRecord, Grant, Lease
from ..._exceptions import BlockIPCError, BlockNotFound, ConnectionClosed, ErrorCode, OutOfBounds
from ..._log import get_logger
from ..parking import Parked
from ..session import Session, error_reply
from ..state import ServerState

log = get_logger("blockipc.coordinator")

COPY_CHUNK = 1 << 20
"""A copy larger than this runs in a task, a chunk at a time, yielding between chunks."""


@dataclass(eq=False, slots=True)
class CopyJob(Parked):
    """A COPY that runs in a task (large, or contended): parked from the request until
    its reply, whether it waits for a lease (``waiting``, ``future``) or copies. Also
    the routing table's token for its lease waits."""

    src: BlockRecord
    dst: BlockRecord
    size: int
    waiting: BlockRecord | None = None
    future: asyncio.Future[Lease | None] | None = None
    stopped: bool = False  # cancelled or abandoned: the task stops where it is

    def granted(self, lease: Lease) -> list[Grant]:
        if self.future is None or self.future.done():  # it gave up: the lease goes back
            outcome = self.state.table.end_lease(lease)
            self.state.settle(outcome._replace(grants=()))
            return list(outcome.grants)
        self.future.set_result(lease)
        return []

    def dropped(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(BlockNotFound("the block was freed during the copy"))

    def cancel(self) -> None:
        self.unpark()
        self.stopped = True  # the task answers CANCELLED (and ends the leases it holds)
        grants: list[Grant] = []
        if self.waiting is not None:
            grants = self.state.table.withdraw_wait(self.waiting, self)
        self._wake()
        self.state.run_grants(grants)

    def abandon(self) -> None:
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)


def copy(state: ServerState, session: Session, req: Request) -> None:
    a = req.args
    table = state.table
    src = table.readable(session.proc, a["src"])
    dst = table.lookup(session.proc, a["dst"], "w")
    size = src.size - a["src_offset"] if a["to_end"] else a["size"]
    if size < 0:
        raise OutOfBounds(f"src_offset {a['src_offset']} is outside block {src.id}")
    table.check_bounds(src, a["src_offset"], size)
    table.check_bounds(dst, a["dst_offset"], size)
    if size <= COPY_CHUNK and not (src.leases or src.waiters or dst.leases or dst.waiters):
        copy_bytes(state, src, a["src_offset"], dst, a["dst_offset"], size)
        session.reply(Reply(req.req_id, Op.COPY, {"copied": size}))
        return
    if state.tg is None:
        raise ConnectionClosed("the coordinator is closing")
    job = CopyJob(state, session, req, src, dst, size)
    job.park()  # now: a CANCEL right behind it must find it before the task starts
    state.spawn(copy_task, state, job)


def copy_bytes(
    state: ServerState,
    src: BlockRecord,
    src_offset: int,
    dst: BlockRecord,
    dst_offset: int,
    size: int,
) -> None:
    pool = state.pool
    with (
        pool.view(src.segment, src.offset + src_offset, size) as s,
        pool.view(dst.segment, dst.offset + dst_offset, size) as d,
    ):
        d[:] = s  # memoryview assignment is a memmove: overlap within a block is fine
    state.table.bump(dst)


async def copy_task(state: ServerState, job: CopyJob) -> None:
    """A large copy, in chunks, yielding to the loop between them so that other
    requests keep being answered; under a read lease on src and a write lease on dst
    (one write lease when they are the same block). A cancelled or abandoned job
    stops where it is: before its first lease, in a lease wait, or between chunks."""
    session, req, src, dst, size = job.session, job.request, job.src, job.dst, job.size
    a = req.args
    leases: list[Lease] = []
    reply: Event
    try:
        wanted = [(dst, "w")] if src is dst else [(src, "r"), (dst, "w")]
        for rec, mode in wanted:
            if job.stopped:
                break
            lease = state.table.request_lease(session.proc, rec, mode, job, transient=True)
            if lease is None:
                job.waiting, job.future = rec, asyncio.get_running_loop().create_future()
                try:
                    lease = await job.future  # None: the job was stopped
                finally:
                    job.waiting = None
                if lease is None:
                    break
            leases.append(lease)
        done = 0
        # copy backwards when dst overlaps src from above, as memmove does
        backwards = src is dst and a["src_offset"] < a["dst_offset"]
        while done < size and not job.stopped:
            if any(lease.id not in lease.block.leases for lease in leases):
                raise BlockNotFound("a block of the copy was freed while it ran")
            n = min(COPY_CHUNK, size - done)
            at = size - done - n if backwards else done
            copy_bytes(state, src, a["src_offset"] + at, dst, a["dst_offset"] + at, n)
            done += n
            await asyncio.sleep(0)
        reply = job.cancelled() if job.stopped else Reply(req.req_id, Op.COPY, {"copied": size})
    except BlockIPCError as exc:
        reply = error_reply(req, exc)
    except Exception as exc:  # a bug must cost one request, not the coordinator
        log.exception("coordinator.internal_error", op="COPY", error=repr(exc))
        reply = ErrorReply(req.req_id, Op.COPY, ErrorCode.INTERNAL, f"internal error: {exc!r}")
    finally:
        job.unpark()
        job.stopped = True  # a grant that still comes goes straight back
        for lease in leases:
            if lease.id in lease.block.leases:
                state.settle(state.table.end_lease(lease))
    session.reply(reply)


HANDLERS = {Op.COPY: copy}
