"""Disconnect: everything a process held goes back, and everything it waited for ends.

Runs once per connection, synchronously, from the listener's ``finally`` (so that no
cancellation can cut it short): the session's parked requests abandon themselves, its
channel ends close (aborted, in the ring, unless the client had closed them there;
its offers not accepted yet and so aborted are withdrawn), the requests it had not
answered as a responder fail (``PeerUnreachable``), and the routing table's
``unregister`` decides the rest, which :meth:`ServerState.settle` applies. Deliveries
to the process that were still queued fail with :class:`PeerUnreachable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core.routing import ProcessRecord
from .._exceptions import PeerUnreachable
from .._log import get_logger
from .ops.channels import end_channel
from .ops.objects import claims_released
from .ops.queues import give_back_jobs
from .ops.requests import requests_released
from .session import Session

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["reclaim"]

log = get_logger("blockipc.coordinator")


def reclaim(state: ServerState, proc: ProcessRecord, token: bytes, session: Session | None) -> None:
    """Reclaim what ``proc`` held (``session`` None: it never got one)."""
    state.tokens.pop(token, None)
    if session is not None:
        state.sessions.pop(proc.key, None)
        session.abort()
        for entry in list(session.parked.values()):
            entry.abandon()
        session.parked.clear()
    for chan in list(proc.channels.values()):  # those it did not close in the ring: aborted
        end_channel(state, chan, proc, gone=True)
    claims_released(state, proc)  # (its own waits for claims went with its parked)
    give_back_jobs(state, proc)  # taken jobs not acked: back to their queues at once
    requests_released(state, proc)  # requests to it, queued or in hand: failed at once
    outcome = state.table.unregister(proc)
    freed = state.settle(outcome)
    exc = PeerUnreachable(f"{proc.name!r} disconnected before the block was delivered")
    state.deliveries_done(outcome.failed, exc)
    if outcome.leases:
        log.warning("lease.reclaimed", name=proc.name, pid=proc.pid, leases=outcome.leases)
    log.info(
        "client.disconnect",
        name=proc.name,
        pid=proc.pid,
        blocks_freed=len(outcome.freed),
        bytes_freed=freed,
        leases_reclaimed=outcome.leases,
    )
