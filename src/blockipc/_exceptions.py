"""The one error hierarchy of blockipc.

Every error a user can see derives from :class:`BlockIPCError`. Errors that the
coordinator reports travel on the wire as a small integer code (``ErrorCode``) and
are turned back into the same class in the client, so ``except blockipc.AccessDenied``
works whether the check failed locally or in the coordinator.
"""

from __future__ import annotations

import enum

__all__ = [
    "AccessDenied",
    "BlockIPCError",
    "BlockNotFound",
    "ChannelClosed",
    "CodecError",
    "ConnectionClosed",
    "ErrorCode",
    "InboxFull",
    "InvalidRequest",
    "NameTaken",
    "OutOfBounds",
    "PeerUnreachable",
    "PoolExhausted",
    "ProtocolError",
    "QuotaExceeded",
    "RemoteError",
    "UsedAfterFork",
    "WrongEventLoop",
    "error_from_code",
    "use_async_with",
]


class BlockIPCError(Exception):
    """Raised when anything in blockipc fails; the base of every blockipc error.

    ::

        try:
            await client.send(block, to="consumer")
        except blockipc.BlockIPCError as exc:
            log.warning("send failed: %s", exc)
    """

    code: int = 1


class PoolExhausted(BlockIPCError, MemoryError):
    """Raised when the pool has no free block large enough and may not grow further,
    when the machine cannot back a new segment with memory, or when a request is
    larger than the pool could ever hold.

    ::

        try:
            block = await client.alloc(size)
        except blockipc.PoolExhausted:
            ...  # free something, or start the coordinator with a larger max_pool_size
    """

    code = 2


class BlockNotFound(BlockIPCError, LookupError):
    """Raised when a block id (or name) is unknown: never allocated, or already freed.

    ::

        try:
            weights = await client.get("weights")
        except blockipc.BlockNotFound:
            weights = None  # never put, deleted, or evicted
    """

    code = 3


class AccessDenied(BlockIPCError, PermissionError):
    """Raised when the routing table does not give the caller the right it asked for:
    another process's block, or a block busy under a lease the operation conflicts with;
    and by ``connect`` when the socket is served by a process of another user (neither
    this process's uid nor root), before anything is sent to it.

    ::

        async with blockipc.connect(address, name="reader", access="r") as reader:
            await reader.alloc(64)  # raises AccessDenied: a read-only connection
    """

    code = 4


class OutOfBounds(BlockIPCError, IndexError):
    """Raised when an offset or size falls outside the block's ``size``.

    ::

        block = await client.alloc(100)
        await client.write(block, b"x", offset=100)  # raises OutOfBounds
    """

    code = 5


class ConnectionClosed(BlockIPCError, ConnectionError):
    """Raised when the client is closed, or its coordinator went away, while or before
    a call was made.

    ::

        try:
            msg = await client.recv()
        except blockipc.ConnectionClosed:
            ...  # the coordinator went away (or this client was closed)
    """

    code = 6


class ChannelClosed(ConnectionClosed):
    """Raised when a channel's other end closed it (or its process ended), or this end
    did, or its client closed; a receiver sees it only after every message sent.

    ::

        try:
            await tx.send(frame)
        except blockipc.ChannelClosed:
            ...  # this end (or its client) was closed
    """


class UsedAfterFork(ConnectionClosed):
    """Raised when a client (or one of its channel ends) is used in a process forked
    from the one that connected it, e.g. a ``ProcessPoolExecutor`` worker started
    with ``fork``: its connection belongs to the parent, which keeps using it
    untouched. Connect again in the child process.

    ::

        try:
            await client.read(block)            # in a child forked after connect
        except blockipc.UsedAfterFork:
            client = await blockipc.connect(address, name=f"worker-{os.getpid()}")
    """


class WrongEventLoop(BlockIPCError, RuntimeError):
    """Raised when a client (or one of its channel ends) is used from an event loop
    other than the one it connected on, e.g. from another thread's ``asyncio.run``.
    A client belongs to one loop: connect one per loop, or hand the call to the
    client's loop with ``asyncio.run_coroutine_threadsafe``.

    ::

        future = asyncio.run_coroutine_threadsafe(client.read(block), client_loop)
        data = future.result()   # from another thread, on the client's own loop
    """


class ProtocolError(BlockIPCError):
    """Raised when a peer sends a frame that breaks the wire protocol: malformed,
    too large, of an unknown version or out of sequence.

    ::

        try:
            msg = await rx.recv()
        except blockipc.ProtocolError:
            ...  # the channel's ring was scribbled on: this stream cannot be trusted
    """

    code = 7


