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
wait (a contended lease, a ``recv`` on an empty inbox) leaves a :class:`_Wait` token in
the admin space and is answered when a release or a send makes it possible. Nothing on
this path awaits, so one slow client never holds up another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import stat
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, cast

import anyio
import msgpack
import structlog
from anyio.abc import (
    SocketAttribute,
    SocketListener,
    SocketStream,
    UNIXSocketStream,
)

from ._admin import BlockRecord, Grant, Lease, ProcessRecord, RoutingTable, Waiter
from ._exceptions import (
    BlockIPCError,
    BlockNotFound,
    ConnectionClosed,
    ErrorCode,
    InvalidRequest,
    PoolExhausted,
    ProtocolError,
)
from ._handshake import MAX_FDS, peer_credentials, receive_event, send_frame, take_socket
from ._pool import Pool
from ._protocol import (
    CANCELLED,
    MAX_HEADER,
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    Event,
    NeedData,
    Op,
    Reply,
    Request,
    Role,
)
from ._types import Stats

__all__ = ["Coordinator"]

log = structlog.get_logger("blockipc.coordinator")

MAX_INLINE = 1 << 20
"""Largest routed read or write the coordinator performs inline."""

HANDSHAKE_TIMEOUT = 5.0


@dataclass(eq=False, slots=True)
class _Wait:
    """A request parked in the admin space until a lease or a message is available."""

    session: _Session
    request: Request
    block: BlockRecord | None = None


