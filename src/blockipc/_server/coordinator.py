"""The coordinator: owns the pool and the admin space, answers every request.

Theory of operation
-------------------
One anyio task per connection. It runs the handshake on the raw socket (checking the
peer's uid with ``SO_PEERCRED``, registering the process, passing segment fds), then
hands the socket to an asyncio/uvloop ``BufferedProtocol`` (:class:`_Session`) and
waits for the connection to end; its ``finally`` reclaims everything the process held,
shielded from cancellation.

Requests are handled in the protocol's ``buffer_updated`` callback as they are parsed,
so a pipelined burst is answered in one write. Most requests complete at once: the
routing table decides, the pool is touched, the reply is queued. A request that must
wait (a contended lease, a ``recv`` on an empty inbox) parks in its session's registry
as a :class:`_Parked` entry, which the admin space holds as its token, and is answered
when a release or a send makes it possible; ``CANCEL`` and disconnect end it through
that registry. Nothing on this path awaits, so one slow client never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import socket
import stat
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Self, cast

import anyio
from anyio.abc import (
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    UNIXSocketStream,
)

from .._core.codecs import CODEC_NAMES
from .._core.limits import MAX_HEADER, MAX_STR, check_batch, check_mode, check_name, pack_header
from .._core.linkwire import IO_NICE, make_config
from .._core.protocol import (
    CANCELLED,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    Event,
    NeedData,
    Op,
    Reply,
    Request,
    Role,
    fit_lists,
)
from .._core.ring import CTL_SIZE, init_ring, mark_closed
from .._core.ring import supported as ring_supported
from .._core.routing import (
    BlockRecord,
    ChannelRecord,
    Delivery,
    Grant,
    Lease,
    ProcessRecord,
    RoutingTable,
    Waiter,
)
from .._exceptions import (
    AccessDenied,
    BlockIPCError,
    BlockNotFound,
    ConnectionClosed,
    ErrorCode,
    InboxFull,
    InvalidRequest,
    OutOfBounds,
    PeerUnreachable,
    PoolExhausted,
    ProtocolError,
    use_async_with,
)
from .._handshake import MAX_FDS, peer_credentials, receive_event, send_frame, take_socket
from .._log import get_logger
from .._shm.generations import GenerationTable
from .._shm.pool import Allocation, Pool
from .._types import ProcessStats, Stats

if TYPE_CHECKING:
    from .._link.link import Link

__all__ = ["Coordinator"]

log = get_logger("blockipc.coordinator")

MAX_INLINE = 1 << 20
"""Largest routed read or write the coordinator performs inline."""

HANDSHAKE_TIMEOUT = 5.0


COPY_CHUNK = 1 << 20
"""A copy larger than this runs in a task, a chunk at a time, yielding between chunks."""

MIN_CHANNEL = CTL_SIZE + 4096
"""Smallest ring a channel may ask for: its control page and one page of data."""

_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


# -- parked requests -------------------------------------------------------------
# A request that cannot be answered at once parks in its session's registry
# (``_Session.parked``, by request id) as one of the entries below, until it is answered,
# cancelled or abandoned. ``CANCEL`` and disconnect reach every kind of wait only
# through that registry and the entry's own ``cancel``/``abandon``, so neither can miss
# one. An entry may also be indexed where its wake-up finds it (a session's waiting
# receives, a name's waiting senders, a block's lease queue, a process's pending
# deliveries), and leaves those indexes when it leaves the registry.
@dataclass(eq=False, slots=True)
class _Parked:
    """A request parked in ``session.parked`` (see above)."""

    session: _Session
    request: Request

    def park(self) -> None:
        self.session.parked[self.request.req_id] = self

    def unpark(self) -> None:
        self.session.parked.pop(self.request.req_id, None)

    def cancelled(self) -> ErrorReply:
        return ErrorReply(self.request.req_id, self.request.op, CANCELLED, "cancelled")

    def cancel(self, coord: Coordinator) -> None:
        """``CANCEL``: withdraw the request and answer it as cancelled (it has left the
        registry before it returns)."""
        raise NotImplementedError

    def abandon(self, coord: Coordinator) -> None:
        """The session ended: drop what only this entry knows of (a timer, an index),
        answering nothing. What the process queued in the routing table (lease waits,
        deliveries) goes with its ``unregister``."""


@dataclass(eq=False, slots=True)
class _LeaseWait(_Parked):
    """A LEASE, GET or routed READ/WRITE queued for a lease on ``block``; also the
    routing table's token for that queued lease."""

    block: BlockRecord

    def granted(self, coord: Coordinator, lease: Lease) -> list[Grant]:
        self.unpark()
        return coord._complete(self, lease)

    def dropped(self, coord: Coordinator) -> None:
        self.unpark()
        exc = BlockNotFound(f"block {self.block.id} was freed")
        self.session.reply(_error_reply(self.request, exc))

    def cancel(self, coord: Coordinator) -> None:
        self.unpark()
        grants = coord._table.withdraw_wait(self.block, self)
        self.session.reply(self.cancelled())
        coord._run_grants(grants)


@dataclass(eq=False, slots=True)
class _CopyJob(_Parked):
    """A COPY that runs in a task (large, or contended): parked from the request until
    its reply, whether it waits for a lease (``waiting``, ``future``) or copies. Also
    the routing table's token for its lease waits."""

    src: BlockRecord
    dst: BlockRecord
    size: int
    waiting: BlockRecord | None = None
    future: asyncio.Future[Lease | None] | None = None
    stopped: bool = False  # cancelled or abandoned: the task stops where it is

    def granted(self, coord: Coordinator, lease: Lease) -> list[Grant]:
        if self.future is None or self.future.done():  # it gave up: the lease goes back
            return coord._end_lease(lease)
        self.future.set_result(lease)
        return []

    def dropped(self, coord: Coordinator) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(BlockNotFound("the block was freed during the copy"))

    def cancel(self, coord: Coordinator) -> None:
        self.unpark()
        self.stopped = True  # the task answers CANCELLED (and ends the leases it holds)
        grants: list[Grant] = []
        if self.waiting is not None:
            grants = coord._table.withdraw_wait(self.waiting, self)
        self._wake()
        coord._run_grants(grants)

    def abandon(self, coord: Coordinator) -> None:
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)


@dataclass(eq=False, slots=True)
class _QueuedSend(_Parked):
    """A SEND whose delivery waits for room in ``to``'s inbox; also the delivery's token."""

    to: ProcessRecord

    def done(self, coord: Coordinator, error: BlockIPCError | None) -> None:
        """The delivery reached the inbox (``error`` None) or never will."""
        self.unpark()
        if error is None:
            self.session.reply(Reply(self.request.req_id, Op.SEND))
        else:
            self.session.reply(_error_reply(self.request, error))

    def cancel(self, coord: Coordinator) -> None:
        self.unpark()
        if coord._table.withdraw(self.to, self) is not None:
            self.session.reply(self.cancelled())