class PeerUnreachable(BlockIPCError):
    """Raised when a send names a process (or node) that nobody has registered, or a
    remote send cannot complete: the other node stayed unreachable for ``link_timeout``
    seconds, or the link went down with the block in transit (it is never resent).

    ::

        try:
            await client.send(block, to="consumer", wait_for_peer=5.0)
        except blockipc.PeerUnreachable:
            await client.free(block)   # the block is still the sender's
    """

    code = 8


class InvalidRequest(BlockIPCError, ValueError):
    """Raised when an argument is invalid whatever the pool's state: a size of zero
    or less, an unknown lease mode, a name that is empty or too long.

    ::

        await client.alloc(0)   # raises InvalidRequest
    """

    code = 9


class CodecError(BlockIPCError, ValueError):
    """Raised when a codec cannot encode an object, or a block's bytes do not parse.

    ::

        await client.put(object(), codec="json")   # raises CodecError; no block left behind
    """

    code = 10


class InboxFull(BlockIPCError):
    """Raised when a ``send(..., nowait=True)`` or ``publish(..., nowait=True)`` finds a
    receiver's inbox at its message or byte limit.

    ::

        try:
            await client.send(block, to="consumer", nowait=True)
        except blockipc.InboxFull:
            ...  # the block is still ours: retry later, or drop it
    """

    code = 11


class NameTaken(BlockIPCError):
    """Raised when ``connect`` asks for a process name that a live connection holds:
    pick another name, or close the other client first (its name is free again as soon
    as its connection ends); and by ``put(..., name=..., if_absent=True)`` when an
    object is bound to that name already (nothing was stored).

    ::

        try:
            await client.put(config, codec="json", name="config", if_absent=True)
        except blockipc.NameTaken:
            config = await client.get("config")   # another process put it first
    """

    code = 12


class QuotaExceeded(BlockIPCError):
    """Raised when a request would take a connection past one of its bounds: more than
    ``MAX_PARKED`` (4096) requests waiting at once (``recv``, contended leases, sends to
    full inboxes, ...), an ``open_channel`` to a process that already has ``MAX_OFFERS``
    (64) channels offered it has not accepted, or a quota the coordinator was given
    (``max_client_bytes``, ``max_client_blocks``, ``max_connections``). Nothing was done.

    ::

        try:
            block = await client.alloc(size)
        except blockipc.QuotaExceeded:
            ...  # past max_client_bytes / max_client_blocks: free some first
    """

    code = 13


class RemoteError(BlockIPCError):
    """Raised when the responder of a :meth:`Client.request` answered it with
    ``req.fail(error)`` (in the requester): the message names the responder and carries
    what it said (``"'svc' failed the request: ValueError: bad input"``). The
    responder's exception itself stays in its process: only its type's name and
    message travel.

    ::

        try:
            total = await client.request("adder", ["x"], timeout=5)
        except blockipc.RemoteError as exc:
            print(exc)   # 'adder' failed the request: ValueError: numbers only
    """

    code = 14


class ErrorCode(enum.IntEnum):
    """Wire codes of the errors a coordinator reports."""

    INTERNAL = BlockIPCError.code
    POOL_EXHAUSTED = PoolExhausted.code
    BLOCK_NOT_FOUND = BlockNotFound.code
    ACCESS_DENIED = AccessDenied.code
    OUT_OF_BOUNDS = OutOfBounds.code
    CONNECTION_CLOSED = ConnectionClosed.code
    PROTOCOL_ERROR = ProtocolError.code
    PEER_UNREACHABLE = PeerUnreachable.code
    INVALID_REQUEST = InvalidRequest.code
    CODEC_ERROR = CodecError.code
    INBOX_FULL = InboxFull.code
    NAME_TAKEN = NameTaken.code
    QUOTA_EXCEEDED = QuotaExceeded.code
    REMOTE_ERROR = RemoteError.code


_BY_CODE: dict[int, type[BlockIPCError]] = {
    cls.code: cls
    for cls in (
        BlockIPCError,
        PoolExhausted,
        BlockNotFound,
        AccessDenied,
        OutOfBounds,
        ConnectionClosed,
        ProtocolError,
        PeerUnreachable,
        InvalidRequest,
        CodecError,
        InboxFull,
        NameTaken,
        QuotaExceeded,
        RemoteError,
    )
}


def error_from_code(code: int, message: str) -> BlockIPCError:
    """Return the exception for a wire error code; unknown codes become ``BlockIPCError``."""
    return _BY_CODE.get(code, BlockIPCError)(message)


def use_async_with(form: str, what: str) -> TypeError:
    """The error for ``with`` on an object that only supports ``async with``: ``what``
    names the object, ``form`` shows the right statement."""
    return TypeError(f"{what} is an asynchronous context manager: use `{form}`, not `with`")
