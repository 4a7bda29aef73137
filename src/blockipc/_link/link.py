"""The coordinator-to-coordinator link: remote sends over pyzmq (libzmq) ``tcp://``.

Theory of operation
-------------------
Each coordinator with a ``node`` name binds one ROUTER socket (``listen``) and
connects one DEALER socket per peer. A remote send travels from the sending
coordinator's DEALER to the receiving coordinator's ROUTER as one multipart message
(see ``_linkwire.py`` for the frames and the rules); the receiver answers it with an
ack once the block is in the receiving process's inbox, and only then does the
sender's ``await client.send(...)`` return.

*Zero-copy out.* The data frame is a ``memoryview`` of the block in the pool, handed
to libzmq with ``copy=False``; libzmq's I/O thread writes it to the socket. While it
may, the block is *pinned*: it belongs to the link's own process record, so neither
the sender (nor its death) can free or change it. A ``MessageTracker`` says when
libzmq is done with the memory; only then is the block freed (a move) or given back to
the sender (``move=False``, or a failed send).

*One copy in.* The receiver allocates a block in its own pool and copies the frame
into it, large blocks in a worker thread (``ctypes.memmove`` drops the GIL), so the
loop keeps serving. Only a complete block is put in an inbox: libzmq never hands out
part of a multipart message, and an allocation made for a block that cannot be
delivered after all is freed before the error ack goes back.

*Backpressure.* The sender's window (blocks and bytes not yet acknowledged) bounds
what a peer may have parked at the receiver; the receiver parks blocks while the
receiving process's inbox is over its limit or the pool is full, and stops reading
its socket when too many bytes are parked. High-water marks bound libzmq's queues.

*I/O.* The ROUTER and the DEALERs are plain pyzmq sockets used with ``NOBLOCK`` only,
driven by callbacks on their ``ZMQ_FD`` (``loop.add_reader``): no future or task per
message as ``zmq.asyncio`` would make. ``ZMQ_FD`` is edge-triggered and any operation
on the socket may take the edge, so a callback reads until ``EAGAIN`` and checks
``ZMQ_EVENTS`` after sending before it returns.

*Batches.* A sender writes what its window lets through at once as one message of up
to :data:`BATCH_BYTES` bytes (small blocks share a message, a meta and an ack; large
ones travel one by one, so the receiver copies one while the next arrives); it answers
the requests of the acks of one pump with one write per sending process. The receiver
answers the blocks of each message it read with one ``ACKS`` message, at once, so the
sender's window refills while the receiver goes on reading.

*Security.* Both sockets use CURVE (authenticated, encrypted) unless the node was
started ``insecure`` without ``keys``; the ROUTER accepts only the public keys found in
the key directory, checked by pyzmq's asyncio ZAP authenticator, and every block must
come from the node its key belongs to. With ``IMMEDIATE`` set, nothing is queued for a
peer that has not completed the handshake, so a refused node never receives a byte of
block data. The TCP listener understands link frames only: local clients are served on
the Unix socket alone.

*Keys by default.* A TCP port, on loopback too, is open to every local user: SO_PEERCRED
and a 0600 socket, which keep other users off the Unix socket, do not exist for TCP
(the peer's uid of a loopback connection could be looked up in ``/proc/net/tcp``, but
not on another host, and not without a race). So a node given no ``keys`` uses this
user's default key directory (``_link/keys.py``: ``$BLOCKIPC_KEYS``, else
``~/.config/blockipc/keys``, mode 0700), making it and its own key pair at its first
start as ssh makes host keys. Two nodes of one user on one host (the common test and
demo case) then trust each other with nothing to set up, and another uid, who can read
neither the directory nor a secret key in it, is refused at the handshake
(``link.refused``). Trust is read from the directory when a key it does not know
connects, and a peer whose public key is not there yet (its node has not started once)
is waited for like an unreachable one, up to ``link_timeout`` per send: nodes may start
in any order. For nodes on other hosts, copy each ``NAME.key`` into the others'
directories (or pass ``keys=DIR``). A plain link is only made with ``insecure=True`` and
no ``keys``: it delivers blocks from whoever reaches the port, under any node name.

Structlog events: ``link.started``, ``link.connected``, ``link.disconnected``,
``link.refused``, ``link.handshake_failed``, ``link.send_failed``,
``link.protocol_error``, ``link.reset``, ``link.peer_disconnected``, ``link.stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, cast

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from .._core.codecs import CODEC_NAMES
from .._core.limits import split_target
from .._core.linkwire import (
    BLOCKS,
    GETQ,
    GETR,
    MAX_PEER_TOPICS,
    SUBQ,
    SUBS,
    BlockFrame,
    Failure,
    LinkConfig,
    OutboundState,
    Pending,
    SubsUpdate,
    decode_acks,
    decode_blocks,
    decode_get_answer,
    decode_get_ask,
    decode_subq,
    decode_subs,
    encode_ack,
    encode_ackp,
    encode_acks,
    encode_blocks,
    encode_get_answer,
    encode_get_ask,
    encode_subq,
    encode_subs,
    max_frame,
    peek_seqs,
)
from .._core.protocol import ErrorReply, Reply, Request
from .._core.routing import BlockRecord, ProcessRecord
from .._core.topics import Subscriptions
from .._exceptions import (
    AccessDenied,
    BlockIPCError,
    ConnectionClosed,
    InvalidRequest,
    PeerUnreachable,
    PoolExhausted,
    ProtocolError,
)
from .._log import RateLimiter, get_logger
from .._types import LinkStats
from .host import GetReplyTo, LinkHost, ReplyTo, Requester
from .keys import NodeKeys, default_key_dir, ensure_keys, load_keys, load_trusted

__all__ = ["Link"]

log = get_logger("blockipc.link")

MAX_PARKED_BYTES: Final = 512 << 20
"""The receiver stops reading its socket while this many bytes wait for delivery."""
THREAD_COPY: Final = 2 << 20
"""Blocks from this size up are copied into the pool in a worker thread."""
BATCH_BYTES: Final = 4 << 20
"""A message of blocks is closed once it holds this many bytes or half the window's
blocks: small blocks share one message, one meta and one ack; large ones travel alone,
and the receiver works on one message while the next arrives (libzmq hands a message
over only once all of it is there)."""
TRACKER_GRACE: Final = 2.0
"""Seconds a finished send may wait for libzmq to release its memory before the
peer's socket is reset (closing it makes libzmq drop the message)."""

_MAX_NODES: Final = 256  # nodes whose received blocks are counted (names off the wire)

# plain ints: the hot paths skip the enum arithmetic of pyzmq's constants
_NOBLOCK: Final = int(zmq.NOBLOCK)
_NOBLOCK_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)

_HANDSHAKE_FAILED: Final = frozenset(
    {zmq.Event.HANDSHAKE_FAILED_PROTOCOL, zmq.Event.HANDSHAKE_FAILED_NO_DETAIL}
)


_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_malloc_tuned = False


def _tune_malloc() -> None:
    """Keep the memory libzmq receives large messages into.

    libzmq's I/O thread ``malloc``s every received message and receives into it;
    glibc gives the freed memory back to the kernel (a heap trim, or ``munmap``)
    as soon as enough of it is free, so the next message page-faults on every page
    (measured on loopback: tens of page faults per 1 MiB message, in the thread
    that also runs on the receiving CPU).
    Allocations up to 32 MiB stay on the heap and the heap keeps up to 256 MiB free:
    what the process keeps is its peak, which the link's bounds (high-water marks,
    windows) already limit; it does not grow with a backlog.
    """
    global _malloc_tuned
    if _malloc_tuned or not sys.platform.startswith("linux"):
        return
    _malloc_tuned = True
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def _io_threads() -> set[int]:
    """The thread ids of this process's libzmq I/O threads (named ``ZMQbg/IO/N``)."""
    found = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("ZMQbg/IO/"):
                    found.add(int(tid))
    return found


