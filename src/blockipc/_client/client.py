"""The client: a process's awaited connection to a coordinator.

Theory of operation
-------------------
:func:`connect` checks that the socket's server runs as this user or root
(``SO_PEERCRED``, before a byte is sent), runs the handshake on a raw anyio socket
stream (register a name, receive and map the pool's segment fds), then hands the socket
to an asyncio/uvloop ``BufferedProtocol`` for the hot path. Every call encodes one
request with the sans-IO :class:`~blockipc._core.protocol.Connection`, writes it, and
awaits the future that the reply with the same id resolves, so calls from many tasks
pipeline freely.

Small reads and writes travel inline in the frames; larger ones take a lease and copy
straight to or from the mapped segment, so the bytes never cross the socket.

Cancellation never loses anything: a cancelled call whose reply has not come sends
``CANCEL``, which the coordinator ignores unless the request is parked there (then it is
withdrawn); if the reply was already on its way, an *orphan* handler undoes it (frees a
block it allocated, releases a lease it was granted) or keeps it (a received message
goes to a local queue that the next ``recv`` returns first).

Reconnecting
------------
``connect(address, name, timeout=, retry=, reconnect=)``. Without ``retry`` a missing
socket or a refused connect fails at once, as it always did; with ``retry=True`` those
two (``ENOENT``, ``ECONNREFUSED``, and ``EAGAIN`` from a full listen backlog) are tried
again with a jittered exponential backoff (10 ms doubling to 0.5 s) until ``timeout``
(``None``: until the caller cancels), then :class:`ConnectionClosed` says "no
coordinator at PATH within T s" with the last attempt's error. Any other failure (not a
socket, a server of another uid, ``NameTaken``) is final at once. ``timeout`` bounds the
whole connect, handshake included.

``reconnect=True`` (opt-in) keeps the client usable across a coordinator restart.
What was in flight when the connection was lost fails with :class:`ConnectionClosed`,
as without it: the coordinator that knew of those requests is gone, and repeating one
(a ``send``, a ``put``) is the application's decision. The *next call* reconnects: a
new socket, ``HELLO`` under the same name, a fresh generation table and fresh segment
mappings (the old ones were unmapped when the connection was lost). The reconnect is
lazy, made by the call that needs it rather than by a background task: it runs in the
caller's task and under its cancellation, nothing runs in the application's loop while
nobody uses the client, and what makes it fail (``NameTaken`` when another process took
the name meanwhile, "no coordinator within T s") is raised where it can be handled.
Concurrent callers share one attempt (a lock; a caller that waited on an attempt that
failed gets that failure rather than starting another). Each attempt retries as
``retry=True`` does, bounded by ``timeout`` (:data:`RECONNECT_TIMEOUT` when ``None``);
after a failed attempt the client stays reconnectable and the next call tries again.
The price of laziness: the name is registered again only when this process next calls,
so a sender to it meanwhile gets :class:`PeerUnreachable` (a process that waits in
``recv`` calls again at once, after its in-flight ``recv`` failed).

A restart loses everything the old coordinator held, so nothing from the old connection
may be used on the new one, and nothing ever touches memory through an old mapping.
Every connection has an *epoch*; a request id, lease id, channel id or segment learnt
on one epoch is never sent or mapped on another (``_call(..., epoch=)``,
:meth:`Client._segment`), so a lease or channel end of the old connection is dead (its
views released, its close a no-op), the inbox and the ``get`` cache are dropped, and a
:class:`Block` (or id) this client held before the loss raises :class:`BlockNotFound`
saying so. That last check is the client's memory of ids it held (bounded): the new
coordinator numbers blocks afresh, so once it hands this client an id an old Block
had, that id means the new block. Only the registration is restored: subscriptions,
grants and named objects were the old coordinator's and are gone with it.

``client.closed`` is True once :meth:`Client.close` was called, in a forked child
(where calls raise :class:`UsedAfterFork`, and never reconnect), and, without
``reconnect``, once the connection is lost. With ``reconnect=True`` a lost connection
leaves it False: the client reconnects on its next call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import functools
import inspect
import itertools
import math
import mmap
import os
import random
import socket
import stat
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, Self, cast, final

import anyio
from anyio.abc import SocketAttribute, UNIXSocketStream

from .._core.codecs import DEFAULT_CODEC, Encoded, NumpyCodec, get_codec
from .._core.limits import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_SIZE,
    MAX_BATCH,
    MAX_IN_HAND,
    MAX_INLINE_PAYLOAD,
    MAX_INT,
    MAX_LIST,
    MAX_REFILL,
    check_batch,
    check_batch_bytes,
    check_in_hand,
    check_mode,
    check_queue_settings,
    check_range,
    pack_header,
    split_target,
)
from .._core.limits import check_name as _check_name
from .._core.protocol import (
    ACCESS_MODES,
    CANCELLED,
    NO_BLOCK,
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    NeedData,
    Op,
    Reply,
    Request,
    Role,
    read_only_refusal,
)
from .._core.ring import RingReader, RingWriter
from .._core.sizes import parse_size
from .._exceptions import (
    AccessDenied,
    BlockIPCError,
    BlockNotFound,
    CodecError,
    ConnectionClosed,
    InvalidRequest,
    OutOfBounds,
    PeerUnreachable,
    PoolExhausted,
    ProtocolError,
    UsedAfterFork,
    WrongEventLoop,
    error_from_code,
    use_async_with,
)
from .._handshake import (
    close_fds,
    peer_credentials,
    receive_event,
    send_frame,
    take_socket,
    trusted_peer,
)
from .._log import RateLimiter, get_logger
from .._shm.generations import GenerationView
from .._types import Block, BlockLike, LinkStats, Message, ProcessStats, QueueStats, Stats
from ..cache import CacheStats, LRUCache
from .channel import ChannelReceiver, ChannelSender, _Bell, _End
from .direct import AVAILABLE as _DIRECT
from .direct import DirectLink, DirectListener
from .jobs import Job
from .requests import DirectRequest, IncomingRequest, Payload, decode_payload, encode_inline
from .views import lend, reclaim, watch

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["Client", "Lease", "connect"]

log = get_logger("blockipc.client")
_export_limit = RateLimiter()  # lease.view_exported: a loop of leases may cause it each time

DEFAULT_INBOX_MESSAGES: Final = 1024
DEFAULT_CACHE_SIZE: Final = "64MiB"
DEFAULT_CHANNEL_CAPACITY: Final = "4MiB"
_MAX_REFS: Final = 65536
TOUCH_DELAY: Final = 0.05
"""Seconds a client gathers the blocks its own cache served before it tells the
coordinator in one ``TOUCH`` (whose LRU order decides what is evicted)."""
INLINE_THRESHOLD: Final = 64 * 1024
"""Reads and writes up to this many bytes travel inline; larger ones use a lease."""
RECONNECT_TIMEOUT: Final = 10.0
"""Seconds one reconnect (``connect(..., reconnect=True)``) may take when ``connect``
was given no ``timeout``."""
_BACKOFF_FIRST: Final = 0.01
_BACKOFF_MAX: Final = 0.5
_Orphan = Callable[[Reply], None]
_LEASING: Final = frozenset({Op.LEASE, Op.LEASE_CODEC, Op.GET})  # replies may grant a lease
_Ref = tuple[int, int, int, str]  # block, generation slot, generation, recorded codec


def _block_id(block: BlockLike) -> int:
    bid = block.id if isinstance(block, Block) else block
    if type(bid) is not int:
        raise TypeError(f"expected a Block or a block id (int), not {type(block).__name__}")
    if not 0 < bid <= MAX_INT:
        raise BlockNotFound(f"block {bid} does not exist")
    return bid


def _check_offset(offset: int, what: str = "offset") -> None:
    if type(offset) is not int:
        raise TypeError(f"{what} must be an int, not {type(offset).__name__}")
    if not 0 <= offset <= MAX_INT:
        raise OutOfBounds(f"{what} {offset} is outside every block")


_MADV_POPULATE_WRITE: Final = 23  # Linux 5.14+; not in Python's mmap module before 3.13
_PREFAULT_CHUNK: Final = 8 << 20


async def _prefault(mm: mmap.mmap, offset: int, size: int) -> None:
    """Map every page of a channel's ring into this process now, a chunk at a time:
    otherwise the first laps of a stream pay a page fault per 4 KiB on each end."""
    end = offset + size
    for at in range(offset, end, _PREFAULT_CHUNK):
        if mm.closed:  # the client closed meanwhile: the caller raises
            return
        try:
            mm.madvise(_MADV_POPULATE_WRITE, at, min(_PREFAULT_CHUNK, end - at))
        except OSError:  # an older kernel: the pages fault in on first use instead
            return
        await asyncio.sleep(0)


def _ttl_ms(ttl: float | None) -> int:
    """A named object's ``ttl`` seconds on the wire: milliseconds, 0 for none."""
    if ttl is None:
        return 0
    if not 0 < ttl < 1e9:
        raise InvalidRequest(f"ttl must be > 0 seconds (or None), not {ttl}")
    return max(1, int(ttl * 1000))


def _wait_ms(wait_for_peer: float | None) -> int:
    """``wait_for_peer`` seconds on the wire: milliseconds, 0 for no wait."""
    if wait_for_peer is None:
        return 0
    if not 0 <= wait_for_peer < 1e9:
        raise InvalidRequest(f"wait_for_peer must be >= 0 seconds, not {wait_for_peer}")
    return max(1, int(wait_for_peer * 1000))


class _Segment:
    """A pool segment mapped into this process: read-write, or (``writable=False``, a
    read-only connection's, whose fd is ``O_RDONLY``) ``PROT_READ`` only."""

    __slots__ = ("buffer", "mm", "size")

    def __init__(self, fd: int, size: int, *, writable: bool = True) -> None:
        self.size = size
        prot = mmap.PROT_READ | mmap.PROT_WRITE if writable else mmap.PROT_READ
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self.buffer = memoryview(self.mm)

    def close(self) -> None:
        self.buffer.release()
        try:
            self.mm.close()
        except BufferError:  # a view the user kept alive; unmapped when it is collected
            log.warning("client.segment_in_use", size=self.size)


class _ClientProtocol(asyncio.BufferedProtocol):
    # The client is held weakly while no call waits: the loop keeps the transport and
    # so the protocol alive, and a client the application dropped without closing
    # must still be collected (its __del__ warns and closes the transport, like a
    # socket's). While a call waits (``busy``), it is held strongly: a task awaiting
    # recv() that nobody else references must not be collected with its client.
    def __init__(self, client: Client) -> None:
        self._client = weakref.ref(client)
        self.busy: Client | None = None
        self._buffer = memoryview(bytearray(256 * 1024))
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._can_write = asyncio.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        client = self._client()
        if client is not None:
            client._on_data(self, self._buffer[:nbytes])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._can_write.set()
        client = self._client()
        if client is not None:
            client._on_lost(self, exc)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def drain(self) -> None:
        await self._can_write.wait()


_connected: weakref.WeakSet[Client] = weakref.WeakSet()
"""Every client with a live connection in this process (see :func:`_after_fork`)."""


def _after_fork() -> None:
    """In a forked child: every inherited client is the parent's, and stays so.

    Each is marked closed with :class:`UsedAfterFork`, locally and with no I/O at all:
    a write would go out on the parent's socket, and even unregistering a reader
    would change the parent's epoll set, which the child shares.
    """
    for client in list(_connected):
        client._forked()
    _connected.clear()


os.register_at_fork(after_in_child=_after_fork)


