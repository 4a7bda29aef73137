"""Blocks: ALLOC, FREE, FREE_MANY, routed READ and WRITE, LEASE (and LEASE_CODEC),
RELEASE (and RELEASE_EXPORTED, UNEXPORT), GRANT, REVOKE;
and the lease wait that LEASE, LEASE_CODEC, GET and a contended routed READ/WRITE park as."""

from __future__ import annotations

from dataclasses import dataclass

from ..._core.limits import check_batch, check_mode
from ..._core.protocol import Op, Reply, Request
from ..._core.routing import BlockRecord, Grant, Lease
from ..._exceptions import BlockNotFound, InvalidRequest
from ..parking import Parked
from ..session import Session, block_fields, error_reply
from ..state import ServerState

MAX_INLINE = 1 << 20
"""Largest routed read or write the coordinator performs inline."""


@dataclass(eq=False, slots=True)
class LeaseWait(Parked):
    """A LEASE, LEASE_CODEC, GET or routed READ/WRITE queued for a lease on ``block``; also the
    routing table's token for that queued lease."""

    block: BlockRecord

    def granted(self, lease: Lease) -> list[Grant]:
        self.unpark()
        return complete(self.state, self, lease)

    def dropped(self) -> None:
        self.unpark()
        exc = BlockNotFound(f"block {self.block.id} was freed")
        self.session.reply(error_reply(self.request, exc))

    def cancel(self) -> None:
        self.unpark()
        grants = self.state.table.withdraw_wait(self.block, self)
        self.session.reply(self.cancelled())
        self.state.run_grants(grants)


def lease_or_wait(
    state: ServerState,
    session: Session,
    req: Request,
    rec: BlockRecord,
    mode: str,
    *,
    transient: bool,
) -> None:
    """Complete ``req`` under a lease on ``rec`` now, or park it until it is granted."""
    wait = LeaseWait(state, session, req, rec)
    wait.park()
    lease = state.table.request_lease(session.proc, rec, mode, wait, transient=transient)
    if lease is not None:
        wait.unpark()
        state.run_grants(complete(state, wait, lease))


def complete(state: ServerState, wait: LeaseWait, lease: Lease) -> list[Grant]:
    """Finish a request that holds its lease now; returns leases this released."""
    req, rec, session = wait.request, lease.block, wait.session
    if req.op is Op.LEASE:
        session.reply(Reply(req.req_id, Op.LEASE, {"lease": lease.id, **block_fields(rec)}))
        return []
    if req.op is Op.GET or req.op is Op.LEASE_CODEC:
        fields = {
            "lease": lease.id,
            **block_fields(rec),
            "owner": rec.owner_name,
            "generation": rec.generation,
            "slot": rec.slot,
            "codec": rec.codec,
            "meta": rec.meta,
        }
        session.reply(Reply(req.req_id, req.op, fields))
        return []
    reply = perform(state, req, rec)
    outcome = state.table.end_lease(lease)  # transient: ends with the request
    session.reply(reply)
    state.settle(outcome._replace(grants=()))
    return list(outcome.grants)


def perform(state: ServerState, req: Request, rec: BlockRecord) -> Reply:
    """Do a bounds-checked routed READ or WRITE on the pool's memory."""
    start = rec.offset + req.args["offset"]
    if req.op is Op.WRITE:
        data = req.data
        with state.pool.view(rec.segment, start, len(data)) as view:
            view[:] = data
        state.table.bump(rec)
        return Reply(req.req_id, Op.WRITE, {"written": len(data)})
    with state.pool.view(rec.segment, start, req.args["size"]) as view:
        return Reply(req.req_id, Op.READ, {}, bytes(view))


def alloc(state: ServerState, session: Session, req: Request) -> None:
    rec = state.new_block(session.proc, req.args["size"])
    session.reply(Reply(req.req_id, Op.ALLOC, block_fields(rec)))


def free(state: ServerState, session: Session, req: Request) -> None:
    rec = state.table.lookup(session.proc, req.args["block"], "r")
    outcome = state.table.release_hold(session.proc, rec)
    session.reply(Reply(req.req_id, Op.FREE))
    state.settle(outcome)