@dataclass(eq=False, slots=True)
class _Fanout(_Parked):
    """A publish in progress: answered when every subscriber's inbox took the block;
    parked while parts of it wait for room."""

    block: BlockRecord
    remaining: int
    delivered: int = 0
    waiting: list[tuple[ProcessRecord, _FanoutPart]] = field(default_factory=list)
    withdrawn: bool = False

    def cancel(self, coord: Coordinator) -> None:
        self.unpark()
        self.withdrawn = True  # answered CANCELLED once its last part is done
        for to, part in self.waiting:
            if coord._table.withdraw(to, part) is not None:
                coord._fanout_part_done(self, delivered=False)


@dataclass(eq=False, slots=True)
class _FanoutPart:
    """One subscriber's delivery of a publish (the delivery's token)."""

    fanout: _Fanout

    def done(self, coord: Coordinator, error: BlockIPCError | None) -> None:
        coord._fanout_part_done(self.fanout, delivered=error is None)


@dataclass(eq=False, slots=True)
class _Queued(_Parked):
    """A RECV, RECV_MANY or CHANNEL_ACCEPT waiting, in order, in ``queue`` (the
    session's ``recv_waits`` or ``accept_waits``) for a message or a channel."""

    queue: deque[_Queued]

    def cancel(self, coord: Coordinator) -> None:
        self.unpark()
        self.queue.remove(self)
        self.session.reply(self.cancelled())


@dataclass(eq=False, slots=True)
class _PeerWait(_Parked):
    """A SEND or CHANNEL_OPEN waiting for its receiver to register (``wait_for_peer``);
    indexed by that name in ``Coordinator._peer_waits`` for the wake-up."""

    name: str
    timer: asyncio.TimerHandle | None = None

    def cancel(self, coord: Coordinator) -> None:
        self.abandon(coord)
        self.session.reply(self.cancelled())

    def abandon(self, coord: Coordinator) -> None:
        self.unpark()
        coord._unindex_peer_wait(self)

    def expire(self, coord: Coordinator) -> None:
        self.abandon(coord)
        ms = self.request.args["wait_ms"]
        exc = PeerUnreachable(f"no process named {self.name!r} registered within {ms} ms")
        self.session.reply(_error_reply(self.request, exc))


_LeaseToken = _LeaseWait | _CopyJob  # what the routing table queues for a lease here
_DeliveryToken = _QueuedSend | _FanoutPart  # ... and for a delivery waiting for room


