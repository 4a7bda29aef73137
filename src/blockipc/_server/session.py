"""One client connection on the server: parse, dispatch, reply (the hot path).

A :class:`Session` is the asyncio ``BufferedProtocol`` of one registered process. Each
request parsed from the socket goes to :meth:`ServerState.handle` at once, from the
``buffer_updated`` callback, so a pipelined burst is answered in one write. Every reply
goes through :meth:`Session.reply`, which checks it against the protocol's schema.
A request that must wait parks in :attr:`Session.parked` (see :mod:`.parking`).

A connection that stops mid-frame (part of a frame, then nothing for ``idle_timeout``
seconds) is closed. The hot path pays one length check per read for it: a timer runs
only while part of a frame is buffered, armed once and moved on (not re-armed) by the
bytes that arrive meanwhile. Between frames nothing runs: a client may idle for hours.

This module is the bottom of the server's parts: it imports none of them (the state,
the parking kinds and the handlers all know the session; it knows them by the small
:class:`ParkedEntry` interface and the ``handle`` callable it is given).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import anyio

from .._core.limits import IDLE_FRAME_TIMEOUT, MAX_STR
from .._core.protocol import NO_BLOCK, Connection, ErrorReply, Event, NeedData, Request
from .._core.routing import BlockRecord, ProcessRecord
from .._exceptions import BlockIPCError, ErrorCode, ProtocolError
from .._log import get_logger

__all__ = ["ParkedEntry", "Session", "block_fields", "error_reply"]

log = get_logger("blockipc.coordinator")

BUFFER_SIZE = 256 * 1024
"""What one ``buffer_updated`` can hand over; a larger frame arrives in pieces."""

REPLIES_HIGH = 2 << 20
"""Unsent reply bytes past which the session stops reading and handling requests (the
transport's high-water mark: ``pause_writing``) until they drain below ``REPLIES_LOW``."""
REPLIES_LOW = 512 << 10
MAX_UNSENT = 64 << 20
"""Unsent reply bytes past which a connection is closed: its process stopped reading,
and only its parked requests' answers could still grow them (``client.not_reading``)."""


def block_fields(rec: BlockRecord | None) -> dict[str, int]:
    """The fields of a reply that names a block (None: a header-only message's)."""
    if rec is None:
        return dict.fromkeys(("size", "capacity", "segment", "offset"), 0) | {"block": NO_BLOCK}
    return {
        "block": rec.id,
        "size": rec.size,
        "capacity": rec.capacity,
        "segment": rec.segment,
        "offset": rec.offset,
    }


def error_reply(req: Request, exc: BlockIPCError) -> ErrorReply:
    """The answer to ``req`` that raises ``exc`` (its class, by wire code) in the client;
    its message cut to what a frame's str field holds (it may quote a request's fields)."""
    return ErrorReply(req.req_id, req.op, exc.code, str(exc)[:MAX_STR])


class ParkedEntry(Protocol):
    """A parked request as its session knows it (the kinds are in :mod:`.parking`)."""

    @property
    def request(self) -> Request: ...

    def unpark(self) -> None:
        """Leave the session's registry (it was answered)."""
        ...

    def cancel(self) -> None:
        """``CANCEL``: withdraw the request and answer it as cancelled."""
        ...

    def abandon(self) -> None:
        """The session ended: drop what only this entry knows of, answering nothing."""
        ...


class Session(asyncio.BufferedProtocol):
    """The hot path of one client connection: parse, ``handle``, reply."""

    def __init__(
        self,
        handle: Callable[[Session, Request], None],
        conn: Connection,
        proc: ProcessRecord,
        idle_timeout: float = IDLE_FRAME_TIMEOUT,
    ) -> None:
        self._handle = handle
        self.conn = conn
        self.proc = proc
        self.parked: dict[int, ParkedEntry] = {}  # request id -> its wait (see .parking)
        self.recv_waits: deque[ParkedEntry] = deque()  # in order, for the next message
        self.accept_waits: deque[ParkedEntry] = deque()  # in order, for the next channel
        self.closed = anyio.Event()
        self._transport: asyncio.Transport | None = None
        self._buffer = memoryview(bytearray(BUFFER_SIZE))
        self._out: list[bytes] = []
        self._out_bytes = 0  # in _out
        self._batching = False
        self._paused = False  # the client is not reading its replies (pause_writing)
        self._idle_timeout = idle_timeout
        self._stall_timer: asyncio.TimerHandle | None = None  # only while mid-frame
        self._last_read = 0.0  # loop time of the last read that left part of a frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._transport.set_write_buffer_limits(REPLIES_HIGH, REPLIES_LOW)
        self._process()  # bytes that arrived with the handshake

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.conn.receive_data(self._buffer[:nbytes])
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._process()

    def _process(self) -> None:
        """Handle the requests received, until the data runs out or the replies back
        up (a client that does not read them: the rest waits for :meth:`resume_writing`)."""
        held = self.hold()
        handle = self._handle
        proc = self.proc
        try:
            while not self._paused:
                try:
                    event = self.conn.next_event()
                except ProtocolError as exc:
                    self._protocol_error(exc)
                    return
                if isinstance(event, NeedData):
                    if self.conn.buffered:
                        self._mid_frame()
                    elif self._stall_timer is not None:
                        self._stop_stall_timer()
                    break
                assert isinstance(event, Request)
                proc.requests += 1
                handle(self, event)
                if self._out_bytes > REPLIES_HIGH:
                    self._flush()  # may pause_writing() at once: the loop stops then
        finally:
            if held:
                self.release()

    def pause_writing(self) -> None:
        """The replies back up past ``REPLIES_HIGH``: read and handle nothing more."""
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """They drained: go on with the requests received meanwhile, then read again."""
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._process()

    def _mid_frame(self) -> None:
        """Part of a frame is buffered: it must be completed within ``idle_timeout``
        of the last byte read."""
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        if self._stall_timer is None:
            self._stall_timer = loop.call_later(self._idle_timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall_timer = None
        if self._transport is None or not self.conn.buffered:
            return
        loop = asyncio.get_running_loop()
        left = self._last_read + self._idle_timeout - loop.time()
        if left > 0:  # bytes arrived since the timer was armed
            self._stall_timer = loop.call_later(left, self._stalled)
            return
        log.warning(
            "protocol.error",
            phase="idle",
            name=self.proc.name,
            pid=self.proc.pid,
            error=f"{self.conn.buffered} bytes of a frame, then nothing for "
            f"{self._idle_timeout:g} s (idle_frame_timeout)",
        )
        self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stop_stall_timer()
        self.closed.set()

    def _stop_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def reply(self, event: Event) -> None:
        """Send the answer to a request: every reply goes through here."""
        if self._transport is None or self._transport.is_closing() or self.conn.error:
            return
        try:
            frame = self.conn.send(event)
        except ProtocolError as exc:
            if self.conn.error is not None:  # out of order (a bug): this connection is done
                self._protocol_error(exc)
                return
            # A reply that breaks its own schema (a bug) is refused before a byte is sent:
            # this request gets an internal error instead, and the connection goes on.
            log.error(
                "coordinator.reply_refused",
                name=self.proc.name,
                op=event.op.name,
                req_id=event.req_id,
                error=str(exc),
            )
            message = f"internal error: the coordinator's reply does not fit the protocol: {exc}"
            error = ErrorReply(event.req_id, event.op, ErrorCode.INTERNAL, message[:MAX_STR])
            try:
                frame = self.conn.send(error)
            except ProtocolError as again:  # cannot happen: the error reply fits
                self._protocol_error(again)
                return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._batching:
            self._flush()

    def hold(self) -> bool:
        """Collect this session's replies until :meth:`release`, to write them at once
        (``False``: they are collected already, and the outer holder writes them)."""
        if self._batching:
            return False
        self._batching = True
        return True

    def release(self) -> None:
        """End :meth:`hold`: write the replies collected meanwhile."""
        self._batching = False
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if self._out and transport is not None:
            transport.writelines(self._out)
            if self._paused and transport.get_write_buffer_size() > MAX_UNSENT:
                log.warning(
                    "client.not_reading",
                    name=self.proc.name,
                    pid=self.proc.pid,
                    unsent=transport.get_write_buffer_size(),
                )
                self.abort()
        self._out.clear()
        self._out_bytes = 0

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.warning("protocol.error", name=self.proc.name, pid=self.proc.pid, error=str(exc))
        self.abort()

    def close_after_flush(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._stop_stall_timer()
        self.closed.set()
