"""Plain value types of the public API: what a call returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._core.codecs import get_codec
from ._exceptions import InvalidRequest

__all__ = ["Block", "BlockLike", "Message", "QueueStats", "Stats"]


@dataclass(frozen=True, slots=True)
class Block:
    """A block of shared memory assigned to a process.

    ``size`` is what was asked for and what bounds are checked against; ``capacity``
    is what the buddy allocator set aside (a power of two, at least the minimum block).
    A ``Block`` is only a handle: the coordinator's routing table says who may use it.

    >>> block = await client.alloc(1_000)       # doctest: +SKIP
    >>> block.size, block.capacity               # doctest: +SKIP
    (1000, 4096)
    """

    id: int
    size: int
    capacity: int
    owner: str


BlockLike = Block | int
"""Every method that takes a block accepts a :class:`Block` or its id.

::

    block = await client.alloc(64)
    await client.read(block)        # the Block
    await client.read(block.id)     # or its id: the same block
"""


@dataclass(frozen=True, slots=True)
class Message:
    """A block delivered to this process's inbox by :meth:`Client.send` or
    :meth:`Client.publish`.

    ``block.owner`` says who owns it now: this process after a moving send, the sender
    after a shared send (``move=False``) where this process has a read grant, nobody
    (``""``) after a publish. ``sender`` is the sending process's name, ``header`` the
    small dict it attached, ``topic`` the topic of a published block (else ``None``).
    ``block`` is None for a header sent or published alone (``send(None, to,
    header=...)``: an event), and for an inline message (:meth:`Client.send_value`,
    :meth:`Client.send_many`): its encoded bytes are ``data``, ``codec`` the name of
    the codec that encoded them, and :attr:`value` decodes them.

    >>> msg = await client.recv()               # doctest: +SKIP
    >>> msg.value if msg.codec else msg.block   # doctest: +SKIP
    {'reading': 21.5}
    """

    block: Block | None
    sender: str
    header: dict[str, Any] = field(default_factory=dict)
    topic: str | None = None
    data: bytes | None = None
    """An inline message's encoded payload (else None)."""
    codec: str | None = None
    """The codec that encoded ``data`` (else None)."""
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    """The codec's meta for ``data`` (a numpy array's dtype and shape; mostly empty)."""

    @property
    def value(self) -> Any:
        """An inline message's object, decoded from ``data`` with its codec (each access
        decodes again); :class:`InvalidRequest` for a block or a header alone.

        >>> await sender.send_value("consumer", {"n": 1})  # doctest: +SKIP
        >>> (await consumer.recv()).value                  # doctest: +SKIP
        {'n': 1}
        """
        if self.codec is None or self.data is None:
            what = "a header alone" if self.block is None else f"block {self.block.id}"
            raise InvalidRequest(f"this message carries {what}, not an inline value")
        return get_codec(self.codec).decode(self.data, self.meta)


