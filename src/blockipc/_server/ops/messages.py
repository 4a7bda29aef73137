"""Messages: SEND (a block into another process's inbox), SEND_DATA and SEND_MANY
(inline messages: small payloads that travel in the frames, one or a batch per
request), RECV and RECV_MANY; the receiver lookup that parks a request until its peer
registers (``wait_for_peer``).

Every kind of message goes through the routing table's one inbox rule
(``RoutingTable.offer``: messages and bytes, the order of each sender's messages, the
wait for room or ``InboxFull``); an inline batch is one delivery, admitted whole."""

from __future__ import annotations

from dataclasses import dataclass

from ..._core.limits import check_batch, check_inline_batch, pack_header
from ..._core.protocol import NO_BLOCK, Op, Reply, Request
from ..._core.routing import Delivery, ProcessRecord
from ..._exceptions import BlockIPCError, InvalidRequest, PeerUnreachable
from ..parking import Parked, Queued, wait_for_peer
from ..session import Session, error_reply
from ..state import ServerState


@dataclass(eq=False, slots=True)
class QueuedSend(Parked):
    """A SEND whose delivery waits for room in ``to``'s inbox; also the delivery's token."""

    to: ProcessRecord

    def done(self, error: BlockIPCError | None) -> None:
        """The delivery reached the inbox (``error`` None) or never will."""
        self.unpark()
        if error is None:
            self.session.reply(Reply(self.request.req_id, self.request.op))
        else:
            self.session.reply(error_reply(self.request, error))

    def cancel(self) -> None:
        self.unpark()
        if self.state.table.withdraw(self.to, self) is not None:
            self.session.reply(self.cancelled())


def receiver(state: ServerState, session: Session, req: Request) -> ProcessRecord | None:
    """The process named ``req.args["to"]``, or None once the request is parked to
    wait for it to register (``wait_ms``); :class:`PeerUnreachable` if it may not."""
    a = req.args
    to = state.table.processes.get(a["to"])
    if to is None:
        if not a["wait_ms"]:
            raise PeerUnreachable(f"no process named {a['to']!r} is registered")
        wait_for_peer(state, session, req)
    return to


def send(state: ServerState, session: Session, req: Request) -> None:
    """SEND a block (moved, or shared with a read grant) or, with block ``NO_BLOCK``, a
    header alone, into the receiver's inbox; parked while it is full."""
    a = req.args
    move = a["move"] and a["block"] != NO_BLOCK
    rec = None
    if a["block"] != NO_BLOCK:
        rec = state.table.lookup(session.proc, a["block"], "own" if move else "r")
    pack_header(a["header"])
    to = receiver(state, session, req)
    if to is None:  # parked until it registers
        return
    if rec is not None and move:
        state.table.check_movable(session.proc, rec)
    _offer(state, session, req, to, Delivery(rec, session.proc, to, a["header"], move, None))


def send_data(state: ServerState, session: Session, req: Request) -> None:
    """SEND_DATA (one inline message) and SEND_MANY (a batch, admitted whole) into the
    receiver's inbox; parked while it has no room for them."""
    a = req.args
    data = req.data
    sizes = a["sizes"] if req.op is Op.SEND_MANY else [len(data)]
    check_inline_batch(sizes, len(data))
    if not a["codec"]:
        raise InvalidRequest("an inline message needs the name of the codec that encoded it")
    pack_header(a["header"])
    if a["meta"]:  # the header rule, as a named object's meta (most codecs have none)
        pack_header(a["meta"], "codec meta")
    to = receiver(state, session, req)
    if to is None:  # parked until it registers
        return
    if len(sizes) == 1:
        payloads: tuple[bytes, ...] = (data,)
    else:
        at, cut = 0, []
        for n in sizes:  # (the frame's data is bytes: a slice is one copy)
            cut.append(data[at : at + n])
            at += n
        payloads = tuple(cut)
    delivery = Delivery(
        None, session.proc, to, a["header"], False, None, "", payloads, a["codec"], a["meta"]
    )
    _offer(state, session, req, to, delivery)


def _offer(
    state: ServerState, session: Session, req: Request, to: ProcessRecord, delivery: Delivery
) -> None:
    """Offer ``delivery`` to ``to``'s inbox: answered at once if it got in, else parked
    (its token the delivery's) until it does or never will."""
    a = req.args
    token = QueuedSend(state, session, req, to)
    token.park()
    delivery.token = token
    try:
        delivered = state.table.offer(delivery, nowait=a["nowait"])
    except BaseException:
        token.unpark()
        raise
    if delivered:
        token.unpark()
        session.reply(Reply(req.req_id, req.op))
        state.wake_receiver(to)


def recv(state: ServerState, session: Session, req: Request) -> None:
    """RECV (one message) and RECV_MANY (what the inbox holds, up to ``max``)."""
    if req.op is Op.RECV_MANY:
        check_batch(req.args["max"], "RECV_MANY max")
    if session.proc.inbox and not session.recv_waits:
        state.deliver(session, req)
    else:
        wait = Queued(state, session, req, session.recv_waits)
        wait.park()
        session.recv_waits.append(wait)


HANDLERS = {
    Op.SEND: send,
    Op.SEND_DATA: send_data,
    Op.SEND_MANY: send_data,
    Op.RECV: recv,
    Op.RECV_MANY: recv,
}
