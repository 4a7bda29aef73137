"""Publish/subscribe: SUBSCRIBE, UNSUBSCRIBE, PUBLISH (a block to every subscriber's
inbox, with a read grant each), and the fan-out a publish parks as.

Across nodes: a node's link knows which topics and patterns each linked peer's
processes subscribe to (``_link/link.py``); a publish sends its block once to every
peer with a matching subscriber (:class:`RemotePart`, a part of the fan-out answered
when that node's subscribers all took it), and a block published from another node
is fanned out here by :func:`fan_out_remote`, to this node's subscribers only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..._core.limits import check_name, pack_header
from ..._core.protocol import NO_BLOCK, Event, Op, Reply, Request
from ..._core.routing import NOTHING, BlockRecord, Delivery, ProcessRecord
from ..._exceptions import AccessDenied, BlockIPCError, InboxFull
from ..parking import Parked
from ..session import Session
from ..state import ServerState

if TYPE_CHECKING:
    from ..._link.link import Outgoing


@dataclass(eq=False, slots=True)
class Fanout(Parked):
    """A publish in progress: answered when every subscriber's inbox took the block;
    parked while parts of it wait for room."""

    block: BlockRecord | None  # None: a header alone
    remaining: int
    delivered: int = 0
    waiting: list[tuple[ProcessRecord, FanoutPart]] = field(default_factory=list)
    remote: list[RemotePart] = field(default_factory=list)
    withdrawn: bool = False

    def cancel(self) -> None:
        self.unpark()
        self.withdrawn = True  # answered CANCELLED once its last part is done
        for to, part in self.waiting:
            if self.state.table.withdraw(to, part) is not None:
                self.part_done(delivered=False)
        link = self.state.link
        for remote in self.remote:  # those still queued for their peer (none written)
            if link is not None and remote.sent is not None and link.withdraw(remote.sent):
                self.part_done(delivered=False)

    def part_done(self, *, delivered: int) -> None:
        """One part (a subscriber's delivery, a peer node's fan-out, or the publisher's
        own) is over, ``delivered`` to that many inboxes."""
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

    fanout: Fanout | RemoteFanout

    def done(self, error: BlockIPCError | None) -> None:
        self.fanout.part_done(delivered=error is None)


@dataclass(eq=False, slots=True)
class RemotePart:
    """A publish's part on a peer node: the link's send of the block to that node's
    fan-out (a ``ReplyTo``), answered with how many subscribers there took it."""

    fanout: Fanout
    sent: Outgoing | None = None

    def reply(self, event: Event) -> None:
        n = int(event.result.get("delivered", 0)) if isinstance(event, Reply) else 0
        self.fanout.part_done(delivered=n)

    def hold(self) -> bool:
        return self.fanout.session.hold()

    def release(self) -> None:
        self.fanout.session.release()


@dataclass(eq=False, slots=True)
class RemoteFanout:
    """A block published on another node, fanned out to this node's subscribers: the
    link's hold (``holder``) ends once every inbox took it, then ``done(delivered)``
    (the link's ack). Not parked: no session of this node asked for it."""

    state: ServerState
    holder: ProcessRecord
    block: BlockRecord
    done: Callable[[int], None]
    remaining: int
    delivered: int = 0

    def part_done(self, *, delivered: int) -> None:
        self.delivered += delivered
        self.remaining -= 1
        if self.remaining:
            return
        state, rec = self.state, self.block
        if rec.id in state.table.blocks and rec.id in self.holder.blocks and not state.pool.closed:
            state.settle(state.table.release_hold(self.holder, rec))
        self.done(self.delivered)


def fan_out_remote(
    state: ServerState,
    holder: ProcessRecord,
    rec: BlockRecord,
    sender: ProcessRecord,
    topic: str,
    header: dict[str, Any],
    done: Callable[[int], None],
) -> None:
    """Deliver ``rec`` (held by the link's ``holder``), published on another node by
    ``sender``, to every subscriber of ``topic`` here, with a read grant each, as
    :func:`publish` does; never to another node (a published block crosses one link)."""
    table = state.table
    subs = table.subscribers(topic)
    fanout = RemoteFanout(state, holder, rec, done, remaining=len(subs) + 1)
    for sub in subs:
        part = FanoutPart(fanout)
        if table.offer(Delivery(rec, sender, sub, header, False, part, topic)):
            fanout.part_done(delivered=True)
            state.wake_receiver(sub)
    fanout.part_done(delivered=False)  # the link's own part


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
    link = state.link
    # peer nodes with a subscriber: the block goes to each once (a header alone: local)
    nodes = [] if link is None or rec is None else link.subscribed_nodes(topic)
    fanout = Fanout(state, session, req, rec, remaining=len(subs) + len(nodes) + 1)
    fanout.park()  # until its last part is done (the publisher's own, below, at the latest)
    for sub in subs:
        part = FanoutPart(fanout)
        delivery = Delivery(rec, proc, sub, a["header"], False, part, topic)
        if table.offer(delivery):
            fanout.part_done(delivered=True)
            state.wake_receiver(sub)
        else:
            fanout.waiting.append((sub, part))
    for node in nodes:
        assert link is not None and rec is not None
        remote = RemotePart(fanout)
        fanout.remote.append(remote)
        try:  # answered by the link when that node's subscribers took it, or it failed
            remote.sent = link.publish(remote, req, proc, rec, node, topic, a["header"])
        except BlockIPCError:  # (the link is closing, or the block is under a write lease)
            fanout.part_done(delivered=False)
    fanout.part_done(delivered=False)  # the publisher's own part


HANDLERS = {Op.SUBSCRIBE: subscribe, Op.UNSUBSCRIBE: unsubscribe, Op.PUBLISH: publish}