class Client:
    """A registered process's connection to a coordinator. Made by :func:`connect`.

    Every method that takes a block accepts a :class:`Block` or its id. Calls may be
    made from many tasks at once; they pipeline on one connection. A client belongs
    to the process and the event loop that connected it: used in a forked child it
    raises :class:`UsedAfterFork`, from another loop :class:`WrongEventLoop`. Made with
    ``reconnect=True``, it survives a coordinator restart (see :func:`connect`)::

        async with blockipc.connect(address, name="worker") as client:
            block = await client.alloc(4096)
            await client.write(block, b"hello")
            await client.send(block, to="consumer")
    """

    def __init__(
        self,
        address: str,
        name: str,
        *,
        inbox_messages: int = DEFAULT_INBOX_MESSAGES,
        inbox_bytes: int | str | None = None,
        cache_size: int | str = DEFAULT_CACHE_SIZE,
        timeout: float | None = None,
        retry: bool = False,
        reconnect: bool = False,
        access: Literal["r", "rw"] = "rw",
    ) -> None:
        self.address = address
        self.name = name
        self._access: Literal["r", "rw"] = access
        self._read_only = access == "r"
        # decoded get() results by (block, generation, codec); checked against the
        # coordinator's generation table on every hit, so never stale
        self._cache: LRUCache[tuple[int, int, str], tuple[bool, Any]] = LRUCache(
            0 if cache_size == 0 else cache_size
        )
        self._refs: collections.OrderedDict[int | str, _Ref] = collections.OrderedDict()
        self._gens: GenerationView | None = None
        self._cache_hits = self._cache_misses = 0
        self._touched: dict[int, None] = {}  # hits not told to the coordinator yet
        self._touch_timer: asyncio.Handle | None = None
        if type(inbox_messages) is not int or inbox_messages < 1:
            raise InvalidRequest(f"inbox_messages must be an int >= 1, not {inbox_messages!r}")
        self._inbox_limits = (
            inbox_messages,
            MAX_INT if inbox_bytes is None else parse_size(inbox_bytes),
        )
        self._conn = Connection(Role.CLIENT)
        self._proto: _ClientProtocol | None = None
        self._pending: dict[int, tuple[asyncio.Future[Reply] | None, _Orphan | None]] = {}
        # TAKE (TAKE_MANY) req_id -> the jobs whose acks it carries
        self._folds: dict[int, tuple[Job, ...]] = {}
        # cancelled LEASE/GET calls whose reply has not come (request id -> block): a
        # free of that block waits for it, so that the lease it may grant is released
        # first (the coordinator refuses to free a block its holder still leases)
        self._unsettled: dict[int, int] = {}
        self._settling: list[asyncio.Future[None]] = []
        self._ids = itertools.count(1)
        self._segments: dict[int, _Segment] = {}
        self._token = b""
        self._max_inline = INLINE_THRESHOLD
        self._inbox: collections.deque[Message] = collections.deque()
        self._sizes: dict[int, int] = {}
        # a large job's block for the next enqueue of its size (_enqueue_put): (the
        # connection's epoch, the fields of its PUT-like reply), and the last such size
        self._spare: tuple[int, dict[str, Any]] | None = None
        self._last_put = 0
        self._closed = False
        self._closing = False
        self._error: BlockIPCError | None = None
        self._attach_lock = anyio.Lock()
        self._leases: set[Lease] = set()
        # views of ended leases still exported, on this connection: block -> how many,
        # and the weak references that say when each is gone (see _client/views.py)
        self._exports: dict[int, int] = {}
        self._watches: dict[int, weakref.ref[memoryview]] = {}
        self._watch_ids = itertools.count()
        self._channels: dict[int, ChannelSender | ChannelReceiver] = {}
        self._accepted: collections.deque[Reply] = collections.deque()  # for a cancelled accept
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it connected on
        self._thread = 0  # the thread that loop runs in
        self._timeout, self._retry, self._reconnect = timeout, retry, reconnect
        self._ended = False  # closed by close(), a fork or a lost loop: never reconnects
        # A connection's epoch: what was learnt on one (a lease, a segment, a channel,
        # a reply) is never used on another; bumped whenever a connection ends.
        self._epoch = 0
        self._reconnect_lock = anyio.Lock()
        self._reconnect_failures = 0
        self._reconnect_failure: BlockIPCError | None = None
        # block ids handed out on this connection, and those of lost connections
        self._held: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._stale: collections.OrderedDict[int, None] = collections.OrderedDict()
        # request/reply (see _client/direct.py): as a requester, the responders' direct
        # addresses learnt from their replies and the sockets to them; as a responder,
        # its listener, the requests come and not received yet (direct ones, and
        # (epoch, SERVE reply) of the one brokered receive kept parked meanwhile), the
        # receives waiting for them, and how many direct ones are in hand
        self._direct_addrs: dict[str, str] = {}
        self._links: dict[str, DirectLink] = {}
        self._linking: dict[str, asyncio.Future[DirectLink | None]] = {}
        self._listener: DirectListener | None = None
        self._rr_ready: collections.deque[DirectRequest | tuple[int, Reply]] = collections.deque()
        self._rr_waiters: collections.deque[asyncio.Future[DirectRequest | None]] = (
            collections.deque()
        )
        self._rr_serve: asyncio.Task[None] | None = None
        self._rr_error: BaseException | None = None
        self._direct_in_hand = 0

    # -- connection --------------------------------------------------------------
    async def _open(self, *, retry: bool, within: float | None) -> None:
        """Connect, handshake and map the pool: the first connection and each reconnect.
        ``within`` seconds bound all of it; ``retry`` waits for a coordinator to listen."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()  # (the loop's: request()'s cheap check)
        deadline = None if within is None else anyio.current_time() + within
        stream = await _connect_retrying(self.address, retry=retry, within=within)
        self._conn = Connection(Role.CLIENT)  # a fresh state machine per connection
        proto: _ClientProtocol | None = None
        left = None if deadline is None else max(0.0, deadline - anyio.current_time())
        with anyio.move_on_after(left) as scope:
            proto = await self._handshake(stream)
        if proto is None:
            assert scope.cancelled_caught
            raise ConnectionClosed(
                f"the coordinator at {self.address} did not complete the handshake within "
                f"{within:g} s"
            )
        self._proto = proto
        self._closed = False
        self._error = None
        _connected.add(self)
        log.debug("client.connected", name=self.name, address=self.address)

    async def _handshake(self, stream: UNIXSocketStream) -> _ClientProtocol:
        fds: list[int] = []
        try:
            hello = Request(
                next(self._ids),
                Op.HELLO,
                {
                    "version": PROTOCOL_VERSION,
                    "name": self.name,
                    "pid": os.getpid(),
                    "inbox_messages": self._inbox_limits[0],
                    "inbox_bytes": self._inbox_limits[1],
                    "access": self._access,
                },
            )
            await send_frame(stream, self._conn.send(hello))
            event, fds = await receive_event(stream, self._conn, with_fds=True)
            if isinstance(event, ErrorReply):
                raise error_from_code(event.code, event.message)
            assert isinstance(event, Reply)
            self._token = event.result["token"]
            self._max_inline = min(INLINE_THRESHOLD, event.result["max_inline"])
            segments = event.result["segments"]
            if len(fds) != len(segments) + 1:
                raise ProtocolError(
                    f"expected {len(segments) + 1} fds (segments and the generation table), "
                    f"received {len(fds)} (control data truncated or unasked-for fds)"
                )
            gen_fd = fds.pop()
            try:
                self._gens = GenerationView(gen_fd, event.result["gen_size"])
            finally:
                os.close(gen_fd)
            self._map_segments(segments, fds)
            sock = await take_socket(stream)
        except BaseException:
            close_fds(fds)
            await stream.aclose()
            self._unmap()
            raise
        loop = asyncio.get_running_loop()
        proto = _ClientProtocol(self)
        try:
            await loop.create_unix_connection(lambda: proto, sock=sock)
        except BaseException:
            sock.close()
            self._unmap()
            raise
        return proto

    def _map_segments(self, segments: list[list[int]], fds: list[int]) -> None:
        """Map the segments whose fds just arrived; the fds are closed either way."""
        try:
            if len(fds) != len(segments):
                raise ProtocolError(
                    f"expected {len(segments)} segment fds, received {len(fds)} "
                    "(control data truncated or unasked-for fds)"
                )
            for (seg_id, size), fd in zip(segments, fds, strict=True):
                if seg_id not in self._segments:
                    self._segments[seg_id] = _Segment(fd, size, writable=not self._read_only)
        finally:
            close_fds(fds)

    async def _segment(self, seg_id: int, epoch: int) -> _Segment:
        """The mapped segment ``seg_id`` of connection ``epoch`` (the one whose reply
        named it), fetched on a side connection if it is new. Raises
        :class:`ConnectionClosed` once that connection is gone: a segment id of a lost
        connection must never resolve to a mapping of the next one."""
        self._check_epoch(epoch)
        seg = self._segments.get(seg_id)
        if seg is not None:
            return seg
        async with self._attach_lock:
            self._check_epoch(epoch)
            if seg_id not in self._segments:
                await self._attach([seg_id], epoch=epoch)
        self._check_epoch(epoch)
        try:
            return self._segments[seg_id]
        except KeyError:
            raise ProtocolError(f"coordinator did not provide segment {seg_id}") from None

    def _check_epoch(self, epoch: int) -> None:
        """Raise unless connection ``epoch`` is the live one."""
        if epoch != self._epoch or self._closed:
            if self._closed and self._error is not None and epoch == self._epoch:
                raise self._closed_error()
            raise ConnectionClosed(
                f"the connection of client {self.name!r} to the coordinator at "
                f"{self.address} that this lease, channel or request belonged to was lost"
            )

    async def _attach(self, wanted: list[int], channel: int = 0, *, epoch: int) -> list[int]:
        """Fetch segments (and a channel's eventfds) of connection ``epoch`` on a side
        connection; returns the eventfds, which the caller owns."""
        self._check_epoch(epoch)  # the token is the live connection's
        stream = await _connect_unix(
            self.address, lambda address, exc: ConnectionClosed(f"cannot reach {address}: {exc}")
        )
        got: list[int] = []
        try:
            async with stream:
                conn = Connection(Role.CLIENT)
                args = {"token": self._token, "segments": wanted, "channel": channel}
                await send_frame(stream, conn.send(Request(1, Op.ATTACH, args)))
                event, fds = await receive_event(stream, conn, with_fds=True)
                if isinstance(event, ErrorReply):
                    close_fds(fds)
                    raise error_from_code(event.code, event.message)
                assert isinstance(event, Reply)
                bells = event.result["bells"]
                if bells != (2 if channel else 0) or len(fds) < bells:
                    close_fds(fds)
                    raise ProtocolError(f"expected 2 eventfds for channel {channel}, got {bells}")
                got = fds[len(fds) - bells :]
                if epoch != self._epoch:  # lost meanwhile: these are not for this pool
                    close_fds(fds)
                    got = []
                    self._check_epoch(epoch)
                self._map_segments(event.result["segments"], fds[: len(fds) - bells])
        except BaseException:
            close_fds(got)  # e.g. cancelled while the side connection closes
            raise
        return got

    def _unmap(self) -> None:
        for seg in self._segments.values():
            seg.close()
        self._segments.clear()
        if self._gens is not None:
            self._gens.close()
            self._gens = None
        self._cache.clear()
        self._refs.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> NoReturn:
        raise use_async_with("async with client: ...", "a Client")

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ raises
        pass

    async def aclose(self) -> None:
        """Say goodbye and close. The coordinator frees the blocks this process still
        owns and ends its leases. Pending calls raise :class:`ConnectionClosed`.
        Idempotent; a client made with ``reconnect=True`` never reconnects after it."""
        if self._closed or self._closing:
            self._ended = True
            return
        if self._loop is not None and self._loop.is_closed():
            self._drop_connection()
            return
        self._check_loop()
        self._ended = self._closing = True
        proto = self._proto
        # channel ends close first, in their rings: a clean close, which the peer sees
        # as the end of a complete stream (the coordinator marks ends it finds open when
        # the connection goes as aborted: a process that died mid-stream)
        closing = ConnectionClosed(f"client {self.name!r} is closed")
        for end in list(self._channels.values()):
            end._shutdown(closing)
        try:
            if proto is not None and not proto.lost:
                with anyio.move_on_after(1.0, shield=True):
                    with contextlib.suppress(BlockIPCError):
                        await self._call(Op.BYE, {})
        finally:
            self._shutdown(ConnectionClosed(f"client {self.name!r} is closed"))
            if proto is not None and proto.transport is not None:
                proto.transport.close()
            log.debug("client.closed", name=self.name)

    close = aclose

    @property
    def access(self) -> Literal["r", "rw"]:
        """``"rw"``, or ``"r"`` for a read-only connection (``connect(..., access="r")``):
        its segments are mapped ``PROT_READ`` from read-only fds, and what would write a
        block or hand data on raises :class:`AccessDenied`.

        >>> client.access  # doctest: +SKIP
        'rw'
        """
        return self._access

    @property
    def closed(self) -> bool:
        """True once the client is closed (or used in a forked child) or, unless it
        was made with ``reconnect=True``, once its coordinator went away. A client that
        reconnects stays open across a lost connection: its next call reconnects."""
        if self._reconnect and self._proto is not None:
            return self._ended
        return self._closed or self._ended

    def _forked(self) -> None:
        """This process is a fork of the one that connected: see :func:`_after_fork`."""
        self._closed = self._ended = True
        self._error = UsedAfterFork(
            f"client {self.name!r} was connected in process {self._pid}, and this is "
            f"process {os.getpid()}, forked from it: connect again in the child process"
        )
        for end in self._channels.values():
            end._abandon(self._error)

    def _drop_connection(self) -> None:
        """Close without a word to the coordinator: the loop this client connected on
        has ended, so its transport cannot run. Shutting the socket down makes the
        coordinator reclaim at once."""
        self._ended = True
        self._shutdown(ConnectionClosed(f"client {self.name!r} is closed"))
        proto = self._proto
        if proto is not None and proto.transport is not None:
            with contextlib.suppress(Exception):  # any transport, any state
                proto.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):  # e.g. RuntimeError: loop is closed
                proto.transport.close()

    def _check_loop(self, *, reconnecting: bool = False) -> asyncio.AbstractEventLoop:
        """The running loop, if it is the one this client connected on."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop and self._loop is not None and (reconnecting or not self._closed):
            if self._loop.is_closed():
                raise WrongEventLoop(
                    f"the event loop client {self.name!r} connected on has ended: close it "
                    "(await client.close() works on any loop) and connect again"
                )
            raise WrongEventLoop(
                f"client {self.name!r} is used from an event loop (or thread) other than "
                "the one it connected on: connect a client in each event loop, or run the "
                "call on the client's loop (asyncio.run_coroutine_threadsafe)"
            )
        return loop

    def _shutdown(self, error: BlockIPCError) -> None:
        if self._closed:
            return
        _connected.discard(self)
        self._closed = True
        self._epoch += 1  # nothing learnt on this connection is valid on the next
        self._error = error
        if self._touch_timer is not None:
            self._touch_timer.cancel()
            self._touch_timer = None
        self._touched.clear()
        pending, self._pending = self._pending, {}
        folds, self._folds = self._folds, {}
        for jobs in folds.values():
            for job in jobs:
                job._folded(False)  # unanswerable now: the connection, and its jobs, are gone
        self._unsettled.clear()
        self._wake_settling()
        self._end_direct(error)
        if self._proto is not None:
            self._proto.busy = None
        for fut, _orphan in pending.values():
            if fut is not None and not fut.done():
                fut.set_exception(self._closed_error())
                fut.exception()  # mark retrieved: the awaiting task may be gone
        for lease in list(self._leases):
            lease._drop_view()  # the coordinator reclaims the lease: the view must not outlive it
            lease._lease_id = None  # and its id means nothing (or another lease) on the next
        self._exports.clear()  # the coordinator forgets them with the connection
        self._watches.clear()
        for end in list(self._channels.values()):
            end._shutdown(self._closed_error())  # before the unmap: ends hold views
        self._channels.clear()
        self._unmap()
        if self._reconnect:
            # What the next connection must not see: messages and channels the old
            # coordinator delivered, sizes of its blocks; their ids become stale.
            self._inbox.clear()
            self._accepted.clear()
            self._sizes.clear()
            self._stale.update(self._held)
            self._held.clear()
            while len(self._stale) > _MAX_REFS:
                self._stale.popitem(last=False)

    def _closed_error(self) -> BlockIPCError:
        # A fresh instance each time: one instance raised in many tasks (or again and
        # again) would pile up all their tracebacks and chain unrelated contexts.
        if self._error is None:
            return ConnectionClosed("client is not connected")
        return copy.copy(self._error)

    def _on_lost(self, proto: _ClientProtocol, exc: Exception | None) -> None:
        if proto is not self._proto:  # a connection this client already replaced
            return
        if not self._closed:
            log.warning("client.connection_lost", name=self.name, error=repr(exc))
        self._shutdown(ConnectionClosed(f"connection to the coordinator at {self.address} lost"))

    def _on_data(self, proto: _ClientProtocol, data: memoryview) -> None:
        if proto is not self._proto:
            return
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if isinstance(event, NeedData):
                    return
                assert not isinstance(event, Request)
                self._dispatch(event)
        except ProtocolError as exc:
            log.error("protocol.error", name=self.name, error=str(exc))
            self._shutdown(ConnectionClosed(f"connection closed after a protocol error: {exc}"))
            if self._proto is not None and self._proto.transport is not None:
                self._proto.transport.abort()

    def _dispatch(self, event: Reply | ErrorReply) -> None:
        fut, orphan = self._pending.pop(event.req_id, (None, None))
        if self._folds and (jobs := self._folds.pop(event.req_id, None)) is not None:
            # the acks a TAKE carried were done unless the TAKE was refused (ops/queues.take)
            done = isinstance(event, Reply) or event.code == CANCELLED
            for job in jobs:
                job._folded(done)
        if not self._pending and self._proto is not None:
            self._proto.busy = None  # nothing waits: held weakly again
        if fut is None or fut.done():
            if orphan is not None and isinstance(event, Reply):
                orphan(event)  # (a RELEASE it sends is written before a free that waits)
            if self._unsettled and self._unsettled.pop(event.req_id, None) is not None:
                self._wake_settling()
            return
        if isinstance(event, ErrorReply):
            fut.set_exception(error_from_code(event.code, event.message))
        else:
            fut.set_result(event)

    async def _ready(self) -> None:
        """Raise unless connected; a client made with ``reconnect=True`` reconnects."""
        if not self._closed and self._proto is not None:
            return
        if not self._reconnect or self._ended or self._proto is None:
            raise self._closed_error()
        await self._reconnect_now()

    async def _reconnect_now(self) -> None:
        """Connect again after a lost connection (see "Reconnecting" above)."""
        if os.getpid() != self._pid:  # lost before the fork, so _after_fork missed it
            self._forked()
            raise self._closed_error()
        self._check_loop(reconnecting=True)
        failures = self._reconnect_failures
        async with self._reconnect_lock:
            if not self._closed:
                return  # another task reconnected meanwhile
            if self._ended:
                raise self._closed_error()
            if self._reconnect_failures != failures and self._reconnect_failure is not None:
                raise copy.copy(self._reconnect_failure)  # the attempt this call waited on
            timeout = RECONNECT_TIMEOUT if self._timeout is None else self._timeout
            try:
                await self._open(retry=True, within=timeout)
            except BlockIPCError as exc:
                self._reconnect_failures += 1
                self._reconnect_failure = exc
                log.warning("client.reconnect_failed", name=self.name, error=str(exc))
                raise
        log.info("client.reconnected", name=self.name, address=self.address)
        if self._ended:  # closed while it reconnected
            await self.aclose()
            raise self._closed_error()

    async def _call(
        self,
        op: Op,
        args: dict[str, Any],
        data: bytes = b"",
        orphan: _Orphan | None = None,
        *,
        epoch: int | None = None,
        fold: Sequence[Job] = (),
    ) -> Reply:
        # ``epoch``: the connection whose lease, block or channel ``args`` name; such a
        # call fails once that connection is gone, and never reconnects.
        # A read-only connection's write is refused here, before a byte is sent; the
        # coordinator's check of the same rule (in ServerState.handle) is the one that counts.
        if self._read_only and (refusal := read_only_refusal(op, args)) is not None:
            raise AccessDenied(refusal)
        if epoch is None:
            await self._ready()
        else:
            self._check_epoch(epoch)
        loop = self._check_loop()
        proto = self._proto
        assert proto is not None
        current = self._epoch
        req_id = next(self._ids)
        frame = self._conn.send(Request(req_id, op, args, data))
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[req_id] = (fut, orphan)
        if fold:  # a TAKE carrying these jobs' acks: its answer settles them
            self._folds[req_id] = tuple(fold)
        proto.busy = self
        assert proto.transport is not None
        proto.transport.write(frame)
        try:
            if not proto._can_write.is_set():
                await proto.drain()
            reply = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The reply arrived, but the task was cancelled before it resumed: treat
                # it like a reply that arrives after the cancellation (free the block,
                # release the lease, keep the message for the next recv).
                if fut.exception() is None and orphan is not None and self._epoch == current:
                    orphan(fut.result())
            else:
                fut.cancel()  # a reply that comes later goes to the orphan handler
                if req_id in self._pending:  # whatever it is: a request that is not
                    # parked (answered, or never waits) makes the CANCEL a no-op
                    self._send_nowait(Op.CANCEL, {"target": req_id})
                    if op in _LEASING and args.get("block"):
                        self._unsettled[req_id] = args["block"]  # its reply is to come
            raise
        if self._epoch != current:  # the reply came, then the connection was lost: what
            self._check_epoch(current)  # it granted (a block, a lease) went with it
        return reply

    async def _settle(self, blocks: Iterable[int]) -> None:
        """Wait until no cancelled lease call on ``blocks`` awaits its reply."""
        wanted = set(blocks)
        while self._unsettled and not wanted.isdisjoint(self._unsettled.values()):
            waiter = asyncio.get_running_loop().create_future()
            self._settling.append(waiter)
            await waiter

    def _wake_settling(self) -> None:
        waiters, self._settling = self._settling, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _return_lease(self, reply: Reply) -> None:
        """Orphan handler: a lease granted to a call cancelled meanwhile goes back."""
        self._send_nowait(Op.RELEASE, {"lease": reply.result["lease"]})

    def _view_exported(self, block: int, epoch: int, src: memoryview) -> None:
        """A view of a lease on ``block`` (granted on connection ``epoch``) outlived the
        lease: ``src`` stays exported while anything made from it lives. The lease ends
        with RELEASE_EXPORTED (the coordinator keeps the memory out of the pool); once
        the last such view of the block in this process is gone, UNEXPORT says so."""
        if epoch != self._epoch or self._loop is None:
            return  # that connection is gone, and the coordinator's marks with it
        self._exports[block] = self._exports.get(block, 0) + 1
        token = next(self._watch_ids)
        gone = functools.partial(self._view_gone, token, block, epoch)
        self._watches[token] = watch(src, self._loop, gone)

    def _view_gone(self, token: int, block: int, epoch: int) -> None:
        """On the loop: one exported view of ``block`` is gone (see _view_exported)."""
        if self._watches.pop(token, None) is None or epoch != self._epoch:
            return  # (cleared with its connection)
        left = self._exports[block] - 1
        if left:
            self._exports[block] = left
        else:
            del self._exports[block]
            self._send_nowait(Op.UNEXPORT, {"block": block}, epoch=epoch)

    def _send_nowait(self, op: Op, args: dict[str, Any], *, epoch: int | None = None) -> None:
        """Fire a request whose reply nobody awaits (not if connection ``epoch``, which
        the ids in ``args`` belong to, is gone)."""
        if self._closed or self._closing or self._proto is None or self._proto.transport is None:
            return
        if epoch is not None and epoch != self._epoch:
            return
        req_id = next(self._ids)
        frame = self._conn.send(Request(req_id, op, args))
        self._pending[req_id] = (None, None)
        self._proto.transport.write(frame)

    # -- blocks ------------------------------------------------------------------
    def _bid(self, block: BlockLike) -> int:
        """``block``'s id, checked: not one this client held on a connection it lost."""
        bid = _block_id(block)
        if bid in self._stale:
            raise BlockNotFound(
                f"block {bid} belonged to client {self.name!r}'s connection to the "
                f"coordinator at {self.address}, which was lost (the coordinator ended or "
                "restarted): its data is gone with it; allocate a new block (or get the "
                "object again)"
            )
        return bid

    def _issued(self, bid: int) -> None:
        """Block ``bid`` was handed to this process on the live connection."""
        self._stale.pop(bid, None)  # the new coordinator reused the id: it is valid again
        if self._reconnect:
            self._held[bid] = None
            self._held.move_to_end(bid)
            if len(self._held) > _MAX_REFS:
                self._held.popitem(last=False)

    async def alloc(self, size: int | str) -> Block:
        """Allocate a block of ``size`` bytes (capacity: the next power of two).

        >>> block = await client.alloc(1_000_000)   # doctest: +SKIP
        >>> block = await client.alloc("4MiB")      # doctest: +SKIP
        """
        if isinstance(size, str):
            size = parse_size(size)
        if type(size) is not int:
            raise TypeError(f"size must be an int or a size string, not {type(size).__name__}")
        if size <= 0:
            raise InvalidRequest(f"block size must be positive, not {size}")
        _check_block_size(size)

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator allocated
            self._send_nowait(Op.FREE, {"block": reply.result["block"]})

        reply = await self._call(Op.ALLOC, {"size": size}, orphan=orphan)
        r = reply.result
        self._sizes[r["block"]] = r["size"]
        self._issued(r["block"])
        return Block(r["block"], r["size"], r["capacity"], self.name)

    async def free(self, block: BlockLike) -> None:
        """Give ``block`` back to the pool; its id is never valid again."""
        bid = self._bid(block)
        if self._unsettled:
            await self._settle((bid,))
        await self._call(Op.FREE, {"block": bid})
        self._sizes.pop(bid, None)

    async def free_many(self, blocks: Iterable[BlockLike]) -> None:
        """Free several blocks in one request: all of them or, if one cannot be freed
        (unknown, leased, being sent), none, and that block's error is raised."""
        ids = [self._bid(b) for b in blocks]
        check_batch(len(ids), "blocks per free_many")
        if self._unsettled:
            await self._settle(ids)
        await self._call(Op.FREE_MANY, {"blocks": ids})
        for bid in ids:
            self._sizes.pop(bid, None)

    async def write(
        self, block: BlockLike, data: bytes | bytearray | memoryview, offset: int = 0
    ) -> int:
        """Write ``data`` into ``block`` at ``offset``; returns the bytes written."""
        bid = self._bid(block)
        _check_offset(offset)
        view = memoryview(data).cast("B")
        n = view.nbytes
        if n <= self._max_inline:
            reply = await self._call(Op.WRITE, {"block": bid, "offset": offset}, bytes(view))
            written: int = reply.result["written"]
            return written
        async with self.lease(bid, "w") as dst:
            check_range(bid, offset, n, len(dst))
            dst[offset : offset + n] = view
        return n

    async def read(self, block: BlockLike, offset: int = 0, size: int | None = None) -> bytes:
        """Read ``size`` bytes of ``block`` from ``offset`` (to the end by default)."""
        bid = self._bid(block)
        _check_offset(offset)
        if size is None:
            known = block.size if isinstance(block, Block) else self._sizes.get(bid)
            if known is None:  # a lease this process holds on it knows (and must not wait)
                known = next(
                    (len(h._view) for h in self._leases if h.block == bid and h._view is not None),
                    None,
                )
            if known is None:
                # a block id this process never allocated nor received (a grant, a named
                # object's id): a read lease asks the coordinator, which checks the
                # right, and its view is the block's size
                async with self.lease(bid, "r") as src:
                    if offset > len(src):
                        raise OutOfBounds(
                            f"offset {offset} is outside block {bid} of size {len(src)}"
                        )
                    return bytes(src[offset:])
            size = known - offset
            if size < 0:
                raise OutOfBounds(f"offset {offset} is outside block {bid} of size {known}")
        _check_offset(size, "size")
        if size <= self._max_inline:
            reply = await self._call(Op.READ, {"block": bid, "offset": offset, "size": size})
            return reply.data
        async with self.lease(bid, "r") as src:
            check_range(bid, offset, size, len(src))
            return bytes(src[offset : offset + size])

    def lease(
        self, block: BlockLike, mode: Literal["r", "w"] = "r", *, codec: str | None = None
    ) -> Lease:
        """Zero-copy access to ``block``'s bytes while the lease is held.

        ``"r"`` leases are shared, a ``"w"`` lease is exclusive; both are awaited when
        contended. The view is ``block.size`` bytes long and is released when the lease
        ends, so a stale view raises instead of touching memory that may be reused::

            async with client.lease(block, "w") as view:
                view[:5] = b"HELLO"

        With ``codec``, the lease gives the object the block holds (the codec recorded
        by :meth:`put` or :meth:`empty` must be that one, else :class:`CodecError`):
        ``"numpy"`` an array over the block's own memory, read-only or, with ``"w"``,
        writable (``"w"`` takes only the codecs that work in place, ``"raw"`` and
        ``"numpy"``)::

            frame = await client.empty((480, 640, 3), "uint8")
            async with client.lease(frame, "w", codec="numpy") as arr:
                arr[:] = camera.read()  # straight into shared memory

        An array or slice made from the view should not outlive the lease (``del arr``
        inside the ``async with``): one that does logs ``lease.view_exported`` and
        keeps the block's memory out of the pool until it is gone.
        """
        bid = self._bid(block)
        mode = check_mode("lease", mode)
        if codec is not None:
            codec_obj = get_codec(codec)  # an unknown name fails here, before any request
            if mode != "r" and not codec_obj.in_place:
                raise InvalidRequest(
                    f"a write lease with codec={codec!r} cannot write the block in place: "
                    "use codec='numpy' or 'raw', or put() a new object"
                )
        return Lease(self, bid, mode, codec)

    # -- messages ----------------------------------------------------------------
    @staticmethod
    def _check_header(header: dict[str, Any] | None) -> dict[str, Any]:
        pack_header(header)
        return {} if header is None else header

    async def send(
        self,
        block: BlockLike | None,
        to: str,
        *,
        header: dict[str, Any] | None = None,
        move: bool = True,
        nowait: bool = False,
        wait_for_peer: float | None = None,
    ) -> None:
        """Hand ``block`` to the process registered as ``to``; it gets it from
        :meth:`recv`. Zero-copy either way:

        * ``move=True`` (default): ownership moves to the receiver; this process can no
          longer use the block.
        * ``move=False``: this process keeps its access and the receiver gets a read
          grant; the block is freed when its last holder frees it.

        When the receiver's inbox is full the call waits for room (``nowait=True``
        raises :class:`InboxFull` instead). A name nobody has registered raises
        :class:`PeerUnreachable` at once, or after waiting up to ``wait_for_peer``
        seconds for it to register. Each sender's messages arrive in order. Cancelling a
        send that waits (for room or for its peer) withdraws it: the block stays here.

        ``block=None`` sends the header alone (an event: no block to allocate, free or
        lease; the receiver's :attr:`Message.block` is None), with the same order,
        inbox bound and waiting as a block; local receivers only.

        ``to="node/name"`` sends to a process on another node through the coordinators'
        link: the block's bytes travel to that node's pool, and the call returns once
        the remote coordinator has put the whole block in the receiver's inbox (it
        raises otherwise, and the block is still this process's). ``move=True`` frees
        the block here after the send; ``move=False`` keeps it. ``nowait`` and
        ``wait_for_peer`` apply to local sends only.
        """
        bid = NO_BLOCK if block is None else self._bid(block)
        if isinstance(to, str) and "/" in to:  # node/name: a remote send (see _link/link.py)
            split_target(to)  # the node's name and the process's, each to its own limit
        else:
            _check_name(to, "receiver name")
        hdr = self._check_header(header)
        if "/" in to:
            if nowait or wait_for_peer is not None:
                raise InvalidRequest("nowait and wait_for_peer apply to local sends only")
            if block is None:
                raise InvalidRequest("a header alone (block=None) goes to local processes only")
            remote = {"block": bid, "to": to, "header": hdr, "move": bool(move)}
            await self._call(Op.REMOTE_SEND, remote)
            if move:
                self._sizes.pop(bid, None)
            return
        args = {
            "block": bid,
            "to": to,
            "header": hdr,
            "move": bool(move),
            "nowait": bool(nowait),
            "wait_ms": _wait_ms(wait_for_peer),
        }
        await self._call(Op.SEND, args)
        if move and block is not None:
            self._sizes.pop(bid, None)

    async def send_value(
        self,
        to: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
        wait_for_peer: float | None = None,
    ) -> None:
        """Send ``obj``, encoded with ``codec``, inside the request itself into the
        inbox of the process registered as ``to``: one request, no block to allocate,
        write, lease or free on either side. The receiver's :meth:`recv` (or
        :meth:`recv_many`) gets a :class:`Message` whose :attr:`Message.value` is the
        object (its ``block`` is None); its bytes count against the receiver's
        ``inbox_bytes``, the message against ``inbox_messages``.

        For small messages: ``obj`` may take at most ``MAX_INLINE_PAYLOAD`` (64 KiB)
        encoded (:class:`InvalidRequest` otherwise; put a larger one in a block and
        :meth:`send` it). Waiting for room (``nowait=True``: :class:`InboxFull`), for
        the peer (``wait_for_peer``), order and cancelling are as :meth:`send`'s;
        local receivers only.

        >>> await client.send_value("consumer", {"reading": 21.5})  # doctest: +SKIP
        >>> (await consumer.recv()).value                           # doctest: +SKIP
        {'reading': 21.5}
        """
        args = self._inline_args(to, header, nowait, wait_for_peer)
        c, meta, data = _inline(obj, codec)
        args["codec"], args["meta"] = c, meta
        await self._call(Op.SEND_DATA, args, data)

    async def send_many(
        self,
        to: str,
        objs: Iterable[object],
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
        wait_for_peer: float | None = None,
    ) -> None:
        """Send each of ``objs`` as :meth:`send_value` does, as few requests as they
        fit: one for up to ``MAX_BATCH`` (1024) messages whose encoded bytes add up to at
        most ``MAX_INLINE_PAYLOAD`` (64 KiB) and whose codec meta is the same (numpy
        arrays of one dtype and shape; other codecs have none). ``header`` goes with
        every message. They arrive in order, after what this client sent before.

        Each request's batch gets into the receiver's inbox whole or waits whole
        (``nowait=True``: :class:`InboxFull`, that batch not sent); a batch of more
        messages than the receiver's ``inbox_messages`` is refused with
        :class:`InvalidRequest`. When ``objs`` take several requests and one fails, the
        batches before it were delivered. Any object over the inline limit raises
        :class:`InvalidRequest` before anything is sent.

        >>> await client.send_many("consumer", [b"x" * 64] * 500, codec="raw")  # doctest: +SKIP
        >>> len(await consumer.recv_many(1000))                                # doctest: +SKIP
        500
        """
        args = self._inline_args(to, header, nowait, wait_for_peer)
        args["codec"] = codec
        batches: list[tuple[dict[str, Any], list[int], list[bytes]]] = []
        meta: dict[str, Any] | None = None
        sizes: list[int] = []
        parts: list[bytes] = []
        total = 0
        for obj in objs:  # every object encoded (and checked) before anything is sent
            if type(obj) is bytes and codec == "raw" and len(obj) <= MAX_INLINE_PAYLOAD:
                m, data = _NO_META, obj  # (_inline's own fast path, without the call)
            else:
                _, m, data = _inline(obj, codec)
            n = len(data)
            if parts and (m != meta or len(parts) >= MAX_BATCH or total + n > MAX_INLINE_PAYLOAD):
                batches.append((cast(dict[str, Any], meta), sizes, parts))
                sizes, parts, total = [], [], 0
            meta = m
            sizes.append(n)
            parts.append(data)
            total += n
        if parts:
            batches.append((cast(dict[str, Any], meta), sizes, parts))
        for meta_, sizes_, parts_ in batches:
            await self._call(
                Op.SEND_MANY, {**args, "meta": meta_, "sizes": sizes_}, b"".join(parts_)
            )

    def _inline_args(
        self, to: str, header: dict[str, Any] | None, nowait: bool, wait_for_peer: float | None
    ) -> dict[str, Any]:
        """The envelope of an inline message or batch to ``to``, checked."""
        if isinstance(to, str) and "/" in to:
            raise InvalidRequest("inline messages go to the processes of this coordinator only")
        _check_name(to, "receiver name")
        return {
            "to": to,
            "header": self._check_header(header),
            "nowait": bool(nowait),
            "wait_ms": _wait_ms(wait_for_peer),
        }

    async def recv(self) -> Message:
        """Wait for the next block sent to this process; it is this process's now."""
        if self._inbox:
            return self._inbox.popleft()

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator delivered
            self._inbox.append(self._message(reply))

        reply = await self._call(Op.RECV, {}, orphan=orphan)
        return self._message(reply)

    async def recv_many(
        self,
        max_messages: int = 64,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- the issue's API, as take()
    ) -> list[Message]:
        """Wait for at least one message, then return every message the inbox holds,
        up to ``max_messages`` (at most :data:`MAX_BATCH`), in order: one request for
        a burst instead of one per message (blocks, headers and inline messages alike).
        ``timeout`` (seconds) raises :class:`TimeoutError` when none came; nothing is
        lost (a batch the coordinator answered with meanwhile waits for the next call).

        >>> for msg in await consumer.recv_many(256, timeout=1.0):  # doctest: +SKIP
        ...     handle(msg.value)
        """
        if type(max_messages) is not int:
            raise InvalidRequest(f"max_messages must be an int, not {type(max_messages).__name__}")
        check_batch(max_messages, "max_messages")
        seconds = _check_timeout(timeout)
        if self._inbox:
            return [self._inbox.popleft() for _ in range(min(max_messages, len(self._inbox)))]

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator delivered
            self._inbox.extend(self._messages(reply))

        if seconds is not None:
            with anyio.fail_after(seconds):
                reply = await self._call(Op.RECV_MANY, {"max": max_messages}, orphan=orphan)
        else:
            reply = await self._call(Op.RECV_MANY, {"max": max_messages}, orphan=orphan)
        return self._messages(reply)

    def _messages(self, reply: Reply) -> list[Message]:
        data, sizes, at, i = reply.data, reply.result["sizes"], 0, 0
        out: list[Message] = []
        for (
            bid,
            size,
            capacity,
            _seg,
            _off,
            owner,
            sender,
            header,
            topic,
            codec,
            meta,
        ) in reply.result["messages"]:
            if codec:  # a run of ``capacity`` inline messages: ``size`` bytes of the data
                t = topic or None
                for n in sizes[i : i + capacity]:
                    # (each message its own header dict, as a block's has)
                    out.append(
                        Message(None, sender, dict(header), t, data[at : at + n], codec, meta)
                    )
                    at += n
                i += capacity
            else:
                out.append(self._new_message(bid, size, capacity, owner, sender, header, topic))
        return out

    def _message(self, reply: Reply) -> Message:
        r = reply.result
        if r["codec"]:
            return Message(
                None,
                r["sender"],
                r["header"],
                r["topic"] or None,
                reply.data,
                r["codec"],
                r["meta"],
            )
        return self._new_message(
            r["block"], r["size"], r["capacity"], r["owner"], r["sender"], r["header"], r["topic"]
        )

    def _new_message(
        self,
        bid: int,
        size: int,
        capacity: int,
        owner: str,
        sender: str,
        header: dict[str, Any],
        topic: str,
    ) -> Message:
        """A received block, now this process's: its size is remembered for reads
        (``NO_BLOCK``: a header alone)."""
        if bid == NO_BLOCK:
            return Message(None, sender, header, topic or None)
        self._sizes[bid] = size
        self._issued(bid)
        return Message(Block(bid, size, capacity, owner), sender, header, topic or None)

    async def messages(self) -> AsyncIterator[Message]:
        """``async for msg in client.messages():`` until this client is closed."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                if self._closing:
                    return
                raise

    # -- request/reply -----------------------------------------------------------
    async def request(
        self,
        to: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- the issue's API, as take()
        wait_for_peer: float | None = None,
    ) -> Any:
        """Ask the process registered as ``to`` (its responder, which receives with
        :meth:`requests`) and return its reply, decoded with the codec it chose.

        ``obj`` is encoded with ``codec``: up to ``MAX_INLINE_PAYLOAD`` (64 KiB)
        encoded, it travels inside the request's frame; a larger one is put in a block
        that moves to the responder (zero-copy), as a :class:`Block` of this process's
        does as it is. Any number of requests may be in flight at once, to one
        responder or several.

        :raises RemoteError: the responder answered with ``req.fail(error)``.
        :raises PeerUnreachable: nobody is registered as ``to`` (at once, or after
            waiting up to ``wait_for_peer`` seconds for it), or the responder closed or
            died before it answered: at once, not at the timeout.
        :raises InboxFull: the responder has ``MAX_QUEUED_REQUESTS`` requests it has not
            received yet; nothing was sent.
        :raises TimeoutError: no reply within ``timeout`` seconds; the request is
            withdrawn (a reply that comes later is dropped). Cancelling does the same.

        A :class:`Block` sent is the responder's once it has received the request (it
        stays this process's if the request failed before that).

        >>> total = await client.request("adder", [1, 2, 3], timeout=5)  # doctest: +SKIP
        """
        link = self._links.get(to)
        if link is not None and wait_for_peer is None and not self._closed:
            # the hot path: an inline request on the responder's direct socket (as
            # _request's first branch, in this one frame; _client/direct.py)
            seconds = None if timeout is None else _check_timeout(timeout)
            loop = self._loop
            if loop is None or threading.get_ident() != self._thread or not loop.is_running():
                loop = self._check_loop()  # (get_running_loop's getpid() is a syscall)
            if codec == "raw" and type(obj) is bytes and len(obj) <= MAX_INLINE_PAYLOAD:
                inline: tuple[dict[str, Any], bytes] | None = (_NO_META, obj)
            elif isinstance(obj, Block):
                inline = None
            else:
                inline = encode_inline(obj, codec)
            if inline is not None:
                fut: asyncio.Future[Any] = loop.create_future()
                rid = link.send(fut, codec, *inline)
                if seconds is None:
                    try:
                        return await fut
                    except asyncio.CancelledError:
                        link.withdraw(rid)
                        raise
                return await _timed(fut, seconds, loop, lambda: link.withdraw(rid))
        if to not in self._links:  # (a name with a direct socket was checked already)
            _check_name(to, "responder name")
            if "/" in to:
                raise InvalidRequest("request/reply reaches the processes of this coordinator only")
        seconds = None if timeout is None else _check_timeout(timeout)
        wait_ms = _wait_ms(wait_for_peer) if wait_for_peer is not None else 0
        if seconds is not None:  # (a cancel scope costs a tenth of a round trip)
            with anyio.fail_after(seconds):
                return await self._request(to, obj, codec, wait_ms)
        return await self._request(to, obj, codec, wait_ms)

    def _reply_orphan(self, reply: Reply) -> None:
        """A REQUEST cancelled after its reply came: the reply's block is ours, freed."""
        if reply.result["block"] != NO_BLOCK:
            self._send_nowait(Op.FREE, {"block": reply.result["block"]})

    async def _request(self, to: str, obj: object, codec: str, wait_ms: int) -> Any:
        if to in self._direct_addrs and not self._closed and not isinstance(obj, Block):
            loop = self._check_loop()  # (_client/direct.py; closed covers a forked child too)
            inline = encode_inline(obj, codec)
            link = None if inline is None else self._links.get(to) or await self._link(to)
            if link is not None:
                assert inline is not None
                return await link.call(codec, *inline, loop)
        orphan = self._reply_orphan
        bid, c, meta, data, made = await self._outgoing(obj, codec)
        args = {"to": to, "block": bid, "codec": c, "meta": meta, "wait_ms": wait_ms}
        try:
            reply = await self._call(Op.REQUEST, args, data, orphan=orphan)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._drop_made(made)
            raise
        if bid != NO_BLOCK:
            self._sizes.pop(bid, None)
        direct = reply.result.get("direct")
        if direct and _DIRECT and to not in self._links:
            self._direct_addrs[to] = direct  # the next inline request goes direct
        return await self._reply_value(reply, self._epoch)

    async def _link(self, to: str) -> DirectLink | None:
        """The direct socket to responder ``to`` (connected now if need be), or None
        when its address does not answer (then forgotten: the request goes through
        the coordinator, whose reply says the address again if it has one)."""
        pending = self._linking.get(to)
        if pending is not None:
            return await asyncio.shield(pending)
        address = self._direct_addrs[to]
        done: asyncio.Future[DirectLink | None] = asyncio.get_running_loop().create_future()
        self._linking[to] = done
        link = None
        try:
            link = await DirectLink.open(address, to, self.name, self._link_lost, decode_payload)
        except (OSError, BlockIPCError) as exc:
            log.debug("request.direct_unreachable", to=to, error=str(exc))
            if self._direct_addrs.get(to) == address:
                del self._direct_addrs[to]
        finally:
            del self._linking[to]
            if self._closed and link is not None:
                link.close()
                link = None
            if link is not None:
                self._links[to] = link
            done.set_result(link)
        return link

    def _link_lost(self, link: DirectLink) -> None:
        """A direct socket ended (its responder closed or died): forget its address."""
        if self._links.get(link.to) is link:
            del self._links[link.to]
            self._direct_addrs.pop(link.to, None)

    def _end_direct(self, error: BlockIPCError) -> None:
        """The connection ended: the direct sockets (both roles) end with it."""
        self._direct_addrs.clear()
        links, self._links = self._links, {}
        for link in links.values():
            link.fail_all(copy.copy(error))
            link.close()
        if self._listener is not None:
            self._listener.close()  # its requesters raise PeerUnreachable at once
            self._listener = None
        self._rr_ready.clear()
        self._rr_error = None
        self._direct_in_hand = 0  # those in hand are dead: their answers raise
        self._wake_rr(everyone=True)

    async def next_request(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 -- as take()
    ) -> IncomingRequest:
        """Wait for the next request to this process (in arrival order) and return it;
        answer it with :meth:`IncomingRequest.reply` or :meth:`IncomingRequest.fail`.
        ``timeout`` (seconds) raises :class:`TimeoutError` when none came; cancelling
        the call leaves the requests as they were.

        :raises QuotaExceeded: this process holds ``MAX_IN_HAND`` (1024) requests it
            has not answered.
        """
        seconds = _check_timeout(timeout)
        if seconds is None:
            return await self._next_request()
        with anyio.fail_after(seconds):
            return await self._next_request()

    async def _next_request(self, *, in_loop: bool = False) -> IncomingRequest:
        """The next request (see :meth:`next_request`); ``in_loop`` (:meth:`requests`'
        next): a closed client ends the loop, with ``StopAsyncIteration``."""
        # The requests come and not received yet are in _rr_ready: direct ones as
        # their sockets deliver them, and the answer of the one brokered SERVE kept
        # parked at the coordinator (a task, so a receive that a direct request ends
        # leaves it parked: nothing to cancel, nothing lost). One coroutine, its loop
        # in a try: a request's hot path.
        try:
            while True:
                if self._rr_ready:
                    item = self._rr_ready.popleft()
                    if isinstance(item, DirectRequest):
                        try:
                            check_in_hand(self._direct_in_hand)
                        except BaseException:
                            self._rr_ready.appendleft(item)
                            raise
                        self._direct_in_hand += 1
                        return item
                    return await self._served(*item)
                if self._rr_error is not None:
                    exc, self._rr_error = self._rr_error, None
                    raise exc
                if self._closed or self._proto is None:
                    await self._ready()  # (raises, or reconnects)
                if self._listener is None and _DIRECT:
                    await self._listen()
                if self._rr_serve is None:
                    self._rr_serve = asyncio.ensure_future(self._serve_one())
                loop = self._loop  # (as request()'s check: get_running_loop costs a syscall)
                if loop is None or threading.get_ident() != self._thread or not loop.is_running():
                    loop = asyncio.get_running_loop()
                waiter: asyncio.Future[DirectRequest | None] = loop.create_future()
                self._rr_waiters.append(waiter)
                try:
                    handed = await waiter
                except BaseException:
                    if not waiter.done():
                        self._rr_waiters.remove(waiter)
                    elif not waiter.cancelled() and (req := waiter.result()) is not None:
                        self._rr_ready.appendleft(req)  # handed to this receive, then cancelled
                    raise
                if handed is not None:  # a direct request, handed to this receive at once
                    self._direct_in_hand += 1
                    return handed
        except ConnectionClosed:
            if in_loop and self._closing:
                raise StopAsyncIteration from None
            raise

    async def _listen(self) -> None:
        """Start this responder's direct socket (see _client/direct.py)."""
        listener = DirectListener(self._direct_deliver, self._direct_withdraw, self._rr_ready)
        try:
            await listener.start()
        except OSError as exc:  # no direct path: every request comes brokered
            log.debug("request.direct_unavailable", name=self.name, error=str(exc))
            return
        if self._closed:
            listener.close()
            return
        self._listener = listener

    async def _serve_one(self) -> None:
        """One brokered receive, parked until the coordinator hands it a request."""
        try:
            epoch = self._epoch
            direct = self._listener.address if self._listener is not None else ""
            reply = await self._call(Op.SERVE, {"direct": direct})
            self._rr_ready.append((epoch, reply))
        except Exception as exc:  # noqa: BLE001 -- raised in the receive that waits
            self._rr_error = exc
            self._wake_rr(everyone=True)
        finally:
            self._rr_serve = None
        self._wake_rr()

    def _wake_rr(self, *, everyone: bool = False, req: DirectRequest | None = None) -> bool:
        """Wake the first receive waiting (``everyone``: all), handing it ``req`` if
        given; whether one was woken."""
        while self._rr_waiters:
            waiter = self._rr_waiters.popleft()
            if not waiter.done():
                waiter.set_result(req)
                if not everyone:
                    return True
        return False

    def _direct_deliver(
        self, peer: Any, rid: int, codec: str, meta: dict[str, Any], data: bytes
    ) -> None:
        req = DirectRequest(self, self._epoch, peer, rid, codec, meta, data, self._direct_done)
        if not self._rr_ready and self._direct_in_hand < MAX_IN_HAND:
            waiters = self._rr_waiters  # (_wake_rr's loop, inline: the hot path)
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(req)  # handed to the receive that waits
                    return
        self._rr_ready.append(req)  # (behind those before it: in arrival order)

    def _direct_done(self) -> None:
        self._direct_in_hand -= 1

    def _direct_withdraw(self, peer: Any, rid: int | None) -> None:
        """Direct requests of ``peer`` not received yet (``rid``: that one) leave."""
        for item in list(self._rr_ready):
            mine = isinstance(item, DirectRequest) and item._peer is peer
            if mine and (rid is None or cast(DirectRequest, item).id == rid):
                self._rr_ready.remove(item)

    async def _served(self, epoch: int, reply: Reply) -> IncomingRequest:
        """The request a brokered SERVE was answered with."""

        def orphan(reply: Reply) -> None:  # its block could not be mapped
            self._send_nowait(
                Op.RESPOND,
                {
                    "request": reply.result["request"],
                    "block": NO_BLOCK,
                    "codec": "",
                    "meta": {},
                    "error": PeerUnreachable.code,
                    "message": "stopped receiving before it read the request",
                },
                epoch=epoch,
            )

        r = reply.result
        segment = None
        if r["block"] != NO_BLOCK:
            try:
                segment = (await self._segment(r["segment"], epoch)).buffer
            except BaseException:
                orphan(reply)
                raise
            self._issued(r["block"])
            self._sizes[r["block"]] = r["size"]
        return IncomingRequest(self, epoch, segment, r, reply.data)

    def requests(self) -> AsyncIterator[IncomingRequest]:
        """``async for req in client.requests():`` the requests to this process, in
        arrival order, until this client is closed (see :meth:`next_request`)::

            async for req in client.requests():
                await req.reply(handle(req.value))
        """
        return _Requests(self)

    async def _outgoing(self, obj: object, codec: str) -> Payload:
        """``obj`` as a payload: a :class:`Block` as it is; else encoded, inline up to
        ``MAX_INLINE_PAYLOAD`` bytes, or put in a new block (returned as made)."""
        if isinstance(obj, Block):
            return self._bid(obj), "", {}, b"", None
        with get_codec(codec).prepare(obj) as enc:
            if enc.nbytes <= MAX_INLINE_PAYLOAD:
                return NO_BLOCK, codec, enc.meta, enc.tobytes(), None
            # encoded once: put() would prepare the object again
            block = await self._store(codec, enc.nbytes, enc.meta, enc.write_into, name="")
        return block.id, "", {}, b"", block

    async def _drop_made(self, block: Block | None) -> None:
        """Free a block :meth:`_outgoing` made, if the payload did not go (or it went,
        and the free fails: the other side has it)."""
        if block is not None:
            with contextlib.suppress(BlockIPCError):
                await self.free(block)

    async def _reply_value(self, reply: Reply, epoch: int) -> Any:
        """The object a REQUEST's reply carries; a block is ours: read, then freed."""
        r = reply.result
        if r["block"] == NO_BLOCK:
            return decode_payload(r["codec"], r["meta"], reply.data)
        try:
            seg = await self._segment(r["segment"], epoch)
            n = r["meta"].get("nbytes", r["size"])
            with seg.buffer[r["offset"] : r["offset"] + n] as src:
                return get_codec(r["codec"]).decode(src, r["meta"].get("codec", {}))
        finally:
            self._send_nowait(Op.FREE, {"block": r["block"]}, epoch=epoch)

    # -- work queues -------------------------------------------------------------
    async def declare_queue(
        self,
        name: str,
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        dead_letter: str | None = None,
    ) -> None:
        """Create the work queue ``name`` with these settings, or change those of the
        queue of that name (the last declare wins; the jobs in it stay). A queue used
        before it was declared has the defaults.

        ``maxsize`` bounds the jobs waiting in it (taken jobs do not count): a full
        queue makes :meth:`enqueue` wait. A job whose delivery failed ``max_attempts``
        times (a :meth:`Job.nack`, a consumer that closed or died with it) goes to the
        queue ``dead_letter`` (by default ``name + ".dead"``, created with this one);
        ``max_attempts=None`` puts a failed job back for ever.

        >>> await client.declare_queue("jobs", maxsize=64, max_attempts=3)  # doctest: +SKIP
        """
        _check_name(name, "queue name")
        check_queue_settings(maxsize, max_attempts)
        if dead_letter is not None:
            _check_name(dead_letter, "dead-letter queue name")
        args = {
            "queue": name,
            "maxsize": maxsize,
            "max_attempts": max_attempts or 0,
            "dead_letter": dead_letter or "",
        }
        await self._call(Op.QUEUE_DECLARE, args)

    async def enqueue(
        self,
        queue: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> int:
        """Add a job to the work queue ``queue`` (created with the default settings
        if it does not exist); one consumer's :meth:`take` will get it. Returns the
        job's id.

        ``obj`` is encoded with ``codec``: up to ``MAX_INLINE_PAYLOAD`` (64 KiB)
        encoded, it travels inside the request's frame and the coordinator keeps it as
        bytes, an *inline* job with no block (one round trip; its consumer gets the
        bytes with its take, and :attr:`Job.block` is ``None``), or, when the inline
        jobs of its queues hold ``MAX_QUEUE_INLINE_BYTES`` (64 MiB) already, writes it
        into a block of the job's; a larger one is encoded into a new block (PUT),
        which one more request commits and enqueues (two round trips; one for each job
        after the first two of a run of jobs of one size up to ``MAX_REFILL``, 8 MiB:
        that request brings the next job's block, which this client keeps, one spare
        block, until its next enqueue, or frees when it closes). A
        :class:`Block` is moved into the queue as it is (zero-copy; it must be this
        process's alone, and its recorded codec goes with it). ``job.value``,
        ``job.header`` and ``job.attempts``, acks, redelivery and dead letters are the
        same whichever way a job went.
        ``header`` is a small dict the consumer gets with the job. When the queue is
        full the call waits for room (``nowait=True`` raises :class:`InboxFull`
        instead); cancelling it then withdraws the job (a :class:`Block` stays this
        process's).

        >>> await client.enqueue("jobs", {"url": url}, codec="json")  # doctest: +SKIP
        """
        _check_name(queue, "queue name")
        hdr = self._check_header(header)
        if isinstance(obj, Block):
            bid, c, meta, data = self._bid(obj), "", {}, b""
        else:
            with get_codec(codec).prepare(obj) as enc:
                if enc.nbytes > MAX_INLINE_PAYLOAD:  # PUT, then commit and enqueue in one
                    return await self._enqueue_put(queue, codec, enc, hdr, bool(nowait))
                bid, c, meta, data = NO_BLOCK, codec, enc.meta, enc.tobytes()
        args = {
            "block": bid,
            "codec": c,
            "meta": meta,
            "queue": queue,
            "header": hdr,
            "nowait": bool(nowait),
        }
        job: int = (await self._call(Op.ENQUEUE, args, data)).result["job"]
        if bid != NO_BLOCK:
            self._sizes.pop(bid, None)
        return job

    async def _enqueue_put(
        self, queue: str, codec: str, enc: Encoded, header: dict[str, Any], nowait: bool
    ) -> int:
        """A large job: PUT a new block, encode into it, then ENQUEUE_COMMIT (its codec
        recorded, its lease ended and it enqueued, one request): two round trips where
        ``put`` then ``enqueue`` cost three. Not enqueued, the block is freed.

        A run of jobs of one size (up to ``MAX_REFILL``) costs one round trip each:
        from the second on, the ENQUEUE_COMMIT asks for the next job's block too
        (``refill``), which this client keeps (one at most: ``_spare``) for its next
        large enqueue of that size instead of a PUT; an enqueue of another size frees
        it, and so does the coordinator when this client closes."""
        n = enc.nbytes
        size = max(n, 1)

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator made it
            if reply.result["block"] != NO_BLOCK:  # (an ENQUEUE_COMMIT's refill, if any)
                self._return_lease(reply)
                self._send_nowait(Op.FREE, {"block": reply.result["block"]})

        spare = self._take_spare(size)
        if spare is None:
            r = (await self._call(Op.PUT, {"size": size}, orphan=orphan)).result
            epoch = self._epoch
        else:
            epoch, r = spare
        refill = size if size <= MAX_REFILL and size == self._last_put else 0
        self._last_put = size
        try:
            seg = await self._segment(r["segment"], epoch)
            with seg.buffer[r["offset"] : r["offset"] + n] as dst:
                enc.write_into(dst)
            args = {
                "lease": r["lease"],
                "codec": codec,
                "meta": {"nbytes": n, "codec": enc.meta},
                "queue": queue,
                "header": header,
                "nowait": nowait,
                "refill": refill,
            }
            done = (await self._call(Op.ENQUEUE_COMMIT, args, epoch=epoch, orphan=orphan)).result
        except BaseException:
            # Refused before its commit the lease is ours, after it the block alone (a
            # full queue, a cancelled wait); enqueued just before a cancellation, the
            # free fails: the queue has it.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(BlockIPCError):
                    await self._call(Op.RELEASE, {"lease": r["lease"]}, epoch=epoch)
                with contextlib.suppress(BlockIPCError):
                    await self._call(Op.FREE, {"block": r["block"]}, epoch=epoch)
            raise
        if done["block"] != NO_BLOCK:
            self._keep_spare(epoch, done)
        job: int = done["job"]
        return job

    def _take_spare(self, size: int) -> tuple[int, dict[str, Any]] | None:
        """The spare block (see :meth:`_enqueue_put`), out of ``_spare``, if it is of
        ``size`` bytes and of the live connection; else None (and one of another size is
        given back to the coordinator)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare[0] == self._epoch and spare[1]["size"] == size:
            return spare
        self._drop_spare(spare)
        return None

    def _keep_spare(self, epoch: int, r: dict[str, Any]) -> None:
        if self._spare is not None:  # (another enqueue's, meanwhile: one is enough)
            self._drop_spare(self._spare)
        self._spare = (epoch, r)

    def _drop_spare(self, spare: tuple[int, dict[str, Any]]) -> None:
        epoch, r = spare  # (a lost connection took it along: nothing to send)
        self._send_nowait(Op.RELEASE, {"lease": r["lease"]}, epoch=epoch)
        self._send_nowait(Op.FREE, {"block": r["block"]}, epoch=epoch)

    async def enqueue_many(
        self,
        queue: str,
        objs: Iterable[object],
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> list[int]:
        """Add a batch of jobs to the work queue ``queue`` in one request, in order, and
        return their ids: what :meth:`enqueue` does for each of ``objs`` (each encoded
        with ``codec``, or a :class:`Block`, moved), for a fraction of the round trips.
        Every job gets the same ``header``.

        The batch goes in whole or not at all. It waits until the queue has room for
        all of its jobs (in order with the other waiting enqueues); ``nowait=True``
        raises :class:`InboxFull` instead, with nothing enqueued, when the queue has
        room for fewer than all of them (never a part of the batch). A batch holds 1 to
        ``MAX_BATCH`` (1024) jobs, at most the queue's ``maxsize``, and at most
        ``MAX_BATCH_BYTES`` (1 MiB) of encoded jobs of up to ``MAX_INLINE_PAYLOAD`` each
        (an object larger than that is put in a block of its own first, and only its
        id travels); else :class:`InvalidRequest`, nothing enqueued. Cancelled while it
        waits, nothing is enqueued (blocks passed in stay this process's).

        >>> jobs = [{"n": i} for i in range(32)]
        >>> await client.enqueue_many("jobs", jobs, codec="json")  # doctest: +SKIP
        """
        _check_name(queue, "queue name")
        hdr = self._check_header(header)
        items = list(objs)
        check_batch(len(items), "enqueue_many's number of jobs")
        blocks: list[int] = []
        sizes: list[int] = []
        metas: list[dict[str, Any]] = []
        parts: list[bytes] = []
        large: list[int] = []
        total = 0
        for i, obj in enumerate(items):
            if isinstance(obj, Block):
                blocks.append(self._bid(obj))
                sizes.append(0)
                metas.append({})
                continue
            with get_codec(codec).prepare(obj) as enc:
                if enc.nbytes > MAX_INLINE_PAYLOAD:
                    large.append(i)
                    blocks.append(NO_BLOCK)  # (filled in below, once the batch is checked)
                    sizes.append(0)
                    metas.append({})
                    continue
                data = enc.tobytes()
                blocks.append(NO_BLOCK)
                sizes.append(len(data))
                metas.append(enc.meta)
                parts.append(data)
                total += len(data)
        check_batch_bytes(total)
        made: list[Block] = []
        try:
            for i in large:
                bid, _, _, _, block = await self._outgoing(items[i], codec)
                assert block is not None
                made.append(block)
                blocks[i] = bid
            args = {
                "queue": queue,
                "blocks": blocks,
                "sizes": sizes,
                "codec": codec,
                "metas": metas,
                "header": hdr,
                "nowait": bool(nowait),
            }
            jobs: list[int] = (await self._call(Op.ENQUEUE_MANY, args, b"".join(parts))).result[
                "jobs"
            ]
        except BaseException:
            with anyio.CancelScope(shield=True):  # (a block enqueued already: the free fails)
                for block in made:
                    await self._drop_made(block)
            raise
        for bid in blocks:
            if bid != NO_BLOCK:
                self._sizes.pop(bid, None)
        return jobs

    async def take_many(
        self,
        queue: str,
        max_jobs: int = 32,
        timeout: float | None = None,  # noqa: ASYNC109 -- as take's
        *,
        ack: Iterable[Job] | None = None,
    ) -> list[Job]:
        """Wait for jobs of the work queue ``queue`` and return 1 to ``max_jobs`` of them
        (1 to ``MAX_BATCH``), oldest first, in one round trip: the jobs there are when
        at least one is (it never waits for more; waiting consumers are dealt jobs one
        at a time in turn, and one reply holds what fits a frame). Each is a
        :class:`Job`, as :meth:`take` returns, this process's until answered; if this
        client closes or its process dies first, all of them go back to the queue.

        ``ack``, jobs this client took and has not answered, are acked by the same
        request first, all of them or none (as :meth:`take`'s ``ack``: one refused,
        this call raises its error, takes nothing, and they stay unanswered)::

            jobs = await client.take_many("jobs", max_jobs=32)
            while True:
                for job in jobs:
                    work(job.value)
                jobs = await client.take_many("jobs", max_jobs=32, ack=jobs)

        >>> jobs = await client.take_many("jobs", max_jobs=32, timeout=1.0)  # doctest: +SKIP
        """
        _check_name(queue, "queue name")
        check_batch(max_jobs, "take_many's max_jobs")
        seconds = _check_timeout(timeout)
        acks = [] if ack is None else list(ack)
        epoch: int | None = None
        if acks:
            check_batch(len(acks), "take_many's acks")
            if len({id(j) for j in acks}) != len(acks):
                raise InvalidRequest("ack= names the same job twice")
            for job in acks:
                if not isinstance(job, Job) or job._client is not self:
                    raise InvalidRequest("ack= takes jobs this client took (Jobs of take_many())")
            if len({job._epoch for job in acks}) != 1:
                raise InvalidRequest("ack= takes jobs of one connection")
            folded: list[Job] = []
            try:
                for job in acks:
                    job._fold()  # raises if answered (or being answered), or its connection is gone
                    folded.append(job)
            except BaseException:
                for job in folded:
                    job._folded(False)
                raise
            epoch = acks[0]._epoch

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator handed them
            for row in reply.result["jobs"]:
                self._send_nowait(Op.NACK, {"job": row[0], "failed": False})

        args = {"queue": queue, "max": max_jobs, "acks": [job.id for job in acks]}
        try:
            with anyio.fail_after(seconds):
                reply = await self._call(Op.TAKE_MANY, args, orphan=orphan, epoch=epoch, fold=acks)
        except BaseException:
            await self._unfold(acks)
            raise
        epoch = self._epoch
        rows = reply.result["jobs"]
        segments: dict[int, memoryview] = {}
        try:
            for row in rows:
                if not row[12] and row[4] not in segments:
                    segments[row[4]] = (await self._segment(row[4], epoch)).buffer
        except BaseException:
            orphan(reply)
            raise
        jobs, data, at = [], memoryview(reply.data), 0
        name = reply.result["queue"]
        for row in rows:
            (jid, bid, size, capacity, seg, offset, _lease, attempts) = row[:8]
            codec_, producer, meta, header_, inline = row[8:]
            r = {
                "job": jid,
                "block": bid,
                "size": size,
                "capacity": capacity,
                "offset": offset,
                "meta": meta,
                "header": header_,
                "attempts": attempts,
                "queue": name,
                "producer": producer,
                "codec": codec_,
            }
            if bid != NO_BLOCK:
                self._issued(bid)
                self._sizes[bid] = size
            if inline:
                jobs.append(Job(self, epoch, None, r, bytes(data[at : at + size])))
                at += size
            else:
                jobs.append(Job(self, epoch, segments[seg], r))
        return jobs

    async def _unfold(self, jobs: Sequence[Job]) -> None:
        """A take carrying ``jobs``' acks raised: wait until its answer says whether
        they were done (sent: one round trip away, the CANCEL's), or (never sent) mark
        them unanswered."""
        for job in jobs:
            if not job._folding:
                continue
            if any(job in v for v in self._folds.values()):
                with anyio.CancelScope(shield=True):
                    await job._settled()
            else:
                job._folded(False)  # refused before it was sent (its connection is gone)

    async def take(
        self,
        queue: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- the issue's API, as queue.Queue.get
        *,
        ack: Job | None = None,
    ) -> Job:
        """Wait for the next job of the work queue ``queue`` (FIFO; any number of
        consumers compete for its jobs, each job goes to one). The job is this
        process's until it answers it with :meth:`Job.ack` or :meth:`Job.nack`; if
        this client closes or its process dies first, the job goes back to the queue at
        once. ``timeout`` (seconds) raises :class:`TimeoutError` when no job came;
        cancelling the call leaves the queue as it was.

        ``ack``, a job this client took and has not answered, is acked by the same
        request, before the take (one round trip for both, where ``await ack.ack()``
        then ``take`` cost two)::

            job = await client.take("jobs")
            while True:
                work(job.value)
                job = await client.take("jobs", ack=job)

        The ack is done if this call returns a job or raises :class:`TimeoutError` (or
        is cancelled) while it waits for one; if the coordinator refuses it, this call
        raises the error ``await ack.ack()`` would have raised and takes nothing, and
        ``ack`` stays unanswered. Either way ``ack.done`` says which once this call
        returns or raises (cancelled, it waits for the coordinator's answer, shielded:
        one round trip).

        >>> job = await client.take("jobs")  # doctest: +SKIP
        """
        _check_name(queue, "queue name")
        seconds = _check_timeout(timeout)
        epoch: int | None = None
        if ack is not None:
            if not isinstance(ack, Job) or ack._client is not self:
                raise InvalidRequest("ack= takes a job this client took (a Job of take())")
            ack._fold()  # raises if it is answered (or being answered), or its connection is gone
            epoch = ack._epoch

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator handed it
            self._send_nowait(Op.NACK, {"job": reply.result["job"], "failed": False})

        args = {"queue": queue, "ack": 0 if ack is None else ack.id}
        try:
            with anyio.fail_after(seconds):
                reply = await self._call(
                    Op.TAKE, args, orphan=orphan, epoch=epoch, fold=() if ack is None else (ack,)
                )
        except BaseException:
            if ack is not None:
                await self._unfold((ack,))
            raise
        epoch, r = self._epoch, reply.result
        if r["inline"]:  # the bytes came with the reply: nothing to map
            if r["block"] != NO_BLOCK:  # (a small block's; else an inline job's)
                self._issued(r["block"])
                self._sizes[r["block"]] = r["size"]
            return Job(self, epoch, None, r, reply.data)
        self._issued(r["block"])
        self._sizes[r["block"]] = r["size"]
        try:
            seg = await self._segment(r["segment"], epoch)
        except BaseException:
            orphan(reply)
            self._sizes.pop(r["block"], None)
            raise
        return Job(self, epoch, seg.buffer, r)

    # -- channels ----------------------------------------------------------------
    async def open_channel(
        self,
        to: str,
        *,
        capacity: int | str = DEFAULT_CHANNEL_CAPACITY,
        wait_for_peer: float | None = None,
    ) -> ChannelSender:
        """Open a channel to the process registered as ``to``: a ring of ``capacity``
        bytes in the pool that messages cross without a coordinator request each (see
        :class:`ChannelSender`). ``to`` gets it from :meth:`accept_channel`; messages
        sent before it accepts wait in the ring. The largest message is a little under
        ``capacity`` (one page holds the ring's control words); the ring is freed when
        both ends have closed or disconnected.

        An unknown ``to`` raises :class:`PeerUnreachable` at once, or after waiting up
        to ``wait_for_peer`` seconds for it to register; no room for the ring raises
        :class:`PoolExhausted`.
        """
        _check_name(to, "receiver name")
        if "/" in to:
            raise InvalidRequest(
                f"channels are between processes of one coordinator: to reach {to!r} on "
                f"another node, send it blocks with send(block, to={to!r})"
            )
        args = {"to": to, "capacity": parse_size(capacity), "wait_ms": _wait_ms(wait_for_peer)}

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator opened it
            self._send_nowait(Op.CHANNEL_CLOSE, {"channel": reply.result["channel"]})

        r = (await self._call(Op.CHANNEL_OPEN, args, orphan=orphan)).result
        end = await self._channel_end(r, to, sender=True, epoch=self._epoch)
        assert isinstance(end, ChannelSender)
        return end

    async def accept_channel(self) -> ChannelReceiver:
        """Wait for the next channel another process opened to this one (oldest
        first) and return its receiving end (see :class:`ChannelReceiver`)."""
        if self._accepted:  # (emptied when a connection is lost: these are the live one's)
            reply = self._accepted.popleft()
        else:
            reply = await self._call(Op.CHANNEL_ACCEPT, {}, orphan=self._accepted.append)
        epoch = self._epoch
        r = reply.result
        try:
            end = await self._channel_end(r, r["sender"], sender=False, epoch=epoch)
        except asyncio.CancelledError:
            # cancelled while it mapped the ring: the channel is still this process's
            # to take, like a message a cancelled recv() already had
            if not self._closed and self._epoch == epoch:
                self._accepted.appendleft(reply)
            raise
        assert isinstance(end, ChannelReceiver)
        return end

    async def _channel_end(
        self, r: dict[str, Any], peer: str, *, sender: bool, epoch: int
    ) -> ChannelSender | ChannelReceiver:
        """Map the channel's ring (of connection ``epoch``) and fetch its eventfds;
        closes the channel on failure."""
        chan = r["channel"]
        fds: list[int] = []
        try:
            seg = await self._segment(r["segment"], epoch)
            fds = await self._attach([], channel=chan, epoch=epoch)
            await _prefault(seg.mm, r["offset"], r["size"])  # (stops if the client closed)
            self._check_epoch(epoch)
            block = seg.buffer[r["offset"] : r["offset"] + r["size"]]
            try:
                ring = RingWriter(block) if sender else RingReader(block)
            finally:
                block.release()
            data_fd, space_fd = fds
            own, other = (space_fd, data_fd) if sender else (data_fd, space_fd)
            bell = _Bell(asyncio.get_running_loop(), own, other)
            fds = []  # the bell owns them now
            end: ChannelSender | ChannelReceiver
            if isinstance(ring, RingWriter):
                end = ChannelSender(chan, peer, ring, bell, self._channel_closed)
            else:
                end = ChannelReceiver(chan, peer, ring, bell, self._channel_closed)
        except asyncio.CancelledError:
            close_fds(fds)
            if sender:  # a receiver's accept keeps the channel for the next accept
                self._send_nowait(Op.CHANNEL_CLOSE, {"channel": chan}, epoch=epoch)
            raise
        except BaseException:
            close_fds(fds)
            self._send_nowait(Op.CHANNEL_CLOSE, {"channel": chan}, epoch=epoch)
            raise
        self._channels[chan] = end
        log.debug("channel.ready", channel=chan, peer=peer, sender=sender, size=r["size"])
        return end

    def _channel_closed(self, end: _End) -> None:
        # (an end of a lost connection is not in _channels: the next connection may have
        # a channel of the same id, which this must not close)
        if self._channels.get(end.id) is end:
            del self._channels[end.id]
            self._send_nowait(Op.CHANNEL_CLOSE, {"channel": end.id})

    # -- copy, rights, publish/subscribe -----------------------------------------
    async def copy(
        self,
        src: BlockLike,
        dst: BlockLike,
        *,
        src_offset: int = 0,
        dst_offset: int = 0,
        size: int | None = None,
    ) -> int:
        """Copy bytes from ``src`` to ``dst`` inside the pool: the coordinator copies,
        the bytes never cross a socket. ``size`` defaults to the rest of ``src`` from
        ``src_offset``. Needs the read right on ``src`` and the write right on ``dst``;
        overlapping ranges within one block are handled like ``memmove``. Returns the
        bytes copied.

        >>> await client.copy(block, dst)   # doctest: +SKIP
        """
        args = {
            "src": self._bid(src),
            "dst": self._bid(dst),
            "src_offset": src_offset,
            "dst_offset": dst_offset,
            "size": 0 if size is None else size,
            "to_end": size is None,
        }
        _check_offset(src_offset, "src_offset")
        _check_offset(dst_offset, "dst_offset")
        _check_offset(args["size"], "size")
        copied: int = (await self._call(Op.COPY, args)).result["copied"]
        return copied

    async def grant(self, block: BlockLike, to: str, mode: Literal["r", "w"] = "r") -> None:
        """Let process ``to`` read (``"r"``) or read and write (``"w"``) ``block``; it
        then holds the block too, until it frees it. Only the owner may grant."""
        _check_name(to, "process name")
        check_mode("grant", mode)
        await self._call(Op.GRANT, {"block": self._bid(block), "to": to, "mode": mode})

    async def revoke(self, block: BlockLike, to: str) -> None:
        """Take back what :meth:`grant` (or a ``move=False`` send) gave ``to``. Refused
        while ``to`` holds a lease on the block. Only the owner may revoke."""
        _check_name(to, "process name")
        await self._call(Op.REVOKE, {"block": self._bid(block), "to": to})

    async def subscribe(self, topic: str) -> None:
        """Receive, through :meth:`recv`, every block published to ``topic``.

        ``topic`` may be a pattern of dot-separated words, as in AMQP topic exchanges: a
        whole word ``*`` matches exactly one word, ``#`` any number of words (none
        included): ``"frames.*"`` receives ``"frames.cam1"``, ``"frames.#"`` also
        ``"frames"`` and ``"frames.cam1.left"``. A process whose subscriptions match a
        publish several times receives it once. At most ``MAX_SUBSCRIPTIONS`` (1024)
        subscriptions per process (:class:`QuotaExceeded`)."""
        _check_name(topic, "topic")
        await self._call(Op.SUBSCRIBE, {"topic": topic})

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving blocks published to ``topic`` (those already in the inbox stay)."""
        _check_name(topic, "topic")
        await self._call(Op.UNSUBSCRIBE, {"topic": topic})

    async def publish(
        self,
        block: BlockLike | None,
        topic: str,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> int:
        """Deliver ``block`` zero-copy to every subscriber of ``topic`` (but this
        process) with a read grant, and give up this process's hold: the block is freed
        once every subscriber has freed it. Waits for room in full inboxes
        (``nowait=True`` raises :class:`InboxFull` and delivers nothing). Returns how
        many subscribers got it; with none, the block is freed at once. ``topic`` names
        one topic: a whole word ``*`` or ``#`` in it raises :class:`InvalidRequest`
        (wildcards are for :meth:`subscribe`). ``block=None`` publishes the header
        alone (an event). Cancelling a
        publish that waits for room withdraws the deliveries not yet made (those made
        stay) and leaves the block this process's."""
        bid = NO_BLOCK if block is None else self._bid(block)
        _check_name(topic, "topic")
        args = {"block": bid, "topic": topic, "header": self._check_header(header)}
        args["nowait"] = bool(nowait)
        delivered: int = (await self._call(Op.PUBLISH, args)).result["delivered"]
        if block is not None:
            self._sizes.pop(bid, None)
        return delivered

    async def peers(self) -> list[str]:
        """Names of the processes registered with the coordinator now, sorted: the
        first 4096 (what a frame carries; ``stats().processes_total`` counts them all)."""
        names: list[str] = (await self._call(Op.PEERS, {})).result["names"]
        return names

    # -- codecs and named objects ------------------------------------------------
    async def put(
        self,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        name: str | None = None,
        cacheable: bool = False,
        if_absent: bool = False,
        ttl: float | None = None,
    ) -> Block:
        """Encode ``obj`` with ``codec`` into a new block and record the codec with it.

        ``"raw"`` and ``"numpy"`` are copied straight from the object's buffer into
        shared memory (one copy); ``"json"``, ``"msgpack"`` and ``"pickle"`` (only when
        named) encode first. With ``name``, the object is bound to that name for every
        local process (:meth:`get`), replacing the previous one atomically, and belongs
        to the name from then on (:meth:`delete` frees it); ``cacheable=True`` lets the
        pool evict it, least recently used first, when an allocation would fail.
        Without a name the block is this process's, like :meth:`alloc`. An object the
        codec cannot encode raises :class:`CodecError` and leaves no block behind.

        ``if_absent=True`` binds the name only if nothing is bound to it (else
        :class:`NameTaken`, and nothing is stored); ``ttl`` (seconds) unbinds it that
        long after this put, as :meth:`delete` would (a later put of the name sets
        its own ttl, or none). Both apply to named objects only.

        >>> await client.put(weights, codec="numpy", name="weights")  # doctest: +SKIP
        """
        if name is not None:
            _check_name(name, "object name")
        ttl_ms = _ttl_ms(ttl)
        enc = get_codec(codec).prepare(obj)
        with enc:
            return await self._store(
                codec,
                enc.nbytes,
                enc.meta,
                enc.write_into,
                name=name or "",
                cacheable=bool(cacheable),
                if_absent=bool(if_absent),
                ttl_ms=ttl_ms,
            )

    async def empty(
        self, shape: int | Sequence[int], dtype: npt.DTypeLike = float, *, order: str = "C"
    ) -> Block:
        """A new block sized for a numpy array of ``shape`` and ``dtype`` (anything
        ``numpy.dtype`` takes), recorded with the ``"numpy"`` codec as :meth:`put` would
        record such an array, and no bytes written: like ``numpy.empty``, the array
        holds whatever the memory held until it is filled. Fill it in place under a
        write lease; whoever reads it (:meth:`get`, or a lease with ``codec="numpy"``,
        in this or another process it is sent or granted to) sees an array of that
        shape and dtype::

            frame = await client.empty((480, 640, 3), "uint8")
            async with client.lease(frame, "w", codec="numpy") as arr:
                arr[:] = 0  # writes the block's own memory: no copy
                del arr
            await client.send(frame, to="consumer")

        The block is this process's, like :meth:`alloc` (:meth:`free` it when done).

        :raises CodecError: if ``dtype`` is not a dtype numpy can record without
            Python objects, ``shape`` not ints >= 0, or ``order`` not ``"C"`` or ``"F"``.
        """
        numpy_codec = get_codec("numpy")
        assert isinstance(numpy_codec, NumpyCodec)
        nbytes, meta = numpy_codec.describe(shape, dtype, order)
        _check_block_size(max(nbytes, 1))
        return await self._store("numpy", nbytes, meta, None, name="")

    async def _store(
        self,
        codec: str,
        nbytes: int,
        meta: dict[str, Any],
        write: Callable[[memoryview], None] | None,
        *,
        name: str,
        cacheable: bool = False,
        if_absent: bool = False,
        ttl_ms: int = 0,
    ) -> Block:
        """PUT a new block of ``nbytes``, ``write`` into it (``None``: write nothing),
        COMMIT it with ``codec`` and its ``meta`` (bound to ``name`` unless "")."""
        n = nbytes

        def orphan(reply: Reply) -> None:  # cancelled after the coordinator made it
            self._return_lease(reply)
            self._send_nowait(Op.FREE, {"block": reply.result["block"]})

        r = (await self._call(Op.PUT, {"size": max(n, 1)}, orphan=orphan)).result
        epoch = self._epoch
        try:
            if write is not None:
                seg = await self._segment(r["segment"], epoch)
                with seg.buffer[r["offset"] : r["offset"] + n] as dst:
                    write(dst)
            args = {
                "lease": r["lease"],
                "codec": codec,
                "meta": {"nbytes": n, "codec": meta},
                "name": name,
                "cacheable": cacheable,
                "if_absent": if_absent,
                "ttl_ms": ttl_ms,
            }
            c = (await self._call(Op.COMMIT, args, epoch=epoch)).result
        except BaseException:
            # Each undo on its own: a COMMIT that was done before the cancellation
            # already ended the lease, and the block must still be freed.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(BlockIPCError):
                    await self._call(Op.RELEASE, {"lease": r["lease"]}, epoch=epoch)
                with contextlib.suppress(BlockIPCError):
                    await self._call(Op.FREE, {"block": r["block"]}, epoch=epoch)
            raise
        self._issued(r["block"])
        if not name:
            self._sizes[r["block"]] = r["size"]
        self._remember(name or r["block"], r["block"], c["slot"], c["generation"], codec)
        return Block(r["block"], r["size"], r["capacity"], "" if name else self.name)

    async def get(self, block_or_name: BlockLike | str, codec: str | None = None) -> Any:
        """The object in a block (or bound to a name), decoded with the codec recorded
        by :meth:`put` (``"raw"`` for blocks filled otherwise) unless ``codec`` says
        otherwise. The result is the caller's and stays valid; numpy arrays come back
        read-only. Results are cached in this process and checked against the block's
        generation on every call, which costs no round trip: never a stale value.
        An unknown or evicted name raises :class:`BlockNotFound`.
        """
        if isinstance(block_or_name, str):
            _check_name(block_or_name, "object name")
            key: int | str = block_or_name
            args = {"block": 0, "name": block_or_name}
        else:
            key = self._bid(block_or_name)
            args = {"block": key, "name": ""}
        if codec is not None:
            get_codec(codec)
        await self._ready()  # a hit must not outlive the connection (nor a fork)
        self._check_loop()
        ref = self._refs.get(key)
        if ref is not None and self._gens is not None:
            bid, slot, gen, rec_codec = ref
            if self._gens.get(slot) == gen:  # two integers: the hit costs no round trip
                cached = self._cache.get((bid, gen, codec or rec_codec))
                if cached is not None:
                    self._cache_hits += 1
                    self._touch(bid)
                    # a checkpoint (no round trip): a loop polling get() must not
                    # starve the other tasks of this event loop
                    await asyncio.sleep(0)
                    return _materialize(codec or rec_codec, cached)
            else:
                self._refs.pop(key, None)
                self._cache.invalidate_group(bid)
        self._cache_misses += 1

        r = (await self._call(Op.GET, args, orphan=self._return_lease)).result
        epoch = self._epoch
        try:
            seg = await self._segment(r["segment"], epoch)
            c = codec or r["codec"]
            n = r["meta"].get("nbytes", r["size"])
            with seg.buffer[r["offset"] : r["offset"] + n] as src:
                entry = _cache_entry(c, src, r["meta"].get("codec", {}))
        finally:
            self._send_nowait(Op.RELEASE, {"lease": r["lease"]}, epoch=epoch)
        self._issued(r["block"])
        self._remember(key, r["block"], r["slot"], r["generation"], r["codec"])
        self._cache.put((r["block"], r["generation"], c), entry, n, group=r["block"])
        return _materialize(c, entry)

    async def get_or_put(
        self,
        name: str,
        factory: Callable[[], Any],
        codec: str = DEFAULT_CODEC,
        *,
        cacheable: bool = False,
        ttl: float | None = None,
    ) -> Any:
        """The object bound to ``name``; if there is none, ``factory()`` (a function, or
        an async one) computes it, and it is :meth:`put` under ``name`` with ``codec``,
        ``cacheable`` and ``ttl``, **once across all processes**: while one caller's
        factory runs, every other caller of ``get_or_put(name, ...)``, here or in
        another process, waits for its result (single flight; no thundering herd).

        The caller whose factory ran gets the factory's return value; the others get
        the stored object, decoded as :meth:`get` does. If that factory raises, the
        exception is raised in its caller only and the next waiter runs its own factory;
        so does it if the computing process dies or is cancelled: a waiter never waits
        for a caller that is gone. Waiting has no timeout of its own: wrap the call in
        ``asyncio.timeout`` (cancelling a waiter withdraws it). A process computes at
        most ``MAX_CLAIMS`` (256) names at once (:class:`QuotaExceeded`).

        >>> page = await client.get_or_put("page:/", render, codec="raw")  # doctest: +SKIP
        """
        _check_name(name, "object name")
        _ttl_ms(ttl)
        while True:
            try:
                return await self.get(name)
            except BlockNotFound:
                pass

            def orphan(reply: Reply) -> None:  # cancelled after the claim passed to it
                if reply.result["claimed"]:
                    self._send_nowait(Op.UNCLAIM, {"name": name})

            reply = await self._call(Op.CLAIM, {"name": name}, orphan=orphan)
            if not reply.result["claimed"]:
                continue  # bound meanwhile: read it (or claim again if it went already)
            epoch = self._epoch
            try:
                value = factory()
                if inspect.isawaitable(value):
                    value = await value
                await self.put(value, codec, name=name, cacheable=cacheable, ttl=ttl)
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(ConnectionClosed):
                    await self._call(Op.UNCLAIM, {"name": name}, epoch=epoch)
                raise
            return value

    async def delete(self, name: str) -> None:
        """Unbind ``name``; its block is freed once no reader leases it."""
        _check_name(name, "object name")
        await self._call(Op.DELETE, {"name": name})
        self._refs.pop(name, None)

    def _touch(self, block: int) -> None:
        """Note a hit of this client's cache: the coordinator, which never saw it, hears
        of it within :data:`TOUCH_DELAY`, so an object every process reads from its own
        cache is not the pool's least recently used."""
        self._touched[block] = None
        if self._touch_timer is None:
            loop = asyncio.get_running_loop()
            self._touch_timer = loop.call_later(TOUCH_DELAY, self._send_touches)

    def _send_touches(self) -> None:
        self._touch_timer = None
        touched = self._touched
        blocks = list(itertools.islice(touched, MAX_LIST))  # blocks per TOUCH: a frame's list
        for block in blocks:
            del touched[block]
        self._send_nowait(Op.TOUCH, {"blocks": blocks})
        if touched:
            self._touch_timer = asyncio.get_running_loop().call_soon(self._send_touches)

    def _remember(self, key: int | str, block: int, slot: int, gen: int, codec: str) -> None:
        self._refs[key] = (block, slot, gen, codec)
        self._refs.move_to_end(key)
        if len(self._refs) > _MAX_REFS:
            self._refs.popitem(last=False)

    # -- introspection -----------------------------------------------------------
    async def stats(self) -> Stats:
        """The coordinator's pool and admin space, now: the first 4096 processes and
        names (sorted), and how many there are (``processes_total``, ``names_total``)."""
        r = dict((await self._call(Op.STATS, {})).result)
        r["processes"] = tuple(r["processes"])
        r["names"] = tuple(r["names"])
        r["links"] = tuple(LinkStats(*link) for link in r["links"])
        r["usage"] = tuple(ProcessStats(*usage) for usage in r["usage"])
        r["queues"] = tuple(_queue_stats(*row) for row in r["queues"])
        r["cache_hits"] += self._cache_hits
        r["cache_misses"] += self._cache_misses
        r["cache_evictions"] += self._cache.statistics().evictions
        return Stats(**r)

    def cache_statistics(self) -> CacheStats:
        """This process's :meth:`get` cache alone, without a round trip: ``hits`` and
        ``misses`` count :meth:`get` calls (a miss is one that asked the coordinator),
        the rest describes the cache's occupancy. :meth:`stats` adds these counters to
        the coordinator's.

        >>> client.cache_statistics().hits  # doctest: +SKIP
        41
        """
        return dataclasses.replace(
            self._cache.statistics(), hits=self._cache_hits, misses=self._cache_misses
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        proto = getattr(self, "_proto", None)  # None too when __init__ raised
        if proto is None or self._closed:
            return
        try:
            _warn(
                f"unclosed blockipc client {self.name!r}: close it (await client.close(), "
                "or async with blockipc.connect(...))",
                ResourceWarning,
                source=self,
            )
        finally:  # (also when warnings are errors) the coordinator frees what it held
            self._drop_connection()


@final
class _Requests(AsyncIterator[IncomingRequest]):
    """What :meth:`Client.requests` returns: each ``__anext__`` is one coroutine
    (:meth:`Client._next_request`), not an async generator's two frames (a hot path).
    ``aclose()`` (``contextlib.aclosing``) ends it, as it would a generator."""

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client: Client | None = client

    def __aiter__(self) -> _Requests:
        return self

    def __anext__(self) -> Coroutine[Any, Any, IncomingRequest]:
        if self._client is None:
            return _stop()
        return self._client._next_request(in_loop=True)

    async def aclose(self) -> None:
        """End the loop: every later ``__anext__`` raises ``StopAsyncIteration``."""
        self._client = None


async def _stop() -> NoReturn:
    raise StopAsyncIteration


class Lease:
    """An awaited lease on a block; use with ``async with`` (see :meth:`Client.lease`).

    ::

        async with client.lease(block, "w") as view:   # a memoryview of block.size bytes
            view[:5] = b"hello"
    """

    def __init__(
        self, client: Client, block: int, mode: Literal["r", "w"], codec: str | None = None
    ) -> None:
        self._client = client
        self.block = block
        self.mode = mode
        self.codec = codec
        self._lease_id: int | None = None
        self._epoch = 0  # the connection that granted it
        self._view: memoryview | None = None  # lent from _src (see _client/views.py)
        self._src: memoryview | None = None
        self._exported = False  # a view of it outlived the lease: RELEASE_EXPORTED says so

    async def __aenter__(self) -> Any:
        if self._lease_id is not None:
            raise BlockIPCError("this lease is already held")
        client = self._client
        client._bid(self.block)  # made before the connection was lost, entered after
        if self.codec is None:
            reply = await client._call(
                Op.LEASE, {"block": self.block, "mode": self.mode}, orphan=client._return_lease
            )
        else:  # a lease whose reply also says how the block is encoded
            reply = await client._call(
                Op.LEASE_CODEC,
                {"block": self.block, "mode": self.mode},
                orphan=client._return_lease,
            )
        r = reply.result
        self._lease_id, self._epoch = r["lease"], client._epoch
        try:
            seg = await client._segment(r["segment"], self._epoch)
            src = seg.buffer[r["offset"] : r["offset"] + r["size"]]
        except BaseException:
            await self._release()
            raise
        if self.mode != "w":
            src, writable = src.toreadonly(), src
            writable.release()
        self._src, self._view = src, lend(src)
        client._leases.add(self)
        if self.codec is None:
            return self._view
        try:
            return _decode_view(self.codec, self._view, r)
        except CodecError as exc:
            await self._release()
            recorded = r.get("codec", "raw")
            if recorded == self.codec:
                raise
            holds = "raw bytes" if recorded == "raw" else f"an object put with codec={recorded!r}"
            raise CodecError(
                f"block {self.block} holds {holds}, not codec={self.codec!r}: {exc}"
            ) from exc
        except BaseException:
            await self._release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._release()

    def __enter__(self) -> NoReturn:
        raise use_async_with("async with client.lease(block) as view: ...", "a lease")

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ raises
        pass

    def _drop_view(self) -> None:
        self._client._leases.discard(self)
        view, src = self._view, self._src
        self._view = self._src = None
        if view is not None and src is not None and reclaim(view, src):
            # a slice, memoryview or array made from the view still reaches the block:
            # RELEASE_EXPORTED says so, and the coordinator never hands that memory out
            # again until UNEXPORT says the last such view is gone, or this process
            # disconnects (see RoutingTable.mark_exported)
            self._exported = True
            self._client._view_exported(self.block, self._epoch, src)
            _export_limit.warning(  # `async with lease(...) as arr` in a loop: each time
                log,
                "lease.view_exported",
                block=self.block,
                mode=self.mode,
                action="the block's memory is kept out of the pool until the array (or "
                "slice) made from the lease's view is gone, or this client closes",
                hint="drop it before the lease ends (`del arr` inside the `async with`), "
                "or take a copy that owns its memory (`get()`, `arr.copy()`)",
            )

    async def _release(self) -> None:
        self._drop_view()
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is None:
            return
        op = Op.RELEASE_EXPORTED if self._exported else Op.RELEASE
        self._exported = False
        with anyio.CancelScope(shield=True), contextlib.suppress(ConnectionClosed):
            await self._client._call(op, {"lease": lease_id}, epoch=self._epoch)


def _check_block_size(size: int) -> None:
    """Refuse, before any request, a block no pool can hold (nor a frame name)."""
    if size > MAX_INT:
        raise PoolExhausted(f"a block of {size} bytes is larger than any pool can hold")


def _queue_stats(name: str, dead_letter: str, *counts: int) -> QueueStats:
    """A queue's row of a STATS reply (``ops/queues.queue_row``) as :class:`QueueStats`."""
    depth, in_flight, redelivered, dead_lettered, enqueued, acked, maxsize, attempts = counts
    return QueueStats(
        name,
        depth=depth,
        in_flight=in_flight,
        redelivered=redelivered,
        dead_lettered=dead_lettered,
        enqueued=enqueued,
        acked=acked,
        maxsize=maxsize,
        max_attempts=attempts or None,
        dead_letter=dead_letter or None,
    )


def _cache_entry(codec: str, src: memoryview, meta: dict[str, Any]) -> tuple[bool, Any]:
    """What the cache keeps for a value: ``(True, value)`` for immutable results (raw
    bytes, read-only numpy arrays), ``(False, encoded bytes)`` for the others, decoded
    afresh on every hit so that a caller mutating its result cannot spoil the cache."""
    codec_obj = get_codec(codec)
    if codec in ("raw", "numpy"):
        return True, codec_obj.decode(src, meta)
    encoded = bytes(src)
    codec_obj.decode(encoded, meta)  # corrupt bytes raise CodecError now, not on a hit
    return False, (encoded, meta)


def _materialize(codec: str, entry: tuple[bool, Any]) -> Any:
    final, value = entry
    if final:
        return value
    encoded, meta = value
    return get_codec(codec).decode(encoded, meta)


def _decode_view(codec: str, view: memoryview, r: dict[str, Any]) -> Any:
    """The leased object, over ``view`` (a lent view: whatever the codec makes from it
    keeps the lease's source exported while it lives). The whole view goes to the codec
    when the object fills it, so that ``codec="raw"`` returns the lease's own view, which
    the lease releases, rather than a slice of it that would outlive the lease."""
    meta = r.get("meta", {})
    n = meta.get("nbytes", len(view))
    return get_codec(codec).view(view if n == len(view) else view[:n], meta.get("codec", {}))


class _Connect:
    """What :func:`connect` returns: ``await`` it or use it with ``async with``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def _open(self) -> Client:
        client = self._client
        await client._open(retry=client._retry, within=client._timeout)
        return client

    async def __aenter__(self) -> Client:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    def __enter__(self) -> NoReturn:
        raise use_async_with("async with blockipc.connect(...) as client: ...", "connect()")

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ raises
        pass

    def __getattr__(self, name: str) -> NoReturn:
        # Only reached for names _Connect lacks: a Client's method or attribute used on
        # the un-awaited connect() says what to do. Still an AttributeError, so
        # hasattr() and other probing (dunders included) work as usual.
        client = self.__dict__.get("_client")
        if not name.startswith("_") and client is not None and hasattr(client, name):
            raise AttributeError(
                f"connect() returns an awaitable, not a Client (asked for .{name}): use "
                "`client = await blockipc.connect(...)` or "
                "`async with blockipc.connect(...) as client`",
                name=name,
                obj=self,
            )
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
        )


async def _connect_unix(
    address: str, failed: Callable[[str, OSError], ConnectionClosed]
) -> UNIXSocketStream:
    """A socket to the coordinator at ``address``, the one way a client connects (its
    main connection and every ``ATTACH`` side connection). Before a byte is sent (the
    name in ``HELLO``, then inline writes), the server's uid must pass
    :func:`~blockipc._handshake.trusted_peer`: a process of another user that listens
    on the path first gets nothing.

    :raises ConnectionClosed: ``failed(address, error)`` when the connect fails.
    :raises AccessDenied: when the server runs as another user (neither ours nor root).
    """
    try:
        stream = await anyio.connect_unix(address)
    except OSError as exc:
        raise failed(address, exc) from exc
    try:
        pid, uid, _gid = peer_credentials(stream.extra(SocketAttribute.raw_socket))
        if not trusted_peer(uid):
            raise AccessDenied(
                f"the socket {address} is served by process {pid} of uid {uid}, not by this "
                f"user (uid {os.getuid()}) or root: refusing to connect (another user may "
                "have taken the path before the coordinator; start it on a path in a "
                "private directory, e.g. under $XDG_RUNTIME_DIR)"
            )
    except BaseException:
        await stream.aclose()
        raise
    return stream


def _retryable(address: str, exc: BaseException | None) -> bool:
    """Whether a failed connect is one that waiting may cure: no socket yet (the
    coordinator has not started, or is restarting), a socket nobody listens on (left
    by one that ended), a full listen backlog. Not a directory or another file."""
    if isinstance(exc, FileNotFoundError | BlockingIOError):
        return True
    if isinstance(exc, ConnectionRefusedError):
        try:
            return stat.S_ISSOCK(os.stat(address).st_mode)
        except OSError:  # removed meanwhile: the next attempt says what it is
            return True
    return False


async def _connect_retrying(address: str, *, retry: bool, within: float | None) -> UNIXSocketStream:
    """:func:`_connect_unix`, tried again (``retry``) with backoff while it fails in a
    way that waiting may cure, for up to ``within`` seconds (``None``: until cancelled)."""
    if not retry:
        return await _connect_unix(address, _connect_failed)
    deadline = math.inf if within is None else anyio.current_time() + within
    delay = _BACKOFF_FIRST
    while True:
        try:
            return await _connect_unix(address, _connect_failed)
        except ConnectionClosed as exc:
            if not _retryable(address, exc.__cause__):
                raise
            last = exc
        now = anyio.current_time()
        if now >= deadline:
            raise ConnectionClosed(
                f"no coordinator at {address} within {within:g} s (the last attempt: {last})"
            ) from last
        if delay == _BACKOFF_FIRST:
            log.debug("client.waiting_for_coordinator", address=address, error=str(last))
        # jittered: the workers of a web server restarted together do not knock together
        await anyio.sleep(min(delay * random.uniform(0.5, 1.0), deadline - now))
        delay = min(delay * 2, _BACKOFF_MAX)


def _inline(obj: object, codec: str) -> tuple[str, dict[str, Any], bytes]:
    """``obj`` encoded with ``codec`` for an inline message: (codec, meta, bytes); an
    encoding over ``MAX_INLINE_PAYLOAD`` raises :class:`InvalidRequest`."""
    if type(obj) is bytes and codec == "raw" and len(obj) <= MAX_INLINE_PAYLOAD:
        return codec, _NO_META, obj  # what the raw codec makes of bytes: them
    with get_codec(codec).prepare(obj) as enc:
        if enc.nbytes > MAX_INLINE_PAYLOAD:
            raise InvalidRequest(
                f"an inline message is at most {MAX_INLINE_PAYLOAD} bytes encoded, not "
                f"{enc.nbytes}: put a larger object in a block and send() that"
            )
        return codec, enc.meta, enc.tobytes()


_NO_META: Final[dict[str, Any]] = {}  # (never mutated)


async def _timed(
    fut: asyncio.Future[Any],
    seconds: float,
    loop: asyncio.AbstractEventLoop,
    withdraw: Callable[[], None],
) -> Any:
    """``await fut``, cancelled after ``seconds`` (then :class:`TimeoutError`) with a
    timer of the loop, not a cancel scope (a tenth of a direct round trip); a cancelled
    caller stays cancelled. Either way ``withdraw()`` runs."""
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        if not fut.done():
            timed_out = True
            fut.cancel()

    timer = loop.call_later(seconds, expire)
    try:
        return await fut
    except asyncio.CancelledError:
        withdraw()
        task = asyncio.current_task(loop)
        if timed_out and (task is None or not task.cancelling()):
            raise TimeoutError from None  # (as anyio.fail_after raises it)
        raise
    finally:
        timer.cancel()


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    if not timeout > 0:  # (NaN too)
        raise ValueError(
            f"timeout must be a positive number of seconds (None for no limit), not {timeout!r}"
        )
    return float(timeout)


def _check_flag(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{what} must be True or False, not {value!r}")
    return value


def _connect_failed(address: str, exc: OSError) -> ConnectionClosed:
    """Why connecting to ``address`` failed, in words that say what to do."""
    start = (
        f"start one with `blockipc serve --socket {address}` "
        f"or `blockipc.Coordinator(path={address!r})`"
    )
    if os.path.isdir(address):
        return ConnectionClosed(
            f"{address} is a directory, not a coordinator's socket: pass the socket's path "
            "(coord.address, or the --socket of `blockipc serve`)"
        )
    if isinstance(exc, FileNotFoundError):
        return ConnectionClosed(f"no coordinator is listening at {address} (no such file): {start}")
    if isinstance(exc, ConnectionRefusedError):
        try:
            is_socket = stat.S_ISSOCK(os.stat(address).st_mode)
        except OSError:
            is_socket = False
        if not is_socket:
            return ConnectionClosed(
                f"{address} is not a socket: pass a coordinator's socket path "
                "(coord.address, or the --socket of `blockipc serve`)"
            )
        return ConnectionClosed(
            f"no coordinator is listening at {address} (a socket left by one that ended): {start}"
        )
    return ConnectionClosed(f"cannot connect to {address}: {exc}")


def connect(
    address: str | os.PathLike[str],
    name: str,
    *,
    inbox_messages: int = DEFAULT_INBOX_MESSAGES,
    inbox_bytes: int | str | None = None,
    cache_size: int | str = DEFAULT_CACHE_SIZE,
    timeout: float | None = None,
    retry: bool = False,
    reconnect: bool = False,
    access: Literal["r", "rw"] = "rw",
) -> _Connect:
    """Connect to the coordinator at ``address`` and register as ``name``: the asyncio
    client. :func:`blockipc.connect` (``blockipc/_connect.py``) is this under asyncio
    and bridges to it under trio; its docstring documents the arguments."""
    _check_name(name, "process name")
    timeout = _check_timeout(timeout)
    retry = _check_flag(retry, "retry")
    reconnect = _check_flag(reconnect, "reconnect")
    if access not in ACCESS_MODES:
        raise ValueError(
            f"access must be one of {', '.join(map(repr, ACCESS_MODES))} "
            f"(read-write, read-only), not {access!r}"
        )
    path = os.fspath(address)
    if isinstance(path, str) and "://" in path:
        scheme = path.split("://", 1)[0]
        raise InvalidRequest(
            f"connect({path!r}): local clients connect to a coordinator's Unix socket path "
            f"(coord.address, or the --socket of `blockipc serve`); {scheme}:// addresses are "
            "for links between coordinators (Coordinator(node=..., listen=..., peers=...)): "
            "reach a process on another host with send(block, to='node/name') through your "
            "own coordinator"
        )
    return _Connect(
        Client(
            path,
            name,
            inbox_messages=inbox_messages,
            inbox_bytes=inbox_bytes,
            cache_size=cache_size,
            timeout=timeout,
            retry=retry,
            reconnect=reconnect,
            access=access,
        )
    )
