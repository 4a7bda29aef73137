"""The admin space: routing table, process records and leases, with no I/O.

Theory of operation
-------------------
Everything that says who owns what lives here, in the coordinator's private memory,
never in a shared segment a client could scribble on. The coordinator asks this module
to *decide* (may this process write that block? who gets the lease now?), applies the
answer, and only then does I/O. Nothing here awaits; waiting is expressed as opaque
*tokens* queued on a block, which the caller turns into replies when this module hands
them back as granted.

Leases are reader/writer locks on a block, granted in FIFO order so a writer is never
starved by a stream of readers. A routed read or write is atomic with respect to the
leases of *other* processes: it queues behind them like a short lease of its own. A
process's own leases never block its own routed requests, so a task holding a write
lease may still call ``read``/``write`` on the block without deadlocking itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from ._exceptions import (
    AccessDenied,
    BlockIPCError,
    BlockNotFound,
    InvalidRequest,
    OutOfBounds,
    PeerUnreachable,
)

__all__ = [
    "BlockRecord",
    "Grant",
    "Lease",
    "Mode",
    "ProcessRecord",
    "Reclaimed",
    "RoutingTable",
    "Waiter",
]

Mode = Literal["r", "w"]
MAX_NAME = 255


@dataclass(eq=False, slots=True)
class ProcessRecord:
    """One connected process: its name, credentials, blocks, leases and inbox."""

    key: int
    name: str
    pid: int
    uid: int
    blocks: set[int] = field(default_factory=set)
    leases: dict[int, Lease] = field(default_factory=dict)
    inbox: deque[InboxEntry] = field(default_factory=deque)


@dataclass(eq=False, slots=True)
class Lease:
    id: int
    block: BlockRecord
    holder: ProcessRecord
    mode: Mode
    transient: bool = False  # a routed read/write, released as soon as it is done


@dataclass(eq=False, slots=True)
class Waiter:
    """A queued request for a lease; ``token`` is the caller's, returned on grant."""

    holder: ProcessRecord
    mode: Mode
    token: Hashable
    transient: bool


@dataclass(eq=False, slots=True)
class BlockRecord:
    """One row of the routing table."""

    id: int
    segment: int
    offset: int
    capacity: int
    size: int
    owner: ProcessRecord
    generation: int = 0
    leases: dict[int, Lease] = field(default_factory=dict)
    waiters: deque[Waiter] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    block: BlockRecord
    sender: str
    header: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What ending a process left for the caller to act on."""

    blocks: list[BlockRecord]
    grants: list[Grant]
    dropped: list[Waiter]
    leases: int


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease handed to a waiter whose ``token`` the caller queued."""

    token: Hashable
    lease: Lease


