"""Publish/subscribe: SUBSCRIBE, UNSUBSCRIBE, PUBLISH (a block to every subscriber's
inbox, with a read grant each), and the fan-out a publish parks as."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..._core.limits import check_name, pack_header
from ..._core.protocol import NO_BLOCK, Op, Reply, Request
from ..._core.routing import NOTHING, BlockRecord, Delivery, ProcessRecord
from ..._exceptions import AccessDenied, BlockIPCError, InboxFull
from ..parking import Parked
from ..session import Session
from ..state import ServerState


@dataclass(eq=False, slots=True)
class Fanout(Parked):
    """A publish in progress: answered when every subscriber's inbox took the block;
    parked while parts of it wait for room."""

    block: BlockRecord | None  # None: a header alone
    remaining: int
    delivered: int = 0
    waiting: list[tuple[ProcessRecord, FanoutPart]] = field(default_factory=list)
    withdrawn: bool = False

    def cancel(self) -> None:
        self.unpark()
        self.withdrawn = True  # answered CANCELLED once its last part is done
        for to, part in self.waiting:
            if self.state.table.withdraw(to, part) is not None:
                self.part_done(delivered=False)

    def part_done(self, *, delivered: bool) -> None:
        """One part (a subscriber's delivery, or the publisher's own) is over."""
        self.delivered += delivered
        self.remaining -= 1
        if self.remaining:
            return
        state, session, rec = self.state, self.session, self.block
        self.unpark()
        if self.withdrawn:  # what was delivered stays delivered; the block stays too
            session.reply(self.cancelled())
            return
        if rec is not None and rec.id in state.table.blocks and rec.id in session.proc.blocks:
            try:
                outcome = state.table.release_hold(session.proc, rec)
            except AccessDenied:  # it leased or sent the block meanwhile: it keeps it
                outcome = NOTHING  # (raising would answer a request twice: another's)
            state.settle(outcome)
        session.reply(Reply(self.request.req_id, Op.PUBLISH, {"delivered": self.delivered}))


@dataclass(eq=False, slots=True)
class FanoutPart:
    """One subscriber's delivery of a publish (the delivery's token)."""

    fanout: Fanout

    def done(self, error: BlockIPCError | None) -> None:
        self.fanout.part_done(delivered=error is None)


def _topic(req: Request) -> str:
    return check_name(req.args["topic"], "topic")


def subscribe(state: ServerState, session: Session, req: Request) -> None:
    state.table.subscribe(session.proc, _topic(req))
    session.reply(Reply(req.req_id, Op.SUBSCRIBE))


def unsubscribe(state: ServerState, session: Session, req: Request) -> None:
    state.table.unsubscribe(session.proc, _topic(req))
    session.reply(Reply(req.req_id, Op.UNSUBSCRIBE))


def publish(state: ServerState, session: Session, req: Request) -> None:
    """Give every subscriber a read grant and an inbox message; the publisher's own
    hold ends once every inbox took it, so the block is freed after the last
    subscriber frees it (a publisher that leased or sent the block meanwhile keeps
    its hold, and frees the block itself). Block ``NO_BLOCK``: a header alone."""
    a = req.args
    table = state.table
    topic = _topic(req)
    proc = session.proc
    rec = None
    if a["block"] != NO_BLOCK:
        rec = table.lookup(proc, a["block"], "own")
    pack_header(a["header"])
    if rec is not None:
        table.check_movable(proc, rec)
    subs = [p for p in table.subscribers(topic) if p is not proc]
    if a["nowait"]:
        size = 0 if rec is None else rec.size
        full = [p.name for p in subs if not table.has_room(p, size)]
        if full:
            raise InboxFull(f"inboxes full for {', '.join(map(repr, full))}; nothing sent")
    fanout = Fanout(state, session, req, rec, remaining=len(subs) + 1)
    fanout.park()  # until its last part is done (the publisher's own, below, at the latest)
    for sub in subs:
        part = FanoutPart(fanout)
        delivery = Delivery(rec, proc, sub, a["header"], False, part, topic)
        if table.offer(delivery):
            fanout.part_done(delivered=True)
            state.wake_receiver(sub)
        else:
            fanout.waiting.append((sub, part))
    fanout.part_done(delivered=False)  # the publisher's own part


HANDLERS = {Op.SUBSCRIBE: subscribe, Op.UNSUBSCRIBE: unsubscribe, Op.PUBLISH: publish}