@dataclass(frozen=True, slots=True)
class LinkStats:
    """One other node this coordinator's link knows (see :attr:`Stats.links`): a peer
    it sends to (``peers=``), a node that sent blocks to it, or both.

    ``state`` is ``"up"`` (connected to the peer now), ``"down"`` (not connected: sends
    wait up to ``link_timeout``), ``"refused"`` (the peer refused this node's key) or
    ``"inbound"`` (not a peer: this node only receives from it). The counters run from
    the coordinator's start: sends to that node ``queued`` (waiting for the link or its
    window) and ``in_flight`` now, ``sent`` (accepted by the peer, ``sent_bytes`` in
    all) and ``failed``; blocks from that node ``received`` (delivered to a local
    process, ``received_bytes`` in all) and ``refused`` (unknown receiver, no room)::

        for link in (await client.stats()).links:
            print(link.node, link.state, link.sent, link.failed)
    """

    node: str
    state: str
    queued: int = 0
    in_flight: int = 0
    sent: int = 0
    sent_bytes: int = 0
    failed: int = 0
    received: int = 0
    received_bytes: int = 0
    refused: int = 0


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """What one connected process holds (see :attr:`Stats.usage`): the blocks it holds
    (as owner or grantee), the capacity of those it owns (``owned_bytes``), its leases,
    the messages waiting in its inbox and their bytes, its open channel ends, and the
    requests its connection sent since it connected (``requests``: two samples give a
    rate, as ``blockipc stats --watch`` shows). A process whose numbers only grow is
    the one leaking::

        for p in (await client.stats()).usage:
            print(p.name, p.pid, p.blocks, p.owned_bytes, p.inbox, p.requests)
    """

    name: str
    pid: int
    blocks: int = 0
    owned_bytes: int = 0
    leases: int = 0
    inbox: int = 0
    inbox_bytes: int = 0
    channels: int = 0
    requests: int = field(default=0, compare=False)
    """Requests since it connected: a rate, not a holding, so not compared (two
    snapshots of what a process holds are equal however many requests came between)."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One work queue (see :attr:`Stats.queues` and :meth:`Client.enqueue`).

    ``depth`` jobs wait in it and ``in_flight`` are taken and not acked yet; the
    counters run from the coordinator's start: jobs ``enqueued``, ``acked``,
    ``redelivered`` (given back by a nack or a consumer that went, and queued again) and
    ``dead_lettered`` (moved to the queue ``dead_letter`` after ``max_attempts`` failed
    deliveries; ``None``: never). ``maxsize`` bounds ``depth`` for producers::

        for q in (await client.stats()).queues:
            print(q.name, q.depth, q.in_flight, q.redelivered, q.dead_lettered)
    """

    name: str
    depth: int = 0
    in_flight: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    enqueued: int = 0
    acked: int = 0
    maxsize: int = 0
    max_attempts: int | None = None
    dead_letter: str | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the coordinator's pool and admin space (see :meth:`Client.stats`).

    ``free_bytes + used_bytes == pool_size`` always. The cache counters add up the
    client's own cache of ``get`` results (from :meth:`Client.stats`) and the pool's
    named objects (gets by name found or not, cacheable objects evicted under memory
    pressure). ``names`` lists the named objects.

    The lists are sorted. A frame carries at most 4096 items per list, so from
    :meth:`Client.stats` ``processes``, ``names`` and ``usage`` hold the first 4096 of
    each (``names_total`` and ``processes_total`` count them all); an embedded
    :meth:`Coordinator.stats` lists everything::

        stats = await client.stats()
        print(stats.used_bytes, "of", stats.pool_size, "bytes in", stats.blocks, "blocks")
    """

    pool_size: int
    max_pool_size: int
    free_bytes: int
    used_bytes: int
    blocks: int
    segments: int
    processes: tuple[str, ...]
    leases: int
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    names: tuple[str, ...] = ()
    channels: int = 0
    """Open channels (:meth:`Client.open_channel`); each holds one block, its ring."""
    links: tuple[LinkStats, ...] = ()
    """The link's other nodes, by name (empty without ``node=``): see :class:`LinkStats`."""
    usage: tuple[ProcessStats, ...] = ()
    """Each connected process, as in ``processes``: see :class:`ProcessStats`."""
    names_total: int = 0
    """How many named objects there are: ``len(names)``, unless more than 4096."""
    processes_total: int = 0
    """How many processes are connected: ``len(processes)``, unless more than 4096."""
    queues: tuple[QueueStats, ...] = ()
    """The work queues, sorted by name: see :class:`QueueStats`. From
    :meth:`Client.stats`, those that fit one frame beside the other lists."""
    largest_free: int = 0
    """The largest block the pool could give now without growing (0: none free). Against
    ``free_bytes`` it measures fragmentation: free bytes in pieces too small for a
    large block."""
    queue_inline_bytes: int = 0
    """Bytes the inline jobs of the work queues hold in the coordinator's own memory
    (not in the pool), waiting or taken, until acked; bounded by ``MAX_QUEUE_INLINE_BYTES``
    (64 MiB), past which an inline job goes into a block (see :meth:`Client.enqueue`)."""