class Coordinator:
    """Owns a shared-memory pool and routes every client request to it.

    Embedded in your own process (the default for demos and tests)::

        async with blockipc.Coordinator(pool_size="64MiB") as coord:
            async with blockipc.connect(coord.address, name="producer") as client:
                block = await client.alloc(1024)

    or standalone with ``blockipc serve --socket PATH --pool-size SIZE``.

    With a ``node`` name it is also a node of a link for remote sends (see ``_link/link.py``):
    ``listen="tcp://HOST:PORT"`` accepts peers (port 0 picks one: ``coord.link_address``),
    ``peers={"b": "tcp://HOST:PORT"}`` are the nodes it sends to (``to="b/name"``),
    ``keys=DIR`` turns on CURVE (``blockipc keygen``), ``link_timeout`` bounds how long a
    send waits for an unreachable node, and without keys only loopback addresses are
    accepted unless ``insecure=True``. A node that listens lowers its libzmq I/O
    thread's scheduling priority by ``link_io_nice`` (default 10; 0 leaves it): on a
    busy CPU the loop that copies received blocks into the pool then runs before the
    I/O thread reads further ahead::

        async with blockipc.Coordinator(node="a", peers={"b": "tcp://10.0.0.2:7100"},
                                        keys="keys/") as coord:
            ...

    ``path=None`` creates the socket in a fresh private directory (mode 0700) that is
    removed on close. An explicit ``path`` left behind by a crashed coordinator is
    detected (nobody answers on it) and replaced; one a live coordinator serves raises.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        pool_size: int | str = "256MiB",
        max_pool_size: int | str | None = None,
        min_block: int = 4096,
        *,
        node: str | None = None,
        listen: str | None = None,
        peers: Mapping[str, str] | None = None,
        keys: str | os.PathLike[str] | None = None,
        link_timeout: float = 5.0,
        insecure: bool = False,
        link_io_nice: int = IO_NICE,
    ) -> None:
        # the link's configuration is checked now: a bad one never binds anything
        self._link_config = make_config(
            node, listen, peers, keys, link_timeout, insecure, link_io_nice
        )
        self._link: Link | None = None
        self._path_arg = None if path is None else Path(path)
        self._pool_args = (pool_size, max_pool_size, min_block)
        self._pool: Pool | None = None
        self._table = RoutingTable(on_bump=self._publish_generation)
        self._gens: GenerationTable | None = None
        self._bases: dict[int, int] = {}  # segment id -> its first byte in the pool's span
        self._cache_counts = [0, 0, 0]  # gets by name found, not found; evictions
        self._tokens: dict[bytes, ProcessRecord] = {}
        self._sessions: dict[int, _Session] = {}  # process record key -> session
        self._runner: asyncio.Task[None] | None = None
        self._tg: TaskGroup | None = None  # the running task group: copies run in it
        self._peer_waits: dict[str, dict[_PeerWait, None]] = {}  # by awaited name, in order
        self._bells: dict[int, tuple[int, int]] = {}  # channel -> (data, space) eventfds
        self._stop = anyio.Event()
        self._private_dir: Path | None = None
        self._path: Path | None = None
        self._closed = anyio.Event()
        self._closing = False
        self._pid = os.getpid()

    # -- lifecycle ---------------------------------------------------------------
    @property
    def address(self) -> str:
        """The socket path clients pass to :func:`blockipc.connect`."""
        if self._path is None:
            raise BlockIPCError("the coordinator has not been started")
        return str(self._path)

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise BlockIPCError("the coordinator has not been started")
        return self._pool

    @property
    def node(self) -> str | None:
        """This coordinator's node name for remote sends, or ``None`` (no link)."""
        return None if self._link_config is None else self._link_config.node

    @property
    def link_address(self) -> str | None:
        """The bound ``tcp://HOST:PORT`` of the link listener (the real port when
        ``listen`` asked for port 0), or ``None`` when this node does not listen."""
        return None if self._link is None else self._link.address

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> NoReturn:
        raise use_async_with("async with blockipc.Coordinator(...) as coord: ...", "Coordinator")

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ raises
        pass

    async def start(self) -> None:
        """Create the pool, bind the socket and start accepting connections."""
        if self._pool is not None:
            raise BlockIPCError("the coordinator is already started")
        pool_size, max_pool_size, min_block = self._pool_args
        self._pool = Pool(pool_size, max_pool_size, min_block)
        try:
            self._gens = GenerationTable(self._pool.max_pool_size // self._pool.min_block + 1)
            self._path = self._prepare_path()
            if self._link_config is not None:
                from .._link.link import Link  # pyzmq is imported only by nodes that link

                link = Link(_LinkPort(self, self._link_config.node), self._link_config)
                await link.start()
                self._link = link
            listener = await anyio.create_unix_listener(self._path, mode=0o600)
            # The connection tasks run in a task of their own, so that aclose() works
            # from any task (a signal handler, a pytest fixture's teardown): an anyio
            # task group can only be exited by the task that entered it.
            self._runner = asyncio.create_task(self._run(listener))
        except BaseException:
            if self._link is not None:
                with anyio.CancelScope(shield=True):
                    await self._link.aclose()
            self._pool.close()
            if self._gens is not None:
                self._gens.close()
            self._remove_path()
            # as before start(): nothing to close (no ResourceWarning), start() may retry
            self._pool = self._gens = self._link = None
            raise
        log.info(
            "coordinator.started",
            address=str(self._path),
            pool_size=self._pool.size,
            max_pool_size=self._pool.max_pool_size,
        )

    async def _run(self, listener: SocketListener) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(listener.serve, self._handle_stream)
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            # Listener.serve never closes the listener: without this the listening
            # socket stays open (a leaked fd, a ResourceWarning) after the close.
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # started, never closed, and in the process that started it (a forked child's
        # copy is not its to close); __init__ may have raised before any attribute
        if getattr(self, "_pool", None) is None or self._closing or os.getpid() != self._pid:
            return
        _warn(
            f"unclosed blockipc coordinator at {self._path}: close it (await "
            "coord.aclose(), or async with blockipc.Coordinator(...))",
            ResourceWarning,
            source=self,
        )

    async def serve_forever(self) -> None:
        """Wait until :meth:`aclose` is called (from a signal handler, say)."""
        await self._closed.wait()

    async def aclose(self) -> None:
        """Close every connection (pending client awaits raise ``ConnectionClosed``),
        free the pool and remove the socket. Idempotent."""
        if os.getpid() != self._pid:
            # A forked child unwinding the parent's stack (async with exits after
            # os.fork()): the socket, the sessions and the loop's epoll set are the
            # parent's, which goes on serving. Nothing is touched.
            return
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            for session in list(self._sessions.values()):
                session.abort()
            if self._link is not None:
                with anyio.CancelScope(shield=True):
                    await self._link.aclose()
            if self._runner is not None:
                self._stop.set()
                with anyio.CancelScope(shield=True):
                    await self._runner
        finally:
            for bells in self._bells.values():
                for fd in bells:
                    os.close(fd)
            self._bells.clear()
            if self._pool is not None:
                self._pool.close()
            if self._gens is not None:
                self._gens.close()
            self._remove_path()
            self._closed.set()
            log.info("coordinator.stopped", address=str(self._path))

    def _prepare_path(self) -> Path:
        if self._path_arg is None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="blockipc-"))
            return self._private_dir / "coordinator.sock"
        path = self._path_arg
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return path
        if not stat.S_ISSOCK(mode):
            raise BlockIPCError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.warning("coordinator.stale_socket_removed", path=str(path))
            path.unlink(missing_ok=True)
            return path
        finally:
            probe.close()
        raise BlockIPCError(f"a coordinator is already serving at {path}")

    def _remove_path(self) -> None:
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        if self._private_dir is not None:
            with contextlib.suppress(OSError):
                self._private_dir.rmdir()

    def stats(self) -> Stats:
        """The pool and admin space now, without a round trip (embedded use): every
        process and name, where :meth:`Client.stats` lists the first 4096 of each."""
        pool = self.pool
        return Stats(
            pool_size=pool.size,
            max_pool_size=pool.max_pool_size,
            free_bytes=pool.free_bytes,
            used_bytes=pool.used_bytes,
            blocks=len(self._table.blocks),
            segments=len(pool.segments),
            processes=tuple(sorted(self._table.processes)),
            leases=self._table.lease_count,
            cache_hits=self._cache_counts[0],
            cache_misses=self._cache_counts[1],
            cache_evictions=self._cache_counts[2],
            names=tuple(sorted(self._table.names)),
            channels=len(self._table.channels),
            links=() if self._link is None else tuple(self._link.stats()),
            usage=tuple(self._usage(p) for _, p in sorted(self._table.processes.items())),
            names_total=len(self._table.names),
            processes_total=len(self._table.processes),
        )

    def _usage(self, proc: ProcessRecord) -> ProcessStats:
        blocks = self._table.blocks
        owned = 0
        for bid in proc.blocks:
            rec = blocks.get(bid)
            if rec is not None and rec.owner is proc:
                owned += rec.capacity
        return ProcessStats(
            proc.name,
            proc.pid,
            blocks=len(proc.blocks),
            owned_bytes=owned,
            leases=len(proc.leases),
            inbox=len(proc.inbox),
            inbox_bytes=proc.inbox_used,
            channels=len(proc.channels),
        )

    # -- connections -------------------------------------------------------------
    async def _handle_stream(self, stream: SocketStream) -> None:
        try:
            assert isinstance(stream, UNIXSocketStream)
            await self._serve_stream(stream)
        except Exception as exc:  # one bad connection must not stop the listener
            log.exception("coordinator.connection_failed", error=repr(exc))
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_stream(self, stream: UNIXSocketStream) -> None:
        raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
        pid, uid, _gid = peer_credentials(raw)
        if uid != os.getuid():
            log.warning("client.refused", reason="uid mismatch", pid=pid, uid=uid)
            return
        conn = Connection(Role.SERVER)
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT):
                event, _ = await receive_event(stream, conn)
        except ConnectionClosed:
            log.debug("client.closed_before_handshake", pid=pid)  # e.g. a stale-socket probe
            return
        except (TimeoutError, ProtocolError) as exc:
            log.warning("protocol.error", phase="handshake", pid=pid, error=str(exc) or "timeout")
            return
        assert isinstance(event, Request)
        if event.op is Op.ATTACH:
            await self._attach(stream, conn, event)
            return
        args = event.args
        try:
            if args["version"] != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"protocol version {args['version']} is not supported "
                    f"(this coordinator speaks {PROTOCOL_VERSION})"
                )
            proc = self._table.register(
                args["name"],
                pid=pid,
                uid=uid,
                inbox_messages=args["inbox_messages"],
                inbox_bytes=args["inbox_bytes"],
            )
        except BlockIPCError as exc:
            log.warning("client.refused", reason=str(exc), pid=pid, name=args["name"])
            await send_frame(stream, conn.send(_error_reply(event, exc)))
            return
        token = secrets.token_bytes(16)
        self._tokens[token] = proc
        session: _Session | None = None
        try:
            segments = sorted(self.pool.segments.values(), key=lambda s: s.id)[:MAX_FDS]
            welcome = Reply(
                event.req_id,
                Op.HELLO,
                {
                    "version": PROTOCOL_VERSION,
                    "token": token,
                    "min_block": self.pool.min_block,
                    "max_inline": MAX_INLINE,
                    "segments": [[s.id, s.size] for s in segments],
                    "gen_size": self.gens.size,
                },
            )
            fds = [*(s.fd for s in segments), self.gens.fd]
            await send_frame(stream, conn.send(welcome), fds)
            sock = await take_socket(stream)
            loop = asyncio.get_running_loop()
            session = _Session(self, conn, proc)
            # listed before the transport starts: a request it handles at once (a recv,
            # an accept) may need to be found by a send from another session
            self._sessions[proc.key] = session
            try:
                await loop.connect_accepted_socket(lambda: session, sock)
            except BaseException:
                sock.close()
                raise
            log.info("client.connect", name=proc.name, pid=pid)
            self._retry_peer_waits(proc.name)
            await session.closed.wait()
        finally:
            self._reclaim(proc, token, session)  # synchronous: cancellation cannot cut it short

    async def _attach(self, stream: UNIXSocketStream, conn: Connection, req: Request) -> None:
        proc = self._tokens.get(req.args["token"])
        try:
            if proc is None:
                raise ProtocolError("ATTACH with an unknown session token")
            wanted = req.args["segments"][:MAX_FDS]
            segments = [self.pool.segments[i] for i in wanted if i in self.pool.segments]
            bells: list[int] = []
            if req.args["channel"]:
                bells = list(self._bells[self._table.channel_end(proc, req.args["channel"]).id])
            reply: Event = Reply(
                req.req_id,
                Op.ATTACH,
                {"segments": [[s.id, s.size] for s in segments], "bells": len(bells)},
            )
            await send_frame(stream, conn.send(reply), [*(s.fd for s in segments), *bells])
        except ConnectionClosed:
            log.debug("client.closed_during_attach", name=proc.name if proc else None)
        except AccessDenied as exc:
            await send_frame(stream, conn.send(_error_reply(req, exc)))
        except ProtocolError as exc:
            log.warning("protocol.error", phase="attach", error=str(exc))
            await send_frame(stream, conn.send(_error_reply(req, exc)))

    def _reclaim(self, proc: ProcessRecord, token: bytes, session: _Session | None) -> None:
        self._tokens.pop(token, None)
        if session is not None:
            self._sessions.pop(proc.key, None)
            session.abort()
            for entry in list(session.parked.values()):
                entry.abandon(self)
            session.parked.clear()
        for chan in list(proc.channels.values()):
            self._end_channel(chan, proc)
        done = self._table.unregister(proc)
        freed = 0
        for rec in done.blocks:
            freed += self.pool.free(rec.segment, rec.offset)
        self._answer_dropped(done.dropped)
        self._run_grants(done.grants)
        for d in done.failed:
            exc = PeerUnreachable(f"{proc.name!r} disconnected before the block was delivered")
            self._delivery_done(d, exc)
        self._deliveries_done(done.admitted)
        if done.leases:
            log.warning("lease.reclaimed", name=proc.name, pid=proc.pid, leases=done.leases)
        log.info(
            "client.disconnect",
            name=proc.name,
            pid=proc.pid,
            blocks_freed=len(done.blocks),
            bytes_freed=freed,
            leases_reclaimed=done.leases,
        )

    # -- requests ----------------------------------------------------------------
    def handle(self, session: _Session, req: Request) -> None:
        """Answer ``req`` now, or park it; errors become error replies."""
        try:
            handler = self._handlers[req.op]
            handler(self, session, req)
        except BlockIPCError as exc:
            session.reply(_error_reply(req, exc))
        except Exception as exc:  # a bug must cost one request, not the coordinator
            log.exception("coordinator.internal_error", op=req.op.name, error=repr(exc))
            session.reply(
                ErrorReply(req.req_id, req.op, ErrorCode.INTERNAL, f"internal error: {exc!r}")
            )

    def _alloc(self, session: _Session, req: Request) -> None:
        rec = self._new_block(session.proc, req.args["size"])
        session.reply(Reply(req.req_id, Op.ALLOC, _block_fields(rec)))

    def _new_block(self, proc: ProcessRecord, size: int, *, quiet: bool = False) -> BlockRecord:
        """Allocate a block for ``proc``; under memory pressure, evict cacheable named
        objects that nobody uses, least recently used first, before giving up (``quiet``:
        a caller that retries logs nothing on failure)."""
        a, slot = self._allocate(proc, size, quiet=quiet)
        return self._table.add_block(
            proc,
            segment=a.segment,
            offset=a.offset,
            capacity=a.capacity,
            size=size,
            slot=slot,
            generation=self.gens.get(slot),
        )

    def _allocate(
        self, proc: ProcessRecord, size: int, *, quiet: bool = False
    ) -> tuple[Allocation, int]:
        """Memory for a block of ``size`` bytes and its generation slot."""
        if size <= 0:
            raise InvalidRequest(f"block size must be positive, not {size}")
        while True:
            try:
                a = self.pool.alloc(size)
                break
            except PoolExhausted as exc:
                if size > self.pool.max_request() or not self._evict_one():
                    if not quiet:
                        log.warning("block.alloc_failed", name=proc.name, size=size, error=str(exc))
                    raise
        return a, (self._base(a.segment) + a.offset) // self.pool.min_block

    def _evict_one(self) -> bool:
        evicted = self._table.evict_one()
        if evicted is None:
            return False
        name, rec = evicted
        self.pool.free(rec.segment, rec.offset)
        self._cache_counts[2] += 1
        log.info("cache.evicted", name=name, block=rec.id, size=rec.size)
        return True

    def _base(self, segment: int) -> int:
        base = self._bases.get(segment)
        if base is None:  # segments only ever get added, with growing ids
            base = sum(s.size for i, s in self.pool.segments.items() if i < segment)
            self._bases[segment] = base
        return base

    @property
    def gens(self) -> GenerationTable:
        if self._gens is None:
            raise BlockIPCError("the coordinator has not been started")
        return self._gens

    def _publish_generation(self, rec: BlockRecord) -> None:
        if self._gens is not None:
            self._gens.set(rec.slot, rec.generation)

    def _free(self, session: _Session, req: Request) -> None:
        rec = self._table.lookup(session.proc, req.args["block"], "r")
        gone, dropped = self._table.release_hold(session.proc, rec)
        if gone:
            self.pool.free(rec.segment, rec.offset)
        session.reply(Reply(req.req_id, Op.FREE))
        self._answer_dropped(dropped)

    def _routed(self, session: _Session, req: Request) -> None:
        """READ and WRITE: bounds-checked, then done under a transient lease."""
        offset = req.args["offset"]
        if req.op is Op.READ:
            rec = self._readable(session.proc, req.args["block"])
            size, mode = req.args["size"], "r"
            if size > MAX_INLINE:
                raise InvalidRequest(
                    f"a routed read of {size} bytes exceeds the inline limit {MAX_INLINE}; "
                    "use a lease"
                )
        else:
            rec = self._table.lookup(session.proc, req.args["block"], "w")
            size, mode = len(req.data), "w"
        self._table.check_bounds(rec, offset, size)
        if rec.leases or rec.waiters:
            self._lease_or_wait(session, req, rec, mode, transient=True)
        else:  # uncontended, the common case: no lease bookkeeping needed
            session.reply(self._perform(req, rec))

    def _lease(self, session: _Session, req: Request) -> None:
        mode = check_mode("lease", req.args["mode"])
        if mode == "r":
            rec = self._readable(session.proc, req.args["block"])
        else:
            rec = self._table.lookup(session.proc, req.args["block"], mode)
        self._lease_or_wait(session, req, rec, mode, transient=False)

    def _readable(self, proc: ProcessRecord, block_id: int) -> BlockRecord:
        """A block ``proc`` may read: one it holds with the read right, or a named
        object (any local process may read those, by name or by id)."""
        rec = self._table.blocks.get(block_id)
        if rec is not None and rec.name:
            return rec
        return self._table.lookup(proc, block_id, "r")

    def _lease_or_wait(
        self, session: _Session, req: Request, rec: BlockRecord, mode: str, *, transient: bool
    ) -> None:
        wait = _LeaseWait(session, req, rec)
        lease = self._table.request_lease(session.proc, rec, mode, wait, transient=transient)
        if lease is None:
            wait.park()
        else:
            self._run_grants(self._complete(wait, lease))

    def _complete(self, wait: _LeaseWait, lease: Lease) -> list[Grant]:
        """Finish a request that holds its lease now; returns leases this released."""
        req, rec, session = wait.request, lease.block, wait.session
        if req.op is Op.LEASE:
            session.reply(Reply(req.req_id, Op.LEASE, {"lease": lease.id, **_block_fields(rec)}))
            return []
        if req.op is Op.GET:
            fields = {
                "lease": lease.id,
                **_block_fields(rec),
                "owner": rec.owner_name,
                "generation": rec.generation,
                "slot": rec.slot,
                "codec": rec.codec,
                "meta": rec.meta,
            }
            session.reply(Reply(req.req_id, Op.GET, fields))
            return []
        reply = self._perform(req, rec)
        grants = self._table.release(lease)
        session.reply(reply)
        return grants

    def _perform(self, req: Request, rec: BlockRecord) -> Reply:
        """Do a bounds-checked routed READ or WRITE on the pool's memory."""
        start = rec.offset + req.args["offset"]
        if req.op is Op.WRITE:
            data = req.data
            with self.pool.view(rec.segment, start, len(data)) as view:
                view[:] = data
            self._table.bump(rec)
            return Reply(req.req_id, Op.WRITE, {"written": len(data)})
        with self.pool.view(rec.segment, start, req.args["size"]) as view:
            return Reply(req.req_id, Op.READ, {}, bytes(view))

    def _run_grants(self, grants: list[Grant]) -> None:
        work = deque(grants)
        while work:
            grant = work.popleft()
            work.extend(cast(_LeaseToken, grant.token).granted(self, grant.lease))

    def _answer_dropped(self, dropped: list[Waiter]) -> None:
        for waiter in dropped:
            cast(_LeaseToken, waiter.token).dropped(self)

    def _release(self, session: _Session, req: Request) -> None:
        lease = self._table.find_lease(session.proc, req.args["lease"])
        grants = self._end_lease(lease)
        session.reply(Reply(req.req_id, Op.RELEASE))
        self._run_grants(grants)

    def _end_lease(self, lease: Lease) -> list[Grant]:
        """Release ``lease``; a doomed block whose last reader this was goes away."""
        grants = self._table.release(lease)
        gone, dropped = self._table.reap(lease.block)
        if gone:
            self.pool.free(lease.block.segment, lease.block.offset)
            self._answer_dropped(dropped)
        return grants

    # -- copy --------------------------------------------------------------------
    def _copy(self, session: _Session, req: Request) -> None:
        """COPY inside the pool: small and uncontended at once, else in a task."""
        a = req.args
        src = self._readable(session.proc, a["src"])
        dst = self._table.lookup(session.proc, a["dst"], "w")
        size = src.size - a["src_offset"] if a["to_end"] else a["size"]
        if size < 0:
            raise OutOfBounds(f"src_offset {a['src_offset']} is outside block {src.id}")
        self._table.check_bounds(src, a["src_offset"], size)
        self._table.check_bounds(dst, a["dst_offset"], size)
        if size <= COPY_CHUNK and not (src.leases or src.waiters or dst.leases or dst.waiters):
            self._copy_bytes(src, a["src_offset"], dst, a["dst_offset"], size)
            session.reply(Reply(req.req_id, Op.COPY, {"copied": size}))
            return
        if self._tg is None:
            raise ConnectionClosed("the coordinator is closing")
        job = _CopyJob(session, req, src, dst, size)
        job.park()  # now: a CANCEL right behind it must find it before the task starts
        self._tg.start_soon(self._copy_task, job)

    def _copy_bytes(
        self, src: BlockRecord, src_offset: int, dst: BlockRecord, dst_offset: int, size: int
    ) -> None:
        pool = self.pool
        with (
            pool.view(src.segment, src.offset + src_offset, size) as s,
            pool.view(dst.segment, dst.offset + dst_offset, size) as d,
        ):
            d[:] = s  # memoryview assignment is a memmove: overlap within a block is fine
        self._table.bump(dst)

    async def _copy_task(self, job: _CopyJob) -> None:
        """A large copy, in chunks, yielding to the loop between them so that other
        requests keep being answered; under a read lease on src and a write lease on dst
        (one write lease when they are the same block). A cancelled or abandoned job
        stops where it is: before its first lease, in a lease wait, or between chunks."""
        session, req, src, dst, size = job.session, job.request, job.src, job.dst, job.size
        a = req.args
        leases: list[Lease] = []
        reply: Event
        try:
            wanted = [(dst, "w")] if src is dst else [(src, "r"), (dst, "w")]
            for rec, mode in wanted:
                if job.stopped:
                    break
                lease = self._table.request_lease(session.proc, rec, mode, job, transient=True)
                if lease is None:
                    job.waiting, job.future = rec, asyncio.get_running_loop().create_future()
                    try:
                        lease = await job.future  # None: the job was stopped
                    finally:
                        job.waiting = None
                    if lease is None:
                        break
                leases.append(lease)
            done = 0
            # copy backwards when dst overlaps src from above, as memmove does
            backwards = src is dst and a["src_offset"] < a["dst_offset"]
            while done < size and not job.stopped:
                if any(lease.id not in lease.block.leases for lease in leases):
                    raise BlockNotFound("a block of the copy was freed while it ran")
                n = min(COPY_CHUNK, size - done)
                at = size - done - n if backwards else done
                self._copy_bytes(src, a["src_offset"] + at, dst, a["dst_offset"] + at, n)
                done += n
                await asyncio.sleep(0)
            reply = job.cancelled() if job.stopped else Reply(req.req_id, Op.COPY, {"copied": size})
        except BlockIPCError as exc:
            reply = _error_reply(req, exc)
        except Exception as exc:  # a bug must cost one request, not the coordinator
            log.exception("coordinator.internal_error", op="COPY", error=repr(exc))
            reply = ErrorReply(req.req_id, Op.COPY, ErrorCode.INTERNAL, f"internal error: {exc!r}")
        finally:
            job.unpark()
            job.stopped = True  # a grant that still comes goes straight back
            for lease in leases:
                if lease.id in lease.block.leases:
                    self._run_grants(self._end_lease(lease))
        session.reply(reply)

    # -- messages ----------------------------------------------------------------
    def _send(self, session: _Session, req: Request) -> None:
        a = req.args
        move = a["move"]
        rec = self._table.lookup(session.proc, a["block"], "own" if move else "r")
        pack_header(a["header"])
        to = self._receiver(session, req)
        if to is None:  # parked until it registers
            return
        if move:
            self._table.check_movable(session.proc, rec)
        token = _QueuedSend(session, req, to)
        delivery = Delivery(rec, session.proc, to, a["header"], move, token)
        if self._table.offer(delivery, nowait=a["nowait"]):
            session.reply(Reply(req.req_id, Op.SEND))
            self._wake_receiver(to)
        else:
            token.park()

    def _receiver(self, session: _Session, req: Request) -> ProcessRecord | None:
        """The process named ``req.args["to"]``, or None once the request is parked to
        wait for it to register (``wait_ms``); :class:`PeerUnreachable` if it may not."""
        a = req.args
        to = self._table.processes.get(a["to"])
        if to is None:
            if not a["wait_ms"]:
                raise PeerUnreachable(f"no process named {a['to']!r} is registered")
            self._park_for_peer(session, req)
        return to

    def _park_for_peer(self, session: _Session, req: Request) -> None:
        wait = _PeerWait(session, req, req.args["to"])
        wait.park()
        self._peer_waits.setdefault(wait.name, {})[wait] = None
        loop = asyncio.get_running_loop()
        wait.timer = loop.call_later(req.args["wait_ms"] / 1000, wait.expire, self)

    def _unindex_peer_wait(self, wait: _PeerWait) -> None:
        if wait.timer is not None:
            wait.timer.cancel()
            wait.timer = None
        waits = self._peer_waits.get(wait.name)
        if waits is not None and waits.pop(wait, 0) is None and not waits:
            del self._peer_waits[wait.name]

    def _retry_peer_waits(self, name: str) -> None:
        for wait in self._peer_waits.pop(name, {}):
            if wait.timer is not None:
                wait.timer.cancel()
            wait.unpark()
            if not wait.session.closed.is_set():  # (its reclaim may be still to run)
                self.handle(wait.session, wait.request)

    def _recv(self, session: _Session, req: Request) -> None:
        """RECV (one message) and RECV_MANY (what the inbox holds, up to ``max``)."""
        if req.op is Op.RECV_MANY:
            check_batch(req.args["max"], "RECV_MANY max")
        if session.proc.inbox and not session.recv_waits:
            self._deliver(session, req)
        else:
            wait = _Queued(session, req, session.recv_waits)
            wait.park()
            session.recv_waits.append(wait)

    def _deliver(self, session: _Session, req: Request) -> None:
        proc = session.proc
        if req.op is Op.RECV:
            entry, admitted = self._table.take(proc)
            rec = entry.block
            fields = {
                **_block_fields(rec),
                "owner": rec.owner_name,
                "sender": entry.sender,
                "header": entry.header,
                "topic": entry.topic,
            }
            session.reply(Reply(req.req_id, Op.RECV, fields))
            self._deliveries_done(admitted, wake=False)
            return
        messages: list[list[Any]] = []
        admitted = []
        budget = MAX_FRAME_SIZE // 2  # a reply must stay under the frame limit, so count
        # each message at its largest: 1 KiB of fields and names, plus a full header
        while proc.inbox and len(messages) < req.args["max"]:
            budget -= 1024 + (MAX_HEADER if proc.inbox[0].header else 0)
            if messages and budget < 0:
                break
            entry, more = self._table.take(proc)
            rec = entry.block
            messages.append(
                [
                    rec.id,
                    rec.size,
                    rec.capacity,
                    rec.segment,
                    rec.offset,
                    rec.owner_name,
                    entry.sender,
                    entry.header,
                    entry.topic,
                ]
            )
            admitted += more
        session.reply(Reply(req.req_id, Op.RECV_MANY, {"messages": messages}))
        self._deliveries_done(admitted, wake=False)

    def _free_many(self, session: _Session, req: Request) -> None:
        """FREE_MANY: all the blocks or, if one may not be freed, none of them."""
        ids = req.args["blocks"]
        check_batch(len(ids), "blocks per FREE_MANY")
        if len(set(ids)) != len(ids):
            raise InvalidRequest("blocks of a FREE_MANY must be distinct block ids")
        recs = [self._table.lookup(session.proc, bid, "r") for bid in ids]
        for rec in recs:
            self._table.check_release(session.proc, rec)
        dropped: list[Waiter] = []
        for rec in recs:
            gone, waits = self._table.release_hold(session.proc, rec)
            if gone:
                self.pool.free(rec.segment, rec.offset)
            dropped += waits
        session.reply(Reply(req.req_id, Op.FREE_MANY))
        self._answer_dropped(dropped)

    def _wake_receiver(self, proc: ProcessRecord) -> None:
        """Answer ``proc``'s waiting ``recv`` calls from its inbox."""
        session = self._sessions.get(proc.key)
        if session is None or not (session.recv_waits and proc.inbox):
            return
        held = session.hold()  # one write for all the replies
        try:
            while session.recv_waits and proc.inbox:
                wait = session.recv_waits.popleft()
                wait.unpark()
                self._deliver(session, wait.request)
        finally:
            if held:
                session.release()

    def _deliveries_done(self, deliveries: list[Delivery], *, wake: bool = True) -> None:
        for d in deliveries:
            self._delivery_done(d, None)
        if wake:
            for proc in {id(d.to): d.to for d in deliveries}.values():
                self._wake_receiver(proc)

    def _delivery_done(self, d: Delivery, error: BlockIPCError | None) -> None:
        """A queued delivery reached its inbox (``error`` None) or never will."""
        cast(_DeliveryToken, d.token).done(self, error)

    # -- publish/subscribe -------------------------------------------------------
    @staticmethod
    def _topic(req: Request) -> str:
        return check_name(req.args["topic"], "topic")

    def _subscribe(self, session: _Session, req: Request) -> None:
        self._table.subscribe(session.proc, self._topic(req))
        session.reply(Reply(req.req_id, Op.SUBSCRIBE))

    def _unsubscribe(self, session: _Session, req: Request) -> None:
        self._table.unsubscribe(session.proc, self._topic(req))
        session.reply(Reply(req.req_id, Op.UNSUBSCRIBE))

    def _publish(self, session: _Session, req: Request) -> None:
        """Give every subscriber a read grant and an inbox message; the publisher's own
        hold ends once every inbox took it, so the block is freed after the last
        subscriber frees it."""
        a = req.args
        topic = self._topic(req)
        proc = session.proc
        rec = self._table.lookup(proc, a["block"], "own")
        pack_header(a["header"])
        self._table.check_movable(proc, rec)
        subs = [p for p in self._table.subscribers(topic) if p is not proc]
        if a["nowait"]:
            full = [p.name for p in subs if not self._table.has_room(p, rec.size)]
            if full:
                raise InboxFull(f"inboxes full for {', '.join(map(repr, full))}; nothing sent")
        fanout = _Fanout(session, req, rec, remaining=len(subs) + 1)
        for sub in subs:
            part = _FanoutPart(fanout)
            delivery = Delivery(rec, proc, sub, a["header"], False, part, topic)
            if self._table.offer(delivery):
                self._fanout_part_done(fanout, delivered=True)
                self._wake_receiver(sub)
            else:
                fanout.waiting.append((sub, part))
        if fanout.waiting:  # CANCEL can find it while it waits for room
            fanout.park()
        self._fanout_part_done(fanout, delivered=False)  # the publisher's own part

    def _fanout_part_done(self, fanout: _Fanout, *, delivered: bool) -> None:
        fanout.delivered += delivered
        fanout.remaining -= 1
        if fanout.remaining:
            return
        session, rec = fanout.session, fanout.block
        fanout.unpark()
        if fanout.withdrawn:  # what was delivered stays delivered; the block stays too
            session.reply(fanout.cancelled())
            return
        if rec.id in self._table.blocks and rec.id in session.proc.blocks:
            gone, dropped = self._table.release_hold(session.proc, rec)
            if gone:
                self.pool.free(rec.segment, rec.offset)
            self._answer_dropped(dropped)
        session.reply(Reply(fanout.request.req_id, Op.PUBLISH, {"delivered": fanout.delivered}))

    def _peers(self, session: _Session, req: Request) -> None:
        names = sorted(self._table.processes)
        session.reply(Reply(req.req_id, Op.PEERS, fit_lists(Op.PEERS, {"names": names})))

    # -- codecs and named objects ------------------------------------------------
    def _put(self, session: _Session, req: Request) -> None:
        """First half of ``put``: a new block with its write lease, for the client to
        encode into; COMMIT records the codec and binds the name."""
        rec = self._new_block(session.proc, req.args["size"])
        lease = self._table.request_lease(session.proc, rec, "w", None)
        assert lease is not None  # a new block is uncontended
        session.reply(Reply(req.req_id, Op.PUT, {"lease": lease.id, **_block_fields(rec)}))

    def _commit(self, session: _Session, req: Request) -> None:
        a = req.args
        proc = session.proc
        lease = self._table.find_lease(proc, a["lease"])
        rec = lease.block
        if lease.mode != "w" or rec.owner is not proc:
            raise AccessDenied(f"lease {lease.id} is not a write lease on a block you own")
        if a["codec"] not in CODEC_NAMES:
            raise InvalidRequest(f"unknown codec {a['codec']!r}; known: {', '.join(CODEC_NAMES)}")
        name = a["name"]
        if name:  # "" commits an object with no name
            check_name(name, "object name")
        rec.codec, rec.meta = a["codec"], a["meta"]
        grants = self._end_lease(lease)  # bumps the generation before we answer
        if name:
            old, dropped = self._table.bind(proc, rec, name, cacheable=a["cacheable"])
            if old is not None:
                self.pool.free(old.segment, old.offset)
            self._answer_dropped(dropped)
        session.reply(
            Reply(req.req_id, Op.COMMIT, {"generation": rec.generation, "slot": rec.slot})
        )
        self._run_grants(grants)

    def _get(self, session: _Session, req: Request) -> None:
        """A read lease on a named object (any process) or a block it may read; the
        reply carries what the client needs to decode and cache it."""
        name = req.args["name"]
        if name:
            try:
                rec = self._table.find_name(name)
            except BlockNotFound:
                self._cache_counts[1] += 1
                raise
            self._cache_counts[0] += 1
        else:
            rec = self._readable(session.proc, req.args["block"])
        self._lease_or_wait(session, req, rec, "r", transient=False)

    def _touch(self, session: _Session, req: Request) -> None:
        self._table.touch(req.args["blocks"])
        session.reply(Reply(req.req_id, Op.TOUCH))

    def _delete(self, session: _Session, req: Request) -> None:
        gone, dropped = self._table.unbind(req.args["name"])
        if gone is not None:
            self.pool.free(gone.segment, gone.offset)
        session.reply(Reply(req.req_id, Op.DELETE))
        self._answer_dropped(dropped)

    # -- rights ------------------------------------------------------------------
    def _grant(self, session: _Session, req: Request) -> None:
        rec = self._table.lookup(session.proc, req.args["block"], "own")
        to = self._table.find_process(req.args["to"])
        self._table.grant(session.proc, rec, to, req.args["mode"])
        session.reply(Reply(req.req_id, Op.GRANT))

    def _revoke(self, session: _Session, req: Request) -> None:
        rec = self._table.lookup(session.proc, req.args["block"], "own")
        to = self._table.find_process(req.args["to"])
        self._table.revoke(session.proc, rec, to)
        session.reply(Reply(req.req_id, Op.REVOKE))

    def _stats(self, session: _Session, req: Request) -> None:
        s = self.stats()
        fields: dict[str, Any] = {
            name: getattr(s, name)
            for name in (
                "pool_size",
                "max_pool_size",
                "free_bytes",
                "used_bytes",
                "blocks",
                "segments",
                "leases",
                "cache_hits",
                "cache_misses",
                "cache_evictions",
                "channels",
                "names_total",
                "processes_total",
            )
        }
        fields["processes"] = list(s.processes)
        fields["names"] = list(s.names)
        fields["links"] = [list(dataclasses.astuple(link)) for link in s.links]
        fields["usage"] = [list(dataclasses.astuple(usage)) for usage in s.usage]
        # sorted lists, of which a frame carries the first 4096: the *_total fields count all
        session.reply(Reply(req.req_id, Op.STATS, fit_lists(Op.STATS, fields)))

    def _cancel(self, session: _Session, req: Request) -> None:
        """CANCEL a parked request: it answers itself as cancelled (or, a send already
        in an inbox, stays done). A target that is not parked (answered already, or
        never waited) is left alone: the client sends CANCEL for any call it abandons."""
        entry = session.parked.get(req.args["target"])
        if entry is not None:
            entry.cancel(self)
        session.reply(Reply(req.req_id, Op.CANCEL))

    def _bye(self, session: _Session, req: Request) -> None:
        session.reply(Reply(req.req_id, Op.BYE))
        session.close_after_flush()

    def _remote_send(self, session: _Session, req: Request) -> None:
        if self._link is None:
            raise PeerUnreachable(
                f"cannot send to {req.args['to']!r}: this coordinator has no link "
                "(start it with node=..., peers=...)"
            )
        pack_header(req.args["header"])
        self._link.send(session, req)  # answered when the peer acknowledges (or fails)

    # -- channels ------------------------------------------------------------------
    def _channel_open(self, session: _Session, req: Request) -> None:
        """CHANNEL_OPEN: a ring in a block of its own and two eventfds, offered to the
        receiver; from then on the two ends pass messages without this coordinator."""
        a = req.args
        if not ring_supported():
            raise InvalidRequest("channels need an x86-64 CPU (their ring relies on its TSO)")
        if not MIN_CHANNEL <= a["capacity"] <= self.pool.max_request():
            raise InvalidRequest(
                f"channel capacity must be {MIN_CHANNEL} to {self.pool.max_request()} bytes, "
                f"not {a['capacity']}"
            )
        to = self._receiver(session, req)
        if to is None:  # parked until it registers
            return
        if to is session.proc:
            raise InvalidRequest("a channel needs two processes (within one, use a queue)")
        alloc, slot = self._allocate(session.proc, a["capacity"])
        try:
            view = self.pool.view(alloc.segment, alloc.offset, a["capacity"])
            try:
                init_ring(view)
            finally:
                view.release()
            bells = (os.eventfd(0, _EFD_FLAGS), os.eventfd(0, _EFD_FLAGS))
        except BaseException:
            self.pool.free(alloc.segment, alloc.offset)
            raise
        chan = self._table.open_channel(
            session.proc,
            to,
            segment=alloc.segment,
            offset=alloc.offset,
            capacity=alloc.capacity,
            size=a["capacity"],
            slot=slot,
            generation=self.gens.get(slot),
        )
        self._bells[chan.id] = bells
        session.reply(
            Reply(req.req_id, Op.CHANNEL_OPEN, {"channel": chan.id, **_block_fields(chan.block)})
        )
        log.info(
            "channel.open",
            channel=chan.id,
            sender=session.proc.name,
            to=to.name,
            size=a["capacity"],
        )
        self._answer_accepts(self._sessions.get(to.key))

    def _channel_accept(self, session: _Session, req: Request) -> None:
        wait = _Queued(session, req, session.accept_waits)
        wait.park()
        session.accept_waits.append(wait)
        self._answer_accepts(session)

    def _answer_accepts(self, session: _Session | None) -> None:
        while session is not None and session.accept_waits:
            chan = self._table.accept_channel(session.proc)
            if chan is None:
                return
            wait = session.accept_waits.popleft()
            wait.unpark()
            req = wait.request
            fields = {"channel": chan.id, "sender": chan.sender_name, **_block_fields(chan.block)}
            session.reply(Reply(req.req_id, Op.CHANNEL_ACCEPT, fields))

    def _channel_close(self, session: _Session, req: Request) -> None:
        chan = self._table.channel_end(session.proc, req.args["channel"])
        self._end_channel(chan, session.proc)
        session.reply(Reply(req.req_id, Op.CHANNEL_CLOSE))

    def _end_channel(self, chan: ChannelRecord, proc: ProcessRecord) -> None:
        """``proc``'s end of ``chan`` closed (or its process ended): say so in the ring,
        wake the other end, and free the ring once both ends are gone."""
        rec, (data_bell, space_bell) = chan.block, self._bells[chan.id]
        view = self.pool.view(rec.segment, rec.offset, rec.size)
        try:
            for producer, bell in ((True, data_bell), (False, space_bell)):
                if (chan.sender if producer else chan.receiver) is proc:
                    mark_closed(view, producer=producer)
                    os.eventfd_write(bell, 1)  # the other end sleeps on this one
        finally:
            view.release()
        if self._table.close_channel_end(chan, proc):
            self.pool.free(rec.segment, rec.offset)
            for fd in self._bells.pop(chan.id):
                os.close(fd)
            log.info(
                "channel.closed", channel=chan.id, sender=chan.sender_name, to=chan.receiver_name
            )

    _handlers: ClassVar[dict[Op, Callable[[Coordinator, _Session, Request], None]]] = {
        Op.ALLOC: _alloc,
        Op.FREE: _free,
        Op.READ: _routed,
        Op.WRITE: _routed,
        Op.LEASE: _lease,
        Op.RELEASE: _release,
        Op.SEND: _send,
        Op.RECV: _recv,
        Op.RECV_MANY: _recv,
        Op.FREE_MANY: _free_many,
        Op.STATS: _stats,
        Op.CANCEL: _cancel,
        Op.BYE: _bye,
        Op.COPY: _copy,
        Op.GRANT: _grant,
        Op.REVOKE: _revoke,
        Op.SUBSCRIBE: _subscribe,
        Op.UNSUBSCRIBE: _unsubscribe,
        Op.PUBLISH: _publish,
        Op.PEERS: _peers,
        Op.PUT: _put,
        Op.COMMIT: _commit,
        Op.GET: _get,
        Op.DELETE: _delete,
        Op.TOUCH: _touch,
        Op.REMOTE_SEND: _remote_send,
        Op.CHANNEL_OPEN: _channel_open,
        Op.CHANNEL_ACCEPT: _channel_accept,
        Op.CHANNEL_CLOSE: _channel_close,
    }


