"""Request/reply: REQUEST, SERVE, RESPOND; the waits a request (until its reply) and
a responder's receive (until a request comes) park as; the requests a responder held
when it went, failed at once (``requests_released``, from reclaim). The rules are in
``_core/requests.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from ..._core.limits import MAX_DIRECT_ADDRESS, MAX_INLINE_PAYLOAD, MAX_STR, pack_header
from ..._core.protocol import NO_BLOCK, Op, Reply, Request
from ..._core.requests import CallRecord
from ..._core.routing import BlockRecord, ProcessRecord
from ..._exceptions import BlockIPCError, InvalidRequest, PeerUnreachable, RemoteError
from ..parking import Parked
from ..session import Session, block_fields, error_reply
from ..state import ServerState
from .messages import receiver

__all__ = ["HANDLERS", "RequestWait", "ServeWait", "requests_released"]

_ERRORS = {RemoteError.code: RemoteError, PeerUnreachable.code: PeerUnreachable}
"""The errors a responder may answer a request with (RESPOND's ``error``)."""


@dataclass(eq=False, slots=True)
class RequestWait(Parked):
    """A REQUEST waiting for its reply: queued for its responder, or in its hands."""

    call: CallRecord | None = None

    def answered(self, result: dict[str, Any], data: bytes) -> None:
        self.unpark()
        self.session.reply(Reply(self.request.req_id, Op.REQUEST, result, data))

    def failed(self, exc: BlockIPCError) -> None:
        self.unpark()
        self.session.reply(error_reply(self.request, exc))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        if self.call is not None:
            self.state.requests.withdraw(self.call)


@dataclass(eq=False, slots=True)
class ServeWait(Parked):
    """A SERVE waiting, in order among its process's, for the next request to it."""

    def given(self, call: CallRecord) -> None:
        self.unpark()
        self.session.reply(_serve_reply(self.request, call))

    def cancel(self) -> None:
        self.abandon()
        self.session.reply(self.cancelled())

    def abandon(self) -> None:
        self.unpark()
        self.state.requests.withdraw_server(self.session.proc, self)


def _payload(rec: BlockRecord | None, codec: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A payload's fields: a block's with its recorded codec and meta, or inline's."""
    if rec is None:
        return {**block_fields(None), "codec": codec, "meta": meta}
    return {**block_fields(rec), "codec": rec.codec, "meta": rec.meta}


def _serve_reply(req: Request, call: CallRecord) -> Reply:
    fields = {
        "request": call.id,
        "sender": call.requester.name,
        **_payload(call.block, call.codec, call.meta),
    }
    return Reply(req.req_id, Op.SERVE, fields, call.data)


def _checked_payload(state: ServerState, proc: ProcessRecord, req: Request) -> BlockRecord | None:
    """The block a REQUEST or RESPOND carries (``proc``'s, free to move), or None for
    an inline payload (checked against ``MAX_INLINE_PAYLOAD``)."""
    a = req.args
    if a["meta"]:  # the header rule, as a named object's meta (most codecs have none)
        pack_header(a["meta"], "codec meta")
    if a["block"] == NO_BLOCK:
        if len(req.data) > MAX_INLINE_PAYLOAD:
            raise InvalidRequest(
                f"an inline payload of {len(req.data)} bytes is over the limit of "
                f"{MAX_INLINE_PAYLOAD}: send a larger one as a block"
            )
        return None
    if req.data:
        raise InvalidRequest("a payload is a block or inline data, not both")
    rec = state.table.lookup(proc, a["block"], "own")
    state.table.check_movable(proc, rec)
    return rec


def request(state: ServerState, session: Session, req: Request) -> None:
    """REQUEST: route a payload to the process named ``to``; answered with its reply."""
    a = req.args
    rec = _checked_payload(state, session.proc, req)
    to = receiver(state, session, req)
    if to is None:  # parked until it registers (wait_for_peer)
        return
    wait = RequestWait(state, session, req)
    wait.park()  # first: a full registry refuses it with nothing to undo
    try:
        wait.call, server = state.requests.submit(
            session.proc, to, rec, a["codec"], a["meta"], req.data, wait
        )
    except BaseException:
        wait.unpark()
        raise
    if server is not None:  # a receive was waiting: it gets the request now
        cast(ServeWait, server).given(wait.call)


def serve(state: ServerState, session: Session, req: Request) -> None:
    """SERVE: the next request to this process, now or when one comes."""
    direct = req.args["direct"]
    if direct:  # its direct socket (_client/direct.py), for its requesters
        if len(direct) > MAX_DIRECT_ADDRESS:
            raise InvalidRequest(f"a direct socket address is at most {MAX_DIRECT_ADDRESS} long")
        state.requests.direct[session.proc.key] = direct
    wait = ServeWait(state, session, req)
    wait.park()
    try:
        call = state.requests.serve(session.proc, wait)
    except BaseException:
        wait.unpark()
        raise
    if call is not None:
        wait.given(call)


def _still_ours(
    state: ServerState, proc: ProcessRecord, done: BlockRecord | None, reply: BlockRecord | None
) -> BlockRecord | None:
    """The request's block ``done``, if the responder ``proc`` still owns it and it is
    not the reply's (a block it sent or shared on since is not freed)."""
    if done is None or done is reply or state.table.blocks.get(done.id) is not done:
        return None
    return done if done.owner is proc and not done.in_transit else None


def respond(state: ServerState, session: Session, req: Request) -> None:
    """RESPOND: answer a request in this process's hands with a payload or an error.
    The request's own block (if this process still owns it and it is not the reply's)
    is freed; everything is checked before anything changes."""
    a = req.args
    proc, table = session.proc, state.table
    error = a["error"]
    if error:
        if error not in _ERRORS:
            raise InvalidRequest(f"a request cannot be failed with error code {error}")
        if a["block"] != NO_BLOCK or req.data:
            raise InvalidRequest("a failed request carries no payload")
    rec = _checked_payload(state, proc, req)
    call = state.requests.find(proc, a["request"])
    done = _still_ours(state, proc, call.block, rec)
    if done is not None:
        table.check_release(proc, done)  # a lease of its own on it must end first
    state.requests.answer(proc, call.id)
    session.reply(Reply(req.req_id, Op.RESPOND))
    if done is not None:
        state.settle(table.release_hold(proc, done))
    wait = cast(RequestWait, call.token)
    if call.withdrawn:  # the requester gave up: the answer is dropped
        if rec is not None:
            state.settle(table.release_hold(proc, rec))
        return
    if error:
        said = "failed the request" if error == RemoteError.code else "did not answer"
        wait.failed(_ERRORS[error](f"{proc.name!r} {said}: {a['message']}"[:MAX_STR]))
        return
    if rec is not None:
        table.hand_over(rec, proc, call.requester, carried=False)
    direct = state.requests.direct.get(proc.key, "")
    wait.answered({**_payload(rec, a["codec"], a["meta"]), "direct": direct}, req.data)


def requests_released(state: ServerState, proc: ProcessRecord) -> None:
    """``proc`` is gone (reclaim, after its parked requests were abandoned and before
    ``unregister``): the requests queued for it and in its hands fail at once."""
    calls = state.requests.drop_responder(proc)
    if not calls:
        return
    exc = PeerUnreachable(f"{proc.name!r} disconnected before it answered the request")
    for call in calls:
        cast(RequestWait, call.token).failed(exc)


HANDLERS = {Op.REQUEST: request, Op.SERVE: serve, Op.RESPOND: respond}
