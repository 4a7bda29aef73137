"""Disconnect: everything a process held goes back, and everything it waited for ends.

Runs once per connection from the listener's ``finally``. The first part is
synchronous, so no cancellation can cut it short: the session's parked requests abandon
themselves, its channel ends close (aborted, in the ring, unless the client had closed
them there; its offers not accepted yet and so aborted are withdrawn), the requests it
had not answered as a responder fail (``PeerUnreachable``), and the routing
table's ``unregister`` takes the process out of every lookup (nothing is granted or
delivered to it after that, and its name is free for a restarted process) and gives
back the first :data:`~.._core.limits.RECLAIM_SLICE` of its blocks;
:meth:`ServerState.settle` applies each outcome. Deliveries to the process that were
still queued fail with :class:`PeerUnreachable`.

A process that held more (262,144 blocks took 0.8 s in one step, every other client
frozen meanwhile) is reclaimed in slices by a task that ``ServerState.reclaims`` holds:
one ``reclaim_some`` per event-loop turn, so the other clients are served between
slices. Cancelled, the task gives back the rest at once; the coordinator's close waits
for it before it frees the pool. ``client.disconnect`` is logged when all is back.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._core.routing import Outcome, ProcessRecord
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


@dataclass(eq=False, slots=True)
class _Progress:
    """What a reclaim gave back so far, for its ``client.disconnect`` event."""

    blocks: int = 0
    bytes: int = 0
    slices: int = 0
    leases: int = 0


def reclaim(state: ServerState, proc: ProcessRecord, token: bytes, session: Session | None) -> None:
    """Reclaim what ``proc`` held (``session`` None: it never got one): at once, or its
    first slice now and the rest in a task (see the module's docstring)."""
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
    outcome = state.table.unregister(proc, limit=state.reclaim_slice)
    progress = _Progress(leases=outcome.leases)
    _apply(state, outcome, progress)
    exc = PeerUnreachable(f"{proc.name!r} disconnected before the block was delivered")
    state.deliveries_done(outcome.failed, exc)
    if outcome.leases:
        log.warning("lease.reclaimed", name=proc.name, pid=proc.pid, leases=outcome.leases)
    if not state.table.reclaim_left(proc):  # the common case: all back in one step
        _done(proc, progress)
        return
    task = asyncio.get_running_loop().create_task(_reclaim_rest(state, proc, progress))
    state.reclaims[proc.key] = task
    # (a callback, not a finally: it runs even for a task cancelled before it started)
    task.add_done_callback(functools.partial(_finished, state, proc, progress))


async def _reclaim_rest(state: ServerState, proc: ProcessRecord, progress: _Progress) -> None:
    """The slices after the first, one per turn of the event loop."""
    table = state.table
    try:
        while table.reclaim_left(proc) and not state.pool.closed:
            await asyncio.sleep(0)  # the other clients' requests run here
            _apply(state, table.reclaim_some(proc, state.reclaim_slice), progress)
    except Exception as exc:  # a bug must not leave the task's exception unretrieved
        log.exception("coordinator.reclaim_failed", name=proc.name, error=repr(exc))


def _finished(
    state: ServerState, proc: ProcessRecord, progress: _Progress, _task: asyncio.Task[None]
) -> None:
    """The task ended: if it was cancelled (the loop shutting down), the rest at once."""
    state.reclaims.pop(proc.key, None)
    if state.table.reclaim_left(proc) and not state.pool.closed:
        _apply(state, state.table.reclaim_some(proc), progress)
    _done(proc, progress)


def _apply(state: ServerState, outcome: Outcome, progress: _Progress) -> None:
    progress.bytes += state.settle(outcome)
    progress.blocks += len(outcome.freed)
    progress.slices += 1


def _done(proc: ProcessRecord, progress: _Progress) -> None:
    log.info(
        "client.disconnect",
        name=proc.name,
        pid=proc.pid,
        blocks_freed=progress.blocks,
        bytes_freed=progress.bytes,
        leases_reclaimed=progress.leases,
        slices=progress.slices,
    )