class _LinkPort:
    """The coordinator as the link's host (:class:`~blockipc._link.host.LinkHost`): the
    link's only door into the routing table, the pool and the sessions. A class of its
    own, so that ``Coordinator``'s public API does not grow by the link's needs.

    ``holder`` is the link's record: it holds the blocks of sends in transit and of
    received blocks not yet delivered (key 0 is no connection's, so nothing a process
    does or suffers can free them meanwhile).
    """

    def __init__(self, coord: Coordinator, node: str) -> None:
        self._coord = coord
        self._table = coord._table
        self.pool = coord.pool
        self.holder = ProcessRecord(0, f"(link {node})", os.getpid(), os.getuid())

    def sendable(self, proc: ProcessRecord, block_id: int, *, move: bool) -> BlockRecord:
        return self._table.lookup(proc, block_id, "own" if move else "r")

    def pin(self, proc: ProcessRecord, rec: BlockRecord, *, move: bool) -> None:
        self._table.start_transfer(proc, rec, self.holder, move=move)

    def unpin(self, rec: BlockRecord, sender: ProcessRecord, *, failed: bool) -> None:
        if self.pool.closed:  # (the coordinator is gone: nothing left to give back)
            return
        gone, dropped = self._table.end_transfer(rec, self.holder, sender, failed=failed)
        if gone:
            self.pool.free(rec.segment, rec.offset)
        self._coord._answer_dropped(dropped)

    def receiver(self, name: str) -> ProcessRecord | None:
        return self._table.processes.get(name)

    def has_room(self, proc: ProcessRecord, size: int) -> bool:
        return self._table.has_room(proc, size)

    def new_block(self, size: int) -> BlockRecord | None:
        try:  # (evicts cacheable objects before it gives up; the link retries)
            return self._coord._new_block(self.holder, size, quiet=True)
        except PoolExhausted:
            return None

    def discard(self, rec: BlockRecord) -> None:
        if self._table.blocks.get(rec.id) is not rec:
            return
        gone, _ = self._table.release_hold(self.holder, rec)  # (nobody could wait on it)
        if gone and not self.pool.closed:
            self.pool.free(rec.segment, rec.offset)

    def deliver(
        self, rec: BlockRecord, sender: ProcessRecord, to: ProcessRecord, header: dict[str, Any]
    ) -> None:
        delivered = self._table.offer(Delivery(rec, sender, to, header, True, None))
        assert delivered, "the link asked has_room, and nothing ran since"

    def wake(self, proc: ProcessRecord) -> None:
        self._coord._wake_receiver(proc)


