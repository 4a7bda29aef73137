"""Channels: a stream of messages from one process to another, past the coordinator.

Theory of operation
-------------------
``client.open_channel(to)`` asks the coordinator for a ring (:mod:`blockipc._core.ring`) in
a pool block and two eventfds; ``client.accept_channel()`` on the receiving side gets
the same. From then on a message costs no coordinator request: the sender copies the
payload into the ring and publishes it, the receiver reads it where it lies (a
``memoryview`` into the pool) and releases it. The coordinator stays the authority on
the ring's block: it is held by the channel (no process may free, write or lease it
through the routing table) and freed when both ends have closed or disconnected, and
it marks an end closed in the ring when that end's process goes away.

Wake-ups: each end sleeps on its own eventfd (``data`` for the receiver, ``space`` for
the sender) only after announcing it in the ring (``want_data``/``want_space``), and
the other end writes the eventfd only when it sees that announcement, so a busy stream
makes no system calls at all. The announcement and the re-check that follows are
separated by :func:`~blockipc._core.ring.fence`, as are the other end's publish and its look
at the announcement: one of the two always sees the other, so no wake-up is lost. A
sleeping end still looks again every :data:`RECHECK` seconds, a bound on the damage a
misbehaving peer can do, never the way a healthy channel makes progress.

Giving room back: a release of the oldest message gives its room back to the sender
(stores ``tail``, then a fence and a look at ``want_space``). Every such store moves a
cache line the sender reads on each send to this CPU and back, and the look moves the
sender's line here, which is most of what a small message costs across two cores; so
while the room released and not yet given back is under ``1 /`` :data:`GIVE_BACK_FRACTION`
of the ring, a release only notes it and the room goes back in one store at the latest
when the loop next runs (``call_soon``), when that much has gathered, or before this end
sleeps waiting for data. A sender short of room thus gets it in batches, and is woken
once per batch rather than once per message.

Views that outlive their message: a message's ``data`` is lent from a slice of the ring
(:mod:`blockipc._client.views`), so its release knows whether an array or a slice made
from it still lives. Such a message keeps its room: the receiver gives the ring back
only up to it (the sender waits, as on a full ring) until the last export is gone, which
a weak reference on the slice reports to the loop. The ring's block is held meanwhile,
too: a receiver closed while a message of it is still exported tells the coordinator
only once the export is gone (or its connection ends).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import functools
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final, Self

import msgpack

from .._core.codecs import get_codec
from .._core.limits import check_header_size, pack_header
from .._core.ring import (
    W_CONSUMER_CLOSED,
    W_WANT_DATA,
    W_WANT_SPACE,
    RingReader,
    RingWriter,
    fence,
    fence_acquire,
    fence_release,
)
from .._exceptions import (
    ChannelClosed,
    InboxFull,
    InvalidRequest,
    PeerUnreachable,
    ProtocolError,
    UsedAfterFork,
    WrongEventLoop,
)
from .._log import get_logger
from .views import lend, reclaim, watch

__all__ = ["ChannelClosed", "ChannelMessage", "ChannelReceiver", "ChannelSender"]

log = get_logger("blockipc.channel")

RECHECK: Final = 1.0
"""Seconds a sleeping end waits before looking at the ring again without a wake-up."""
_thread_id = threading.get_ident  # cheaper than a loop check on the hot paths
GIVE_BACK_FRACTION: Final = 8
"""Room released under ``1/8`` of the ring goes back to the sender in batches (see
"Giving room back" in the module's docstring)."""
CHUNK: Final = 4 << 20
"""Payloads larger than this are copied into the ring in chunks, yielding in between."""


def _encode_header(
    header: dict[str, Any] | None, codec: str | None = None, meta: dict[str, Any] | None = None
) -> bytes:
    """A record's header: the user's dict as a msgpack map (checked like a send's
    header), or, when a codec encoded the payload, the list ``[header, codec, meta]``."""
    packed = pack_header(header)
    if codec is None:
        return packed if header else b""
    encoded: bytes = msgpack.packb([header or {}, codec, meta or {}], use_bin_type=True)
    check_header_size(len(encoded))
    return encoded


def _decode_header(raw: bytes) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """``(header, codec, meta)`` of a record header written by :func:`_encode_header`."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 -- msgpack raises many unrelated types
        raise ProtocolError(f"a channel message header is not msgpack: {exc}") from None
    if type(obj) is dict:
        return obj, None, {}
    if (
        type(obj) is list
        and len(obj) == 3
        and type(obj[0]) is dict
        and type(obj[1]) is str
        and type(obj[2]) is dict
    ):
        return obj[0], obj[1], obj[2]
    raise ProtocolError("a channel message header is neither a map nor [map, codec, meta]")


def _as_bytes(data: Any) -> memoryview:
    view = data if isinstance(data, memoryview) else memoryview(data)
    if not view.nbytes:
        return memoryview(b"")
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise InvalidRequest("a channel payload must be a C-contiguous buffer")
        view = view.cast("B")
    return view


class _Bell:
    """An eventfd this end sleeps on, watched by the loop for as long as the end lives."""

    __slots__ = ("_event", "_fd", "_loop", "_peer_fd")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, peer_fd: int) -> None:
        self._loop, self._fd, self._peer_fd = loop, fd, peer_fd
        self._event = asyncio.Event()
        loop.add_reader(fd, self._rung)

    def _rung(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)
        self._event.set()

    def arm(self) -> None:
        """Called before announcing a sleep: a ring after this wakes :meth:`sleep`."""
        self._event.clear()

    async def sleep(self) -> bool:
        """Wait for a ring; ``False`` if :data:`RECHECK` passed without one."""
        if asyncio.get_running_loop() is not self._loop:
            raise _wrong_loop()
        try:
            async with asyncio.timeout(RECHECK):
                await self._event.wait()
        except TimeoutError:
            return False
        return True

    def ring_peer(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_write(self._peer_fd, 1)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        for fd in (self._fd, self._peer_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._peer_fd = -1
        self._event.set()  # sleepers wake and find the channel closed


def _wrong_loop() -> WrongEventLoop:
    return WrongEventLoop(
        "a channel end is used from an event loop (or thread) other than the one its "
        "client connected on: use it on that loop (asyncio.run_coroutine_threadsafe)"
    )


class _End:
    """What both ends share: the channel id, the peer's name, closing.

    An end belongs to its client's loop. The hot paths (a send with room, a receive
    with a message waiting) compare the thread, one integer; every path that waits
    goes through :meth:`_check_open`, which does too, and :class:`_Bell` checks the loop
    itself before it sleeps.
    """

    def __init__(
        self, channel: int, peer: str, bell: _Bell, on_close: Callable[[_End], None]
    ) -> None:
        self.id = channel
        self.peer = peer
        self._bell = bell
        self._on_close = on_close
        self._closed: BaseException | None = None
        self._thread = _thread_id()  # made on its client's loop

    @property
    def closed(self) -> bool:
        """This end is closed (by :meth:`aclose`, or its client closed)."""
        return self._closed is not None

    def _check_open(self) -> None:
        if self._closed is not None:
            if isinstance(self._closed, UsedAfterFork):
                raise copy.copy(self._closed)
            raise ChannelClosed(f"channel {self.id} is closed") from self._closed
        if _thread_id() != self._thread:
            raise _wrong_loop()

    def _abandon(self, reason: UsedAfterFork) -> None:
        """In a forked child: closed here, and nothing else, since the ring, its
        eventfds and the loop's epoll set are the parent's (see ``_client._after_fork``)."""
        self._closed = reason

    def _shutdown(self, reason: BaseException) -> None:
        """Close this end now, locally (the client tells the coordinator)."""
        if self._closed is not None:
            return
        self._closed = reason
        self._mark_closed()
        fence()
        self._bell.ring_peer()
        self._bell.close()
        self._release_views()

    def _mark_closed(self) -> None:
        raise NotImplementedError

    def _release_views(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close this end; the other end sees the channel closed. Idempotent."""
        if self._closed is None:
            if _thread_id() != self._thread:
                raise _wrong_loop()
            self._shutdown(ChannelClosed(f"channel {self.id} closed by this end"))
            self._closed_here()

    def _closed_here(self) -> None:
        """This end was closed by :meth:`aclose`: tell the coordinator."""
        self._on_close(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ChannelSender(_End):
    """The sending end of a channel, from :meth:`blockipc.Client.open_channel`.

    ``await send(data)`` copies ``data`` into the ring and returns once the receiver can
    see it: it waits only while the ring is full (backpressure). ``reserve(size)``
    hands out the ring's memory itself to fill in place. Messages arrive in the order
    they were sent; one task or many may send::

        async with await client.open_channel("consumer", capacity="16MiB") as tx:
            await tx.send(b"frame", header={"seq": 0})
    """

    def __init__(
        self,
        channel: int,
        peer: str,
        ring: RingWriter,
        bell: _Bell,
        on_close: Callable[[_End], None],
    ) -> None:
        super().__init__(channel, peer, bell, on_close)
        self._ring = ring
        self._lock = asyncio.Lock()  # held by a send that yields mid-copy and by reserve()

    @property
    def capacity(self) -> int:
        """Bytes of the ring's data area; the largest payload is a little less."""
        return self._ring.size

    def max_payload(self, header: dict[str, Any] | None = None) -> int:
        """The largest payload one message with this header can carry."""
        return self._ring.max_payload(len(_encode_header(header)))

    async def _room(self, size: int, header: bytes, nowait: bool) -> int:
        """Reserve a record, waiting for the receiver to make room if needed."""
        ring, bell = self._ring, self._bell
        while True:
            self._check_open()
            if ring.consumer_closed:
                how = "ended without closing" if ring.consumer_aborted else "closed"
                raise PeerUnreachable(f"{self.peer!r} {how} channel {self.id}")
            at = ring.reserve(size, header)
            if at is not None:
                return at
            self._wake_receiver()  # a wrap marker may just have been published
            if nowait:
                raise InboxFull(f"channel {self.id} to {self.peer!r} is full")
            bell.arm()
            ring.set_want_space(True)
            fence()  # then look again: the receiver sees want_space, or we see its release
            at = ring.reserve(size, header)
            if at is None and not ring.consumer_closed:
                self._wake_receiver()
                await bell.sleep()
                self._check_open()  # closed while asleep: the ring is unmapped
            ring.set_want_space(False)
            if at is not None:
                return at

    def _wake_receiver(self) -> None:
        fence()
        if self._ring.wants_data():
            self._bell.ring_peer()

    async def send(
        self,
        data: Any,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
        codec: str | None = None,
    ) -> None:
        """Copy ``data`` (any C-contiguous buffer: bytes, bytearray, memoryview, numpy
        array) into the ring as one message with an optional small ``header`` dict.

        With ``codec`` (``"raw"``, ``"json"``, ``"msgpack"``, ``"numpy"``, ``"pickle"``),
        ``data`` is any object that codec encodes; the receiver gets it back with
        :meth:`ChannelMessage.decode` or, zero-copy, :meth:`ChannelMessage.view`.

        Waits while the ring is full (``nowait=True`` raises :class:`InboxFull`
        instead); raises :class:`PeerUnreachable` once the receiver has closed the
        channel and :class:`ChannelClosed` after this end closed. A payload larger than
        :meth:`max_payload` raises ``ValueError``; one the codec cannot encode,
        :class:`CodecError`.
        """
        if codec is not None:
            with get_codec(codec).prepare(data) as enc:
                await self._send(enc.buffer, _encode_header(header, codec, enc.meta), nowait)
            return
        kind = type(data)
        if kind is bytes or (kind is memoryview and data.ndim == 1 and data.format == "B"):
            src = data  # what _as_bytes would return
        else:
            src = _as_bytes(data)
        n, ring = len(src), self._ring
        # the common case, with no await at all: no header, room now before the end of
        # the ring, nobody mid-copy, both ends open
        if (
            not header
            and n <= CHUNK
            and self._closed is None
            and not self._lock.locked()
            and _thread_id() == self._thread
            and not ring.ctl[W_CONSUMER_CLOSED]
            and ring.put(src, n)
        ):
            fence_acquire()  # fence(), inline
            fence_release()
            if ring.ctl[W_WANT_DATA]:
                self._bell.ring_peer()
            return
        hdr = _encode_header(header) if header else b""
        if (
            n <= CHUNK
            and not self._lock.locked()
            and self._closed is None
            and _thread_id() == self._thread
            and not ring.ctl[W_CONSUMER_CLOSED]
        ):
            at = ring.reserve(n, hdr)
            if at is not None:
                ring.data[at : at + n] = src
                ring.commit(at, n)
                fence()
                if ring.ctl[W_WANT_DATA]:
                    self._bell.ring_peer()
                return
        await self._send(src, hdr, nowait)

    async def _send(self, src: Any, hdr: bytes, nowait: bool) -> None:
        n = len(src)
        if n <= CHUNK and not self._lock.locked():
            at = await self._room(n, hdr, nowait)
            self._ring.data[at : at + n] = src
            self._ring.commit(at, n)
            self._wake_receiver()
            return
        async with self._lock:  # keeps order with sends that yield mid-copy
            at = await self._room(n, hdr, nowait)
            dst = self._ring.data
            for i in range(0, n, CHUNK):
                dst[at + i : at + min(n, i + CHUNK)] = src[i : i + CHUNK]
                if i + CHUNK < n:
                    await asyncio.sleep(0)
                    self._check_open()
            self._ring.commit(at, n)
            self._wake_receiver()

    @contextlib.asynccontextmanager
    async def reserve(
        self, size: int, *, header: dict[str, Any] | None = None
    ) -> AsyncIterator[memoryview]:
        """Room for one ``size``-byte message, as a writable ``memoryview`` into the
        ring: fill it, and the message is sent when the block exits without an
        exception (zero copies besides your own writes). Other sends wait meanwhile.
        """
        if type(size) is not int or size < 0:
            raise InvalidRequest(f"size must be an int >= 0, not {size!r}")
        hdr = _encode_header(header)
        async with self._lock:
            at = await self._room(size, hdr, False)
            view = self._ring.data[at : at + size]
            try:
                yield view
            finally:
                view.release()
            self._check_open()
            self._ring.commit(at, size)
            self._wake_receiver()

    def _mark_closed(self) -> None:
        self._ring.close()

    def _release_views(self) -> None:
        self._ring.release()


class ChannelMessage:
    """A message read from a channel: ``data`` is a read-only ``memoryview`` into the
    ring, valid until :meth:`release` (or the end of a ``with`` block)::

        with await rx.recv() as msg:
            total = sum(msg.data)         # msg.header, msg.sender; msg.decode() for a codec
    """

    __slots__ = (
        "_end",
        "_meta",
        "_pinned",
        "_receiver",
        "_released",
        "_src",
        "_watch",
        "codec",
        "data",
        "header",
        "sender",
    )

    def __init__(
        self,
        receiver: ChannelReceiver,
        data: memoryview,
        header: dict[str, Any],
        end: int,
        codec: str | None = None,
        meta: dict[str, Any] | None = None,
        src: memoryview | None = None,
    ) -> None:
        self._receiver = receiver
        self.data = data
        self._src = src  # what data is lent from (see _client/views.py)
        self._pinned = False  # released, but still exported: its room is kept
        self._watch: weakref.ref[memoryview] | None = None
        self.header = header
        self.sender = receiver.peer
        self.codec = codec
        """The codec the sender named (``send(..., codec=)``), or ``None`` for bytes."""
        self._meta = meta
        self._end = end
        self._released = False

    def decode(self) -> Any:
        """The payload parsed by the sender's codec, owning its memory (still valid
        after :meth:`release`); ``bytes`` if the sender named no codec.

        :raises CodecError: if the payload does not decode.
        """
        if self.codec is None:
            return bytes(self.data)
        return get_codec(self.codec).decode(self.data, self._meta)

    def view(self) -> Any:
        """The payload without a copy where the codec allows (``"numpy"``: a read-only
        array over the ring; ``"raw"`` or no codec: :attr:`data`), else decoded. Valid
        only until :meth:`release`: an array (or slice) still alive then keeps the
        message's room in the ring, holding the sender up, and logs
        ``channel.view_exported``.
        """
        if self.codec is None:
            return self.data
        return get_codec(self.codec).view(self.data, self._meta)

    def release(self) -> None:
        """Give the message's room back to the sender (a small message's room goes back
        with others, at the latest when the loop next runs). Idempotent."""
        if not self._released:
            self._released = True
            self._receiver._release(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"{len(self.data)} bytes"
        return f"<ChannelMessage from {self.sender!r}, {state}, header={self.header!r}>"


class ChannelReceiver(_End):
    """The receiving end of a channel, from :meth:`blockipc.Client.accept_channel`.

    ``await recv()`` returns the next :class:`ChannelMessage` (``async for`` works too
    and ends when the sender has closed and everything was read; when the sender's
    process ended without closing, it raises :class:`PeerUnreachable` after the last
    message instead, so a stream cut short never looks complete). Release each
    message when done with it; its room in the ring is reused in order::

        async with await client.accept_channel() as rx:
            async for msg in rx:
                with msg:
                    handle(msg.data, msg.header)
    """

    def __init__(
        self,
        channel: int,
        peer: str,
        ring: RingReader,
        bell: _Bell,
        on_close: Callable[[_End], None],
    ) -> None:
        super().__init__(channel, peer, bell, on_close)
        self._ring = ring
        self._view = ring.data.toreadonly()  # messages are read-only slices of it
        self._out: collections.deque[ChannelMessage] = collections.deque()
        self._pins: set[ChannelMessage] = set()  # released while still exported (held here)
        self._close_pending = False  # closed here; the coordinator is told when _pins is 0
        # room released but not yet given back (see "Giving room back" above): the count
        # the ring is due to be released to, the most that may wait, a flush scheduled
        self._due = ring.tail
        self._batch = ring.size // GIVE_BACK_FRACTION
        self._flush_soon = False

    def _next(self) -> ChannelMessage | None:
        rec = self._ring.next()
        if rec is None:
            return None
        offset, length, header, end = rec
        src = self._view[offset : offset + length]
        if header:
            user, codec, meta = _decode_header(header)
            msg = ChannelMessage(self, lend(src), user, end, codec, meta, src)
        else:
            msg = ChannelMessage(self, lend(src), {}, end, None, None, src)
        self._out.append(msg)
        return msg

    def _flush(self) -> None:
        """Give the ring back up to what was released (with nothing outstanding, over
        the wrap markers read too), and wake the sender if it waits for room."""
        self._flush_soon = False
        ring = self._ring
        if self._closed is not None:
            return
        if not self._out:
            self._due = ring.pos
        if self._due != ring.tail:
            ring.release_to(self._due)
            fence()
            if ring.ctl[W_WANT_SPACE]:
                self._bell.ring_peer()

    async def recv(self) -> ChannelMessage:
        """The next message; waits for one. Raises :class:`ChannelClosed` once the
        sender closed the channel and every message it sent was received, and
        :class:`PeerUnreachable` instead when the sender's process ended without closing
        it (killed mid-stream: what it sent may be incomplete)."""
        if self._closed is None and _thread_id() == self._thread:
            msg = self._next()
            if msg is not None:
                return msg
        return await self._wait_next()

    async def _wait_next(self) -> ChannelMessage:
        ring, bell = self._ring, self._bell
        while True:
            self._check_open()
            msg = self._next()
            if msg is not None:
                return msg
            self._flush()  # before sleeping: a sender waiting for room gets it now
            if ring.producer_closed:
                fence()
                msg = self._next()
                if msg is not None:
                    return msg
                if ring.producer_aborted:  # set before closed: seen with it
                    raise PeerUnreachable(
                        f"{self.peer!r} ended without closing channel {self.id} (its process "
                        "died or exited): every message it sent was received, but the "
                        "stream may be cut short"
                    )
                raise ChannelClosed(f"{self.peer!r} closed channel {self.id}")
            bell.arm()
            ring.set_want_data(True)
            fence()
            msg = self._next()
            if msg is not None:
                ring.set_want_data(False)
                return msg
            if not ring.producer_closed:
                await bell.sleep()
                self._check_open()  # closed while asleep: the ring is unmapped
            ring.set_want_data(False)

    def __aiter__(self) -> AsyncIterator[ChannelMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ChannelMessage]:
        while True:
            try:
                msg = await self.recv()
            except ChannelClosed:
                if self.closed:
                    raise
                return
            yield msg

    def _release(self, msg: ChannelMessage) -> None:
        src, msg._src = msg._src, None
        if src is not None:  # reclaim(msg.data, src), inline: once per message
            # (not contextlib.suppress: a context manager per message costs more); a view
            # held directly by a consumer stays, keeping the source exported
            try:  # noqa: SIM105
                msg.data.release()
            except BufferError:
                pass
            try:
                src.release()
            except BufferError:
                self._pin(msg, src)
        out = self._out
        if not out or out[0] is not msg or self._closed is not None or msg._pinned:
            return  # released out of order: the room comes back with the older ones
        # _give_back(defer=True), inline: once per message
        out.popleft()
        end = msg._end
        while out and out[0]._released and not out[0]._pinned:
            end = out.popleft()._end
        self._due = end
        if end - self._ring.tail >= self._batch:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            self._bell._loop.call_soon(self._flush)

    def _give_back(self, *, defer: bool = False) -> None:
        """Give the ring back up to the first message not released, or still exported;
        with ``defer``, a little room only once the loop next runs (or sooner, see the
        module's docstring)."""
        out = self._out
        end = out.popleft()._end
        while out and out[0]._released and not out[0]._pinned:
            end = out.popleft()._end
        self._due = end
        if not defer or end - self._ring.tail >= self._batch:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            self._bell._loop.call_soon(self._flush)

    def _reclaim(self, msg: ChannelMessage) -> None:
        """Release ``msg``'s view; if something made from it lives on, pin the message
        (its room stays, see the module's docstring) until that is gone."""
        src, msg._src = msg._src, None
        if src is not None and reclaim(msg.data, src):
            self._pin(msg, src)

    def _pin(self, msg: ChannelMessage, src: memoryview) -> None:
        msg._pinned = True
        self._pins.add(msg)
        msg._watch = watch(src, self._bell._loop, functools.partial(self._unpin, msg))
        log.warning(
            "channel.view_exported",
            channel=self.id,
            sender=self.peer,
            action="its room in the ring is kept (the sender waits) until the export is gone",
        )

    def _unpin(self, msg: ChannelMessage) -> None:
        """The last export of ``msg`` is gone: its room may come back."""
        msg._pinned, msg._watch = False, None
        self._pins.discard(msg)
        if self._closed is None:
            if self._out and self._out[0]._released and not self._out[0]._pinned:
                self._give_back()
        elif self._close_pending and not self._pins:
            self._close_pending = False
            self._on_close(self)

    def _mark_closed(self) -> None:
        self._ring.close()

    def _closed_here(self) -> None:
        # while a message's export lives, the coordinator keeps the ring: it is told of
        # the close once the last one is gone (_unpin)
        if self._pins:
            self._close_pending = True
        else:
            self._on_close(self)

    def _release_views(self) -> None:
        for msg in self._out:
            if not msg._released:
                msg._released = True
                self._reclaim(msg)
        self._out.clear()
        self._view.release()
        self._ring.release()
