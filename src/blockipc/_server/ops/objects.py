"""Named objects and codecs: PUT (a new block under a write lease), COMMIT (its codec,
and the name bound, maybe only if absent, maybe for a time), GET (a read lease by name),
TOUCH, DELETE; CLAIM and UNCLAIM, with which ``get_or_put`` has one process compute a
missing object while the others wait (the rules: ``_core/claims.py``).

On a node, ``GET "b/name"`` (``b`` a linked peer) fetches ``name`` from node ``b``
(:class:`RemoteGet`): a copy of its bytes and codec into a new block of this pool,
leased to the asker like a local object and freed when the lease ends. A copy each
time: nothing of ``b``'s object is cached here, so no copy can go stale."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._core.codecs import CODEC_NAMES
from ..._core.limits import check_name, pack_header
from ..._core.protocol import Op, Reply, Request
from ..._core.routing import BlockRecord, ProcessRecord
from ..._exceptions import AccessDenied, BlockIPCError, BlockNotFound, InvalidRequest, NameTaken
from ..parking import Parked
from ..session import Session, block_fields, error_reply
from ..state import ServerState
from .blocks import lease_or_wait

if TYPE_CHECKING:
    from ..._link.link import RemoteGet as LinkGet


@dataclass(eq=False, slots=True)
class ClaimWait(Parked):
    """A CLAIM waiting behind another process's claim on ``name``: answered
    ``claimed=False`` once the name is bound, ``claimed=True`` if the claim passes to it."""

    name: str

    def answer(self, claimed: bool) -> None:
        self.unpark()
        self.session.reply(Reply(self.request.req_id, Op.CLAIM, {"claimed": claimed}))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.claims.withdraw(self.name, self)


def claim(state: ServerState, session: Session, req: Request) -> None:
    name = check_name(req.args["name"], "object name")
    if name in state.table.names:
        session.reply(Reply(req.req_id, Op.CLAIM, {"claimed": False}))
    elif state.claims.claim(name, session.proc):
        session.reply(Reply(req.req_id, Op.CLAIM, {"claimed": True}))
    else:
        wait = ClaimWait(state, session, req, name)
        wait.park()
        state.claims.wait(name, session.proc, wait)


def unclaim(state: ServerState, session: Session, req: Request) -> None:
    name = check_name(req.args["name"], "object name")
    session.reply(Reply(req.req_id, Op.UNCLAIM))
    _hand_over(state.claims.release(name, session.proc))


def claims_released(state: ServerState, proc: ProcessRecord) -> None:
    """``proc``'s process ended: each claim it held passes to its next waiter."""
    for token in state.claims.drop_holder(proc):
        _hand_over(token)


def _hand_over(token: object) -> None:
    if isinstance(token, ClaimWait):
        token.answer(True)


def _bound(state: ServerState, name: str) -> None:
    """``name`` was bound: whoever waited for its claim reads it now."""
    for token in state.claims.resolve(name):
        if isinstance(token, ClaimWait):
            token.answer(False)


def _set_expiry(state: ServerState, name: str, rec: BlockRecord, ttl_ms: int) -> None:
    """``name`` (bound to ``rec`` now) is unbound after ``ttl_ms`` (0: never): the timer
    of its previous binding, if any, goes."""
    old = state.expiry.pop(name, None)
    if old is not None:
        old.cancel()
    if not ttl_ms:
        return
    table = state.table
    if len(state.expiry) > 2 * len(table.names) + 1024:  # timers of names evicted since
        for gone in [n for n in state.expiry if n not in table.names]:
            state.expiry.pop(gone).cancel()

    def expire() -> None:
        state.expiry.pop(name, None)
        if table.names.get(name) is rec:
            state.settle(table.unbind(name))

    state.expiry[name] = asyncio.get_running_loop().call_later(ttl_ms / 1000, expire)


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
        if a["if_absent"] and name in state.table.names:
            raise NameTaken(f"an object named {name!r:.80} exists (put with if_absent=True)")
    elif a["if_absent"] or a["ttl_ms"]:
        raise InvalidRequest("if_absent and ttl apply to named objects only")
    pack_header(a["meta"], "codec meta")
    rec.codec, rec.meta = a["codec"], a["meta"]
    ended = state.table.end_lease(lease)  # bumps the generation before we answer
    if name:
        state.settle(state.table.bind(proc, rec, name, cacheable=a["cacheable"]))
        _set_expiry(state, name, rec, a["ttl_ms"])
    session.reply(Reply(req.req_id, Op.COMMIT, {"generation": rec.generation, "slot": rec.slot}))
    state.settle(ended)
    if name:
        _bound(state, name)


@dataclass(eq=False, slots=True)
class RemoteGet(Parked):
    """A GET of ``node/name`` that the link fetches from that peer node (a
    ``GetReplyTo``): parked until the peer answers. Cancelled or abandoned, the link
    forgets it (an answer still coming is dropped)."""

    sent: LinkGet | None = None

    def got(self, rec: BlockRecord, codec: str, meta: dict[str, Any]) -> None:
        self.unpark()
        rec.codec, rec.meta = codec, meta
        lease_or_wait(self.state, self.session, self.request, rec, "r", transient=False)

    def failed(self, exc: BlockIPCError) -> None:
        self.unpark()
        self.session.reply(error_reply(self.request, exc))

    def hold(self) -> bool:
        return self.session.hold()

    def release(self) -> None:
        self.session.release()

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        link = self.state.link
        if link is not None and self.sent is not None:
            link.forget(self.sent)


def get(state: ServerState, session: Session, req: Request) -> None:
    """A read lease on a named object (any process) or a block it may read; the
    reply carries what the client needs to decode and cache it. A name
    ``node/name`` whose node is a linked peer is fetched from there."""
    name = req.args["name"]
    link = state.link
    remote = None if link is None or not name else link.remote_name(name)
    if remote is not None:
        assert link is not None
        entry = RemoteGet(state, session, req)
        entry.park()
        try:
            entry.sent = link.get(entry, *remote)
        except BlockIPCError:
            entry.unpark()
            raise
        return
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
    timer = state.expiry.pop(req.args["name"], None)
    if timer is not None:
        timer.cancel()
    session.reply(Reply(req.req_id, Op.DELETE))
    state.settle(outcome)


HANDLERS = {
    Op.PUT: put,
    Op.COMMIT: commit,
    Op.GET: get,
    Op.TOUCH: touch,
    Op.DELETE: delete,
    Op.CLAIM: claim,
    Op.UNCLAIM: unclaim,
}
