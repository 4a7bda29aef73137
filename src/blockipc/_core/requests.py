"""Request/reply: requests routed from a requester to a responder and back, no I/O.

Theory of operation
-------------------
``client.request(to, obj)`` asks the process registered as ``to`` (its *responder*;
one per name) and waits for its answer; the responder receives requests in order
(``async for req in client.requests()``) and answers each with ``req.reply(obj)`` or
``req.fail(error)``. The coordinator keeps, per responder, a :class:`Desk`:

* ``queued``: the requests it has not received yet, in arrival order, at most
  ``MAX_QUEUED_REQUESTS`` (the next is refused with ``InboxFull``, nothing sent);
* ``in_hand``: those it received and has not answered, at most ``MAX_IN_HAND`` (its
  next receive is refused with ``QuotaExceeded``);
* ``serving``: its receives waiting for a request (their tokens), in order.

A request that finds a receive waiting goes to it at once; a receive that finds a
request queued takes it at once. So a request costs one frame each way on each side:
the requester's REQUEST, answered when the reply comes; the responder's waiting
receive, answered with the request; its RESPOND, answered at once.

A payload travels inline (the frame's data, at most ``MAX_INLINE_PAYLOAD`` bytes) or as
a block, moved to the other side as a moving send moves it (the routing table's
request/reply methods: ``carry`` while the request is queued, ``hand_over`` when it is
received, ``uncarry`` when it is withdrawn first).

Endings. The requester gives up (``CANCEL``, its timeout, its process gone): a queued
request is withdrawn (its block stays the requester's); one in hand is marked
``withdrawn``, and the responder's answer to it, when it comes, is dropped (its block
freed). The responder's process ends: every request queued for it or in its hands
that the requester still waits for is returned by :meth:`RequestTable.drop_responder`,
and its requester fails at once (``PeerUnreachable``), not at its timeout; the blocks
of those in its hands were its own, and go with it.

The tokens are the coordinator's parked requests (``_server/ops/requests.py``), whose
cancel and abandon call back in here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._exceptions import InvalidRequest
from .limits import check_in_hand, check_queued_requests
from .routing import BlockRecord, ProcessRecord, RoutingTable

__all__ = ["CallRecord", "Desk", "RequestTable", "Submitted"]


@dataclass(eq=False, slots=True)
class CallRecord:
    """One request: who asked whom, its payload, and the requester's token."""

    id: int
    requester: ProcessRecord
    responder: ProcessRecord
    block: BlockRecord | None  # None: inline, in ``data``
    codec: str
    meta: dict[str, Any]
    data: bytes
    token: Hashable  # the requester's parked REQUEST, answered with the reply
    withdrawn: bool = False  # in hand, but its requester gave up: the answer is dropped


@dataclass(eq=False, slots=True)
class Desk:
    """One responder's requests: queued, in its hands, and its waiting receives."""

    queued: deque[CallRecord] = field(default_factory=deque)
    in_hand: dict[int, CallRecord] = field(default_factory=dict)
    serving: deque[Hashable] = field(default_factory=deque)


class Submitted(NamedTuple):
    """A request made: its record, and the waiting receive it was handed to (the
    caller answers that token with it), or None when it was queued."""

    call: CallRecord
    server: Hashable | None


