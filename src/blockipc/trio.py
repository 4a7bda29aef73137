"""The client under trio: the asyncio client on a loop thread of its own, awaited from
trio without blocking it.

>>> async def main() -> None:  # doctest: +SKIP
...     async with blockipc.connect(address, name="worker") as client:  # under trio too
...         block = await client.alloc(4096)
>>> trio.run(main)  # doctest: +SKIP

Theory of operation
-------------------
The client's hot path is asyncio's (a ``BufferedProtocol`` on uvloop), which trio
cannot run. So under trio, :func:`blockipc.connect` (it looks at the running library)
connects the asyncio client on an event loop in a daemon thread, the machinery of
:mod:`blockipc.sync` (:mod:`blockipc._loopthread`), and returns a :class:`Client`
whose methods are the async client's, awaited from trio. A call is one task handed to
that loop; trio's task parks in ``wait_task_rescheduled`` and the task's end wakes it
through trio's token (``run_sync_soon``): no thread per call, and trio runs its other
tasks meanwhile. A trio cancellation asks the loop to cancel the call and waits for
its end, so cancelling loses nothing (a reply that came first is returned, one that did
not is undone by the client's orphan handlers). :func:`connect` here is the same with a
precise return type.

The price is a hop to the loop thread and one back per call (``benchmarks/bench_sync.py``
measures it). Channels are not offered here (as in :mod:`blockipc.sync`). A client made
by one ``trio.run`` belongs to it, as an asyncio client belongs to its loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import outcome
import trio

from ._client import client as _aclient
from ._client.client import DEFAULT_CACHE_SIZE, DEFAULT_INBOX_MESSAGES
from ._core.codecs import DEFAULT_CODEC
from ._core.limits import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE_SIZE
from ._exceptions import ConnectionClosed
from ._loopthread import LoopThread
from ._types import Block, BlockLike, Message, Stats
from .cache import CacheStats

if TYPE_CHECKING:
    import numpy.typing as npt

    from ._client.jobs import Job as _AJob
    from ._client.requests import IncomingRequest as _ARequest

__all__ = ["Client", "IncomingRequest", "Job", "Lease", "connect"]

T = TypeVar("T")


async def _await_on_loop(runner: LoopThread, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on ``runner``'s loop and await its end from trio (see the
    module's docstring)."""
    call = runner.submit(make)
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    raise_cancel: list[Callable[[], BaseException]] = []

    def resume() -> None:  # in trio's thread
        exc = call.exception()
        if isinstance(exc, concurrent.futures.CancelledError) and raise_cancel:
            trio.lowlevel.reschedule(task, outcome.capture(raise_cancel[0]))
        else:
            trio.lowlevel.reschedule(task, outcome.capture(call.result))

    def finished(_call: object) -> None:  # in the loop's thread (or here, if done)
        with contextlib.suppress(trio.RunFinishedError):  # that run ended: nobody waits
            token.run_sync_soon(resume)

    def abort(cancel: Callable[[], BaseException]) -> trio.lowlevel.Abort:
        raise_cancel.append(cancel)
        call.cancel_task()
        return trio.lowlevel.Abort.FAILED  # the call's end reschedules the task

    call.add_done_callback(finished)
    result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


