"""Direct request/reply: a requester and its responder on a Unix stream socket of their
own, past the coordinator, for requests whose payload travels inline.

Theory of operation
-------------------
A request through the coordinator costs four wake-ups (requester, coordinator,
responder, coordinator again). A direct one costs two, as a raw socket echo does.

* The responder, when it first receives (``next_request``/``requests``), listens on an
  abstract Unix socket (Linux; a random name, so nothing is left on disk) and tells the
  coordinator its address with its SERVE (``direct``). The coordinator hands that
  address back with every brokered REPLY to a REQUEST for it.
* The requester caches the address per responder name (learnt from its first brokered
  request), connects, checks the responder's uid (``SO_PEERCRED``, the one rule of
  :func:`~blockipc._handshake.trusted_peer`), says its name, and from then on sends its
  inline requests on that socket. The responder checks the requester's uid the same
  way before it reads a byte.
* Frames (:func:`frame`): a 12-byte head ``<u32 data length, u32 request id, u8 kind,
  u8 codec length, u16 meta length>``, the codec's name, its meta (msgpack, when not
  empty; at most ``MAX_HEADER`` bytes, the rule of every codec meta), then the data.
  No msgpack on the hot path: a 64-byte request costs two struct calls. Kinds: HELLO
  (data: the requester's name), REQUEST, CANCEL (the requester gave up: a request not
  received yet leaves the responder's queue; a reply to one received is dropped by the
  requester), REPLY and ERROR (data: ``<u32 error code>`` and the message).

Endings. The responder closes or dies: its sockets end, and every request in flight on
them fails at once with :class:`PeerUnreachable` (the socket's EOF says so); the
cached address is dropped, so the next request goes through the coordinator again
(and learns a restarted responder's new address). A connect that fails (a stale
address) drops it as well and goes through the coordinator. The responder's queue of
direct requests not received yet is bounded by ``MAX_QUEUED_REQUESTS``, as the
coordinator's is: the next is answered with ``InboxFull`` at once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
import sys
from collections.abc import Callable, Sized
from typing import Any, Final, cast

import msgpack

from .._core.limits import MAX_QUEUED_REQUESTS, MAX_STR, check_name, pack_header
from .._exceptions import (
    BlockIPCError,
    InboxFull,
    PeerUnreachable,
    ProtocolError,
    error_from_code,
)
from .._handshake import peer_credentials, trusted_peer

__all__ = [
    "AVAILABLE",
    "MAX_DIRECT_FRAME",
    "DirectLink",
    "DirectListener",
    "error_frame",
    "frame",
]

AVAILABLE: Final = sys.platform.startswith("linux")
"""Whether direct request/reply is used: abstract Unix sockets are Linux's."""
MAX_DIRECT_FRAME: Final = 256 << 20
"""Bytes of one direct frame, at most (a reply to a direct request travels in its
socket, even when larger than an inline payload); a larger reply fails the request."""

HELLO, REQUEST, CANCEL, REPLY, ERROR = 0, 1, 2, 3, 4
_HEAD: Final = struct.Struct("<IIBBH")
_CODE: Final = struct.Struct("<I")
_EMPTY: Final[dict[str, Any]] = {}
# the codec names seen, encoded and decoded once (a few: the codecs' names; bounded)
_NAMES: dict[str, bytes] = {}
_CODECS: dict[bytes, str] = {}
_MAX_NAMES: Final = 64


def _name(codec: str) -> bytes:
    name = _NAMES.get(codec)
    if name is None:
        name = codec.encode()
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[codec] = name
    return name


def _codec(raw: bytes) -> str:
    codec = _CODECS.get(raw)
    if codec is None:
        codec = raw.decode()
        if len(_CODECS) < _MAX_NAMES:
            _CODECS[raw] = codec
    return codec


def frame(
    kind: int, rid: int, codec: str = "", meta: dict[str, Any] | None = None, data: bytes = b""
) -> bytes:
    """One direct frame (see the module's docstring).

    >>> frame(CANCEL, 7)
    b'\\x00\\x00\\x00\\x00\\x07\\x00\\x00\\x00\\x02\\x00\\x00\\x00'
    """
    name = _name(codec)
    if meta:
        packed = pack_header(meta, "codec meta")
        head = _HEAD.pack(len(data), rid, kind, len(name), len(packed))
        return b"".join((head, name, packed, data))
    return b"".join((_HEAD.pack(len(data), rid, kind, len(name), 0), name, data))


def error_frame(rid: int, exc: BlockIPCError) -> bytes:
    """An ERROR frame: ``exc`` raised in the requester."""
    return frame(ERROR, rid, data=_CODE.pack(exc.code) + str(exc)[:MAX_STR].encode())