def _plain_socket(ctx: zmq.asyncio.Context, kind: int) -> zmq.Socket[bytes]:
    """A socket of the link's (asyncio) context with pyzmq's plain API: the link uses
    it with ``NOBLOCK`` only, polled through its ``FD`` by the event loop (no futures
    per message, as ``zmq.asyncio`` would make)."""
    return cast("zmq.Socket[bytes]", ctx.socket(kind, socket_class=zmq.Socket))  # type: ignore[arg-type]


def _int_opt(sock: zmq.Socket[bytes], option: int) -> int:
    return cast(int, sock.getsockopt(option))


def _memmove(dst: memoryview, src: memoryview) -> None:
    """Copy ``src`` into ``dst`` (same length) without holding the GIL."""
    n = len(dst)
    d = (ctypes.c_char * n).from_buffer(dst)
    s = (ctypes.c_char * n).from_buffer(src)
    try:
        ctypes.memmove(d, s, n)
    finally:
        del d, s  # end the buffer exports now, not at the next collection


@dataclass(eq=False)
class Outgoing:
    """A remote send in the sending coordinator, from request to reply."""

    reply_to: ReplyTo
    req: Request
    rec: BlockRecord
    sender: ProcessRecord
    to: str
    header: dict[str, Any]
    move: bool
    peer: _Peer
    pending: Pending | None = None  # its place in the peer's OutboundState
    view: memoryview | None = None
    tracker: zmq.MessageTracker | None = None
    error: BlockIPCError | None = None
    finished_at: float = 0.0
    replied: bool = False
    topic: str = ""  # a publish: to the peer's subscribers of this topic
    delivered: int = 0  # (a publish) how many of them took it, from the peer's ack


@dataclass(eq=False)
class RemoteGet:
    """A ``get("node/name")`` in the asking coordinator: queued until the link to the
    peer is up, then written, until the peer's answer (or a failure)."""

    reply_to: GetReplyTo
    name: str
    submitted: float
    peer: _Peer
    seq: int = 0
    done: bool = False


@dataclass(eq=False)
class _Incoming:
    """A block received from a peer, waiting for room in the receiver's inbox."""

    ident: bytes
    frame: BlockFrame
    data: zmq.Frame
    sender: str


class _Authenticator(AsyncioAuthenticator):
    """pyzmq's asyncio ZAP handler: CURVE keys in the key directory, by node name."""

    def __init__(self, context: zmq.asyncio.Context, link: Link) -> None:
        super().__init__(context)
        self.link = link
        self.configure_curve_callback("*", self)

    def callback(self, domain: str, key: bytes) -> bool:
        node = self.link.trusted_node(key)
        if node is None:  # (rate-limited: anyone who reaches the port can cause it)
            self.link.refusal_limit.warning(
                log,
                "link.refused",
                node=self.link.config.node,
                reason="unknown CURVE public key (not in the key directory)",
                key=key.decode("ascii", "replace"),
            )
        return node is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.link.trusted_node(z85.encode(client_public_key)) or ""


