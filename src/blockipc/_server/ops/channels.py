"""Channels: CHANNEL_OPEN (a ring in a block of its own and two eventfds, offered to
the receiver), CHANNEL_ACCEPT, CHANNEL_CLOSE; and ending one end of a channel, which
reclaim does too.

An offer (a channel not accepted yet) never outlives its use: a process has at most
``MAX_OFFERS`` of them (``check_offers``), and one whose opener disconnects, or closes
it before anything was sent, is withdrawn and its ring freed at once. One closed with
messages in it waits for the receiver, as a message in an inbox does. An end whose
process disconnects without closing is marked aborted in the ring, so the other end
can tell a stream cut short from one closed cleanly."""

from __future__ import annotations

import os

from ..._core.limits import check_offers
from ..._core.protocol import Op, Reply, Request
from ..._core.ring import CTL_SIZE, init_ring, mark_closed, published
from ..._core.ring import supported as ring_supported
from ..._core.routing import ChannelRecord, ProcessRecord
from ..._exceptions import InvalidRequest
from ..._log import get_logger
from ..parking import Queued
from ..session import Session, block_fields
from ..state import ServerState
from .messages import receiver

log = get_logger("blockipc.coordinator")

MIN_CHANNEL = CTL_SIZE + 4096
"""Smallest ring a channel may ask for: its control page and one page of data."""

_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


def channel_open(state: ServerState, session: Session, req: Request) -> None:
    """CHANNEL_OPEN: from then on the two ends pass messages without the coordinator."""
    a = req.args
    pool = state.pool
    if not ring_supported():
        raise InvalidRequest("channels need an x86-64 CPU (their ring relies on its TSO)")
    if not MIN_CHANNEL <= a["capacity"] <= pool.max_request():
        raise InvalidRequest(
            f"channel capacity must be {MIN_CHANNEL} to {pool.max_request()} bytes, "
            f"not {a['capacity']}"
        )
    to = receiver(state, session, req)
    if to is None:  # parked until it registers
        return
    if to is session.proc:
        raise InvalidRequest("a channel needs two processes (within one, use a queue)")
    check_offers(len(to.channel_offers), to.name)
    alloc, slot = state.allocate(session.proc, a["capacity"])
    try:
        view = pool.view(alloc.segment, alloc.offset, a["capacity"])
        try:
            init_ring(view)
        finally:
            view.release()
        bells = (os.eventfd(0, _EFD_FLAGS), os.eventfd(0, _EFD_FLAGS))
    except BaseException:
        pool.free(alloc.segment, alloc.offset)
        raise
    chan = state.table.open_channel(
        session.proc,
        to,
        segment=alloc.segment,
        offset=alloc.offset,
        capacity=alloc.capacity,
        size=a["capacity"],
        slot=slot,
        generation=state.gens.get(slot),
    )
    state.bells[chan.id] = bells
    session.reply(
        Reply(req.req_id, Op.CHANNEL_OPEN, {"channel": chan.id, **block_fields(chan.block)})
    )
    log.info(
        "channel.open", channel=chan.id, sender=session.proc.name, to=to.name, size=a["capacity"]
    )
    answer_accepts(state, state.sessions.get(to.key))


def channel_accept(state: ServerState, session: Session, req: Request) -> None:
    wait = Queued(state, session, req, session.accept_waits)
    wait.park()
    session.accept_waits.append(wait)
    answer_accepts(state, session)


def answer_accepts(state: ServerState, session: Session | None) -> None:
    """Hand the channels offered to ``session``'s process to its waiting accepts."""
    while session is not None and session.accept_waits:
        chan = state.table.accept_channel(session.proc)
        if chan is None:
            return
        wait = session.accept_waits.popleft()
        wait.unpark()
        req = wait.request
        fields = {"channel": chan.id, "sender": chan.sender_name, **block_fields(chan.block)}
        session.reply(Reply(req.req_id, Op.CHANNEL_ACCEPT, fields))


def channel_close(state: ServerState, session: Session, req: Request) -> None:
    chan = state.table.channel_end(session.proc, req.args["channel"])
    end_channel(state, chan, session.proc)
    session.reply(Reply(req.req_id, Op.CHANNEL_CLOSE))


def end_channel(
    state: ServerState, chan: ChannelRecord, proc: ProcessRecord, *, gone: bool = False
) -> None:
    """``proc``'s end of ``chan`` closed (or, ``gone``, its process ended: aborted
    unless that end had closed itself in the ring): say so in the ring, wake the other
    end, and free the ring once both ends are gone. A channel never accepted is
    withdrawn when its sender goes (its ring freed now), unless the sender closed it
    with messages in it, which wait for the receiver."""
    rec, (data_bell, space_bell) = chan.block, state.bells[chan.id]
    view = state.pool.view(rec.segment, rec.offset, rec.size)
    try:
        aborted = False
        for producer, bell in ((True, data_bell), (False, space_bell)):
            if (chan.sender if producer else chan.receiver) is proc:
                aborted |= mark_closed(view, producer=producer, gone=gone)
                os.eventfd_write(bell, 1)  # the other end sleeps on this one
        if chan.sender is proc and not chan.accepted and (aborted or not published(view)):
            state.table.withdraw_offer(chan)
    finally:
        view.release()
    if state.table.close_channel_end(chan, proc):
        state.pool.free(rec.segment, rec.offset)
        for fd in state.bells.pop(chan.id):
            os.close(fd)
        log.info("channel.closed", channel=chan.id, sender=chan.sender_name, to=chan.receiver_name)


HANDLERS = {
    Op.CHANNEL_OPEN: channel_open,
    Op.CHANNEL_ACCEPT: channel_accept,
    Op.CHANNEL_CLOSE: channel_close,
}