class _Framer(asyncio.Protocol):
    """Frames out of a byte stream; ``on_frame(header, data)`` for each."""

    __slots__ = ("_buf", "transport")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        """Every whole frame in what has come (kept until a frame is whole)."""
        buf = self._buf
        if not buf and len(data) >= 12:  # the usual case: one whole frame, no meta
            dl, rid, kind, cl, ml = _HEAD.unpack_from(data)
            if not ml and 12 + cl + dl == len(data):
                try:
                    self.on_frame(kind, rid, _codec(data[12 : 12 + cl]), _EMPTY, data[12 + cl :])
                except Exception:  # noqa: BLE001 -- a malformed frame: this socket is done
                    if self.transport is not None:
                        self.transport.abort()
                return
        if not buf:  # whole frames in one read
            view: bytes | bytearray = data
        else:
            buf += data
            view = buf
        at, end = 0, len(view)
        try:
            while end - at >= 12:
                dl, rid, kind, cl, ml = _HEAD.unpack_from(view, at)
                if dl > MAX_DIRECT_FRAME:
                    raise ProtocolError(f"a direct frame of {dl} bytes is over the limit")
                at += 12
                stop = at + cl + ml + dl
                if stop > end:
                    at -= 12
                    break
                codec = _codec(bytes(view[at : at + cl]))
                at += cl
                meta = _unpack_meta(view[at : at + ml]) if ml else _EMPTY
                self.on_frame(kind, rid, codec, meta, bytes(view[at + ml : stop]))
                at = stop
        except Exception:  # noqa: BLE001 -- a malformed frame: this socket is done
            if self.transport is not None:
                self.transport.abort()
            return
        if view is buf:
            del buf[:at]
        elif at < end:
            buf += data[at:]

    def on_frame(self, kind: int, rid: int, codec: str, meta: dict[str, Any], data: bytes) -> None:
        raise NotImplementedError


def _unpack_meta(raw: bytes | bytearray) -> dict[str, Any]:
    meta = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if type(meta) is not dict:
        raise ProtocolError("a direct frame's codec meta is not a map")
    return meta


