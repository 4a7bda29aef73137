"""A job taken from a work queue (:meth:`Client.take`): its value, block and header,
and the answer it owes the queue (:meth:`Job.ack` or :meth:`Job.nack`)."""

from __future__ import annotations

from typing import Any, Protocol

from .._core.codecs import get_codec
from .._core.protocol import Op
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
    with its block (a copy, the caller's: read it before answering). ``block`` is the
    job's block, which this process may read and lease ``"r"`` (zero-copy) until it
    answers; ``header`` is the producer's header, ``producer`` its name, ``queue`` the
    queue it was taken from, ``attempts`` how many deliveries of it failed before
    (0 the first time). A job this process neither acks nor nacks goes back to its
    queue, as a failed attempt, when this client closes or its process dies::

        job = await client.take("jobs")
        result = work(job.value)
        await job.ack()
    """

    __slots__ = (
        "_answered",
        "_client",
        "_epoch",
        "_meta",
        "_offset",
        "_segment",
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
        segment: memoryview,
        result: dict[str, Any],
    ) -> None:
        r = result
        self._client = client
        self._epoch = epoch
        self._segment = segment
        self._offset: int = r["offset"]
        self._meta: dict[str, Any] = r["meta"]
        self._value: Any = _UNSET
        self._answered = ""
        self.id: int = r["job"]
        """The job's id, as :meth:`Client.enqueue` returned it."""
        self.block = Block(r["block"], r["size"], r["capacity"], "")
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
            if self._answered:
                raise InvalidRequest(
                    f"job {self.id} was {self._answered} before its value was read: "
                    "read job.value first"
                )
            self._client._check_epoch(self._epoch)  # its mapping went with the connection
            n = self._meta.get("nbytes", self.block.size)
            with self._segment[self._offset : self._offset + n] as src:
                self._value = get_codec(self.codec).decode(src, self._meta.get("codec", {}))
        return self._value

    @property
    def done(self) -> bool:
        """Whether this job was acked or nacked."""
        return bool(self._answered)

    async def ack(self) -> None:
        """The job is done: it leaves the queue for good and its block is freed."""
        await self._answer("acked", Op.ACK, {"job": self.id})

    async def nack(self) -> None:
        """Put the job back at the front of its queue now, as a failed attempt: the
        next :meth:`Client.take` gets it, or, after the queue's ``max_attempts``, its
        dead-letter queue does."""
        await self._answer("nacked", Op.NACK, {"job": self.id, "failed": True})

    async def _answer(self, how: str, op: Op, args: dict[str, Any]) -> None:
        if self._answered:
            raise InvalidRequest(f"job {self.id} was {self._answered} already")
        await self._client._call(op, args, epoch=self._epoch)
        self._answered = how
        self._client._sizes.pop(self.block.id, None)
