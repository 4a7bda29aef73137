"""The listener: the socket path, accepting a connection, and its handshake.

:func:`accept_connections` is the accept loop: it starts one anyio task per connection
and outlives every accept error. Out of file descriptors (``EMFILE``, ``ENFILE``) or
kernel memory (``ENOBUFS``, ``ENOMEM``) it backs off (10 ms, doubling to 1 s) and tries
again, with one warning per streak (and one per ``ACCEPT_WARN_INTERVAL`` while it lasts),
so the sessions that hold the fds keep running and the first accept after some close
serves again; any other error is logged as an error and retried the same way. (anyio's
``Listener.serve`` ends on the first: every session was cancelled and nothing said why.)

One anyio task per connection. It checks the peer's uid with ``SO_PEERCRED``, reads
``HELLO`` (or ``ATTACH``: a side connection of a registered process that fetches fds for
segments added later or for a channel's eventfds), registers the process, passes the
segment fds with ``SCM_RIGHTS``, then hands the socket to a :class:`Session` and waits
for the connection to end; its ``finally`` reclaims what the process held.

A process that says ``access="r"`` in ``HELLO`` is recorded as read-only
(``state.read_only``) for its whole connection, its ``ATTACH`` side connections
included: every segment fd it is passed is a fresh ``O_RDONLY`` open of the segment
(:meth:`~.._shm.pool.Segment.open_read_only`), closed here once sent, and
:meth:`ServerState.handle` refuses its requests that need write access.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, UNIXSocketStream

from .._core.limits import IDLE_FRAME_TIMEOUT, LISTEN_BACKLOG
from .._core.protocol import (
    ACCESS_MODES,
    PROTOCOL_VERSION,
    Connection,
    Event,
    Op,
    Reply,
    Request,
    Role,
)
from .._exceptions import AccessDenied, BlockIPCError, ConnectionClosed, ProtocolError
from .._handshake import (
    MAX_FDS,
    close_fds,
    peer_credentials,
    receive_event,
    send_frame,
    take_socket,
    trusted_peer,
)
from .._log import get_logger
from .ops.blocks import MAX_INLINE
from .reclaim import reclaim
from .session import Session, error_reply

if TYPE_CHECKING:
    from .._core.routing import ProcessRecord
    from .._shm.pool import Segment
    from .state import ServerState

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "RUNTIME_DIR_ENV",
    "make_private_dir",
    "accept_connections",
    "listen_at",
    "prepare_path",
    "remove_path",
    "serve_connection",
]

log = get_logger("blockipc.coordinator")

HANDSHAKE_TIMEOUT = 5.0

RUNTIME_DIR_ENV = "XDG_RUNTIME_DIR"
"""Where a coordinator given no path makes its private socket directory, when usable."""


def make_private_dir() -> Path:
    """A fresh directory for the socket of a coordinator given no path, mode 0700 (only
    this user may reach the socket, or put another in its place): under
    ``$XDG_RUNTIME_DIR`` when that is usable (a directory of this user's, mode 0700, as
    the XDG spec requires), else under the temporary directory (``$TMPDIR``, ``/tmp``)."""
    base = os.environ.get(RUNTIME_DIR_ENV) or None
    if base is not None and not _private_to_us(base):
        log.debug("coordinator.runtime_dir_unusable", path=base)
        base = None
    private = Path(tempfile.mkdtemp(prefix="blockipc-", dir=base))
    os.chmod(private, 0o700)  # mkdtemp's 0700 less the umask: exactly 0700
    return private


def _private_to_us(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    )


ACCEPT_BACKOFF = (0.01, 1.0)
"""The accept loop's first and longest pause after a failed ``accept()``, in seconds."""
ACCEPT_WARN_INTERVAL = 10.0
"""While ``accept()`` keeps failing, one log event per this many seconds, at most."""
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""``accept()`` errors that say the process or the kernel is out of something (fds,
buffers) that closing connections gives back: wait and try again."""


async def accept_connections(
    listener: SocketListener,
    handler: Callable[[SocketStream], Coroutine[Any, Any, None]],
    tg: TaskGroup,
) -> None:
    """Accept connections until ``listener`` is closed, each handled in a task of ``tg``;
    a failed ``accept()`` is logged, waited out and retried, never the end."""
    backoff, longest = ACCEPT_BACKOFF
    delay = 0.0
    failures = 0  # in the current streak
    warned = False  # in the current streak
    warned_at: float | None = None  # across streaks: a flapping accept() logs no more
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except (anyio.BrokenResourceError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
            code = cause.errno if isinstance(cause, OSError) else None
            delay = min(longest, delay * 2) if delay else backoff
            failures += 1
            now = time.monotonic()
            if warned_at is None or now - warned_at >= ACCEPT_WARN_INTERVAL:
                warned, warned_at = True, now
                level = log.warning if code in RESOURCE_ERRNOS else log.error
                level(
                    "listener.accept_failed",
                    errno=None if code is None else errno.errorcode.get(code, str(code)),
                    error=str(cause or exc),
                    failures=failures,
                    retry_in=delay,
                )
            await anyio.sleep(delay)
            continue
        if failures:
            if warned:
                log.info("listener.accept_resumed", failures=failures)
            failures, delay, warned = 0, 0.0, False
        tg.start_soon(handler, stream)


def prepare_path(path: Path) -> None:
    """Make ``path`` free for a new socket: a stale one of this user's (nobody answers
    on it) is removed; anything else there (not a socket, another user's socket, a live
    coordinator) raises. A directory where another user could replace the socket is
    logged (``coordinator.socket_dir_unsafe``): clients refuse a server of another uid,
    but such a replacement still keeps them from reaching this coordinator."""
    _warn_if_unsafe_dir(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BlockIPCError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        _pid, uid, _gid = peer_credentials(probe)
    except (ConnectionRefusedError, FileNotFoundError):
        if st.st_uid != os.getuid():
            raise BlockIPCError(
                f"{path} is a stale socket of uid {st.st_uid}, not of this user "
                f"(uid {os.getuid()}); refusing to replace it: remove it, or pick another path"
            ) from None
        log.warning("coordinator.stale_socket_removed", path=str(path))
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    if uid != os.getuid():
        raise BlockIPCError(
            f"a process of uid {uid} (not this user, uid {os.getuid()}) is already "
            f"serving at {path}; refusing to start there: pick a path in a directory "
            "only this user can write to"
        )
    raise BlockIPCError(f"a coordinator is already serving at {path}")


def _warn_if_unsafe_dir(directory: Path) -> None:
    try:
        st = directory.stat()
    except OSError:
        return  # binding the socket says what is wrong
    writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not st.st_mode & stat.S_ISVTX:
        reason = "writable by other users, without the sticky bit"
    elif not trusted_peer(st.st_uid):
        reason = f"owned by uid {st.st_uid}"
    else:
        return
    log.warning(
        "coordinator.socket_dir_unsafe",
        path=str(directory),
        mode=oct(stat.S_IMODE(st.st_mode)),
        reason=reason,
    )


SocketId = tuple[int, int]
"""A socket file's ``(st_dev, st_ino)``: which socket a path names."""


