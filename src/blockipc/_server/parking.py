"""Parked requests: one registry per session, each entry cancels and abandons itself.

A request that cannot be answered at once parks in its session's registry
(``Session.parked``, by request id) as a :class:`Parked` entry, until it is answered,
cancelled or abandoned. ``CANCEL`` (``ops/control.py``) and disconnect (``reclaim.py``)
reach every kind of wait only through that registry and the entry's own
:meth:`~Parked.cancel` and :meth:`~Parked.abandon`, so neither can miss one (trio's
``ParkingLot`` with its abort function, pyzmq's self-removing futures). An entry may
also be indexed where its wake-up finds it (a session's waiting receives, a name's
waiting senders, a block's lease queue, a process's pending deliveries), and leaves
those indexes when it leaves the registry.

The kinds that belong to one group of operations live with it (``LeaseWait`` in
``ops/blocks.py``, ``CopyJob`` in ``ops/copy.py``, ``QueuedSend`` in
``ops/messages.py``, ``Fanout`` in ``ops/pubsub.py``); the two that several groups
use, :class:`Queued` and :class:`PeerWait`, live here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from .._core.limits import MAX_PARKED
from .._core.protocol import CANCELLED, ErrorReply, Request
from .._exceptions import PeerUnreachable, QuotaExceeded
from .session import ParkedEntry, Session, error_reply
from .state import ServerState

__all__ = ["Parked", "PeerWait", "Queued", "wait_for_peer"]


@dataclass(eq=False, slots=True)
class Parked:
    """A request parked in ``session.parked`` (see the module's docstring)."""

    state: ServerState
    session: Session
    request: Request

    def park(self) -> None:
        """Enter the registry, before anything else of the request is done (so that a
        full registry refuses it with nothing to undo)."""
        parked = self.session.parked
        if len(parked) >= MAX_PARKED:
            raise QuotaExceeded(
                f"this connection already has {MAX_PARKED} requests waiting in the "
                "coordinator; let some of them finish (or cancel them) first"
            )
        parked[self.request.req_id] = self

    def unpark(self) -> None:
        self.session.parked.pop(self.request.req_id, None)

    def cancelled(self) -> ErrorReply:
        return ErrorReply(self.request.req_id, self.request.op, CANCELLED, "cancelled")

    def cancel(self) -> None:
        """``CANCEL``: withdraw the request and answer it as cancelled (it has left the
        registry before it returns)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """The session ended: drop what only this entry knows of (a timer, an index),
        answering nothing. What the process queued in the routing table (lease waits,
        deliveries) goes with its ``unregister``."""


@dataclass(eq=False, slots=True)
class Queued(Parked):
    """A RECV, RECV_MANY or CHANNEL_ACCEPT waiting, in order, in ``queue`` (the
    session's ``recv_waits`` or ``accept_waits``) for a message or a channel."""

    queue: deque[ParkedEntry]

    def cancel(self) -> None:
        self.unpark()
        self.queue.remove(self)
        self.session.reply(self.cancelled())


@dataclass(eq=False, slots=True)
class PeerWait(Parked):
    """A SEND or CHANNEL_OPEN waiting for its receiver to register (``wait_for_peer``);
    indexed by that name in ``state.peer_waits`` for the wake-up."""

    name: str
    timer: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.peer_waits.remove(self)

    def expire(self) -> None:
        self.abandon()
        ms = self.request.args["wait_ms"]
        exc = PeerUnreachable(f"no process named {self.name!r} registered within {ms} ms")
        self.session.reply(error_reply(self.request, exc))


def wait_for_peer(state: ServerState, session: Session, req: Request) -> None:
    """Park ``req`` until ``req.args["to"]`` registers or ``wait_ms`` runs out."""
    wait = PeerWait(state, session, req, req.args["to"])
    wait.park()
    state.peer_waits.add(wait, req.args["wait_ms"] / 1000, wait.expire)