class _Peer:
    """The sending side of the link to one peer: a DEALER and its state.

    The DEALER is a plain (blocking-API) pyzmq socket used only with ``NOBLOCK`` and
    driven by :meth:`_pump`, which the event loop calls when the socket's ``FD``
    signals and whenever there is something new to write. ``ZMQ_FD`` is edge-triggered
    (any operation on the socket may consume the signal), so the pump reads until
    ``EAGAIN`` and checks ``ZMQ_EVENTS`` after its last send before it returns.
    """

    def __init__(self, link: Link, name: str, endpoint: str, server_key: bytes | None) -> None:
        self.link = link
        self.name = name
        self.endpoint = endpoint
        self.server_key = server_key
        self.state = OutboundState(name, link.config.timeout)
        self._reset = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._blocked = False  # the last write found the socket full (EAGAIN)
        self.sent = self.sent_bytes = self.failed = 0  # sends over, for LinkStats
        self.topics: set[str] = set()  # what the peer's processes subscribe to
        self._subq_due = False  # ask the peer for them (after each handshake)
        self.get_queue: deque[RemoteGet] = deque()  # gets not written yet
        self.gets: dict[int, RemoteGet] = {}  # gets written, by seq, until answered
        self._next_get = 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"blockipc-link-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reset(self) -> None:
        """Close and reopen the socket: libzmq drops whatever it still queues."""
        self._reset.set()

    def submit(self, out: Outgoing) -> None:
        out.pending = self.state.submit(out, out.rec.size, time.monotonic())
        if self.state.refused is not None and not self.state.is_up:
            self.link.finish_all(self.state.expire(time.monotonic()))
        self.wake()

    def wake(self) -> None:
        """Run the pump soon (once, however many sends arrive meanwhile)."""
        if not self._scheduled and self._sock is not None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _socket(self) -> tuple[zmq.Socket[bytes], zmq.asyncio.Socket]:
        cfg, keys = self.link.config, self.link.keys
        sock = _plain_socket(self.link.ctx, zmq.DEALER)
        try:
            self.link.tune(sock)
            # acks, subscription updates, and named objects (no larger than this pool's
            # largest block: the peer is told, and refuses larger ones itself)
            sock.maxmsgsize = max_frame(self.link.host.pool.max_request())
            sock.immediate = True  # queue nothing for a peer that is not connected
            sock.sndhwm = max(self.state.max_blocks, self.state.small_blocks) + 2
            if keys is not None:
                sock.curve_publickey = keys.public
                sock.curve_secretkey = keys.secret
                sock.curve_serverkey = self.server_key
            monitor = cast("zmq.asyncio.Socket", sock.get_monitor_socket())
            sock.connect(self.endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        log.debug("link.connecting", node=cfg.node, peer=self.name, endpoint=self.endpoint)
        return sock, monitor

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.link.keys is not None and self.server_key is None:
            await self._await_key()
        while True:
            sock, monitor = self._socket()
            self._reset.clear()
            fd = _int_opt(sock, zmq.FD)
            self._sock = sock
            loop.add_reader(fd, self._pump)
            tasks = [
                asyncio.create_task(self._guard(self._watch(monitor))),
                asyncio.create_task(self._guard(self._expire())),
            ]
            self.wake()
            try:
                await self._reset.wait()
            finally:
                self._sock = None
                loop.remove_reader(fd)
                if self._retry is not None:
                    self._retry.cancel()
                    self._retry = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
                monitor.close(linger=0)
                sock.close(linger=0)
                self.link.finish_all(self.state.down(time.monotonic()))
                self.link_down()
            log.info("link.reset", node=self.link.config.node, peer=self.name)

    async def _await_key(self) -> None:
        """Wait for the peer's public key to appear in the (default) key directory:
        meanwhile sends wait for it as for an unreachable node, up to link_timeout."""
        hint = (
            f"no public key for node {self.name!r} in {self.link.key_dir} yet: start that "
            f"node once on this host, or copy its {self.name}.key there"
        )
        self.state.hint = hint
        log.info("link.waiting_key", node=self.link.config.node, peer=self.name, reason=hint)
        tick = min(0.1, self.link.config.timeout / 4)
        while (key := self.link.peer_key(self.name)) is None:
            await asyncio.sleep(tick)
            self.link.finish_all(self.state.expire(time.monotonic()))
        self.server_key = key
        self.state.hint = None

    async def _guard(self, coro: Any) -> None:
        """Run one of the peer's loops; a bug in it resets the socket, never stalls."""
        try:
            await coro
        except Exception as exc:
            log.exception("link.internal_error", peer=self.name, error=repr(exc))
            self.reset()

    def _pump(self) -> None:
        """Read the acks that arrived, write what the window allows, until the socket
        has nothing more to say (``ZMQ_EVENTS`` without ``POLLIN``)."""
        self._scheduled = False
        sock = self._sock
        if sock is None:
            return
        held = self.link.hold_replies()
        try:
            for _ in range(64):  # (a bound, in case POLLOUT and EAGAIN disagree)
                self._read(sock)
                self._write(sock)
                events = _int_opt(sock, _EVENTS)
                if not (events & _POLLIN or (events & _POLLOUT and self._blocked)):
                    return
            if self._retry is None:  # not done: go on shortly, without spinning
                self._retry = asyncio.get_running_loop().call_later(0.002, self._retried)
        except Exception as exc:
            log.exception("link.internal_error", peer=self.name, error=repr(exc))
            self.reset()
        finally:
            if held:
                self.link.flush_replies()

    def _write(self, sock: zmq.Socket[bytes]) -> None:
        """Write every send the window lets through, several per message (up to half
        the window's blocks, or :data:`BATCH_BYTES` bytes)."""
        state, link = self.state, self.link
        self._blocked = False
        if state.is_up and not self._write_requests(sock):
            return
        view = link.host.pool.view
        while True:
            batch: list[Pending] = []
            nbytes, most = 0, state.batch_size()
            while (
                len(batch) < most
                and nbytes < BATCH_BYTES
                and (p := state.next_to_write()) is not None
            ):
                batch.append(p)
                nbytes += p.size
            if not batch:
                return
            entries, views = [], []
            for p in batch:
                out: Outgoing = p.token
                rec = out.rec
                if out.view is None:
                    out.view = view(rec.segment, rec.offset, rec.size)
                views.append(out.view)
                entry = [p.seq, out.sender.name, out.to, rec.size, out.header]
                if out.topic:  # a publish, fanned out by the peer
                    entry.append(out.topic)
                entries.append(entry)
            try:  # (once the first frame is queued, libzmq takes the rest of the message)
                sock.send(BLOCKS, _NOBLOCK_MORE)
            except zmq.Again:  # connected but the pipe is not attached yet, or full
                for p in reversed(batch):
                    state.unwrite(p)
                self._blocked = True
                # the FD signals when the pipe takes messages again; a timer too, in
                # case the pipe was only not attached yet
                if self._retry is None:
                    loop = asyncio.get_running_loop()
                    self._retry = loop.call_later(0.002, self._retried)
                return
            sock.send(encode_blocks(link.config.node, entries), _NOBLOCK_MORE)
            last = len(batch) - 1
            for i, p in enumerate(batch):
                p.token.tracker = sock.send(
                    views[i], _NOBLOCK if i == last else _NOBLOCK_MORE, copy=False, track=True
                )

    def _write_requests(self, sock: zmq.Socket[bytes]) -> bool:
        """Write the subscription request due and the queued gets; False if the socket
        would block (the pump retries)."""
        node = self.link.config.node
        try:
            if self._subq_due:
                sock.send_multipart(encode_subq(node), _NOBLOCK)
                self._subq_due = False
            max_size = self.link.host.pool.max_request()
            while self.get_queue:
                g = self.get_queue[0]
                sock.send_multipart(encode_get_ask(node, g.seq, g.name, max_size), _NOBLOCK)
                self.get_queue.popleft()
                self.gets[g.seq] = g
        except zmq.Again:
            self._blocked = True
            if self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(0.002, self._retried)
            return False
        return True

    def get(self, g: RemoteGet) -> None:
        g.seq = self._next_get
        self._next_get += 1
        self.get_queue.append(g)
        if self.state.refused is not None and not self.state.is_up:
            self.fail_gets(AccessDenied(self.state.refused), queued=True)
        self.wake()

    def forget(self, g: RemoteGet) -> None:
        """The asker cancelled or left: its answer, if any comes, is dropped."""
        g.done = True
        with contextlib.suppress(ValueError):
            self.get_queue.remove(g)
        self.gets.pop(g.seq, None)

    def fail_gets(self, exc: BlockIPCError, *, queued: bool, now: float | None = None) -> None:
        """Fail the gets written (the link went down: their answers will not come), or
        with ``queued`` those waiting to be written (``now``: only those that waited for
        ``link_timeout``)."""
        if not queued:
            failed = list(self.gets.values())
            self.gets.clear()
        elif now is None:
            failed = list(self.get_queue)
            self.get_queue.clear()
        else:
            limit = self.link.config.timeout
            since = self.state.down_since
            failed = [g for g in self.get_queue if now - max(g.submitted, since) >= limit]
            for g in failed:
                self.get_queue.remove(g)
        for g in failed:
            g.done = True
            g.reply_to.failed(exc)

    def link_down(self) -> None:
        """The connection to the peer is gone: its subscriptions are unknown until it
        is back (then asked for again), the gets written get no answer."""
        self.link.drop_topics(self)
        self.fail_gets(
            PeerUnreachable(f"the link to node {self.name!r} went down before it answered the get"),
            queued=False,
        )

    def _retried(self) -> None:
        self._retry = None
        self.wake()

    def _read(self, sock: zmq.Socket[bytes]) -> None:
        # ZMQ_EVENTS, not EAGAIN, ends the loop (as cheap, and no exception to make)
        while _int_opt(sock, _EVENTS) & _POLLIN:
            try:
                parts = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            try:
                if parts[0] == SUBS:
                    self.link.update_topics(self, decode_subs(parts))
                    continue
                if parts[0] == GETR:
                    self.link.got(self, parts)
                    continue
                acks = decode_acks(parts)
            except ProtocolError as exc:
                log.warning("link.protocol_error", peer=self.name, error=str(exc))
                continue
            for ack in acks:
                p = self.state.ack(ack.seq)
                if p is not None:
                    p.token.delivered = ack.delivered
                    self.link.finish(p.token, ack.error(), acked=True)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        node = self.link.config.node
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            kind, now = event["event"], time.monotonic()
            if kind == zmq.Event.HANDSHAKE_SUCCEEDED:
                self.state.up(now)
                self._subq_due = True  # (what it said before this connection is gone)
                log.info("link.connected", node=node, peer=self.name, endpoint=self.endpoint)
                self.wake()
            elif kind == zmq.Event.DISCONNECTED:
                was_up = self.state.is_up
                failed = self.state.down(now)
                if was_up:  # a warning only when it cost sends
                    emit = log.warning if failed else log.info
                    emit("link.disconnected", node=node, peer=self.name, failed=len(failed))
                self.link.finish_all(failed)
                self.link_down()
            elif kind == zmq.Event.HANDSHAKE_FAILED_AUTH:  # the peer's ZAP said no
                reason = (
                    f"node {self.name!r} refused this node's key (CURVE authentication "
                    f"failed, status {int(event['value'])}): its key directory has no "
                    f"{node}.key matching this node's key"
                )
                if self.state.refused != reason:
                    log.warning("link.refused", node=node, peer=self.name, reason=reason)
                self.link.finish_all(self.state.refuse(now, reason))
                self.fail_gets(AccessDenied(reason), queued=True)
            elif kind in _HANDSHAKE_FAILED:  # maybe transient: sends wait for link_timeout
                hint = (
                    f"the handshake with node {self.name!r} fails "
                    f"({zmq.Event(kind).name}): check that both nodes use keys (or both "
                    f"none) and that this node's {self.name}.key is that node's public key"
                )
                if self.state.hint != hint:
                    log.warning("link.handshake_failed", node=node, peer=self.name, reason=hint)
                self.state.hint = hint

    async def _expire(self) -> None:
        tick = min(0.05, self.link.config.timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.link.finish_all(self.state.expire(now))
            if not self.state.is_up and self.get_queue:
                self.fail_gets(
                    PeerUnreachable(
                        f"node {self.name!r} unreachable: no link to it for "
                        f"{self.link.config.timeout:g} s (link_timeout)"
                    ),
                    queued=True,
                    now=now,
                )


class Link:
    """A coordinator's link to its peers (made and driven by :class:`Coordinator`,
    reached through ``host``)."""

    def __init__(self, host: LinkHost, config: LinkConfig) -> None:
        self.host = host
        self.config = config
        self.keys: NodeKeys | None = None
        self.key_dir = config.keys
        if config.keys is not None:  # a directory of the user's: every key must be there
            self.keys = load_keys(config.keys, config.node)
            for peer in config.peers:
                if peer not in self.keys.trusted:
                    raise BlockIPCError(
                        f"no public key for peer {peer!r}: {config.keys / (peer + '.key')} "
                        "is missing"
                    )
        elif not config.plain:  # the default directory: made at the first start
            self.key_dir = default_key_dir()
            ensure_keys(self.key_dir, config.node)
            self.keys = load_keys(self.key_dir, config.node)
        _tune_malloc()
        self.ctx = zmq.asyncio.Context()
        self.address: str | None = None
        self._auth: _Authenticator | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._router_fd = -1
        self._reading = False  # the router's FD is watched (not while too much is parked)
        self._pumping = False
        self._pump_due = False
        self._acks: dict[bytes, list[int]] = {}  # successes not yet answered, by peer
        # receivers of blocks delivered during this read of the router: woken at its end,
        # so a waiting recv_many gets the whole burst in one reply (one wake-up)
        self._to_wake: dict[int, ProcessRecord] = {}
        self._senders: dict[str, ProcessRecord] = {}
        self._peers: dict[str, _Peer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._targets: dict[str, deque[_Incoming]] = {}
        self._parked = 0
        self._copies: set[asyncio.Future[None]] = set()
        self._releasing: list[Outgoing] = []
        self._lingering: list[zmq.MessageTracker] = []  # of acknowledged sends
        self._release_kick = asyncio.Event()
        self._held: list[ReplyTo] | None = None  # senders whose replies wait for a flush
        self._closing = False
        # blocks from each node: [received, received bytes, refused], for LinkStats
        self._inbound: dict[str, list[int]] = {}
        # across nodes: what each peer's processes subscribe to (by node name), and
        # who asked for this node's subscriptions (node -> its DEALER's routing id)
        self._remote: Subscriptions[str] = Subscriptions()
        self._watchers: dict[str, bytes] = {}
        self._topic_changes: dict[str, bool] = {}  # not yet told (one call_soon)
        self._fanouts: deque[_Incoming] | None = None  # publishes waiting for room
        self.log_limit = RateLimiter()  # of what a peer can cause at will
        # refused handshakes, one limiter per kind (a limiter counts by event name): a
        # flood of plain connects must not hide an unknown key's refusal, nor the reverse
        self.refusal_limit = RateLimiter()
        self.handshake_limit = RateLimiter()

    # -- keys --------------------------------------------------------------------
    def trusted_node(self, public_key: bytes) -> str | None:
        """The node whose public key (z85) is ``public_key``; on a miss the key
        directory is read again (a node of this user may have made its pair since)."""
        keys = self.keys
        if keys is None:
            return None
        node = keys.node_of(public_key)
        if node is None and self._reload_trusted():
            node = self.keys.node_of(public_key) if self.keys is not None else None
        return node

    def peer_key(self, name: str) -> bytes | None:
        """Peer ``name``'s public key, read again from the key directory on a miss."""
        if self.keys is None:
            return None
        key = self.keys.trusted.get(name)
        if key is None and self._reload_trusted():
            key = self.keys.trusted.get(name)
        return key

    def _reload_trusted(self) -> bool:
        if self.keys is None or self.key_dir is None:
            return False
        try:
            trusted = load_trusted(self.key_dir)
        except BlockIPCError as exc:  # (a file being written): the old set stays
            log.debug("link.keys_unreadable", node=self.config.node, error=str(exc))
            return False
        if trusted == self.keys.trusted:
            return False
        self.keys = dataclasses.replace(self.keys, trusted=trusted)
        return True

    # -- lifecycle ---------------------------------------------------------------
    def tune(self, sock: zmq.Socket[bytes]) -> None:
        """Options both sides share: no linger, heartbeats, reconnect backoff."""
        timeout_ms = max(1, int(self.config.timeout * 1000))
        sock.linger = 0
        sock.heartbeat_ivl = max(1, min(1000, timeout_ms // 3))
        sock.heartbeat_timeout = timeout_ms
        sock.handshake_ivl = timeout_ms
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 1000

    async def start(self) -> None:
        cfg = self.config
        before = _io_threads()  # (the context's first socket starts its I/O thread)
        try:
            if self.keys is not None:
                self._auth = _Authenticator(self.ctx, self)
                self._auth.start()
            if cfg.listen is not None:
                router = _plain_socket(self.ctx, zmq.ROUTER)
                self._router = router
                self.tune(router)
                router.rcvhwm = 64
                # libzmq disconnects a peer whose frame is larger, before allocating it
                router.maxmsgsize = max_frame(self.host.pool.max_request())
                if self.keys is not None:
                    router.curve_server = True
                    router.curve_publickey = self.keys.public
                    router.curve_secretkey = self.keys.secret
                # the monitor before the bind: a connection that comes and goes before
                # the watching task first runs is still seen (it was missed at times)
                monitor = self._router_monitor(router)
                self._spawn(self._watch_router(router, monitor))
                try:
                    router.bind(cfg.listen.zmq(bind=True))
                except zmq.ZMQError as exc:
                    raise BlockIPCError(f"cannot listen on {cfg.listen}: {exc}") from exc
                self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
                self._router_fd = _int_opt(router, zmq.FD)
                self.host.watch_topics(self._topic_changed)  # (told to those who ask)
                asyncio.get_running_loop().add_reader(self._router_fd, self._serve)
                self._reading = True
                await self._lower_io_priority(before)
            for name, endpoint in cfg.peers.items():
                key = None if self.keys is None else self.keys.trusted.get(name)
                peer = _Peer(self, name, endpoint.zmq(bind=False), key)
                self._peers[name] = peer
                peer.start()
            self._spawn(self._release_loop())
        except BaseException:
            await self.aclose()
            raise
        log.info(
            "link.started",
            node=cfg.node,
            listen=self.address,
            peers={n: str(e) for n, e in cfg.peers.items()},
            curve=self.keys is not None,
            keys=None if self.key_dir is None else str(self.key_dir),
        )

    async def _lower_io_priority(self, before: set[int]) -> None:
        """Raise the nice value of this context's libzmq I/O thread (one of those not in
        ``before``) by ``io_nice``.

        On a receiving node, the I/O thread reads blocks from TCP and the loop copies
        them into the pool and delivers them; where both share a busy CPU, the loop
        should win: at equal priority the I/O thread, woken as data arrives, takes the
        CPU from the loop in the middle of its work and reads further ahead (measured on
        two CPUs, 1 MiB blocks: +15 % with 10, +7 % with ``SCHED_BATCH`` instead). Its
        share shrinks only while the CPU is contended.
        """
        nice = self.config.io_nice
        if not nice or not sys.platform.startswith("linux"):  # (/proc/self/task)
            return
        tids: set[int] = set()
        for _ in range(100):  # the thread names itself just after it starts
            if tids := _io_threads() - before:
                break
            await asyncio.sleep(0.001)
        for tid in tids:
            try:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, now + nice))
            except OSError as exc:  # gone, or not allowed: a matter of speed only
                log.debug("link.io_nice_failed", tid=tid, error=repr(exc))

    def _router_monitor(self, router: zmq.Socket[bytes]) -> zmq.asyncio.Socket:
        """The monitor socket of the ROUTER's connection ends (and, with CURVE, failed
        handshakes), for :meth:`_watch_router`."""
        events = zmq.Event.DISCONNECTED
        if self.keys is not None:  # (an AUTH failure is logged by the ZAP handler)
            events |= zmq.Event.HANDSHAKE_FAILED_PROTOCOL | zmq.Event.HANDSHAKE_FAILED_NO_DETAIL
        return cast("zmq.asyncio.Socket", router.get_monitor_socket(events))

    async def _watch_router(self, router: zmq.Socket[bytes], monitor: zmq.asyncio.Socket) -> None:
        """Log the ends of inbound connections (rate-limited: a peer can reconnect at
        will). libzmq gives no reason; one is a frame over the ROUTER's bound."""
        bound = _int_opt(router, zmq.MAXMSGSIZE)
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] in _HANDSHAKE_FAILED:
                    self.handshake_limit.warning(
                        log,
                        "link.refused",
                        node=self.config.node,
                        endpoint=event["endpoint"].decode("utf-8", "replace"),
                        reason="the CURVE handshake failed: a peer without CURVE (a plain "
                        "link), or one that does not have this node's public key",
                    )
                    continue
                self.log_limit.log(
                    log,
                    "info",
                    "link.peer_disconnected",
                    node=self.config.node,
                    endpoint=event["endpoint"].decode("utf-8", "replace"),
                    max_frame=bound,
                    reason="the peer closed the connection, or it sent a frame larger "
                    "than max_frame bytes (libzmq disconnects it)",
                )
        finally:
            with contextlib.suppress(zmq.ZMQError):
                router.disable_monitor()
            monitor.close(linger=0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("link.task_failed", error=repr(task.exception()))

    async def aclose(self) -> None:
        """Stop the link: pending sends fail, pinned blocks are released, sockets closed."""
        if self._closing:
            return
        self._closing = True
        for peer in self._peers.values():
            await peer.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._copies:  # a worker thread may still write into the pool: let it finish
            await asyncio.gather(*self._copies, return_exceptions=True)
        for peer in self._peers.values():
            self.finish_all(
                peer.state.fail_all(lambda: ConnectionClosed("the coordinator is closing"))
            )
            for queued in (True, False):
                peer.fail_gets(ConnectionClosed("the coordinator is closing"), queued=queued)
        if self._router is not None:
            if self._reading:
                asyncio.get_running_loop().remove_reader(self._router_fd)
                self._reading = False
            self._router.close(linger=0)
            self._router = None
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=0)
        # libzmq frees what it still held when its sockets closed; give the pyzmq
        # garbage thread a moment to say so before the pool goes away.
        deadline = time.monotonic() + 1.0
        while (self._releasing or self._lingering) and time.monotonic() < deadline:
            self._lingering = [t for t in self._lingering if not t.done]
            self._release_done()
            await asyncio.sleep(0.005)
        for out in self._releasing:
            out.tracker = None
        self._release_done()
        self._targets.clear()
        log.info("link.stopped", node=self.config.node)

    # -- sending -----------------------------------------------------------------
    def send(self, session: Requester, req: Request) -> Outgoing:
        """Handle a REMOTE_SEND request: pin the block and queue it for its peer; the
        reply goes to ``session`` when the peer acknowledges it (or it fails). Returns
        the send, for :meth:`withdraw`.

        A move hands the block's ownership to the link (the sender can no longer use
        it); ``move=False`` makes the link a read holder. Either way the block is in
        transit, so nobody frees it while libzmq may read it.
        """
        args = req.args
        host, proc, move = self.host, session.proc, args["move"]
        rec = host.sendable(proc, args["block"], move=move)
        node, name = split_target(args["to"])
        if node == self.config.node:
            raise InvalidRequest(
                f"{args['to']!r} names this node ({node!r}): send to {name!r} instead"
            )
        peer = self._peers.get(node)
        if peer is None:
            known = ", ".join(sorted(self._peers)) or "none"
            raise PeerUnreachable(
                f"no link to node {node!r} (this node {self.config.node!r} has peers: {known})"
            )
        if self._closing:
            raise ConnectionClosed("the coordinator is closing")
        host.pin(proc, rec, move=move)  # until _release
        out = Outgoing(session, req, rec, proc, name, args["header"], move, peer)
        peer.submit(out)
        return out

    # -- across nodes: publish and named objects -----------------------------------------
    def subscribed_nodes(self, topic: str) -> list[str]:
        """The peers with a process subscribed to ``topic`` (a topic or a matching
        pattern), as they last told this node; none while their link is down."""
        return sorted(self._remote.match(topic))

    def publish(
        self,
        reply_to: ReplyTo,
        req: Request,
        proc: ProcessRecord,
        rec: BlockRecord,
        node: str,
        topic: str,
        header: dict[str, Any],
    ) -> Outgoing:
        """Send ``proc``'s block ``rec`` to peer ``node``'s subscribers of ``topic``
        (the link reads it: ``move=False``, so one block may go to several nodes); the
        answer goes to ``reply_to``: a ``Reply`` whose ``delivered`` says to how many
        subscribers there, or an ``ErrorReply``. Returns the send, for :meth:`withdraw`."""
        peer = self._peers[node]
        if self._closing:
            raise ConnectionClosed("the coordinator is closing")
        self.host.pin(proc, rec, move=False)  # until _release
        out = Outgoing(reply_to, req, rec, proc, "", header, False, peer, topic=topic)
        peer.submit(out)
        return out

    def remote_name(self, name: str) -> tuple[str, str] | None:
        """``("b", "weights")`` for ``"b/weights"`` when ``b`` is a peer of this node:
        an object to fetch from there; ``None`` for any other name (a local one)."""
        node, sep, rest = name.partition("/")
        if sep and rest and node in self._peers:
            return node, rest
        return None

    def get(self, reply_to: GetReplyTo, node: str, name: str) -> RemoteGet:
        """Ask peer ``node`` for its object ``name``: ``reply_to.got`` with a copy of
        it in a block of this pool, or ``reply_to.failed``. Returns the get, for
        :meth:`forget`."""
        if self._closing:
            raise ConnectionClosed("the coordinator is closing")
        peer = self._peers[node]
        g = RemoteGet(reply_to, name, time.monotonic(), peer)
        peer.get(g)
        return g

    def forget(self, g: RemoteGet) -> None:
        """Drop a get whose asker cancelled or left (an answer still coming is dropped)."""
        g.peer.forget(g)

    def drop_topics(self, peer: _Peer) -> None:
        for topic in peer.topics:
            self._remote.discard(topic, peer.name)
        peer.topics.clear()

    def update_topics(self, peer: _Peer, update: SubsUpdate) -> None:
        """Apply what ``peer`` says its processes subscribe to (at most
        :data:`MAX_PEER_TOPICS` kept per peer)."""
        if update.reset:
            self.drop_topics(peer)
        for topic in update.remove:
            if topic in peer.topics:
                peer.topics.discard(topic)
                self._remote.discard(topic, peer.name)
        for topic in update.add:
            if topic in peer.topics:
                continue
            if len(peer.topics) >= MAX_PEER_TOPICS:
                self.log_limit.warning(
                    log,
                    "link.topics_dropped",
                    node=self.config.node,
                    peer=peer.name,
                    reason=f"the peer subscribes to more than {MAX_PEER_TOPICS} topics",
                )
                continue
            peer.topics.add(topic)
            self._remote.add(topic, peer.name)

    def got(self, peer: _Peer, parts: list[bytes]) -> None:
        """The peer's answer to a get: a copy of the object into a new block of this
        pool, handed to the asker (who leases it), or the error."""
        answer = decode_get_answer(parts[:2], len(parts[2]) if len(parts) == 3 else None)
        if len(parts) > 3:
            raise ProtocolError(f"link get answer: {len(parts)} frames")
        g = peer.gets.pop(answer.seq, None)
        if g is None or g.done:  # forgotten (cancelled), or not ours
            return
        g.done = True
        exc = answer.error()
        host, pool = self.host, self.host.pool
        if exc is None and answer.codec not in CODEC_NAMES:
            exc = ProtocolError(f"node {peer.name!r} sent an object of codec {answer.codec!r}")
        if exc is None and pool.capacity_for(answer.size) > pool.max_request():
            exc = PoolExhausted(f"an object of {answer.size} bytes is larger than any block here")
        rec = None if exc is not None else host.new_block(answer.size)
        if exc is None and rec is None:
            exc = PoolExhausted(
                f"no room in node {self.config.node!r}'s pool for a copy of {answer.size} bytes"
            )
        if exc is not None or rec is None:
            g.reply_to.failed(exc or PoolExhausted("no room"))
            return
        # The reply goes out only once the link has let go of the copy: that moves the
        # copy's generation on (the asker's lease keeps it until it is read), so the
        # asker's process never serves it from its cache, whose check is by generation
        # (written first, the reply could be read before the move: the next get of the
        # name would return this copy, however the peer's object changed meanwhile).
        held = g.reply_to.hold()
        try:
            with pool.view(rec.segment, rec.offset, answer.size) as view:
                view[:] = parts[2]
            g.reply_to.got(rec, answer.codec, answer.meta)
        except BlockIPCError as exc2:  # (the asker's lease refused): its error, not the link's
            g.reply_to.failed(exc2)
        finally:
            host.discard(rec)
            if held:
                g.reply_to.release()

    def _topic_changed(self, topic: str, present: bool) -> None:
        """A topic or pattern got its first local subscriber or lost its last: tell the
        peers who asked (once per turn of the loop, however many changes)."""
        if not self._watchers or self._closing:
            return
        if not self._topic_changes:
            asyncio.get_running_loop().call_soon(self._tell_topics)
        self._topic_changes[topic] = present

    def _tell_topics(self) -> None:
        changes, self._topic_changes = self._topic_changes, {}
        router = self._router
        if router is None or not changes:
            return
        add = [t for t, present in changes.items() if present]
        remove = [t for t, present in changes.items() if not present]
        for ident in self._watchers.values():
            for message in encode_subs(False, add, remove):
                self._send_ack(router, [ident, *message])
        self._serve_soon()

    def _authentic(self, frame: zmq.Frame, node: str) -> bool:
        """Whether a request claiming to come from ``node`` came with its key (always,
        on a plain link)."""
        if self.keys is None:
            return True
        if frame.get("User-Id") == node:
            return True
        log.warning(
            "link.refused",
            node=self.config.node,
            reason=f"a request claiming to come from node {node!r:.80} was sent with the key "
            f"of node {frame.get('User-Id')!r}",
        )
        return False

    def _on_request(self, router: zmq.Socket[bytes], frames: list[zmq.Frame]) -> None:
        """A SUBQ (remember who asked, answer the whole set) or a GETQ (answer a copy
        of the named object)."""
        ident = frames[0].bytes
        parts = [f.bytes for f in frames[1:]]
        if parts[0] == SUBQ:
            node = decode_subq(parts)
            if not self._authentic(frames[1], node):
                return
            if node not in self._watchers and len(self._watchers) >= _MAX_NODES:
                return
            self._watchers[node] = ident  # (a reconnected DEALER has a new routing id)
            for message in encode_subs(True, self.host.local_topics(), []):
                self._send_ack(router, [ident, *message])
            return
        ask = decode_get_ask(parts)
        if not self._authentic(frames[1], ask.node):
            return
        try:
            rec = self.host.named(ask.name)
            if rec.size > ask.max_size:
                raise PoolExhausted(
                    f"object {ask.name!r:.80} of node {self.config.node!r} is {rec.size} "
                    f"bytes, larger than any block node {ask.node!r} can hold ({ask.max_size})"
                )
        except BlockIPCError as exc:
            answer = encode_get_answer(ask.seq, code=exc.code, message=str(exc))
            self._send_ack(router, [ident, *answer])
            return
        head = encode_get_answer(ask.seq, codec=rec.codec, meta=rec.meta, size=rec.size)
        # a bound object's bytes never change (a new put binds a new block); copied
        # now, so libzmq holds no view of the pool
        with self.host.pool.view(rec.segment, rec.offset, rec.size) as view:
            try:
                router.send_multipart([ident, *head, view], _NOBLOCK, copy=True)
            except zmq.ZMQError as err:
                log.debug("link.answer_dropped", error=repr(err))

    def withdraw(self, out: Outgoing) -> bool:
        """Take back a send that is still queued for its peer (nothing of it was
        written): its block goes back to the sender and it is never answered. False if
        it is written already (or over): it runs to its reply."""
        if out.replied or out.pending is None or not out.peer.state.withdraw(out.pending):
            return False
        out.replied = True
        self._drop_view(out)
        self.host.unpin(out.rec, out.sender, failed=True)
        return True

    def finish_all(self, failures: list[Failure]) -> None:
        for p, exc in failures:
            self.finish(p.token, exc)

    def finish(self, out: Outgoing, error: BlockIPCError | None, *, acked: bool = False) -> None:
        """A send is over (acknowledged or failed): release its block, answer it.
        ``acked``: the peer answered (a refusal such as an unknown receiver is the
        sender's business, logged at info; a failed link is a warning)."""
        out.error = error
        out.finished_at = time.monotonic()
        if error is None:
            out.peer.sent += 1
            out.peer.sent_bytes += out.rec.size
        else:
            out.peer.failed += 1
            (log.info if acked else log.warning)(
                "link.send_failed",
                node=self.config.node,
                peer=out.peer.name,
                to=out.to,
                block=out.rec.id,
                size=out.rec.size,
                error=str(error),
            )
        # Answered once the block is released: after a move it is gone from the pool,
        # after a failure or with move=False the sender can use it again at once.
        # An ack means the peer holds every byte, so libzmq has written (and will never
        # read again) the memory: it is released now, without waiting for the tracker,
        # which pyzmq's garbage thread sets a little later. A failed send may still sit
        # in libzmq's queue: its block waits for the tracker.
        if error is None and out.tracker is not None and not out.tracker.done:
            self._lingering.append(out.tracker)
            out.tracker = None
        self._releasing.append(out)
        self._release_done()
        if self._releasing:
            self._release_kick.set()

    def _release_done(self) -> None:
        """Release the blocks of finished sends whose memory libzmq no longer holds."""
        if len(self._lingering) > 64:
            self._lingering = [t for t in self._lingering if not t.done]
        keep: list[Outgoing] = []
        for out in self._releasing:
            if out.tracker is None or out.tracker.done:
                self._release(out)
            else:
                keep.append(out)
        self._releasing = keep

    async def _release_loop(self) -> None:
        while True:
            await self._release_kick.wait()
            self._release_kick.clear()
            while self._releasing:
                await asyncio.sleep(0.0005)
                self._release_done()
                now = time.monotonic()
                for out in self._releasing:
                    if now - out.finished_at > TRACKER_GRACE:
                        out.peer.reset()

    def _release(self, out: Outgoing) -> None:
        """Unpin the block of a finished send: free it (a move that succeeded, or a
        sender that is gone) or give it back to the sender."""
        self._drop_view(out)
        # the routing table decides: back to the sender, kept, or gone
        self.host.unpin(out.rec, out.sender, failed=out.error is not None)
        self._reply(out)

    @staticmethod
    def _drop_view(out: Outgoing) -> None:
        """Let go of the send's view of the pool (libzmq no longer reads it)."""
        if out.view is not None:
            with contextlib.suppress(BufferError):
                out.view.release()
            out.view = None
        out.tracker = None

    def _reply(self, out: Outgoing) -> None:
        if out.replied:
            return
        out.replied = True
        req, reply_to = out.req, out.reply_to
        if self._held is not None and reply_to.hold():
            self._held.append(reply_to)  # its replies go out in one write, at flush_replies
        if out.error is None and out.topic:
            reply_to.reply(Reply(req.req_id, req.op, {"delivered": out.delivered}))
        elif out.error is None:
            reply_to.reply(Reply(req.req_id, req.op))
        else:
            reply_to.reply(ErrorReply(req.req_id, req.op, out.error.code, str(out.error)))

    def hold_replies(self) -> bool:
        """Collect the replies of the sends that finish from now on until
        :meth:`flush_replies`, one write per sender (``False``: already collecting)."""
        if self._held is not None:
            return False
        self._held = []
        return True

    def flush_replies(self) -> None:
        held, self._held = self._held or [], None
        for reply_to in held:
            reply_to.release()

    # -- receiving ---------------------------------------------------------------
    def _serve(self) -> None:
        """Read the router until ``EAGAIN`` (its ``FD`` is edge-triggered), unless too
        many bytes are parked: then its ``FD`` is not watched until some are delivered."""
        self._pump_due = False
        router = self._router
        if router is None:
            return
        loop = asyncio.get_running_loop()
        self._pumping = True
        try:
            while True:
                if self._parked > MAX_PARKED_BYTES:
                    if self._reading:
                        loop.remove_reader(self._router_fd)
                        self._reading = False
                    self._flush_acks(router)
                    return
                frames = None
                if _int_opt(router, _EVENTS) & _POLLIN:  # (no EAGAIN exception to make)
                    with contextlib.suppress(zmq.Again):
                        frames = router.recv_multipart(_NOBLOCK, copy=False)
                if frames is None:
                    if not self._acks:
                        break
                    self._flush_acks(router)  # (sending may take the FD's edge: read again)
                    continue
                try:
                    self._on_message(router, frames)
                except Exception as exc:  # one bad message must not stop the link
                    log.exception("link.internal_error", error=repr(exc))
                if self._acks:  # at once: the sender's window refills while we go on
                    self._flush_acks(router)
        finally:
            self._pumping = False
            to_wake, self._to_wake = self._to_wake, {}
            for proc in to_wake.values():
                self.host.wake(proc)
        if not self._reading:
            loop.add_reader(self._router_fd, self._serve)
            self._reading = True

    def _serve_soon(self) -> None:
        """The router was used outside :meth:`_serve` (which may have consumed its FD's
        edge), or room was made: read it again soon."""
        if not self._pump_due and not self._pumping and self._router is not None:
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._serve)

    def _ack(
        self,
        router: zmq.Socket[bytes],
        ident: bytes,
        seq: int,
        exc: BlockIPCError | None,
        frame: BlockFrame | None = None,
    ) -> None:
        """Answer block ``seq``: a success with the others of its message (one
        ``ACKS``, sent when the message is done), a failure at once. ``frame``: the
        block's entry, counted for :meth:`stats` (a malformed message has none)."""
        if frame is not None:
            self._count_in(frame, exc)
        if exc is None:
            self._acks.setdefault(ident, []).append(seq)
        else:
            self._flush_acks(router)
            self._send_ack(router, [ident, *encode_ack(seq, exc.code, str(exc))])
        self._serve_soon()

    def _count_in(self, frame: BlockFrame, exc: BlockIPCError | None) -> None:
        counts = self._inbound.get(frame.node)
        if counts is None:
            if len(self._inbound) >= _MAX_NODES:  # names come off the wire: bounded
                return
            counts = self._inbound[frame.node] = [0, 0, 0]
        if exc is None:
            counts[0] += 1
            counts[1] += frame.size
        else:
            counts[2] += 1

    def stats(self) -> list[LinkStats]:
        """Each peer and each node that sent blocks here, by name."""
        links = []
        for node in sorted(self._peers.keys() | self._inbound.keys()):
            received, received_bytes, refused = self._inbound.get(node, (0, 0, 0))
            peer = self._peers.get(node)
            inbound = {"received": received, "received_bytes": received_bytes, "refused": refused}
            if peer is None:
                links.append(LinkStats(node, "inbound", **inbound))
                continue
            st = peer.state
            links.append(
                LinkStats(
                    node,
                    "up" if st.is_up else "refused" if st.refused is not None else "down",
                    queued=len(st.queue),
                    in_flight=len(st.in_flight),
                    sent=peer.sent,
                    sent_bytes=peer.sent_bytes,
                    failed=peer.failed,
                    **inbound,
                )
            )
        return links

    def _flush_acks(self, router: zmq.Socket[bytes]) -> None:
        acks, self._acks = self._acks, {}
        for ident, seqs in acks.items():
            for i in range(0, len(seqs), 1024):
                self._send_ack(router, [ident, *encode_acks(seqs[i : i + 1024])])

    @staticmethod
    def _send_ack(router: zmq.Socket[bytes], parts: list[bytes]) -> None:
        try:  # a ROUTER never blocks: it drops what it cannot route
            router.send_multipart(parts, _NOBLOCK)
        except zmq.ZMQError as err:
            log.debug("link.ack_dropped", error=repr(err))

    def _on_message(self, router: zmq.Socket[bytes], frames: list[zmq.Frame]) -> None:
        cfg = self.config
        if len(frames) == 3 and frames[1].bytes in (SUBQ, GETQ):
            try:
                self._on_request(router, frames)
            except ProtocolError as exc:
                log.warning("link.protocol_error", node=cfg.node, error=str(exc))
            self._serve_soon()  # (its answer was sent on the router)
            return
        if len(frames) < 4:
            log.warning("link.protocol_error", node=cfg.node, error=f"{len(frames)} frames")
            return
        ident = frames[0].bytes
        head = [frames[1].bytes, frames[2].bytes]
        data = frames[3:]
        try:
            blocks = decode_blocks(head, [len(f) for f in data])
        except ProtocolError as exc:
            log.warning("link.protocol_error", node=cfg.node, error=str(exc))
            for seq in peek_seqs(head[1]):
                self._ack(router, ident, seq, exc)
            return
        if self.keys is not None:
            authenticated = frames[1].get("User-Id")
            if authenticated != blocks[0].node:
                exc2 = AccessDenied(
                    f"a block claiming to come from node {blocks[0].node!r} was sent with the "
                    f"key of node {authenticated!r}"
                )
                log.warning("link.refused", node=cfg.node, reason=str(exc2))
                for frame in blocks:
                    self._ack(router, ident, frame.seq, exc2)
                return
        receiver = self.host.receiver
        for frame, buf in zip(blocks, data, strict=True):
            if frame.topic:
                self._publish_in(
                    router, _Incoming(ident, frame, buf, f"{frame.node}/{frame.sender}")
                )
                continue
            if receiver(frame.to) is None:
                self._ack(
                    router,
                    ident,
                    frame.seq,
                    PeerUnreachable(f"no process named {frame.to!r} on node {cfg.node!r}"),
                    frame,
                )
                continue
            queue = self._targets.get(frame.to)
            item = _Incoming(ident, frame, buf, f"{frame.node}/{frame.sender}")
            if queue is None and frame.size < THREAD_COPY:  # the common case: no task needed
                done = self._deliver_now(frame.to, item)
                if not isinstance(done, _Later):
                    self._ack(router, ident, frame.seq, done, frame)
                    continue
            self._parked += frame.size
            if queue is None:
                queue = self._targets[frame.to] = deque([item])
                self._spawn(self._deliver_all(router, frame.to, queue))
            else:
                queue.append(item)

    async def _deliver_all(
        self, router: zmq.Socket[bytes], name: str, queue: deque[_Incoming]
    ) -> None:
        """Deliver the blocks for one process in arrival order (per-sender order)."""
        try:
            while queue:
                item = queue[0]
                error = await self._deliver(name, item)
                queue.popleft()
                self._parked -= item.frame.size
                if self._router is router:
                    self._ack(router, item.ident, item.frame.seq, error, item.frame)
        finally:
            if self._targets.get(name) is queue:
                del self._targets[name]

    def _publish_in(self, router: zmq.Socket[bytes], item: _Incoming) -> None:
        """A block published on the peer: fan it out to this node's subscribers, at once
        when the pool has room (and nothing published waits before it), else in order."""
        pool, frame = self.host.pool, item.frame
        if pool.capacity_for(frame.size) > pool.max_request():
            exc = PoolExhausted(
                f"a block of {frame.size} bytes is larger than any block node "
                f"{self.config.node!r} can hold ({pool.max_request()})"
            )
            self._ack(router, item.ident, frame.seq, exc, frame)
            return
        if self._fanouts is None and frame.size < THREAD_COPY:
            rec = self.host.new_block(frame.size)
            if rec is not None:
                with pool.view(rec.segment, rec.offset, frame.size) as view:
                    view[:] = item.data.buffer
                self._fan_out(router, item, rec)
                return
        self._parked += frame.size
        if self._fanouts is None:
            self._fanouts = deque([item])
            self._spawn(self._fan_out_all(router, self._fanouts))
        else:
            self._fanouts.append(item)

    async def _fan_out_all(self, router: zmq.Socket[bytes], queue: deque[_Incoming]) -> None:
        """Fan out the published blocks that waited for room, in arrival order."""
        pool = self.host.pool
        try:
            while queue:
                item = queue[0]
                frame = item.frame
                delay = 0.0005
                while (rec := self.host.new_block(frame.size)) is None:
                    await asyncio.sleep(delay)  # the sender's window stops it meanwhile
                    delay = min(delay * 2, 0.02)
                try:
                    view = pool.view(rec.segment, rec.offset, frame.size)
                    try:
                        if frame.size < THREAD_COPY:
                            view[:] = item.data.buffer
                        else:
                            loop = asyncio.get_running_loop()
                            fut = loop.run_in_executor(None, _memmove, view, item.data.buffer)
                            self._copies.add(fut)
                            fut.add_done_callback(self._copy_done)
                            await asyncio.shield(fut)
                    finally:
                        with contextlib.suppress(BufferError):
                            view.release()
                except BaseException:
                    self.host.discard(rec)
                    raise
                queue.popleft()
                self._parked -= frame.size
                if self._router is router:
                    self._fan_out(router, item, rec)
                else:
                    self.host.discard(rec)
        finally:
            if self._fanouts is queue:
                self._fanouts = None

    def _fan_out(self, router: zmq.Socket[bytes], item: _Incoming, rec: BlockRecord) -> None:
        """Give ``rec`` (a published block's copy) to this node's subscribers; the ack
        goes back once every one of them took it, with how many did."""
        frame, ident = item.frame, item.ident

        def done(delivered: int) -> None:
            if self._router is not router:
                return
            self._count_in(frame, None)
            self._send_ack(router, [ident, *encode_ackp(frame.seq, delivered)])
            self._serve_soon()

        sender = self._sender_record(item.sender)
        self.host.fan_out(rec, sender, frame.topic, frame.header, done)

    def _deliver_now(self, name: str, item: _Incoming) -> BlockIPCError | _Later | None:
        """Deliver a small block at once if the receiver's inbox and the pool have room
        (``_LATER`` if not: it waits in the receiver's queue then)."""
        host, pool, frame = self.host, self.host.pool, item.frame
        proc = host.receiver(name)
        if proc is None:
            return PeerUnreachable(f"process {name!r} left node {self.config.node!r}")
        if pool.capacity_for(frame.size) > pool.max_request() or not host.has_room(
            proc, frame.size
        ):
            return _LATER  # (too large: _deliver says so)
        rec = host.new_block(frame.size)  # (the block's generation slot, eviction)
        if rec is None:
            return _LATER
        with pool.view(rec.segment, rec.offset, frame.size) as view:
            view[:] = item.data.buffer
        host.deliver(rec, self._sender_record(item.sender), proc, frame.header)
        self._to_wake[proc.key] = proc  # (woken when this read of the router ends)
        return None

    def _sender_record(self, name: str) -> ProcessRecord:
        """A record that names a remote sender in inbox entries (only its name is read)."""
        rec = self._senders.get(name)
        if rec is None:
            if len(self._senders) >= 1024:
                self._senders.clear()
            rec = self._senders[name] = ProcessRecord(0, name, 0, 0)
        return rec

    def _copy_done(self, fut: asyncio.Future[None]) -> None:
        self._copies.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("link.copy_failed", error=repr(fut.exception()))

    async def _deliver(self, name: str, item: _Incoming) -> BlockIPCError | None:
        """Put one received block into ``name``'s inbox, waiting for room there and
        in the pool; on any failure nothing is delivered and nothing stays allocated."""
        host, pool, frame = self.host, self.host.pool, item.frame
        if pool.capacity_for(frame.size) > pool.max_request():
            return PoolExhausted(
                f"a block of {frame.size} bytes is larger than any block node "
                f"{self.config.node!r} can hold ({pool.max_request()})"
            )
        gone = PeerUnreachable(f"process {name!r} left node {self.config.node!r}")
        delay = 0.0005
        while True:  # backpressure: while we wait, the sender's window stops it
            proc = host.receiver(name)
            if proc is None:
                return gone
            if host.has_room(proc, frame.size):
                rec = host.new_block(frame.size)  # (evicts cacheable objects first)
                if rec is not None:
                    break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        try:
            view = pool.view(rec.segment, rec.offset, frame.size)
            try:
                src = item.data.buffer
                if frame.size < THREAD_COPY:
                    view[:] = src
                else:
                    loop = asyncio.get_running_loop()
                    fut = loop.run_in_executor(None, _memmove, view, src)
                    self._copies.add(fut)
                    fut.add_done_callback(self._copy_done)
                    await asyncio.shield(fut)
            finally:
                with contextlib.suppress(BufferError):  # cancelled: the thread still copies
                    view.release()
            delay = 0.0005
            while True:  # the copy took a while: the inbox may have filled meanwhile
                proc = host.receiver(name)
                if proc is None:
                    raise gone
                if host.has_room(proc, frame.size):
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
        except BaseException as exc:
            host.discard(rec)  # never delivered: only the link holds it
            if isinstance(exc, BlockIPCError):
                return exc
            raise
        host.deliver(rec, self._sender_record(item.sender), proc, frame.header)
        host.wake(proc)
        return None


class _Later:
    """What :meth:`Link._deliver_now` returns when the block must wait for room."""


_LATER: Final = _Later()