def listen_at(path: Path) -> tuple[socket.socket, SocketId]:
    """A listening Unix socket at ``path``, mode 0600, that appears there only once it
    accepts connections: it is bound at a temporary name beside ``path``, made 0600,
    set listening, then hard-linked into place. A client that finds the path can
    connect at once (no ``ECONNREFUSED`` between ``bind`` and ``listen``), and a
    coordinator that started at ``path`` meanwhile keeps its socket: ``link(2)`` fails
    where ``rename(2)`` (or anyio's ``create_unix_listener``) would replace it. Returns
    the socket and its file's :data:`SocketId`, for :func:`remove_path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # a temporary name no longer than the final one where it can be, so that a
        # path that fits in sun_path (107 bytes) binds
        size = max(2, min(8, len(path.name) - 1))
        for _ in range(100):
            temp = path.with_name("." + secrets.token_hex(4)[:size])
            try:
                sock.bind(str(temp))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise BlockIPCError(f"no free temporary name beside {path} for its socket")
        try:
            os.chmod(temp, 0o600)
            sock.listen(LISTEN_BACKLOG)
            os.link(temp, path)
        except FileExistsError:
            raise BlockIPCError(f"a coordinator is already serving at {path}") from None
        finally:
            temp.unlink(missing_ok=True)
        st = path.lstat()
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def remove_path(path: Path | None, private_dir: Path | None, ours: SocketId | None) -> None:
    """Remove the socket file at ``path`` if it is still ``ours`` (a coordinator that
    took the path since, after this one's socket was removed by hand, keeps its own),
    then ``private_dir`` if it was made for it."""
    if path is not None and ours is not None:
        with contextlib.suppress(OSError):
            st = path.lstat()
            if (st.st_dev, st.st_ino) == ours:
                path.unlink()
    if private_dir is not None:
        with contextlib.suppress(OSError):
            private_dir.rmdir()


async def serve_connection(
    state: ServerState, stream: SocketStream, *, idle_frame_timeout: float = IDLE_FRAME_TIMEOUT
) -> None:
    """One accepted connection, from its handshake to its reclaim; its session is closed
    once it holds part of a frame and nothing more for ``idle_frame_timeout`` seconds."""
    try:
        assert isinstance(stream, UNIXSocketStream)
        await _serve(state, stream, idle_frame_timeout)
    except (ConnectionClosed, ConnectionError) as exc:
        # the client hung up during its handshake (sending the welcome or taking the
        # socket failed): its business, not an error of ours; a client can do it at will
        log.debug("client.closed_during_handshake", error=repr(exc))
    except Exception as exc:  # one bad connection must not stop the listener
        log.exception("coordinator.connection_failed", error=repr(exc))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def _serve(state: ServerState, stream: UNIXSocketStream, idle_frame_timeout: float) -> None:
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    pid, uid, _gid = peer_credentials(raw)
    if not trusted_peer(uid):
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
        await _attach(state, stream, conn, event)
        return
    args = event.args
    try:
        if args["version"] != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {args['version']} is not supported "
                f"(this coordinator speaks {PROTOCOL_VERSION})"
            )
        if args["access"] not in ACCESS_MODES:
            raise ProtocolError(
                f"access must be one of {', '.join(map(repr, ACCESS_MODES))}, "
                f"not {args['access']!r}"
            )
        state.quotas.check_connect(uid, (p.uid for p in state.table.processes.values()))
        proc = state.table.register(
            args["name"],
            pid=pid,
            uid=uid,
            inbox_messages=args["inbox_messages"],
            inbox_bytes=args["inbox_bytes"],
        )
    except BlockIPCError as exc:
        log.warning("client.refused", reason=str(exc), pid=pid, name=args["name"])
        await send_frame(stream, conn.send(error_reply(event, exc)))
        return
    token = secrets.token_bytes(16)
    state.tokens[token] = proc
    if args["access"] == "r":
        state.read_only.add(proc.key)
    session: Session | None = None
    try:
        pool = state.pool
        segments = sorted(pool.segments.values(), key=lambda s: s.id)[:MAX_FDS]
        welcome = Reply(
            event.req_id,
            Op.HELLO,
            {
                "version": PROTOCOL_VERSION,
                "token": token,
                "min_block": pool.min_block,
                "max_inline": MAX_INLINE,
                "segments": [[s.id, s.size] for s in segments],
                "gen_size": state.gens.size,
            },
        )
        await _send_with_segments(state, proc, stream, conn.send(welcome), segments, state.gens.fd)
        sock = await take_socket(stream)
        loop = asyncio.get_running_loop()
        session = Session(state.handle, conn, proc, idle_frame_timeout)
        # listed before the transport starts: a request it handles at once (a recv,
        # an accept) may need to be found by a send from another session
        state.sessions[proc.key] = session
        try:
            await loop.connect_accepted_socket(lambda: session, sock)
        except BaseException:
            sock.close()
            raise
        log.info("client.connect", name=proc.name, pid=pid)
        state.retry_peer_waits(proc.name)
        await session.closed.wait()
    finally:
        state.read_only.discard(proc.key)
        # synchronous, so cancellation cannot cut it short; what a process that held
        # many blocks leaves after one slice, a task of the state's gives back
        reclaim(state, proc, token, session)


async def _attach(
    state: ServerState, stream: UNIXSocketStream, conn: Connection, req: Request
) -> None:
    proc = state.tokens.get(req.args["token"])
    try:
        if proc is None:
            raise ProtocolError("ATTACH with an unknown session token")
        pool = state.pool
        wanted = req.args["segments"][:MAX_FDS]
        segments = [pool.segments[i] for i in wanted if i in pool.segments]
        bells: list[int] = []
        if req.args["channel"]:
            bells = list(state.bells[state.table.channel_end(proc, req.args["channel"]).id])
        reply: Event = Reply(
            req.req_id,
            Op.ATTACH,
            {"segments": [[s.id, s.size] for s in segments], "bells": len(bells)},
        )
        await _send_with_segments(state, proc, stream, conn.send(reply), segments, *bells)
    except ConnectionClosed:
        log.debug("client.closed_during_attach", name=proc.name if proc else None)
    except AccessDenied as exc:
        await send_frame(stream, conn.send(error_reply(req, exc)))
    except ProtocolError as exc:
        log.warning("protocol.error", phase="attach", error=str(exc))
        await send_frame(stream, conn.send(error_reply(req, exc)))


async def _send_with_segments(
    state: ServerState,
    proc: ProcessRecord,
    stream: UNIXSocketStream,
    frame: bytes,
    segments: list[Segment],
    *more_fds: int,
) -> None:
    """Send ``frame`` with the fds of ``segments`` (then ``more_fds``): the segments'
    own to a read-write process, fresh read-only ones (closed once sent) to a
    read-only process."""
    if proc.key not in state.read_only:
        await send_frame(stream, frame, [*(s.fd for s in segments), *more_fds])
        return
    opened: list[int] = []
    try:
        opened.extend(seg.open_read_only() for seg in segments)  # (kept as made: closed below)
        await send_frame(stream, frame, [*opened, *more_fds])
    finally:
        close_fds(opened)
