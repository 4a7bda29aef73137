"""Plain value types of the public API: what a call returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Block", "BlockLike", "Message", "Stats"]


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
"""Every method that takes a block accepts a :class:`Block` or its id."""


@dataclass(frozen=True, slots=True)
class Message:
    """A block delivered to this process's inbox by :meth:`Client.send` or
    :meth:`Client.publish`.

    ``block.owner`` says who owns it now: this process after a moving send, the sender
    after a shared send (``move=False``) where this process has a read grant, nobody
    (``""``) after a publish. ``sender`` is the sending process's name, ``header`` the
    small dict it attached, ``topic`` the topic of a published block (else ``None``).
    """

    block: Block
    sender: str
    header: dict[str, Any] = field(default_factory=dict)
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the coordinator's pool and admin space (see :meth:`Client.stats`).

    ``free_bytes + used_bytes == pool_size`` always. The cache counters add up the
    client's own cache of ``get`` results (from :meth:`Client.stats`) and the pool's
    named objects (gets by name found or not, cacheable objects evicted under memory
    pressure). ``names`` lists the named objects.
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
