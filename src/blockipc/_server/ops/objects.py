"""Named objects and codecs: PUT (a new block under a write lease), COMMIT (its codec,
and the name bound), GET (a read lease by name), TOUCH, DELETE."""

from __future__ import annotations

from ..._core.codecs import CODEC_NAMES
from ..._core.limits import check_name, pack_header
from ..._core.protocol import Op, Reply, Request
from ..._exceptions import AccessDenied, BlockNotFound, InvalidRequest
from ..session import Session, block_fields
from ..state import ServerState
from .blocks import lease_or_wait


def put(state: ServerState, session: Session, req: Request) -> None:
    """First half of ``put``: a new block with its write lease, for the client to
    encode into; COMMIT records the codec and binds the name."""
    rec = state.new_block(session.proc, req.args["size"])
    lease = state.table.request_lease(session.proc, rec, "w", None)
    assert lease is not None  # a new block is uncontended
    session.reply(Reply(req.req_id, Op.PUT, {"lease": lease.id, **block_fields(rec)}))


def commit(state: ServerState, session: Session, req: Request) -> None:
    """Second half of ``put``: record the codec and its meta (bounded like a header:
    every GET echoes it), end the write lease, bind the name. Refused before anything
    changed when a field is wrong (the client still holds its lease)."""
    a = req.args
    proc = session.proc
    lease = state.table.find_lease(proc, a["lease"])
    rec = lease.block
    if lease.mode != "w" or rec.owner is not proc:
        raise AccessDenied(f"lease {lease.id} is not a write lease on a block you own")
    if a["codec"] not in CODEC_NAMES:
        raise InvalidRequest(f"unknown codec {a['codec']!r}; known: {', '.join(CODEC_NAMES)}")
    name = a["name"]
    if name:  # "" commits an object with no name
        check_name(name, "object name")
    pack_header(a["meta"], "codec meta")
    rec.codec, rec.meta = a["codec"], a["meta"]
    ended = state.table.end_lease(lease)  # bumps the generation before we answer
    if name:
        state.settle(state.table.bind(proc, rec, name, cacheable=a["cacheable"]))
    session.reply(Reply(req.req_id, Op.COMMIT, {"generation": rec.generation, "slot": rec.slot}))
    state.settle(ended)


def get(state: ServerState, session: Session, req: Request) -> None:
    """A read lease on a named object (any process) or a block it may read; the
    reply carries what the client needs to decode and cache it."""
    name = req.args["name"]
    if name:
        try:
            rec = state.table.find_name(name)
        except BlockNotFound:
            state.cache_counts[1] += 1
            raise
        state.cache_counts[0] += 1
    else:
        rec = state.table.readable(session.proc, req.args["block"])
    lease_or_wait(state, session, req, rec, "r", transient=False)


def touch(state: ServerState, session: Session, req: Request) -> None:
    state.table.touch(req.args["blocks"])
    session.reply(Reply(req.req_id, Op.TOUCH))


def delete(state: ServerState, session: Session, req: Request) -> None:
    outcome = state.table.unbind(req.args["name"])
    session.reply(Reply(req.req_id, Op.DELETE))
    state.settle(outcome)


HANDLERS = {
    Op.PUT: put,
    Op.COMMIT: commit,
    Op.GET: get,
    Op.TOUCH: touch,
    Op.DELETE: delete,
}