class RoutingTable:
    """Blocks, processes and leases of one coordinator.

    >>> table = RoutingTable()
    >>> proc = table.register("producer", pid=1, uid=0)
    >>> rec = table.add_block(proc, segment=0, offset=0, capacity=4096, size=100)
    >>> table.lookup(proc, rec.id).size
    100
    """

    def __init__(self) -> None:
        self.blocks: dict[int, BlockRecord] = {}
        self.processes: dict[str, ProcessRecord] = {}
        self._next_block = 1
        self._next_lease = 1
        self._next_key = 1

    # -- processes ---------------------------------------------------------------
    def register(self, name: str, *, pid: int, uid: int) -> ProcessRecord:
        if not name or len(name) > MAX_NAME or "/" in name or not name.isprintable():
            raise InvalidRequest(
                f"process name {name!r} is invalid: 1-{MAX_NAME} printable characters, no '/'"
            )
        if name in self.processes:
            raise BlockIPCError(f"process name {name!r} is already taken by a live connection")
        proc = ProcessRecord(self._next_key, name, pid, uid)
        self._next_key += 1
        self.processes[name] = proc
        return proc

    def unregister(self, proc: ProcessRecord) -> Reclaimed:
        """Remove ``proc``: end its leases, drop its queued waits, take away its blocks.

        Returns what the caller must act on: the blocks removed (free their memory),
        the leases other processes were granted as a result (reply to them), and the
        other processes' waits on removed blocks (answer them with an error).
        """
        if self.processes.get(proc.name) is proc:
            del self.processes[proc.name]
        grants: list[Grant] = []
        reclaimed = len(proc.leases)
        touched: list[BlockRecord] = []
        for lease in list(proc.leases.values()):
            self._drop_lease(lease)
            touched.append(lease.block)
        for rec in self.blocks.values():
            if any(w.holder is proc for w in rec.waiters):
                rec.waiters = deque(w for w in rec.waiters if w.holder is not proc)
                touched.append(rec)
        removed = [self.blocks[b] for b in sorted(proc.blocks)]
        dropped: list[Waiter] = []
        for rec in removed:
            dropped.extend(self._remove(rec))
        proc.inbox.clear()
        for rec in touched:
            if rec.id in self.blocks:
                grants.extend(self._grant_waiters(rec))
        return Reclaimed(removed, grants, dropped, reclaimed)

    def find_process(self, name: str) -> ProcessRecord:
        try:
            return self.processes[name]
        except KeyError:
            raise PeerUnreachable(f"no process named {name!r} is registered") from None

    # -- blocks ------------------------------------------------------------------
    def add_block(
        self, proc: ProcessRecord, *, segment: int, offset: int, capacity: int, size: int
    ) -> BlockRecord:
        rec = BlockRecord(self._next_block, segment, offset, capacity, size, proc)
        self._next_block += 1
        self.blocks[rec.id] = rec
        proc.blocks.add(rec.id)
        return rec

    def lookup(self, proc: ProcessRecord, block_id: int) -> BlockRecord:
        """Return the block ``proc`` may use, or raise why it may not."""
        rec = self.blocks.get(block_id)
        if rec is None:
            raise BlockNotFound(f"block {block_id} does not exist (never allocated, or freed)")
        if rec.owner is not proc:
            raise AccessDenied(f"block {block_id} belongs to another process")
        return rec

    @staticmethod
    def check_bounds(rec: BlockRecord, offset: int, size: int) -> None:
        if offset + size > rec.size:
            raise OutOfBounds(
                f"offset {offset} + size {size} is outside block {rec.id} of size {rec.size}"
            )

    def remove_block(self, rec: BlockRecord) -> list[Waiter]:
        """Free ``rec`` on behalf of its owner; refuses while leases are held on it.

        Returns the waits queued on it, which the caller answers with an error.
        """
        if rec.leases:
            raise AccessDenied(
                f"block {rec.id} has {len(rec.leases)} active lease(s); end them before freeing"
            )
        return self._remove(rec)

    def _remove(self, rec: BlockRecord) -> list[Waiter]:
        for lease in list(rec.leases.values()):
            self._drop_lease(lease)
        dropped = list(rec.waiters)
        rec.waiters.clear()
        rec.generation += 1
        del self.blocks[rec.id]
        rec.owner.blocks.discard(rec.id)
        return dropped

    def move(
        self, rec: BlockRecord, sender: ProcessRecord, to: ProcessRecord, header: dict[str, Any]
    ) -> None:
        """Hand ``rec`` to ``to``'s inbox: ownership moves now, delivery on ``recv``."""
        if rec.leases or rec.waiters:
            raise AccessDenied(
                f"block {rec.id} has active or queued leases; end them before sending it"
            )
        sender.blocks.discard(rec.id)
        rec.owner = to
        to.blocks.add(rec.id)
        to.inbox.append(InboxEntry(rec, sender.name, header))

    # -- leases ------------------------------------------------------------------
    def request_lease(
        self,
        proc: ProcessRecord,
        rec: BlockRecord,
        mode: str,
        token: Hashable,
        *,
        transient: bool = False,
    ) -> Lease | None:
        """Grant a lease now, or queue ``token`` and return ``None``."""
        if mode not in ("r", "w"):
            raise InvalidRequest(f"lease mode must be 'r' or 'w', not {mode!r}")
        waiter = Waiter(proc, "r" if mode == "r" else "w", token, transient)
        if not rec.waiters and self._compatible(rec, waiter):
            return self._grant(rec, waiter)
        rec.waiters.append(waiter)
        return None

    def release(self, lease: Lease) -> list[Grant]:
        """End ``lease``; returns the leases this made possible, in FIFO order."""
        self._drop_lease(lease)
        if lease.mode == "w" and not lease.transient:  # a routed write bumps it itself
            lease.block.generation += 1
        if lease.block.id not in self.blocks:
            return []
        return self._grant_waiters(lease.block)

    def cancel_wait(self, rec: BlockRecord, token: Hashable) -> bool:
        for w in rec.waiters:
            if w.token == token:
                rec.waiters.remove(w)
                return True
        return False

    def find_lease(self, proc: ProcessRecord, lease_id: int) -> Lease:
        try:
            return proc.leases[lease_id]
        except KeyError:
            raise BlockNotFound(f"lease {lease_id} is not held by this process") from None

    @staticmethod
    def _compatible(rec: BlockRecord, waiter: Waiter) -> bool:
        for lease in rec.leases.values():
            if waiter.transient and lease.holder is waiter.holder:
                continue  # a process's own leases never block its routed requests
            if waiter.mode == "w" or lease.mode == "w":
                return False
        return True

    def _grant(self, rec: BlockRecord, waiter: Waiter) -> Lease:
        lease = Lease(self._next_lease, rec, waiter.holder, waiter.mode, waiter.transient)
        self._next_lease += 1
        rec.leases[lease.id] = lease
        waiter.holder.leases[lease.id] = lease
        return lease

    def _grant_waiters(self, rec: BlockRecord) -> list[Grant]:
        grants = []
        while rec.waiters and self._compatible(rec, rec.waiters[0]):
            waiter = rec.waiters.popleft()
            grants.append(Grant(waiter.token, self._grant(rec, waiter)))
        return grants

    @staticmethod
    def _drop_lease(lease: Lease) -> None:
        lease.block.leases.pop(lease.id, None)
        lease.holder.leases.pop(lease.id, None)

    @property
    def lease_count(self) -> int:
        return sum(len(rec.leases) for rec in self.blocks.values())
