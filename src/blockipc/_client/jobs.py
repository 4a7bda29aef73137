"""A job taken from a work queue (:meth:`Client.take`): its value, block and header,
and the answer it owes the queue (:meth:`Job.ack` or :meth:`Job.nack`)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from .._core.codecs import get_codec
from .._core.protocol import NO_BLOCK, Op
from .._exceptions import InvalidRequest
from .._types import Block

__all__ = ["Job"]

_UNSET: Any = object()


class _Owner(Protocol):
    """What a job needs of the :class:`Client` that took it (which imports this module)."""

    _sizes: dict[int, int]

    async def _call(self, op: Op, args: dict[str, Any], *, epoch: int | None = None) -> object:
        """Send a request of connection ``epoch`` and wait for its reply."""
        ...

    def _check_epoch(self, epoch: int) -> None:
        """Raise unless connection ``epoch`` is the live one."""
        ...


class Job:
    """A job taken from a work queue by :meth:`Client.take`; answer it with
    :meth:`ack` (done: its block is freed) or :meth:`nack` (put it back now).

    ``value`` is the object the producer enqueued, decoded with the codec recorded
    with it (a copy, the caller's: read it before answering; the bytes of a job of at
    most ``MAX_INLINE_PAYLOAD`` came with the take's reply, so it maps nothing).
    ``block`` is the job's block, which this process may read and lease ``"r"``
    (zero-copy) until it answers, or ``None`` for an *inline* job: one enqueued as an
    object of at most ``MAX_INLINE_PAYLOAD`` bytes encoded, which the coordinator
    keeps as bytes, with no block (unless its queues' inline jobs hold 64 MiB
    already: then it is a block too); ``header`` is the producer's header, ``producer``
    its name, ``queue`` the queue it was taken from, ``attempts`` how many deliveries
    of it failed before (0 the first time). A job this process neither acks nor
    nacks goes back to its queue, as a failed attempt, when this client closes or its
    process dies::

        job = await client.take("jobs")
        result = work(job.value)
        await job.ack()

    A consumer that takes again right after may fold the ack into its next take, one
    round trip for both: ``job = await client.take("jobs", ack=job)``.
    """

    __slots__ = (
        "_answered",
        "_client",
        "_data",
        "_epoch",
        "_folding",
        "_meta",
        "_offset",
        "_segment",
        "_settling",
        "_value",
        "attempts",
        "block",
        "codec",
        "header",
        "id",
        "producer",
        "queue",
    )

    def __init__(
        self,
        client: _Owner,
        epoch: int,
        segment: memoryview | None,
        result: dict[str, Any],
        data: bytes = b"",
    ) -> None:
        r = result
        self._client = client
        self._epoch = epoch
        self._segment = segment  # None: the block's bytes came inline, in ``data``
        self._data = data
        self._folding = False  # its ack rides on a take of this client's, unanswered yet
        self._settling: asyncio.Future[None] | None = None  # waits for that answer
        self._offset: int = r["offset"]
        self._meta: dict[str, Any] = r["meta"]
        self._value: Any = _UNSET
        self._answered = ""
        self.id: int = r["job"]
        """The job's id, as :meth:`Client.enqueue` returned it."""
        self.block: Block | None = (
            None if r["block"] == NO_BLOCK else Block(r["block"], r["size"], r["capacity"], "")
        )
        """The job's block, or ``None`` for an inline job (its bytes came with the take)."""
        self.header: dict[str, Any] = r["header"]
        self.attempts: int = r["attempts"]
        self.queue: str = r["queue"]
        self.producer: str = r["producer"]
        self.codec: str = r["codec"]
        """The codec recorded with the block (``"raw"`` for a block filled otherwise)."""

    def __repr__(self) -> str:
        state = f", {self._answered}" if self._answered else ""
        return f"<Job {self.id} of {self.queue!r}, attempts={self.attempts}{state}>"

    @property
    def value(self) -> Any:
        """The job's object, decoded once (a copy: it stays valid after the answer).

        :raises CodecError: if the block's bytes do not decode (``nack`` or ``ack`` it).
        :raises InvalidRequest: when first read after the job was answered.
        """
        if self._value is _UNSET:
            if self._answered or self._folding:
                how = self._answered or "acked"
                raise InvalidRequest(
                    f"job {self.id} was {how} before its value was read: read job.value first"
                )
            n = self._meta.get("nbytes", len(self._data) if self.block is None else self.block.size)
            codec, meta = get_codec(self.codec), self._meta.get("codec", {})
            if self._segment is None:
                with memoryview(self._data)[:n] as src:
                    self._value = codec.decode(src, meta)
                self._data = b""
            else:
                self._client._check_epoch(self._epoch)  # its mapping went with the connection
                with self._segment[self._offset : self._offset + n] as src:
                    self._value = codec.decode(src, meta)
        return self._value

    @property
    def done(self) -> bool:
        """Whether this job was acked or nacked."""
        return bool(self._answered)

    async def ack(self) -> None:
        """The job is done: it leaves the queue for good and its block (or an inline
        job's bytes, in the coordinator) is freed."""
        await self._answer("acked", Op.ACK, {"job": self.id})

    async def nack(self) -> None:
        """Put the job back at the front of its queue now, as a failed attempt: the
        next :meth:`Client.take` gets it, or, after the queue's ``max_attempts``, its
        dead-letter queue does."""
        await self._answer("nacked", Op.NACK, {"job": self.id, "failed": True})

    async def _answer(self, how: str, op: Op, args: dict[str, Any]) -> None:
        self._check_unanswered()
        await self._client._call(op, args, epoch=self._epoch)
        self._answered = how
        if self.block is not None:
            self._client._sizes.pop(self.block.id, None)

    def _check_unanswered(self) -> None:
        if self._answered:
            raise InvalidRequest(f"job {self.id} was {self._answered} already")
        if self._folding:
            raise InvalidRequest(f"job {self.id} is being acked (by a take that carries its ack)")

    def _fold(self) -> None:
        """A take of this job's client carries its ack (``Client.take(..., ack=job)``):
        unanswerable until that take's answer says whether the ack was done."""
        self._check_unanswered()
        self._client._check_epoch(self._epoch)
        self._folding = True

    def _folded(self, acked: bool) -> None:
        """The take that carried this job's ack was answered: ``acked`` or refused (the
        job is unanswered still, as before the take)."""
        self._folding = False
        if acked:
            self._answered = "acked"
            if self.block is not None:
                self._client._sizes.pop(self.block.id, None)
        if self._settling is not None and not self._settling.done():
            self._settling.set_result(None)
        self._settling = None

    async def _settled(self) -> None:
        """Wait until the take carrying this job's ack is answered (see :meth:`_fold`)."""
        if self._folding:
            self._settling = self._settling or asyncio.get_running_loop().create_future()
            await self._settling
