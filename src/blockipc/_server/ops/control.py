"""Control: STATS, PEERS, CANCEL, BYE, and REMOTE_SEND (handed to the link)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..._core.limits import pack_header
from ..._core.protocol import Op, Reply, Request, fit_lists
from ..._exceptions import PeerUnreachable
from ..session import Session
from ..state import ServerState

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
)


def stats(state: ServerState, session: Session, req: Request) -> None:
    s = state.stats()
    fields: dict[str, Any] = {name: getattr(s, name) for name in _STATS_SCALARS}
    fields["processes"] = list(s.processes)
    fields["names"] = list(s.names)
    fields["links"] = [list(dataclasses.astuple(link)) for link in s.links]
    fields["usage"] = [list(dataclasses.astuple(usage)) for usage in s.usage]
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


def remote_send(state: ServerState, session: Session, req: Request) -> None:
    if state.link is None:
        raise PeerUnreachable(
            f"cannot send to {req.args['to']!r}: this coordinator has no link "
            "(start it with node=..., peers=...)"
        )
    pack_header(req.args["header"])
    state.link.send(session, req)  # answered when the peer acknowledges (or fails)


HANDLERS = {
    Op.STATS: stats,
    Op.PEERS: peers,
    Op.CANCEL: cancel,
    Op.BYE: bye,
    Op.REMOTE_SEND: remote_send,
}
