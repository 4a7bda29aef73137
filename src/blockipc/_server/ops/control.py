"""Control: STATS, PEERS, CANCEL, BYE, and REMOTE_SEND (handed to the link)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._core.limits import pack_header
from ..._core.protocol import Event, Op, Reply, Request, fit_lists
from ..._core.routing import ProcessRecord
from ..._exceptions import PeerUnreachable
from ..parking import Parked
from ..session import Session
from ..state import ServerState
from .queues import queue_row

if TYPE_CHECKING:
    from ..._link.link import Link, Outgoing

_STATS_SCALARS = (
    "pool_size",
    "max_pool_size",
    "free_bytes",
    "used_bytes",
    "blocks",
    "segments",
    "leases",
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "channels",
    "names_total",
    "processes_total",
    "largest_free",
    "queue_inline_bytes",
)


def stats(state: ServerState, session: Session, req: Request) -> None:
    s = state.stats()
    fields: dict[str, Any] = {name: getattr(s, name) for name in _STATS_SCALARS}
    fields["processes"] = list(s.processes)
    fields["names"] = list(s.names)
    fields["links"] = [list(dataclasses.astuple(link)) for link in s.links]
    fields["usage"] = [list(dataclasses.astuple(usage)) for usage in s.usage]
    fields["queues"] = [queue_row(q) for q in s.queues]
    # sorted lists, of which a frame carries the first 4096: the *_total fields count all
    session.reply(Reply(req.req_id, Op.STATS, fit_lists(Op.STATS, fields)))


def peers(state: ServerState, session: Session, req: Request) -> None:
    names = sorted(state.table.processes)
    session.reply(Reply(req.req_id, Op.PEERS, fit_lists(Op.PEERS, {"names": names})))


def cancel(state: ServerState, session: Session, req: Request) -> None:
    """CANCEL a parked request: it answers itself as cancelled (or, a send already
    in an inbox, stays done). A target that is not parked (answered already, or
    never waited) is left alone: the client sends CANCEL for any call it abandons."""
    entry = session.parked.get(req.args["target"])
    if entry is not None:
        entry.cancel()
    session.reply(Reply(req.req_id, Op.CANCEL))


def bye(state: ServerState, session: Session, req: Request) -> None:
    session.reply(Reply(req.req_id, Op.BYE))
    session.close_after_flush()


@dataclass(eq=False, slots=True)
class RemoteSend(Parked):
    """A REMOTE_SEND the link carries: parked from the request until the link answers
    it, which it does through this entry (a ``Requester``). Cancelled while still
    queued for its peer, the link takes it back (the block is the sender's again);
    once written to the peer, it runs to its answer. Abandoned (the sender is gone),
    a queued send is taken back the same way: the sender's blocks go with it."""

    link: Link | None = None
    sent: Outgoing | None = None  # the link's handle of the send

    @property
    def proc(self) -> ProcessRecord:
        return self.session.proc

    def reply(self, event: Event) -> None:
        self.unpark()
        self.session.reply(event)

    def hold(self) -> bool:
        return self.session.hold()

    def release(self) -> None:
        self.session.release()

    def cancel(self) -> None:
        if self._withdraw():
            self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self._withdraw()

    def _withdraw(self) -> bool:
        if self.link is None or self.sent is None or not self.link.withdraw(self.sent):
            return False
        self.unpark()
        return True


def remote_send(state: ServerState, session: Session, req: Request) -> None:
    link = state.link
    pack_header(req.args["header"])  # invalid whatever the link's state
    if link is None:
        raise PeerUnreachable(
            f"cannot send to {req.args['to']!r}: this coordinator has no link "
            "(start it with node=..., peers=...)"
        )
    entry = RemoteSend(state, session, req, link)
    entry.park()  # before the link may answer it (a node known to refuse: at once)
    try:
        entry.sent = link.send(entry, req)  # answered when the peer acknowledges, or fails
    except BaseException:
        entry.unpark()
        raise


HANDLERS = {
    Op.STATS: stats,
    Op.PEERS: peers,
    Op.CANCEL: cancel,
    Op.BYE: bye,
    Op.REMOTE_SEND: remote_send,
}