def free_many(state: ServerState, session: Session, req: Request) -> None:
    """FREE_MANY: all the blocks or, if one may not be freed, none of them."""
    table, proc = state.table, session.proc
    ids = req.args["blocks"]
    check_batch(len(ids), "blocks per FREE_MANY")
    if len(set(ids)) != len(ids):
        raise InvalidRequest("blocks of a FREE_MANY must be distinct block ids")
    recs = [table.lookup(proc, bid, "r") for bid in ids]
    for rec in recs:
        table.check_release(proc, rec)
    outcomes = [table.release_hold(proc, rec) for rec in recs]
    session.reply(Reply(req.req_id, Op.FREE_MANY))
    for outcome in outcomes:
        state.settle(outcome)


def routed(state: ServerState, session: Session, req: Request) -> None:
    """READ and WRITE: bounds-checked, then done under a transient lease."""
    table = state.table
    if req.op is Op.READ:
        rec = table.readable(session.proc, req.args["block"])
        size, mode = req.args["size"], "r"
        if size > MAX_INLINE:
            raise InvalidRequest(
                f"a routed read of {size} bytes exceeds the inline limit {MAX_INLINE}; use a lease"
            )
    else:
        rec = table.lookup(session.proc, req.args["block"], "w")
        size, mode = len(req.data), "w"
    table.check_bounds(rec, req.args["offset"], size)
    if rec.leases or rec.waiters:
        lease_or_wait(state, session, req, rec, mode, transient=True)
    else:  # uncontended, the common case: no lease bookkeeping needed
        session.reply(perform(state, req, rec))


def lease(state: ServerState, session: Session, req: Request) -> None:
    """LEASE, and LEASE_CODEC: the same, answered with the block's codec and meta."""
    mode = check_mode("lease", req.args["mode"])
    if mode == "r":
        rec = state.table.readable(session.proc, req.args["block"])
    else:
        rec = state.table.lookup(session.proc, req.args["block"], mode)
    lease_or_wait(state, session, req, rec, mode, transient=False)


def release(state: ServerState, session: Session, req: Request) -> None:
    """RELEASE, and RELEASE_EXPORTED: the same, for a lease whose view outlived it (the
    block is marked first, so that a doomed block this lease was the last of stays out
    of the pool too)."""
    found = state.table.find_lease(session.proc, req.args["lease"])
    if req.op is Op.RELEASE_EXPORTED:
        state.table.mark_exported(found)
    outcome = state.table.end_lease(found)
    session.reply(Reply(req.req_id, req.op))
    state.settle(outcome)


def unexport(state: ServerState, session: Session, req: Request) -> None:
    """UNEXPORT: no view of the block (marked by RELEASE_EXPORTED) is left in the
    process; the memory of a block removed meanwhile may go back to the pool."""
    outcome = state.table.unexport(session.proc, req.args["block"])
    session.reply(Reply(req.req_id, Op.UNEXPORT))
    state.settle(outcome)


def grant(state: ServerState, session: Session, req: Request) -> None:
    rec = state.table.lookup(session.proc, req.args["block"], "own")
    to = state.table.find_process(req.args["to"])
    state.table.grant(session.proc, rec, to, req.args["mode"])
    session.reply(Reply(req.req_id, Op.GRANT))


def revoke(state: ServerState, session: Session, req: Request) -> None:
    rec = state.table.lookup(session.proc, req.args["block"], "own")
    to = state.table.find_process(req.args["to"])
    state.table.revoke(session.proc, rec, to)
    session.reply(Reply(req.req_id, Op.REVOKE))


HANDLERS = {
    Op.ALLOC: alloc,
    Op.FREE: free,
    Op.FREE_MANY: free_many,
    Op.READ: routed,
    Op.WRITE: routed,
    Op.LEASE: lease,
    Op.LEASE_CODEC: lease,
    Op.RELEASE: release,
    Op.RELEASE_EXPORTED: release,
    Op.UNEXPORT: unexport,
    Op.GRANT: grant,
    Op.REVOKE: revoke,
}