def _block_fields(rec: BlockRecord) -> dict[str, int]:
    return {
        "block": rec.id,
        "size": rec.size,
        "capacity": rec.capacity,
        "segment": rec.segment,
        "offset": rec.offset,
    }


def _error_reply(req: Request, exc: BlockIPCError) -> ErrorReply:
    return ErrorReply(req.req_id, req.op, exc.code, str(exc))


class _Session(asyncio.BufferedProtocol):
    """The hot path of one client connection: parse, dispatch, reply."""

    def __init__(self, coord: Coordinator, conn: Connection, proc: ProcessRecord) -> None:
        self.coord = coord
        self.conn = conn
        self.proc = proc
        self.parked: dict[int, _Parked] = {}  # request id -> its wait (see _Parked)
        self.recv_waits: deque[_Queued] = deque()  # in order, for the next message
        self.accept_waits: deque[_Queued] = deque()  # in order, for the next channel
        self.closed = anyio.Event()
        self._transport: asyncio.Transport | None = None
        self._buffer = memoryview(bytearray(256 * 1024))
        self._out: list[bytes] = []
        self._batching = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
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
        held = self.hold()
        try:
            while True:
                try:
                    event = self.conn.next_event()
                except ProtocolError as exc:
                    self._protocol_error(exc)
                    return
                if isinstance(event, NeedData):
                    break
                assert isinstance(event, Request)
                self.coord.handle(self, event)
        finally:
            if held:
                self.release()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed.set()

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
        if self._out and self._transport is not None:
            self._transport.writelines(self._out)
        self._out.clear()

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
        self.closed.set()