class Coordinator:
    """Owns a shared-memory pool and routes every client request to it.

    Embedded in your own process (the default for demos and tests)::

        async with blockipc.Coordinator(pool_size="64MiB") as coord:
            async with blockipc.connect(coord.address, name="producer") as client:
                block = await client.alloc(1024)

    or standalone with ``blockipc serve --socket PATH --pool-size SIZE``.

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
    ) -> None:
        self._path_arg = None if path is None else Path(path)
        self._pool_args = (pool_size, max_pool_size, min_block)
        self._pool: Pool | None = None
        self._table = RoutingTable()
        self._tokens: dict[bytes, ProcessRecord] = {}
        self._sessions: dict[int, _Session] = {}  # process record key -> session
        self._runner: asyncio.Task[None] | None = None
        self._stop = anyio.Event()
        self._private_dir: Path | None = None
        self._path: Path | None = None
        self._closed = anyio.Event()
        self._closing = False

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

    async def start(self) -> None:
        """Create the pool, bind the socket and start accepting connections."""
        if self._pool is not None:
            raise BlockIPCError("the coordinator is already started")
        pool_size, max_pool_size, min_block = self._pool_args
        self._pool = Pool(pool_size, max_pool_size, min_block)
        try:
            self._path = self._prepare_path()
            listener = await anyio.create_unix_listener(self._path, mode=0o600)
            # The connection tasks run in a task of their own, so that aclose() works
            # from any task (a signal handler, a pytest fixture's teardown): an anyio
            # task group can only be exited by the task that entered it.
            self._runner = asyncio.create_task(self._run(listener))
        except BaseException:
            self._pool.close()
            self._remove_path()
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
                tg.start_soon(listener.serve, self._handle_stream)
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            # Listener.serve never closes the listener: without this the listening
            # socket stays open (a leaked fd, a ResourceWarning) after the close.
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def serve_forever(self) -> None:
        """Wait until :meth:`aclose` is called (from a signal handler, say)."""
        await self._closed.wait()

    async def aclose(self) -> None:
        """Close every connection (pending client awaits raise ``ConnectionClosed``),
        free the pool and remove the socket. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            for session in list(self._sessions.values()):
                session.abort()
            if self._runner is not None:
                self._stop.set()
                with anyio.CancelScope(shield=True):
                    await self._runner
        finally:
            if self._pool is not None:
                self._pool.close()
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
        """The pool and admin space now, without a round trip (embedded use)."""
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
            proc = self._table.register(args["name"], pid=pid, uid=uid)
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
                },
            )
            await send_frame(stream, conn.send(welcome), [s.fd for s in segments])
            sock = await take_socket(stream)
            loop = asyncio.get_running_loop()
            session = _Session(self, conn, proc)
            try:
                await loop.connect_accepted_socket(lambda: session, sock)
            except BaseException:
                sock.close()
                raise
            self._sessions[proc.key] = session
            log.info("client.connect", name=proc.name, pid=pid)
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
            reply: Event = Reply(
                req.req_id, Op.ATTACH, {"segments": [[s.id, s.size] for s in segments]}
            )
            await send_frame(stream, conn.send(reply), [s.fd for s in segments])
        except ProtocolError as exc:
            log.warning("protocol.error", phase="attach", error=str(exc))
            await send_frame(stream, conn.send(_error_reply(req, exc)))

    def _reclaim(self, proc: ProcessRecord, token: bytes, session: _Session | None) -> None:
        self._tokens.pop(token, None)
        if session is not None:
            self._sessions.pop(proc.key, None)
            session.abort()
        done = self._table.unregister(proc)
        freed = 0
        for rec in done.blocks:
            freed += self.pool.free(rec.segment, rec.offset)
        self._answer_dropped(done.dropped)
        self._run_grants(done.grants)
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
        size = req.args["size"]
        if size <= 0:
            raise InvalidRequest(f"block size must be positive, not {size}")
        try:
            a = self.pool.alloc(size)
        except PoolExhausted as exc:
            log.warning("block.alloc_failed", name=session.proc.name, size=size, error=str(exc))
            raise
        rec = self._table.add_block(
            session.proc, segment=a.segment, offset=a.offset, capacity=a.capacity, size=size
        )
        session.reply(Reply(req.req_id, Op.ALLOC, _block_fields(rec)))

    def _free(self, session: _Session, req: Request) -> None:
        rec = self._table.lookup(session.proc, req.args["block"])
        dropped = self._table.remove_block(rec)
        self.pool.free(rec.segment, rec.offset)
        session.reply(Reply(req.req_id, Op.FREE))
        self._answer_dropped(dropped)

    def _routed(self, session: _Session, req: Request) -> None:
        """READ and WRITE: bounds-checked, then done under a transient lease."""
        rec = self._table.lookup(session.proc, req.args["block"])
        offset = req.args["offset"]
        if req.op is Op.READ:
            size, mode = req.args["size"], "r"
            if size > MAX_INLINE:
                raise InvalidRequest(
                    f"a routed read of {size} bytes exceeds the inline limit {MAX_INLINE}; "
                    "use a lease"
                )
        else:
            size, mode = len(req.data), "w"
        self._table.check_bounds(rec, offset, size)
        if rec.leases or rec.waiters:
            self._lease_or_wait(session, req, rec, mode, transient=True)
        else:  # uncontended, the common case: no lease bookkeeping needed
            session.reply(self._perform(req, rec))

    def _lease(self, session: _Session, req: Request) -> None:
        rec = self._table.lookup(session.proc, req.args["block"])
        self._lease_or_wait(session, req, rec, req.args["mode"], transient=False)

    def _lease_or_wait(
        self, session: _Session, req: Request, rec: BlockRecord, mode: str, *, transient: bool
    ) -> None:
        wait = _Wait(session, req, rec)
        lease = self._table.request_lease(session.proc, rec, mode, wait, transient=transient)
        if lease is None:
            session.waits[req.req_id] = wait
        else:
            self._run_grants(self._complete(wait, lease))

    def _complete(self, wait: _Wait, lease: Lease) -> list[Grant]:
        """Finish a request that holds its lease now; returns leases this released."""
        req, rec, session = wait.request, lease.block, wait.session
        if req.op is Op.LEASE:
            session.reply(Reply(req.req_id, Op.LEASE, {"lease": lease.id, **_block_fields(rec)}))
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
            rec.generation += 1
            return Reply(req.req_id, Op.WRITE, {"written": len(data)})
        with self.pool.view(rec.segment, start, req.args["size"]) as view:
            return Reply(req.req_id, Op.READ, {}, bytes(view))

    def _run_grants(self, grants: list[Grant]) -> None:
        work = deque(grants)
        while work:
            grant = work.popleft()
            wait = grant.token
            assert isinstance(wait, _Wait)
            wait.session.waits.pop(wait.request.req_id, None)
            work.extend(self._complete(wait, grant.lease))

    def _answer_dropped(self, dropped: list[Waiter]) -> None:
        for waiter in dropped:
            wait = waiter.token
            assert isinstance(wait, _Wait)
            wait.session.waits.pop(wait.request.req_id, None)
            exc = BlockNotFound(f"block {wait.block.id if wait.block else '?'} was freed")
            wait.session.reply(_error_reply(wait.request, exc))

    def _release(self, session: _Session, req: Request) -> None:
        lease = self._table.find_lease(session.proc, req.args["lease"])
        grants = self._table.release(lease)
        session.reply(Reply(req.req_id, Op.RELEASE))
        self._run_grants(grants)

    def _send(self, session: _Session, req: Request) -> None:
        rec = self._table.lookup(session.proc, req.args["block"])
        to = self._table.find_process(req.args["to"])
        header = req.args["header"]
        if len(msgpack.packb(header, use_bin_type=True)) > MAX_HEADER:
            raise InvalidRequest(f"message header is larger than {MAX_HEADER} bytes encoded")
        self._table.move(rec, session.proc, to, header)
        session.reply(Reply(req.req_id, Op.SEND))
        receiver = self._session_of(to)
        if receiver is not None and receiver.recv_waits:
            self._deliver(receiver, receiver.recv_waits.popleft())

    def _recv(self, session: _Session, req: Request) -> None:
        if session.proc.inbox and not session.recv_waits:
            self._deliver(session, req)
        else:
            session.recv_waits.append(req)

    def _deliver(self, session: _Session, req: Request) -> None:
        entry = session.proc.inbox.popleft()
        fields = {**_block_fields(entry.block), "sender": entry.sender, "header": entry.header}
        session.reply(Reply(req.req_id, Op.RECV, fields))

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
            )
        }
        fields["processes"] = list(s.processes)
        session.reply(Reply(req.req_id, Op.STATS, fields))

    def _cancel(self, session: _Session, req: Request) -> None:
        target = req.args["target"]
        wait = session.waits.pop(target, None)
        if wait is not None and wait.block is not None:
            self._table.cancel_wait(wait.block, wait)
            session.reply(ErrorReply(target, wait.request.op, CANCELLED, "cancelled"))
        else:
            for pending in session.recv_waits:
                if pending.req_id == target:
                    session.recv_waits.remove(pending)
                    session.reply(ErrorReply(target, Op.RECV, CANCELLED, "cancelled"))
                    break
        session.reply(Reply(req.req_id, Op.CANCEL))

    def _bye(self, session: _Session, req: Request) -> None:
        session.reply(Reply(req.req_id, Op.BYE))
        session.close_after_flush()

    def _session_of(self, proc: ProcessRecord) -> _Session | None:
        return self._sessions.get(proc.key)

    _handlers: ClassVar[dict[Op, Callable[[Coordinator, _Session, Request], None]]] = {
        Op.ALLOC: _alloc,
        Op.FREE: _free,
        Op.READ: _routed,
        Op.WRITE: _routed,
        Op.LEASE: _lease,
        Op.RELEASE: _release,
        Op.SEND: _send,
        Op.RECV: _recv,
        Op.STATS: _stats,
        Op.CANCEL: _cancel,
        Op.BYE: _bye,
    }


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
        self.waits: dict[int, _Wait] = {}
        self.recv_waits: deque[Request] = deque()
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
        self._batching = True
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
            self._batching = False
            self._flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed.set()

    def reply(self, event: Event) -> None:
        if self._transport is None or self._transport.is_closing() or self.conn.error:
            return
        try:
            self._out.append(self.conn.send(event))
        except ProtocolError as exc:  # a reply we cannot encode: a bug, contained to this client
            self._protocol_error(exc)
            return
        if not self._batching:
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