class Client:
    """A client for trio: :class:`blockipc.Client`'s methods, awaited from trio. Made
    by :func:`connect` (or :func:`blockipc.connect` under trio); close it with
    :meth:`aclose` or ``async with``.

    >>> async with blockipc.trio.connect(address, "worker") as client:  # doctest: +SKIP
    ...     await client.put([1, 2, 3], name="numbers")
    """

    def __init__(self, runner: LoopThread, client: _aclient.Client) -> None:
        self._runner = runner
        self._client = client
        self.name = client.name
        self.address = client.address

    # -- plumbing -------------------------------------------------------------------
    async def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        runner = self._runner
        if runner.stopped:
            # forked (the fork hook made the error UsedAfterFork) or closed
            raise self._client._closed_error()
        return await _await_on_loop(runner, make)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Say goodbye, close, and end the loop thread. Idempotent; in a forked child
        a no-op (the connection is the parent's)."""
        runner = self._runner
        if runner.stopped:
            runner.stop()
            return
        try:
            await _await_on_loop(runner, self._client.aclose)
        finally:
            # the thread's join in a worker thread: trio runs on meanwhile
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(runner.stop)

    close = aclose

    @property
    def closed(self) -> bool:
        """True once closed, used in a forked child, or (without ``reconnect``) once
        the coordinator went away: :attr:`blockipc.Client.closed`."""
        return self._runner.stopped or self._client.closed

    @property
    def access(self) -> Literal["r", "rw"]:
        """``"rw"``, or ``"r"`` for a read-only connection (``access="r"``)."""
        return self._client.access

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        runner = getattr(self, "_runner", None)
        if runner is None or runner.stopped:
            return
        try:
            _warn(
                f"unclosed blockipc trio client {self.name!r}: close it (await "
                "client.aclose(), or async with blockipc.connect(...))",
                ResourceWarning,
                source=self,
            )
        finally:  # the loop thread ends; the async client drops its connection
            runner.loop.call_soon_threadsafe(self._client._drop_connection)
            runner.stop()

    # -- blocks -----------------------------------------------------------------------
    async def alloc(self, size: int | str) -> Block:
        """:meth:`blockipc.Client.alloc`, from trio.

        >>> block = await client.alloc("1MiB")  # doctest: +SKIP
        """
        return await self._run(lambda: self._client.alloc(size))

    async def free(self, block: BlockLike) -> None:
        """:meth:`blockipc.Client.free`, from trio."""
        await self._run(lambda: self._client.free(block))

    async def free_many(self, blocks: Iterable[BlockLike]) -> None:
        """:meth:`blockipc.Client.free_many`, from trio."""
        ids = list(blocks)
        await self._run(lambda: self._client.free_many(ids))

    async def write(
        self, block: BlockLike, data: bytes | bytearray | memoryview, offset: int = 0
    ) -> int:
        """:meth:`blockipc.Client.write`, from trio.

        >>> await client.write(block, b"hello")  # doctest: +SKIP
        5
        """
        return await self._run(lambda: self._client.write(block, data, offset))

    async def read(self, block: BlockLike, offset: int = 0, size: int | None = None) -> bytes:
        """:meth:`blockipc.Client.read`, from trio."""
        return await self._run(lambda: self._client.read(block, offset, size))

    def lease(
        self, block: BlockLike, mode: Literal["r", "w"] = "r", *, codec: str | None = None
    ) -> Lease:
        """A lease on ``block`` for ``async with`` (:meth:`blockipc.Client.lease`): the
        view (or, with ``codec``, the object) while it is held, released on exit.

        >>> async with client.lease(block, "w") as view:  # doctest: +SKIP
        ...     view[:5] = b"HELLO"
        """
        return Lease(self, self._client.lease(block, mode, codec=codec))

    async def copy(
        self,
        src: BlockLike,
        dst: BlockLike,
        *,
        src_offset: int = 0,
        dst_offset: int = 0,
        size: int | None = None,
    ) -> int:
        """:meth:`blockipc.Client.copy`, from trio."""
        return await self._run(
            lambda: self._client.copy(
                src, dst, src_offset=src_offset, dst_offset=dst_offset, size=size
            )
        )

    async def grant(self, block: BlockLike, to: str, mode: Literal["r", "w"] = "r") -> None:
        """:meth:`blockipc.Client.grant`, from trio."""
        await self._run(lambda: self._client.grant(block, to, mode))

    async def revoke(self, block: BlockLike, to: str) -> None:
        """:meth:`blockipc.Client.revoke`, from trio."""
        await self._run(lambda: self._client.revoke(block, to))

    # -- messages ---------------------------------------------------------------------
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
        """:meth:`blockipc.Client.send`, from trio.

        >>> await client.send(block, to="consumer", header={"kind": "frame"})  # doctest: +SKIP
        """
        await self._run(
            lambda: self._client.send(
                block, to, header=header, move=move, nowait=nowait, wait_for_peer=wait_for_peer
            )
        )

    async def recv(self) -> Message:
        """:meth:`blockipc.Client.recv`, from trio (cancel it with a trio cancel scope:
        a message that arrives as it is cancelled is kept for the next call).

        >>> with trio.move_on_after(5):  # doctest: +SKIP
        ...     msg = await client.recv()
        """
        return await self._run(self._client.recv)

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
        """:meth:`blockipc.Client.send_value`, from trio.

        >>> await client.send_value("consumer", {"reading": 21.5})  # doctest: +SKIP
        """
        await self._run(
            lambda: self._client.send_value(
                to, obj, codec, header=header, nowait=nowait, wait_for_peer=wait_for_peer
            )
        )

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
        """:meth:`blockipc.Client.send_many`, from trio.

        >>> await client.send_many("consumer", [1, 2, 3])  # doctest: +SKIP
        """
        items = list(objs)
        await self._run(
            lambda: self._client.send_many(
                to, items, codec, header=header, nowait=nowait, wait_for_peer=wait_for_peer
            )
        )

    async def recv_many(self, max_messages: int = 64) -> list[Message]:
        """:meth:`blockipc.Client.recv_many`, from trio."""
        return await self._run(lambda: self._client.recv_many(max_messages))

    async def messages(self) -> AsyncIterator[Message]:
        """``async for msg in client.messages():`` until this client is closed."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                if self._client._closing or self._runner.stopped:
                    return
                raise

    async def subscribe(self, topic: str) -> None:
        """:meth:`blockipc.Client.subscribe`, from trio."""
        await self._run(lambda: self._client.subscribe(topic))

    async def unsubscribe(self, topic: str) -> None:
        """:meth:`blockipc.Client.unsubscribe`, from trio."""
        await self._run(lambda: self._client.unsubscribe(topic))

    async def publish(
        self,
        block: BlockLike | None,
        topic: str,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> int:
        """:meth:`blockipc.Client.publish`, from trio."""
        return await self._run(
            lambda: self._client.publish(block, topic, header=header, nowait=nowait)
        )

    async def peers(self) -> list[str]:
        """:meth:`blockipc.Client.peers`, from trio."""
        return await self._run(self._client.peers)

    # -- request/reply ------------------------------------------------------------------
    async def request(
        self,
        to: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- the async client's API
        wait_for_peer: float | None = None,
    ) -> Any:
        """:meth:`blockipc.Client.request`, from trio.

        >>> total = await client.request("adder", [1, 2, 3], timeout=5)  # doctest: +SKIP
        """
        return await self._run(
            lambda: self._client.request(
                to, obj, codec, timeout=timeout, wait_for_peer=wait_for_peer
            )
        )

    async def next_request(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 -- as the async client
    ) -> IncomingRequest:
        """:meth:`blockipc.Client.next_request`, from trio; answer it with
        :meth:`IncomingRequest.reply` or :meth:`IncomingRequest.fail`."""
        return IncomingRequest(self, await self._run(lambda: self._client.next_request(timeout)))

    async def requests(self) -> AsyncIterator[IncomingRequest]:
        """``async for req in client.requests():`` until this client is closed.

        >>> async for req in client.requests():  # doctest: +SKIP
        ...     await req.reply(sum(req.value))
        """
        while True:
            try:
                yield await self.next_request()
            except ConnectionClosed:
                if self._client._closing or self._runner.stopped:
                    return
                raise

    # -- work queues --------------------------------------------------------------------
    async def declare_queue(
        self,
        name: str,
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        dead_letter: str | None = None,
    ) -> None:
        """:meth:`blockipc.Client.declare_queue`, from trio."""
        await self._run(
            lambda: self._client.declare_queue(
                name, maxsize=maxsize, max_attempts=max_attempts, dead_letter=dead_letter
            )
        )

    async def enqueue(
        self,
        queue: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> int:
        """:meth:`blockipc.Client.enqueue`, from trio."""
        return await self._run(
            lambda: self._client.enqueue(queue, obj, codec, header=header, nowait=nowait)
        )

    async def take(
        self,
        queue: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- as the async client
        *,
        ack: Job | None = None,
    ) -> Job:
        """:meth:`blockipc.Client.take`, from trio; ``ack`` is a :class:`Job` of this
        client to ack in the same request.

        >>> job = await client.take("jobs", timeout=10)  # doctest: +SKIP
        """
        inner = None if ack is None else ack._job
        return Job(self, await self._run(lambda: self._client.take(queue, timeout, ack=inner)))

    async def enqueue_many(
        self,
        queue: str,
        objs: Iterable[object],
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> list[int]:
        """:meth:`blockipc.Client.enqueue_many`, from trio.

        >>> await client.enqueue_many("jobs", [{"n": 1}, {"n": 2}])  # doctest: +SKIP
        """
        items = list(objs)
        return await self._run(
            lambda: self._client.enqueue_many(queue, items, codec, header=header, nowait=nowait)
        )

    async def take_many(
        self,
        queue: str,
        max_jobs: int = 32,
        timeout: float | None = None,  # noqa: ASYNC109 -- as the async client
        *,
        ack: Iterable[Job] | None = None,
    ) -> list[Job]:
        """:meth:`blockipc.Client.take_many`, from trio; ``ack``: :class:`Job` s of this
        client to ack in the same request.

        >>> jobs = await client.take_many("jobs", 16, timeout=10)  # doctest: +SKIP
        """
        inner = None if ack is None else [job._job for job in ack]
        got = await self._run(lambda: self._client.take_many(queue, max_jobs, timeout, ack=inner))
        return [Job(self, job) for job in got]

    # -- named objects ------------------------------------------------------------------
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
        """:meth:`blockipc.Client.put`, from trio.

        >>> await client.put({"lr": 0.1}, name="config")  # doctest: +SKIP
        """
        return await self._run(
            lambda: self._client.put(
                obj, codec, name=name, cacheable=cacheable, if_absent=if_absent, ttl=ttl
            )
        )

    async def empty(
        self, shape: int | Sequence[int], dtype: npt.DTypeLike = float, *, order: str = "C"
    ) -> Block:
        """:meth:`blockipc.Client.empty`, from trio."""
        return await self._run(lambda: self._client.empty(shape, dtype, order=order))

    async def get(self, block_or_name: BlockLike | str, codec: str | None = None) -> Any:
        """:meth:`blockipc.Client.get`, from trio.

        >>> await client.get("config")  # doctest: +SKIP
        {'lr': 0.1}
        """
        return await self._run(lambda: self._client.get(block_or_name, codec))

    async def get_or_put(
        self,
        name: str,
        factory: Callable[[], Any],
        codec: str = DEFAULT_CODEC,
        *,
        cacheable: bool = False,
        ttl: float | None = None,
    ) -> Any:
        """:meth:`blockipc.Client.get_or_put`, from trio. ``factory`` runs on the
        client's loop thread: it must not call this client."""
        return await self._run(
            lambda: self._client.get_or_put(name, factory, codec, cacheable=cacheable, ttl=ttl)
        )

    async def delete(self, name: str) -> None:
        """:meth:`blockipc.Client.delete`, from trio."""
        await self._run(lambda: self._client.delete(name))

    # -- introspection ------------------------------------------------------------------
    async def stats(self) -> Stats:
        """:meth:`blockipc.Client.stats`, from trio."""
        return await self._run(self._client.stats)

    def cache_statistics(self) -> CacheStats:
        """:meth:`blockipc.Client.cache_statistics` (no I/O)."""
        return self._client.cache_statistics()


class Lease:
    """A lease for ``async with`` (see :meth:`Client.lease`): entering waits for it and
    gives the view (or object), leaving releases it.

    >>> async with client.lease(block, "r") as view:  # doctest: +SKIP
    ...     header = bytes(view[:16])
    """

    def __init__(self, client: Client, lease: _aclient.Lease) -> None:
        self._client = client
        self._lease = lease

    async def __aenter__(self) -> Any:
        return await self._client._run(self._lease.__aenter__)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client._runner.stopped:  # closed or forked: the lease went with it
            return
        await self._client._run(lambda: self._lease.__aexit__(exc_type, exc, tb))


class Job:
    """A job taken by :meth:`Client.take`: :class:`blockipc.Job`, answered from trio.

    >>> job = await client.take("jobs")  # doctest: +SKIP
    >>> result = work(job.value)  # doctest: +SKIP
    >>> await job.ack()  # doctest: +SKIP
    """

    def __init__(self, client: Client, job: _AJob) -> None:
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"<trio {self._job!r}>"

    @property
    def id(self) -> int:
        """The job's id in its queue."""
        return self._job.id

    @property
    def queue(self) -> str:
        """The queue it was taken from."""
        return self._job.queue

    @property
    def value(self) -> Any:
        """:attr:`blockipc.Job.value`: the enqueued object, decoded once."""
        return self._job.value

    @property
    def block(self) -> Block | None:
        """:attr:`blockipc.Job.block` (``None``: an inline job, no block)."""
        return self._job.block

    @property
    def header(self) -> dict[str, Any]:
        """The producer's header."""
        return self._job.header

    @property
    def producer(self) -> str:
        """The producer's name."""
        return self._job.producer

    @property
    def attempts(self) -> int:
        """How many deliveries of it failed before."""
        return self._job.attempts

    @property
    def codec(self) -> str:
        """The codec it was enqueued with."""
        return self._job.codec

    @property
    def done(self) -> bool:
        """True once acked or nacked."""
        return self._job.done

    async def ack(self) -> None:
        """:meth:`blockipc.Job.ack`, from trio."""
        await self._client._run(self._job.ack)

    async def nack(self) -> None:
        """:meth:`blockipc.Job.nack`, from trio."""
        await self._client._run(self._job.nack)


class IncomingRequest:
    """A request received by :meth:`Client.next_request`: :class:`blockipc.IncomingRequest`,
    answered from trio.

    >>> req = await client.next_request()  # doctest: +SKIP
    >>> await req.reply(sum(req.value))  # doctest: +SKIP
    """

    def __init__(self, client: Client, request: _ARequest) -> None:
        self._client = client
        self._request = request

    def __repr__(self) -> str:
        return f"<trio {self._request!r}>"

    @property
    def id(self) -> int:
        """The request's id."""
        return self._request.id

    @property
    def sender(self) -> str:
        """The requester's name."""
        return self._request.sender

    @property
    def value(self) -> Any:
        """:attr:`blockipc.IncomingRequest.value`: the requester's object."""
        return self._request.value

    @property
    def block(self) -> Block | None:
        """The request's block, or None for an inline payload."""
        return self._request.block

    @property
    def codec(self) -> str:
        """The payload's codec."""
        return self._request.codec

    @property
    def done(self) -> bool:
        """True once answered."""
        return self._request.done

    async def reply(self, obj: object, codec: str | None = None) -> None:
        """:meth:`blockipc.IncomingRequest.reply`, from trio."""
        await self._client._run(lambda: self._request.reply(obj, codec))

    async def fail(self, error: BaseException | str) -> None:
        """:meth:`blockipc.IncomingRequest.fail`, from trio."""
        await self._client._run(lambda: self._request.fail(error))


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
    """Connect as :func:`blockipc.connect` does (same arguments, same errors), from
    trio: ``await`` it, or use it with ``async with``, for a :class:`Client`.

    >>> async with blockipc.trio.connect(address, name="worker") as client:  # doctest: +SKIP
    ...     await client.put([1, 2, 3], name="numbers")
    """
    return _Connect(
        _aclient.connect(  # validates the arguments here
            address,
            name,
            inbox_messages=inbox_messages,
            inbox_bytes=inbox_bytes,
            cache_size=cache_size,
            timeout=timeout,
            retry=retry,
            reconnect=reconnect,
            access=access,
        )._client
    )


async def open_client(client: _aclient.Client) -> Client:
    """Connect ``client`` (not connected yet) on a loop thread of its own."""
    runner = LoopThread(f"blockipc-trio-{client.name}")
    try:
        await _await_on_loop(
            runner, lambda: client._open(retry=client._retry, within=client._timeout)
        )
    except BaseException:
        runner.stop()
        raise
    return Client(runner, client)


class _Connect:
    """What :func:`connect` returns: ``await`` it or use it with ``async with``."""

    def __init__(self, client: _aclient.Client) -> None:
        self._pending = client
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def _open(self) -> Client:
        self._client = await open_client(self._pending)
        return self._client

    async def __aenter__(self) -> Client:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
