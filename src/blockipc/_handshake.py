"""The handshake, on the raw socket, before a transport takes it over.

Segment file descriptors travel as ``SCM_RIGHTS`` ancillary data. A transport that
reads with ``recv_into`` drops ancillary data, so fds can only be passed while the
socket is still a plain anyio ``UNIXSocketStream``: the handshake runs there, then the
socket is duplicated and handed to an asyncio/uvloop transport for the hot path.
Frames are encoded and checked by the sans-IO :class:`~blockipc._core.protocol.Connection`,
which carries over to the transport with any bytes it already buffered.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

import anyio
from anyio.abc import SocketAttribute, UNIXSocketStream

from ._core.protocol import Connection, Event, NeedData
from ._exceptions import ConnectionClosed, ProtocolError

__all__ = [
    "MAX_FDS",
    "peer_credentials",
    "receive_event",
    "send_frame",
    "take_socket",
    "trusted_peer",
]

MAX_FDS = 128
"""Segment fds passed in one message; more are fetched with further ATTACH requests."""

_RECV_CHUNK = 65536


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """Return ``(pid, uid, gid)`` of the process at the other end (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def trusted_peer(uid: int) -> bool:
    """Whether a process running as ``uid`` may be at the other end of a blockipc socket:
    this process's own uid, or root (who can reach every process's memory anyway).

    The one rule for both ends: the coordinator checks each client's uid before it reads
    ``HELLO``, and a client checks its coordinator's before it sends a byte (a process of
    another user that listens on the path first would otherwise receive the client's
    name, its inline writes and its lease contents).
    """
    return uid in (os.getuid(), 0)


async def receive_event(
    stream: UNIXSocketStream, conn: Connection, *, with_fds: bool = False
) -> tuple[Event, list[int]]:
    """Read until ``conn`` yields one event; with ``with_fds``, collect passed fds.

    File descriptors are owned by the caller on return; on any error they are closed.
    """
    fds: list[int] = []
    try:
        while True:
            event = conn.next_event()
            if not isinstance(event, NeedData):
                return event, fds
            try:
                if with_fds and not fds:
                    data, got = await stream.receive_fds(_RECV_CHUNK, MAX_FDS + 1)
                    fds.extend(got)
                else:
                    data = await stream.receive(_RECV_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise ConnectionClosed("connection closed during the handshake") from None
            except RuntimeError as exc:  # anyio: ancillary data that is not SCM_RIGHTS
                raise ProtocolError(f"unexpected ancillary data: {exc}") from None
            conn.receive_data(data)
    except BaseException:
        close_fds(fds)
        raise


async def send_frame(stream: UNIXSocketStream, frame: bytes, fds: list[int] | None = None) -> None:
    try:
        if fds:
            await stream.send_fds(frame, fds)
        else:
            await stream.send(frame)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise ConnectionClosed("connection closed during the handshake") from exc


async def take_socket(stream: UNIXSocketStream) -> socket.socket:
    """Detach the socket from ``stream`` (a duplicate); the stream is closed."""
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    sock = raw.dup()
    try:
        sock.setblocking(False)
        await stream.aclose()
    except BaseException:  # e.g. cancelled in aclose: the duplicate is nobody's
        sock.close()
        raise
    return sock


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
