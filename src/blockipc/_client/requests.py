"""A request received by a responder (:meth:`Client.requests`): its value, block and
sender, and the answer it owes its requester (:meth:`IncomingRequest.reply` or
:meth:`IncomingRequest.fail`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Final, Protocol

import anyio
import msgpack

from .._core.codecs import get_codec
from .._core.limits import MAX_INLINE_PAYLOAD, MAX_STR
from .._core.protocol import NO_BLOCK, Op, Reply
from .._exceptions import BlockIPCError, InvalidRequest, RemoteError
from .._types import Block
from .direct import MAX_DIRECT_FRAME

__all__ = ["DirectRequest", "IncomingRequest", "Payload", "decode_payload", "encode_inline"]

_UNSET: Any = object()
_NO_META: Final[dict[str, Any]] = {}  # (never changed: a payload without codec meta)

Payload = tuple[int, str, dict[str, Any], bytes, Block | None]
"""What goes out as a payload: block id (``NO_BLOCK``: inline), codec, codec meta,
inline data, and the block made for it (to free if it does not go)."""


def decode_payload(codec: str, meta: dict[str, Any], data: bytes | memoryview) -> Any:
    """The object in an inline payload (``meta``: its codec's meta)."""
    if not meta and type(data) is bytes:  # the hot paths: the codecs' own, without checks
        if codec == "raw":
            return data  # what the raw codec returns
        if codec == "msgpack":
            try:  # (MsgpackCodec.decode's call; an error goes its way, for its message)
                return msgpack.unpackb(data, raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001, S110 -- raised again, as a CodecError, below
                pass
    return get_codec(codec).decode(data, meta)


def encode_inline(obj: object, codec: str) -> tuple[dict[str, Any], bytes] | None:
    """``obj`` encoded with ``codec`` as an inline payload ``(meta, data)``, or None
    when it is over ``MAX_INLINE_PAYLOAD`` bytes encoded."""
    if codec == "raw" and type(obj) is bytes:  # what the raw codec makes (a hot path)
        return ({}, obj) if len(obj) <= MAX_INLINE_PAYLOAD else None
    if codec == "msgpack":  # the default codec: MsgpackCodec.prepare's call (a hot path)
        try:
            data = msgpack.packb(obj)
        except Exception:  # noqa: BLE001, S110 -- raised again, as a CodecError, below
            pass
        else:
            return ({}, data) if len(data) <= MAX_INLINE_PAYLOAD else None
    with get_codec(codec).prepare(obj) as enc:
        if enc.nbytes > MAX_INLINE_PAYLOAD:
            return None
        return enc.meta, enc.tobytes()


class _Owner(Protocol):
    """What a request needs of the :class:`Client` that received it."""

    _sizes: dict[int, int]
    _epoch: int
    _closed: bool

    async def _call(
        self, op: Op, args: dict[str, Any], data: bytes = b"", *, epoch: int | None = None
    ) -> Reply:
        """Send a request of connection ``epoch`` and wait for its reply."""
        ...

    def _check_epoch(self, epoch: int) -> None:
        """Raise unless connection ``epoch`` is the live one."""
        ...

    async def _outgoing(self, obj: object, codec: str) -> Payload:
        """``obj`` made ready to go as a payload (a block put for it if large)."""
        ...

    async def _drop_made(self, block: Block | None) -> None:
        """Free a block made for a payload that did not go."""
        ...

    async def get(self, block_or_name: Block, codec: str | None = None) -> Any:
        """The object in a block."""
        ...

    async def free(self, block: Block) -> None:
        """Free a block."""
        ...


class IncomingRequest:
    """A request received by :meth:`Client.requests` (or :meth:`Client.next_request`);
    answer it once, with :meth:`reply` (the requester's :meth:`Client.request` returns
    that object) or :meth:`fail` (it raises :class:`RemoteError` there).

    ``value`` is the requester's object, decoded with its codec (a copy, the caller's).
    ``block`` is the request's block when its payload was too large to travel inline
    (else None): this process's until it answers, when it is freed, unless it is the
    reply's payload (``req.reply(req.block)`` hands it back, zero-copy). ``sender`` is
    the requester's name. A request this process never answers fails in its requester
    when this client closes or its process dies (:class:`PeerUnreachable`)::

        async for req in client.requests():
            await req.reply({"sum": sum(req.value)})
    """

    __slots__ = (
        "_answered",
        "_client",
        "_data",
        "_epoch",
        "_meta",
        "_offset",
        "_segment",
        "_value",
        "block",
        "codec",
        "id",
        "sender",
    )

    def __init__(
        self,
        client: _Owner,
        epoch: int,
        segment: memoryview | None,
        result: dict[str, Any],
        data: bytes,
    ) -> None:
        r = result
        self._client = client
        self._epoch = epoch
        self._segment = segment
        self._offset: int = r["offset"]
        self._meta: dict[str, Any] = r["meta"]
        self._data = data
        self._value: Any = _UNSET
        self._answered = ""
        self.id: int = r["request"]
        """The request's id in the coordinator (unique while it lives)."""
        self.sender: str = r["sender"]
        """The requester's process name."""
        self.codec: str = r["codec"]
        """The codec the requester encoded ``value`` with (and the default of :meth:`reply`)."""
        self.block: Block | None = (
            None if r["block"] == NO_BLOCK else Block(r["block"], r["size"], r["capacity"], "")
        )

    def __repr__(self) -> str:
        state = f", {self._answered}" if self._answered else ""
        return f"<IncomingRequest {self.id} from {self.sender!r}{state}>"

    @property
    def value(self) -> Any:
        """The requester's object, decoded once (a copy: it stays valid after the answer).

        :raises CodecError: if the payload does not decode (:meth:`fail` the request).
        :raises InvalidRequest: when a block's payload is first read after the answer.
        """
        if self._value is _UNSET:
            if self.block is None:
                self._value = decode_payload(self.codec, self._meta, self._data)
                self._data = b""
                return self._value
            if self._answered:
                raise InvalidRequest(
                    f"request {self.id} was {self._answered} before its value was read: "
                    "read req.value first"
                )
            assert self._segment is not None
            self._client._check_epoch(self._epoch)  # its mapping went with the connection
            n = self._meta.get("nbytes", self.block.size)
            with self._segment[self._offset : self._offset + n] as src:
                self._value = get_codec(self.codec).decode(src, self._meta.get("codec", {}))
        return self._value

    @property
    def done(self) -> bool:
        """Whether this request was answered (replied to or failed)."""
        return bool(self._answered)

    async def reply(self, obj: object, codec: str | None = None) -> None:
        """Answer the request with ``obj``, encoded with ``codec`` (None: the request's
        own codec): inline when small, else in a block moved to the requester (a
        :class:`Block` of this process's goes as it is, zero-copy). If the requester
        gave up meanwhile (its timeout, cancelled, gone), the reply is dropped.

        :raises InvalidRequest: if the request was answered already.
        """
        self._check_open()
        bid, c, meta, data, made = await self._client._outgoing(obj, codec or self.codec)
        args = {"request": self.id, "block": bid, "codec": c, "meta": meta}
        args |= {"error": 0, "message": ""}
        try:
            await self._client._call(Op.RESPOND, args, data, epoch=self._epoch)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._client._drop_made(made)
            raise
        self._done("replied")
        if bid != NO_BLOCK:
            self._client._sizes.pop(bid, None)

    async def fail(self, error: BaseException | str) -> None:
        """Answer the request with an error: the requester's :meth:`Client.request`
        raises :class:`RemoteError` with this process's name, and ``error``'s type and
        message (``"'svc' failed the request: ValueError: bad input"``).

        :raises InvalidRequest: if the request was answered already.
        """
        self._check_open()
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
        else:
            message = str(error)
        args = {"request": self.id, "block": NO_BLOCK, "codec": "", "meta": {}}
        args |= {"error": RemoteError.code, "message": message[:MAX_STR]}
        await self._client._call(Op.RESPOND, args, epoch=self._epoch)
        self._done("failed")

    def _check_open(self) -> None:
        if self._answered:
            raise InvalidRequest(f"request {self.id} was {self._answered} already")

    def _done(self, how: str) -> None:
        self._answered = how
        if self.block is not None:  # the coordinator freed it (or it was the reply)
            self._client._sizes.pop(self.block.id, None)


class _DirectPeer(Protocol):
    """The requester's connection a direct request came on (``_client/direct.py``)."""

    sender: str

    def answer(self, rid: int, codec: str, meta: dict[str, Any], data: bytes) -> None: ...

    def answer_error(self, rid: int, exc: BlockIPCError) -> None: ...


class DirectRequest(IncomingRequest):
    """A request that came on a requester's direct socket (``_client/direct.py``): its
    payload was inline, and its answer goes back on that socket, not through the
    coordinator. A reply too large to be inline travels in the socket too (a copy, at
    most ``MAX_DIRECT_FRAME`` bytes); a :class:`Block` given as the reply is read with
    :meth:`Client.get`, re-encoded with ``codec`` (None: the request's) and freed."""

    __slots__ = ("_peer", "_settled")

    def __init__(
        self,
        client: _Owner,
        epoch: int,
        peer: _DirectPeer,
        rid: int,
        codec: str,
        meta: dict[str, Any],
        data: bytes,
        settled: Callable[[], None],
    ) -> None:
        # (IncomingRequest.__init__'s fields, without its dict of a SERVE's reply)
        self._client = client
        self._epoch = epoch
        self._segment = None
        self._offset = 0
        self._meta = meta
        if codec == "raw" and not meta:  # its value is its bytes (decode_payload's)
            self._data, self._value = b"", data
        else:
            self._data, self._value = data, _UNSET
        self._answered = ""
        self._peer = peer
        self._settled = settled
        self.id = rid
        self.sender = peer.sender
        self.codec = codec
        self.block = None

    async def reply(self, obj: object, codec: str | None = None) -> None:
        """Answer with ``obj`` (see :meth:`IncomingRequest.reply`), on the direct socket.

        :raises InvalidRequest: if the request was answered already, or the reply is
            over ``MAX_DIRECT_FRAME`` bytes encoded (the requester gets RemoteError).
        """
        if self._answered:
            self._check_open()
        client = self._client
        if self._epoch != client._epoch or client._closed:
            client._check_epoch(self._epoch)  # its socket went with the connection
        c = codec or self.codec
        if c == "raw" and type(obj) is bytes and len(obj) <= MAX_INLINE_PAYLOAD:
            self._peer.answer(self.id, c, _NO_META, obj)  # (the hot path: encode_inline's)
            self._answered = "replied"
            self._settled()
            return
        if not isinstance(obj, Block) and (inline := encode_inline(obj, c)) is not None:
            self._peer.answer(self.id, c, *inline)
            self._answered = "replied"
            self._settled()
            return
        if isinstance(obj, Block):
            value = await self._client.get(obj)
            with contextlib.suppress(BlockIPCError):
                await self._client.free(obj)
            obj = value
        inline = encode_inline(obj, c)
        if inline is not None:
            self._peer.answer(self.id, c, *inline)
            self._done("replied")
            return
        with get_codec(c).prepare(obj) as enc:
            if enc.nbytes > MAX_DIRECT_FRAME:
                await self.fail(f"a reply of {enc.nbytes} bytes is over the direct limit")
                raise InvalidRequest(
                    f"a reply of {enc.nbytes} bytes to a direct request is over the limit "
                    f"of {MAX_DIRECT_FRAME}"
                )
            self._peer.answer(self.id, c, enc.meta, enc.tobytes())
        self._done("replied")

    async def fail(self, error: BaseException | str) -> None:
        """Answer with an error (see :meth:`IncomingRequest.fail`), on the direct socket."""
        self._check_open()
        self._client._check_epoch(self._epoch)
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
        else:
            message = str(error)
        who = getattr(self._client, "name", "")
        self._peer.answer_error(self.id, RemoteError(f"{who!r} failed the request: {message}"))
        self._done("failed")

    def _done(self, how: str) -> None:
        self._answered = how
        self._settled()