class RequestTable:
    """The requests of one coordinator, by responder (see the module's docstring).

    >>> table = RoutingTable()
    >>> asker = table.register("asker", pid=1, uid=0)
    >>> svc = table.register("svc", pid=2, uid=0)
    >>> requests = RequestTable(table)
    >>> requests.submit(asker, svc, None, "raw", {}, b"ping", token="r1").server is None
    True
    >>> call = requests.serve(svc, token="s1")
    >>> (call.requester.name, call.data, requests.answer(svc, call.id) is call)
    ('asker', b'ping', True)
    """

    __slots__ = ("_next", "desks", "direct", "table")

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.desks: dict[int, Desk] = {}  # responder's process key -> its desk
        # responder's process key -> its direct socket's address (_client/direct.py):
        # handed to its requesters with each reply, forgotten when its process ends
        self.direct: dict[int, str] = {}
        self._next = 1

    def submit(
        self,
        requester: ProcessRecord,
        responder: ProcessRecord,
        rec: BlockRecord | None,
        codec: str,
        meta: dict[str, Any],
        data: bytes,
        token: Hashable,
    ) -> Submitted:
        """A request from ``requester`` to ``responder`` carrying ``rec`` (a block of
        the requester's) or ``data``: handed to a waiting receive, or queued. Refused,
        before anything changes, when the responder's queue is full (``InboxFull``) or
        the block may not move."""
        desk = self.desks.get(responder.key)
        if desk is None:
            desk = self.desks[responder.key] = Desk()
        if not desk.serving:
            check_queued_requests(len(desk.queued), responder.name)
        if rec is not None:
            self.table.carry(requester, rec)  # (checks that it may move)
        call = CallRecord(self._next, requester, responder, rec, codec, meta, data, token)
        self._next += 1
        if desk.serving:
            server = desk.serving.popleft()
            self._hand(desk, call)
            return Submitted(call, server)
        desk.queued.append(call)
        return Submitted(call, None)

    def serve(self, responder: ProcessRecord, token: Hashable) -> CallRecord | None:
        """``responder`` receives its next request: returned now (it is in its hands),
        or ``token`` waits for one (None). Refused with ``QuotaExceeded`` while it holds
        ``MAX_IN_HAND`` requests it has not answered."""
        desk = self.desks.get(responder.key)
        if desk is None:
            desk = self.desks[responder.key] = Desk()
        check_in_hand(len(desk.in_hand) + len(desk.serving))
        if desk.queued and not desk.serving:
            call = desk.queued.popleft()
            self._hand(desk, call)
            return call
        desk.serving.append(token)
        return None

    def withdraw_server(self, responder: ProcessRecord, token: Hashable) -> None:
        """A waiting receive left (cancelled, or its process ended)."""
        desk = self.desks.get(responder.key)
        if desk is not None and token in desk.serving:
            desk.serving.remove(token)

    def withdraw(self, call: CallRecord) -> None:
        """The requester gave up on ``call`` (cancelled, timed out, or gone): a queued
        request leaves the queue (its block is the requester's again); the answer to
        one in the responder's hands will be dropped."""
        desk = self.desks.get(call.responder.key)
        if desk is None:
            return
        if desk.in_hand.get(call.id) is call:
            call.withdrawn = True
        elif call in desk.queued:
            desk.queued.remove(call)
            if call.block is not None:
                self.table.uncarry(call.block)

    def find(self, responder: ProcessRecord, call_id: int) -> CallRecord:
        """The request ``call_id`` in ``responder``'s hands, or ``InvalidRequest``."""
        desk = self.desks.get(responder.key)
        call = None if desk is None else desk.in_hand.get(call_id)
        if call is None:
            raise InvalidRequest(
                f"request {call_id} is not in this process's hands (answered already, "
                "or never received)"
            )
        return call

    def answer(self, responder: ProcessRecord, call_id: int) -> CallRecord:
        """``responder`` answers request ``call_id``: out of its hands, returned (its
        requester is answered unless it ``withdrawn``)."""
        call = self.find(responder, call_id)
        del self.desks[responder.key].in_hand[call_id]
        return call

    def drop_responder(self, responder: ProcessRecord) -> list[CallRecord]:
        """``responder``'s process ended: the requests queued for it (their blocks are
        their requesters' again) and in its hands, whose requesters still wait (they
        fail now). Its waiting receives were its parked requests, abandoned already."""
        self.direct.pop(responder.key, None)
        desk = self.desks.pop(responder.key, None)
        if desk is None:
            return []
        for call in desk.queued:
            if call.block is not None:
                self.table.uncarry(call.block)
        calls = [*desk.queued, *desk.in_hand.values()]
        return [call for call in calls if not call.withdrawn]

    def counts(self, responder: ProcessRecord) -> tuple[int, int]:
        """``responder``'s requests queued and in hand."""
        desk = self.desks.get(responder.key)
        return (0, 0) if desk is None else (len(desk.queued), len(desk.in_hand))

    def _hand(self, desk: Desk, call: CallRecord) -> None:
        if call.block is not None:
            self.table.hand_over(call.block, call.requester, call.responder, carried=True)
        desk.in_hand[call.id] = call
