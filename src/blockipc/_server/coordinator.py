"""The coordinator: owns the pool and the admin space, answers every request.

Theory of operation
-------------------
The parts, in the order a request meets them (``docs/architecture.md`` has the map):

- :mod:`.listener` accepts a connection, checks the peer's uid (``SO_PEERCRED``),
  runs the handshake on the raw socket (register, pass segment fds), hands the socket
  to a :class:`~.session.Session` and, when the connection ends, has :mod:`.reclaim`
  give back everything the process held, shielded from cancellation (a process that
  held many blocks in slices, serving the others between them);
- a :class:`~.session.Session` (an asyncio/uvloop ``BufferedProtocol``) parses requests
  in its ``buffer_updated`` callback, so a pipelined burst is answered in one write, and
  passes each to :meth:`ServerState.handle <.state.ServerState.handle>`;
- the handler for its op (one module per group in :mod:`.ops`) decides through the
  routing table (``_core/routing.py``), has :meth:`ServerState.settle
  <.state.ServerState.settle>` apply the outcome, and replies. A request that must wait
  (a contended lease, a ``recv`` on an empty inbox) parks in its session's registry
  (:mod:`.parking`) and is answered when a release or a send makes it possible;
  ``CANCEL`` and disconnect end it through that registry. Nothing on this path awaits,
  so one slow client never holds up another.

This module holds the public :class:`Coordinator`: configuration, start and close,
its address and :meth:`Coordinator.stats`.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Self

import anyio
from anyio.abc import SocketListener

from .._core.limits import IDLE_FRAME_TIMEOUT, Quotas
from .._core.linkwire import IO_NICE, make_config
from .._core.sizes import parse_size
from .._exceptions import BlockIPCError, InvalidRequest, use_async_with
from .._log import get_logger
from .._shm.generations import GenerationTable
from .._shm.pool import Pool
from .._types import Stats
from .linkport import LinkPort
from .listener import (
    SocketId,
    accept_connections,
    listen_at,
    make_private_dir,
    prepare_path,
    remove_path,
    serve_connection,
)
from .ops import HANDLERS
from .state import ServerState

if TYPE_CHECKING:
    from .._link.link import Link

__all__ = ["Coordinator"]

log = get_logger("blockipc.coordinator")


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
    links use CURVE: with ``keys=DIR`` the key pairs there (``blockipc keygen``), else
    the user's key directory, where a node makes its pair at first start (plain links
    only with ``insecure=True``); ``link_timeout`` bounds how long a send waits for an
    unreachable node. A node that listens lowers its libzmq I/O
    thread's scheduling priority by ``link_io_nice`` (default 10; 0 leaves it): on a
    busy CPU the loop that copies received blocks into the pool then runs before the
    I/O thread reads further ahead::

        async with blockipc.Coordinator(node="a", peers={"b": "tcp://10.0.0.2:7100"},
                                        keys="keys/") as coord:
            ...

    A connection that sends part of a frame and then nothing for ``idle_frame_timeout``
    seconds (default 30) is closed (``protocol.error`` with ``phase="idle"``); one that
    idles between frames, a client waiting in ``recv()``, is never closed for it.

    Quotas, off by default: ``max_client_bytes`` (an int or a size string) and
    ``max_client_blocks`` bound what one client process holds (blocks it owns or was
    granted, their capacity), ``max_connections`` the processes of one user connected
    at once; past one, the request raises ``QuotaExceeded``.

    ``path=None`` creates the socket in a fresh private directory (mode 0700, under
    ``$XDG_RUNTIME_DIR`` when that is a directory of this user's with mode 0700, else
    under ``$TMPDIR`` or ``/tmp``) that is removed on close. An explicit ``path`` left
    behind by a crashed coordinator of this user's is detected (nobody answers on it) and
    replaced; another user's socket, or one a live coordinator serves, raises.
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
        idle_frame_timeout: float = IDLE_FRAME_TIMEOUT,
        max_client_bytes: int | str | None = None,
        max_client_blocks: int | None = None,
        max_connections: int | None = None,
    ) -> None:
        if isinstance(idle_frame_timeout, bool) or not isinstance(idle_frame_timeout, int | float):
            raise InvalidRequest(
                f"idle_frame_timeout must be a number of seconds, not {idle_frame_timeout!r}"
            )
        if not (idle_frame_timeout > 0 and math.isfinite(idle_frame_timeout)):
            raise InvalidRequest(
                f"idle_frame_timeout must be positive and finite, not {idle_frame_timeout!r}"
            )
        self._idle_frame_timeout = float(idle_frame_timeout)
        self._quotas = Quotas.make(
            None if max_client_bytes is None else parse_size(max_client_bytes),
            max_client_blocks,
            max_connections,
        )
        # the link's configuration is checked now: a bad one never binds anything
        self._link_config = make_config(
            node, listen, peers, keys, link_timeout, insecure, link_io_nice
        )
        self._link: Link | None = None
        self._path_arg = None if path is None else Path(path)
        self._pool_args = (pool_size, max_pool_size, min_block)
        self._pool: Pool | None = None
        self._gens: GenerationTable | None = None
        self._state: ServerState | None = None  # from start(): what the parts share
        self._runner: asyncio.Task[None] | None = None
        self._stop = anyio.Event()
        self._private_dir: Path | None = None
        self._path: Path | None = None
        self._socket_id: SocketId | None = None  # of the socket file this one made
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
            state = ServerState(self._pool, self._gens, HANDLERS, self._quotas)
            self._path = self._prepare_path()
            if self._link_config is not None:
                from .._link.link import Link  # pyzmq is imported only by nodes that link

                link = Link(LinkPort(state, self._link_config.node), self._link_config)
                await link.start()
                self._link = state.link = link
            self._state = state
            sock, self._socket_id = listen_at(self._path)
            try:
                listener = await SocketListener.from_socket(sock)
            except BaseException:
                sock.close()
                raise
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
            self._pool = self._gens = self._link = self._state = None
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
                assert self._state is not None
                self._state.tg = tg
                handler = functools.partial(
                    serve_connection, self._state, idle_frame_timeout=self._idle_frame_timeout
                )
                tg.start_soon(accept_connections, listener, handler, tg)
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            # the accept loop never closes the listener: without this the listening
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
        finish the reclaims in progress, free the pool and remove the socket.
        Idempotent."""
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
            for session in list(self._state.sessions.values()) if self._state else ():
                session.abort()
            if self._link is not None:
                with anyio.CancelScope(shield=True):
                    await self._link.aclose()
            if self._runner is not None:
                self._stop.set()
                with anyio.CancelScope(shield=True):
                    await self._runner
        finally:
            if self._state is not None:  # (every connection has ended: none starts one)
                with anyio.CancelScope(shield=True):
                    await self._state.finish_reclaims()
            if self._state is not None:
                for bells in self._state.bells.values():
                    for fd in bells:
                        os.close(fd)
                self._state.bells.clear()
            if self._pool is not None:
                self._pool.close()
            if self._gens is not None:
                self._gens.close()
            self._remove_path()
            self._closed.set()
            log.info("coordinator.stopped", address=str(self._path))

    def _prepare_path(self) -> Path:
        if self._path_arg is None:
            self._private_dir = make_private_dir()
            return self._private_dir / "coordinator.sock"
        prepare_path(self._path_arg)
        return self._path_arg

    def _remove_path(self) -> None:
        remove_path(self._path, self._private_dir, self._socket_id)

    def stats(self) -> Stats:
        """The pool and admin space now, without a round trip (embedded use): every
        process and name, where :meth:`Client.stats` lists the first 4096 of each."""
        if self._state is None:
            raise BlockIPCError("the coordinator has not been started")
        return self._state.stats()