# -- the requester's side ------------------------------------------------------------
class DirectLink(_Framer):
    """A requester's socket to one responder: requests out, futures by request id."""

    __slots__ = ("_decode", "_ids", "_on_lost", "_pending", "lost", "to")

    def __init__(
        self,
        to: str,
        on_lost: Callable[[DirectLink], None],
        decode: Callable[[str, dict[str, Any], bytes], Any],
    ) -> None:
        super().__init__()
        self.to = to
        self._decode = decode
        self.lost = False
        self._on_lost = on_lost
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0

    @classmethod
    async def open(
        cls,
        address: str,
        to: str,
        me: str,
        on_lost: Callable[[DirectLink], None],
        decode: Callable[[str, dict[str, Any], bytes], Any],
    ) -> DirectLink:
        """Connect to ``address`` (checking the responder's uid) and say ``me``; the
        replies' payloads are decoded with ``decode(codec, meta, data)``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, address)
            _pid, uid, _gid = peer_credentials(sock)
            if not trusted_peer(uid):
                raise PeerUnreachable(f"the direct socket of {to!r} belongs to uid {uid}")
            link = cls(to, on_lost, decode)
            await loop.create_unix_connection(lambda: link, sock=sock)
        except BaseException:
            sock.close()
            raise
        assert link.transport is not None
        link.transport.write(frame(HELLO, 0, data=me.encode()))
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(
                    PeerUnreachable(f"{self.to!r} disconnected before it answered the request")
                )
        self._on_lost(self)

    async def call(
        self, codec: str, meta: dict[str, Any], data: bytes, loop: asyncio.AbstractEventLoop
    ) -> Any:
        """Send one request (on ``loop``, the running one); its reply's object (decoded
        by ``decode``, when it comes), or its error raised."""
        fut: asyncio.Future[Any] = loop.create_future()
        rid = self.send(fut, codec, meta, data)
        try:
            return await fut
        except asyncio.CancelledError:
            self.withdraw(rid)
            raise

    def send(self, fut: asyncio.Future[Any], codec: str, meta: dict[str, Any], data: bytes) -> int:
        """Send one request, answered by ``fut`` (see :meth:`call`); its id.

        :raises PeerUnreachable: this socket has ended.
        """
        if self.lost or self.transport is None:
            raise PeerUnreachable(f"{self.to!r} disconnected")
        self._ids = rid = self._ids + 1
        self._pending[rid] = fut
        if meta:
            self.transport.write(frame(REQUEST, rid, codec, meta, data))
        else:  # (frame's, inline: the hot path)
            name = _NAMES.get(codec) or _name(codec)
            head = _HEAD.pack(len(data), rid, REQUEST, len(name), 0)
            self.transport.write(b"".join((head, name, data)))
        return rid

    def withdraw(self, rid: int) -> None:
        """The requester of ``rid`` gave up (cancelled): a late reply is dropped."""
        if self._pending.pop(rid, None) is not None and not self.lost:
            assert self.transport is not None
            self.transport.write(frame(CANCEL, rid))

    def data_received(self, data: bytes) -> None:
        if not self._buf and len(data) >= 12:  # the hot path: one whole reply, no meta
            dl, rid, kind, cl, ml = _HEAD.unpack_from(data)
            codec = _CODECS.get(data[12 : 12 + cl])
            if kind == REPLY and not ml and 12 + cl + dl == len(data) and codec is not None:
                fut = self._pending.pop(rid, None)
                if fut is None or fut.done():
                    return  # withdrawn: the late answer is dropped
                if codec == "raw":  # (decode_payload's raw bytes, as they are)
                    fut.set_result(data[12 + cl :])
                    return
                try:
                    value = self._decode(codec, _EMPTY, data[12 + cl :])
                except Exception as exc:  # noqa: BLE001 -- CodecError and the like: the caller's
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)
                return
        self._frames(data)

    def on_frame(self, kind: int, rid: int, codec: str, meta: dict[str, Any], data: bytes) -> None:
        fut = self._pending.pop(rid, None)
        if fut is None or fut.done():
            return  # withdrawn: the late answer is dropped
        if kind == REPLY:
            # decoded here, not in the requester's task: one object less per reply,
            # and a payload that does not decode raises there all the same
            try:
                value = self._decode(codec, meta, data)
            except Exception as exc:  # noqa: BLE001 -- CodecError and the like: the caller's
                fut.set_exception(exc)
            else:
                fut.set_result(value)
        elif kind == ERROR:
            (code,) = _CODE.unpack_from(data)
            fut.set_exception(error_from_code(code, data[4:].decode(errors="replace")))
        else:
            raise ProtocolError(f"unexpected direct frame kind {kind}")

    def fail_all(self, exc: BaseException) -> None:
        """Fail every request in flight with ``exc`` (this client closed)."""
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # marked retrieved: its task may be gone

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# -- the responder's side ------------------------------------------------------------
class DirectListener:
    """A responder's listening socket and its accepted requester connections.

    ``deliver(peer, id, codec, meta, data)`` hands each request on (to the
    client's ``queue`` of requests not received yet, or to a receive waiting);
    ``withdraw(peer, id)`` takes back one not received yet.
    """

    __slots__ = ("_server", "address", "deliver", "peers", "queue", "withdraw")

    def __init__(
        self,
        deliver: Callable[[_Peer, int, str, dict[str, Any], bytes], None],
        withdraw: Callable[[_Peer, int | None], None],
        queue: Sized,
    ) -> None:
        self.address = f"\0blockipc-rr-{os.getpid()}-{secrets.token_hex(8)}"
        self.deliver, self.withdraw, self.queue = deliver, withdraw, queue
        self.peers: set[_Peer] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.address)
            sock.listen(128)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(lambda: _Peer(self), sock=sock)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for peer in list(self.peers):
            peer.close()


class _Peer(_Framer):
    """One requester's connection to a responder."""

    __slots__ = ("listener", "lost", "sender")

    def __init__(self, listener: DirectListener) -> None:
        super().__init__()
        self.listener = listener
        self.sender = ""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        try:
            _pid, uid, _gid = peer_credentials(sock)
        except OSError:
            uid = -1
        if not trusted_peer(uid):
            self.transport.abort()
            return
        self.listener.peers.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.listener.peers.discard(self)
        self.listener.withdraw(self, None)  # its requests not received yet: nobody waits

    def data_received(self, data: bytes) -> None:
        if not self._buf and len(data) >= 12 and self.sender:  # the hot path: one request
            dl, rid, kind, cl, ml = _HEAD.unpack_from(data)
            codec = _CODECS.get(data[12 : 12 + cl])
            if kind == REQUEST and not ml and 12 + cl + dl == len(data) and codec is not None:
                listener = self.listener
                if len(listener.queue) < MAX_QUEUED_REQUESTS:
                    try:
                        listener.deliver(self, rid, codec, _EMPTY, data[12 + cl :])
                    except Exception:  # noqa: BLE001 -- as _frames: this socket is done
                        if self.transport is not None:
                            self.transport.abort()
                    return
        self._frames(data)  # (the rest, and a request over the bound, as on_frame says)

    def on_frame(self, kind: int, rid: int, codec: str, meta: dict[str, Any], data: bytes) -> None:
        if kind == REQUEST and self.sender:
            if len(self.listener.queue) >= MAX_QUEUED_REQUESTS:
                exc = InboxFull(f"{MAX_QUEUED_REQUESTS} requests wait for this responder already")
                self.answer_error(rid, exc)
                return
            self.listener.deliver(self, rid, codec, meta, data)
        elif kind == CANCEL:
            self.listener.withdraw(self, rid)
        elif kind == HELLO and not self.sender:
            check_name(data.decode(), "process name")
            self.sender = data.decode()
        else:
            raise ProtocolError(f"unexpected direct frame kind {kind}")

    def answer(self, rid: int, codec: str, meta: dict[str, Any], data: bytes) -> None:
        if not self.lost and self.transport is not None:
            if meta:
                self.transport.write(frame(REPLY, rid, codec, meta, data))
                return
            name = _NAMES.get(codec) or _name(codec)  # (frame's, inline: the hot path)
            head = _HEAD.pack(len(data), rid, REPLY, len(name), 0)
            self.transport.write(b"".join((head, name, data)))

    def answer_error(self, rid: int, exc: BlockIPCError) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(error_frame(rid, exc))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
