"""A blocking client, for code that is not async: scripts, ``ProcessPoolExecutor`` and
``multiprocessing`` workers, threads.

>>> with blockipc.sync.connect(address, name="worker") as client:  # doctest: +SKIP
...     block = client.alloc(4096)
...     client.write(block, b"hello")
...     client.send(block, to="parent")

Theory of operation
-------------------
As httpx's ``Client`` sits beside its ``AsyncClient``, :class:`Client` here has the
methods of :class:`blockipc.Client`, each blocking until its result. Underneath is the
async client itself, connected on an event loop of its own (uvloop when installed, as
:func:`blockipc.run` uses) that runs in a daemon thread for the client's lifetime
(:mod:`blockipc._loopthread`); every call is handed to that loop and waited for. So
the semantics are the async client's, call for call, and:

* **threads**: any number of threads may call one client at once; their calls
  pipeline on its one connection, as tasks' calls do.
* **timeouts**: the ``timeout=`` of ``connect``, ``request``, ``next_request`` and
  ``take`` are passed through (:class:`TimeoutError`); ``recv``, ``recv_many`` and
  :meth:`Client.lease` take one too here, since a blocking call has no cancel scope
  around it. ``Ctrl-C`` (any exception in the waiting thread) cancels the call on the
  loop as cancelling a task does: nothing is lost.
* **fork**: used in a forked child, a client raises :class:`UsedAfterFork`, the async
  client's own error (its fork hook marks it; no thread of the loop runs in the
  child), and ``close()`` there is a no-op that leaves the parent's connection alone.
* **not offered**: channels (``open_channel``, ``accept_channel``: a ring streamed from
  a loop; from blocking code use ``send``/``recv`` or a work queue). The iterators
  ``messages()`` and ``requests()`` are plain generators.

A call costs one hop to the loop thread and one back on top of the async call (see
``benchmarks/bench_sync.py``).
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

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


def _seconds(timeout: float | None) -> float | None:
    return _aclient._check_timeout(timeout)


async def _within(seconds: float | None, coro: Coroutine[Any, Any, T]) -> T:
    """``await coro``, raising :class:`TimeoutError` after ``seconds``."""
    if seconds is None:
        return await coro
    async with asyncio.timeout(seconds):
        return await coro


class Client:
    """A blocking client: :class:`blockipc.Client`'s methods, each waited for. Made by
    :func:`connect`; close it with :meth:`close` or ``with``.

    >>> client = blockipc.sync.connect(address, "worker")  # doctest: +SKIP
    >>> client.put([1, 2, 3], name="numbers")  # doctest: +SKIP
    >>> client.close()  # doctest: +SKIP
    """

    def __init__(self, runner: LoopThread, client: _aclient.Client) -> None:
        self._runner = runner
        self._client = client
        self.name = client.name
        self.address = client.address

    # -- plumbing -------------------------------------------------------------------
    def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        runner = self._runner
        if runner.stopped:
            # forked (the fork hook made the error UsedAfterFork) or closed
            raise self._client._closed_error()
        return runner.run(make)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Say goodbye, close, and end the loop thread. Idempotent; in a forked child
        a no-op (the connection is the parent's)."""
        runner = self._runner
        if runner.stopped:
            runner.stop()
            return
        try:
            runner.run(self._client.aclose)
        finally:
            runner.stop()

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
                f"unclosed blockipc sync client {self.name!r}: close it (client.close(), "
                "or with blockipc.sync.connect(...))",
                ResourceWarning,
                source=self,
            )
        finally:  # the loop thread ends; the async client drops its connection
            runner.loop.call_soon_threadsafe(self._client._drop_connection)
            runner.stop()

    # -- blocks -----------------------------------------------------------------------
    def alloc(self, size: int | str) -> Block:
        """:meth:`blockipc.Client.alloc`, blocking.

        >>> block = client.alloc("1MiB")  # doctest: +SKIP
        """
        return self._run(lambda: self._client.alloc(size))

    def free(self, block: BlockLike) -> None:
        """:meth:`blockipc.Client.free`, blocking."""
        self._run(lambda: self._client.free(block))

    def free_many(self, blocks: Iterable[BlockLike]) -> None:
        """:meth:`blockipc.Client.free_many`, blocking."""
        ids = list(blocks)
        self._run(lambda: self._client.free_many(ids))

    def write(self, block: BlockLike, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """:meth:`blockipc.Client.write`, blocking.

        >>> client.write(block, b"hello")  # doctest: +SKIP
        5
        """
        return self._run(lambda: self._client.write(block, data, offset))

    def read(self, block: BlockLike, offset: int = 0, size: int | None = None) -> bytes:
        """:meth:`blockipc.Client.read`, blocking."""
        return self._run(lambda: self._client.read(block, offset, size))

    def lease(
        self,
        block: BlockLike,
        mode: Literal["r", "w"] = "r",
        *,
        codec: str | None = None,
        timeout: float | None = None,
    ) -> Lease:
        """A lease on ``block`` for ``with`` (:meth:`blockipc.Client.lease`): the view
        (or, with ``codec``, the object) while it is held, released on exit. ``timeout``
        bounds the wait for a contended lease (:class:`TimeoutError`).

        >>> with client.lease(block, "w") as view:  # doctest: +SKIP
        ...     view[:5] = b"HELLO"
        """
        return Lease(self, self._client.lease(block, mode, codec=codec), _seconds(timeout))

    def copy(
        self,
        src: BlockLike,
        dst: BlockLike,
        *,
        src_offset: int = 0,
        dst_offset: int = 0,
        size: int | None = None,
    ) -> int:
        """:meth:`blockipc.Client.copy`, blocking."""
        return self._run(
            lambda: self._client.copy(
                src, dst, src_offset=src_offset, dst_offset=dst_offset, size=size
            )
        )

    def grant(self, block: BlockLike, to: str, mode: Literal["r", "w"] = "r") -> None:
        """:meth:`blockipc.Client.grant`, blocking."""
        self._run(lambda: self._client.grant(block, to, mode))

    def revoke(self, block: BlockLike, to: str) -> None:
        """:meth:`blockipc.Client.revoke`, blocking."""
        self._run(lambda: self._client.revoke(block, to))

    # -- messages ---------------------------------------------------------------------
    def send(
        self,
        block: BlockLike | None,
        to: str,
        *,
        header: dict[str, Any] | None = None,
        move: bool = True,
        nowait: bool = False,
        wait_for_peer: float | None = None,
    ) -> None:
        """:meth:`blockipc.Client.send`, blocking.

        >>> client.send(block, to="consumer", header={"kind": "frame"})  # doctest: +SKIP
        """
        self._run(
            lambda: self._client.send(
                block, to, header=header, move=move, nowait=nowait, wait_for_peer=wait_for_peer
            )
        )

    def recv(self, timeout: float | None = None) -> Message:
        """:meth:`blockipc.Client.recv`, blocking; ``timeout`` (seconds) raises
        :class:`TimeoutError` when nothing came (nothing is lost: a message that
        arrives as the timeout fires is kept for the next call).

        >>> msg = client.recv(timeout=5)  # doctest: +SKIP
        """
        seconds = _seconds(timeout)
        return self._run(lambda: _within(seconds, self._client.recv()))

    def send_value(
        self,
        to: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
        wait_for_peer: float | None = None,
    ) -> None:
        """:meth:`blockipc.Client.send_value`, blocking.

        >>> client.send_value("consumer", {"reading": 21.5})  # doctest: +SKIP
        """
        self._run(
            lambda: self._client.send_value(
                to, obj, codec, header=header, nowait=nowait, wait_for_peer=wait_for_peer
            )
        )

    def send_many(
        self,
        to: str,
        objs: Iterable[object],
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
        wait_for_peer: float | None = None,
    ) -> None:
        """:meth:`blockipc.Client.send_many`, blocking.

        >>> client.send_many("consumer", [1, 2, 3])  # doctest: +SKIP
        """
        items = list(objs)
        self._run(
            lambda: self._client.send_many(
                to, items, codec, header=header, nowait=nowait, wait_for_peer=wait_for_peer
            )
        )

    def recv_many(self, max_messages: int = 64, timeout: float | None = None) -> list[Message]:
        """:meth:`blockipc.Client.recv_many`, blocking; ``timeout`` as :meth:`recv`."""
        seconds = _seconds(timeout)
        return self._run(lambda: _within(seconds, self._client.recv_many(max_messages)))

    def messages(self) -> Iterator[Message]:
        """``for msg in client.messages():`` until this client is closed."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                if self._client._closing or self._runner.stopped:
                    return
                raise

    def subscribe(self, topic: str) -> None:
        """:meth:`blockipc.Client.subscribe`, blocking."""
        self._run(lambda: self._client.subscribe(topic))

    def unsubscribe(self, topic: str) -> None:
        """:meth:`blockipc.Client.unsubscribe`, blocking."""
        self._run(lambda: self._client.unsubscribe(topic))

    def publish(
        self,
        block: BlockLike | None,
        topic: str,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> int:
        """:meth:`blockipc.Client.publish`, blocking."""
        return self._run(lambda: self._client.publish(block, topic, header=header, nowait=nowait))

    def peers(self) -> list[str]:
        """:meth:`blockipc.Client.peers`, blocking."""
        return self._run(self._client.peers)

    # -- request/reply ------------------------------------------------------------------
    def request(
        self,
        to: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        timeout: float | None = None,
        wait_for_peer: float | None = None,
    ) -> Any:
        """:meth:`blockipc.Client.request`, blocking.

        >>> total = client.request("adder", [1, 2, 3], timeout=5)  # doctest: +SKIP
        """
        return self._run(
            lambda: self._client.request(
                to, obj, codec, timeout=timeout, wait_for_peer=wait_for_peer
            )
        )

    def next_request(self, timeout: float | None = None) -> IncomingRequest:
        """:meth:`blockipc.Client.next_request`, blocking; answer it with
        :meth:`IncomingRequest.reply` or :meth:`IncomingRequest.fail`."""
        return IncomingRequest(self, self._run(lambda: self._client.next_request(timeout)))

    def requests(self) -> Iterator[IncomingRequest]:
        """``for req in client.requests():`` until this client is closed.

        >>> for req in client.requests():  # doctest: +SKIP
        ...     req.reply(sum(req.value))
        """
        while True:
            try:
                yield self.next_request()
            except ConnectionClosed:
                if self._client._closing or self._runner.stopped:
                    return
                raise

    # -- work queues --------------------------------------------------------------------
    def declare_queue(
        self,
        name: str,
        *,
        maxsize: int = DEFAULT_QUEUE_SIZE,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        dead_letter: str | None = None,
    ) -> None:
        """:meth:`blockipc.Client.declare_queue`, blocking."""
        self._run(
            lambda: self._client.declare_queue(
                name, maxsize=maxsize, max_attempts=max_attempts, dead_letter=dead_letter
            )
        )

    def enqueue(
        self,
        queue: str,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> int:
        """:meth:`blockipc.Client.enqueue`, blocking."""
        return self._run(
            lambda: self._client.enqueue(queue, obj, codec, header=header, nowait=nowait)
        )

    def take(self, queue: str, timeout: float | None = None, *, ack: Job | None = None) -> Job:
        """:meth:`blockipc.Client.take`, blocking; ``ack`` is a :class:`Job` of this
        client to ack in the same request.

        >>> job = client.take("jobs", timeout=10)  # doctest: +SKIP
        """
        inner = None if ack is None else ack._job
        return Job(self, self._run(lambda: self._client.take(queue, timeout, ack=inner)))

    def enqueue_many(
        self,
        queue: str,
        objs: Iterable[object],
        codec: str = DEFAULT_CODEC,
        *,
        header: dict[str, Any] | None = None,
        nowait: bool = False,
    ) -> list[int]:
        """:meth:`blockipc.Client.enqueue_many`, blocking.

        >>> client.enqueue_many("jobs", [{"n": 1}, {"n": 2}])  # doctest: +SKIP
        """
        items = list(objs)
        return self._run(
            lambda: self._client.enqueue_many(queue, items, codec, header=header, nowait=nowait)
        )

    def take_many(
        self,
        queue: str,
        max_jobs: int = 32,
        timeout: float | None = None,
        *,
        ack: Iterable[Job] | None = None,
    ) -> list[Job]:
        """:meth:`blockipc.Client.take_many`, blocking; ``ack``: :class:`Job` s of this
        client to ack in the same request.

        >>> jobs = client.take_many("jobs", 16, timeout=10)  # doctest: +SKIP
        """
        inner = None if ack is None else [job._job for job in ack]
        got = self._run(lambda: self._client.take_many(queue, max_jobs, timeout, ack=inner))
        return [Job(self, job) for job in got]

    # -- named objects ------------------------------------------------------------------
    def put(
        self,
        obj: object,
        codec: str = DEFAULT_CODEC,
        *,
        name: str | None = None,
        cacheable: bool = False,
        if_absent: bool = False,
        ttl: float | None = None,
    ) -> Block:
        """:meth:`blockipc.Client.put`, blocking.

        >>> client.put({"lr": 0.1}, name="config")  # doctest: +SKIP
        """
        return self._run(
            lambda: self._client.put(
                obj, codec, name=name, cacheable=cacheable, if_absent=if_absent, ttl=ttl
            )
        )

    def empty(
        self, shape: int | Sequence[int], dtype: npt.DTypeLike = float, *, order: str = "C"
    ) -> Block:
        """:meth:`blockipc.Client.empty`, blocking."""
        return self._run(lambda: self._client.empty(shape, dtype, order=order))

    def get(self, block_or_name: BlockLike | str, codec: str | None = None) -> Any:
        """:meth:`blockipc.Client.get`, blocking.

        >>> client.get("config")  # doctest: +SKIP
        {'lr': 0.1}
        """
        return self._run(lambda: self._client.get(block_or_name, codec))

    def get_or_put(
        self,
        name: str,
        factory: Callable[[], Any],
        codec: str = DEFAULT_CODEC,
        *,
        cacheable: bool = False,
        ttl: float | None = None,
    ) -> Any:
        """:meth:`blockipc.Client.get_or_put`, blocking. ``factory`` runs on the
        client's loop thread: it must not call this client."""
        return self._run(
            lambda: self._client.get_or_put(name, factory, codec, cacheable=cacheable, ttl=ttl)
        )

    def delete(self, name: str) -> None:
        """:meth:`blockipc.Client.delete`, blocking."""
        self._run(lambda: self._client.delete(name))

    # -- introspection ------------------------------------------------------------------
    def stats(self) -> Stats:
        """:meth:`blockipc.Client.stats`, blocking."""
        return self._run(self._client.stats)

    def cache_statistics(self) -> CacheStats:
        """:meth:`blockipc.Client.cache_statistics` (no I/O)."""
        return self._client.cache_statistics()


class Lease:
    """A lease for ``with`` (see :meth:`Client.lease`): entering waits for it and gives
    the view (or object), leaving releases it.

    >>> with client.lease(block, "r") as view:  # doctest: +SKIP
    ...     header = bytes(view[:16])
    """

    def __init__(self, client: Client, lease: _aclient.Lease, timeout: float | None) -> None:
        self._client = client
        self._lease = lease
        self._timeout = timeout

    def __enter__(self) -> Any:
        return self._client._run(lambda: _within(self._timeout, self._lease.__aenter__()))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client._runner.stopped:  # closed or forked: the lease went with it
            return
        self._client._run(lambda: self._lease.__aexit__(exc_type, exc, tb))


class Job:
    """A job taken by :meth:`Client.take`: :class:`blockipc.Job`, answered blocking.

    >>> job = client.take("jobs")  # doctest: +SKIP
    >>> result = work(job.value)  # doctest: +SKIP
    >>> job.ack()  # doctest: +SKIP
    """

    def __init__(self, client: Client, job: _AJob) -> None:
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"<sync {self._job!r}>"

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

    def ack(self) -> None:
        """:meth:`blockipc.Job.ack`, blocking."""
        self._client._run(self._job.ack)

    def nack(self) -> None:
        """:meth:`blockipc.Job.nack`, blocking."""
        self._client._run(self._job.nack)


class IncomingRequest:
    """A request received by :meth:`Client.next_request`: :class:`blockipc.IncomingRequest`,
    answered blocking.

    >>> req = client.next_request()  # doctest: +SKIP
    >>> req.reply(sum(req.value))  # doctest: +SKIP
    """

    def __init__(self, client: Client, request: _ARequest) -> None:
        self._client = client
        self._request = request

    def __repr__(self) -> str:
        return f"<sync {self._request!r}>"

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

    def reply(self, obj: object, codec: str | None = None) -> None:
        """:meth:`blockipc.IncomingRequest.reply`, blocking."""
        self._client._run(lambda: self._request.reply(obj, codec))

    def fail(self, error: BaseException | str) -> None:
        """:meth:`blockipc.IncomingRequest.fail`, blocking."""
        self._client._run(lambda: self._request.fail(error))


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
) -> Client:
    """Connect as :func:`blockipc.connect` does (same arguments, same errors) and
    return a blocking :class:`Client`, whose loop runs in a thread of its own.

    >>> with blockipc.sync.connect(address, name="worker", timeout=10) as client:  # doctest: +SKIP
    ...     client.put([1, 2, 3], name="numbers")

    One per process suits a ``ProcessPoolExecutor`` worker (connect in the pool's
    ``initializer``); any thread of the process may use it.
    """
    pending = _aclient.connect(  # validates the arguments here, before any thread
        address,
        name,
        inbox_messages=inbox_messages,
        inbox_bytes=inbox_bytes,
        cache_size=cache_size,
        timeout=timeout,
        retry=retry,
        reconnect=reconnect,
        access=access,
    )
    runner = LoopThread(f"blockipc-sync-{name}")
    try:
        client = runner.run(pending._open)
    except BaseException:
        runner.stop()
        raise
    return Client(runner, client)
