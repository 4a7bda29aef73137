"""The admin space: routing table, process records, rights, leases and inboxes, no I/O.

Theory of operation
-------------------
Everything that says who owns what lives here, in the coordinator's private memory,
never in a shared segment a client could scribble on. The coordinator asks this module
to *decide* (may this process write that block? who gets the lease now? is there room
in that inbox?), applies the answer, and only then does I/O. Nothing here awaits;
waiting is expressed as opaque *tokens* queued here, which the caller turns into
replies when this module hands them back.

Outcomes. A decision that ends holds, leases or waits returns an :class:`Outcome`: the
blocks now gone (free their memory), the waits it dropped (answer them with an error),
the leases it granted and the deliveries it admitted (answer them). The coordinator
applies every outcome in one place (``ServerState.settle``). This module is the only
code that changes holds, pins (a block in transit), grants and removals.

Rights. A block has at most one *owner* (full rights: read, write, send, grant,
revoke) and any number of *grantees* holding ``"r"`` or ``"w"``. Owner and grantees
are the block's *holders*; ``free`` drops the caller's own hold, and the block's memory
goes back to the pool when its last holder lets go (or disconnects).

Leases are reader/writer locks on a block, granted in FIFO order so a writer is never
starved by a stream of readers. A routed read or write is atomic with respect to the
leases of *other* processes: it queues behind them like a short lease of its own. A
process's own leases never block its own routed requests, so a task holding a write
lease may still call ``read``/``write`` on the block without deadlocking itself.

Exports. A lease whose view outlived it in the client (a numpy array made from it, a
slice) ends as any lease, but the block is marked as reachable by that process
(``mark_exported``): whatever becomes of the block, its memory never goes back to the
pool while that process may still reach it: until the process says the last such view
is gone (``unexport``), or unregisters.

Inboxes. ``offer`` puts a delivery (a moved block, a shared block, a published block,
or a header alone) into the receiver's inbox if it has room (message and byte limits),
else queues it behind the deliveries already waiting for that receiver, so each
sender's order is kept. ``take`` pops the next message and admits queued deliveries
that now fit.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .._exceptions import (
    AccessDenied,
    BlockNotFound,
    InboxFull,
    InvalidRequest,
    NameTaken,
    PeerUnreachable,
)
from .limits import Mode, check_mode, check_process_name, check_range, check_subscriptions
from .topics import Subscriptions, check_pattern, check_topic

__all__ = [
    "BlockRecord",
    "ChannelRecord",
    "Delivery",
    "Grant",
    "InboxEntry",
    "Lease",
    "NOTHING",
    "Mode",
    "Outcome",
    "ProcessRecord",
    "RoutingTable",
    "Waiter",
]

FIRST_BLOCK_MAX = 1 << 48
"""Highest first block id (a coordinator picks its own at random below it): far below
``MAX_INT``, so that the ids that follow never run out."""

Need = Literal["r", "w", "own"]
_RANK = {"r": 1, "w": 2, "own": 3}


@dataclass(eq=False, slots=True)
class ProcessRecord:
    """One connected process: name, credentials, held blocks, leases, inbox, topics."""

    key: int
    name: str
    pid: int
    uid: int
    inbox_messages: int = 1024
    inbox_bytes: int = 1 << 62
    blocks: set[int] = field(default_factory=set)  # held: owned or granted (see _hold)
    held_bytes: int = 0  # the capacity of those blocks
    owned_bytes: int = 0  # the capacity of those it owns (see _own)
    leases: dict[int, Lease] = field(default_factory=dict)
    inbox: deque[InboxEntry] = field(default_factory=deque)
    inbox_used: int = 0  # bytes of the blocks in the inbox
    pending: deque[Delivery] = field(default_factory=deque)
    topics: set[str] = field(default_factory=set)
    channels: dict[int, ChannelRecord] = field(default_factory=dict)  # as either end
    channel_offers: deque[ChannelRecord] = field(default_factory=deque)  # not accepted yet
    exports: dict[int, BlockRecord] = field(default_factory=dict)  # by id: see mark_exported
    # the blocks it waits for a lease on, with how many of its waits each has queued
    # (see request_lease, _unwait): what unregister visits, not every block of the table
    waiting: dict[BlockRecord, int] = field(default_factory=dict)
    gone: bool = False  # unregistered: what it still holds is being reclaimed
    requests: int = 0  # requests its session handled (stats: a rate from two samples)


@dataclass(eq=False, slots=True)
class Lease:
    id: int
    block: BlockRecord
    holder: ProcessRecord
    mode: Mode
    transient: bool = False  # a routed read/write or a copy, released as soon as done


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
    owner: ProcessRecord | None
    generation: int = 0
    slot: int = 0  # index of its counter in the shared generation table
    grants: dict[int, tuple[ProcessRecord, Mode]] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)
    waiters: deque[Waiter] = field(default_factory=deque)
    in_transit: int = 0  # deliveries of this block queued for a full inbox, or transfers
    transfers: int = 0  # transfers to other nodes in progress (see start_transfer)
    codec: str = "raw"  # how put() encoded it; get() decodes with it
    meta: dict[str, Any] = field(default_factory=dict)  # the codec's meta (dtype, shape, ...)
    name: str = ""  # bound to this name: the name holds it, any process may read it
    cacheable: bool = False  # a named object the pool may evict under pressure
    doomed: bool = False  # no holder left, but readers still lease it: removed after them
    channel: int = 0  # the ring of this channel: held by it, no process has rights on it
    exported: tuple[ProcessRecord, ...] = ()  # may still reach its bytes: see mark_exported
    job: int = 0  # a work queue's job (see _core/queues.py): held by it until acked

    @property
    def owner_name(self) -> str:
        """The owner's name; ``""`` for none, or for a process that is gone (its name
        may already be a new process's, which does not own this block)."""
        return self.owner.name if self.owner is not None and not self.owner.gone else ""

    def holders(self) -> list[ProcessRecord]:
        procs = [p for p, _ in self.grants.values()]
        return procs if self.owner is None else [self.owner, *procs]

    def held_by_process(self) -> bool:
        return self.owner is not None or bool(self.grants)

    def held(self) -> bool:
        return (
            self.owner is not None
            or bool(self.grants)
            or bool(self.name)
            or bool(self.channel)
            or bool(self.job)
        )


@dataclass(eq=False, slots=True)
class ChannelRecord:
    """A channel: its ring's block and its two ends (``None`` once an end closed)."""

    id: int
    block: BlockRecord
    sender: ProcessRecord | None
    receiver: ProcessRecord | None
    sender_name: str
    receiver_name: str
    accepted: bool = False


_NO_META: dict[str, Any] = {}  # (shared, never mutated)


class InboxEntry(NamedTuple):
    """A message in an inbox: a block (None: a header-only message, or an inline one:
    ``payload`` its bytes, which ``codec`` and ``meta`` decode) and its envelope. A
    NamedTuple: a batch makes one per message (a frozen dataclass costs 3x as much)."""

    block: BlockRecord | None
    sender: str
    header: dict[str, Any]
    topic: str = ""
    payload: bytes | None = None
    codec: str = ""
    meta: dict[str, Any] = _NO_META

    @property
    def size(self) -> int:
        """What the message counts against the inbox's bytes: its block's size, or its
        inline payload's."""
        if self.payload is not None:
            return len(self.payload)
        return 0 if self.block is None else self.block.size


@dataclass(eq=False, slots=True)
class Delivery:
    """A block on its way into ``to``'s inbox: moved, or shared with a read grant; or a
    header alone (``block`` None)."""

    block: BlockRecord | None
    sender: ProcessRecord
    to: ProcessRecord
    header: dict[str, Any]
    move: bool
    token: Hashable
    topic: str = ""
    # inline messages (block None): one per payload, admitted into the inbox together
    payloads: tuple[bytes, ...] | None = None
    codec: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    payload_bytes: int = field(init=False, default=0)  # (summed once: offer and admit ask)

    def __post_init__(self) -> None:
        if self.payloads is not None:
            self.payload_bytes = sum(map(len, self.payloads))

    @property
    def size(self) -> int:
        """The bytes it counts against the inbox: its block's size, or its payloads'."""
        if self.payloads is not None:
            return self.payload_bytes
        return 0 if self.block is None else self.block.size

    @property
    def count(self) -> int:
        """The messages it puts in the inbox: one, or one per inline payload."""
        return 1 if self.payloads is None else len(self.payloads)

    def in_transit(self, step: int) -> None:
        """Count the delivery's block in transit (``+1``: queued) or no longer (``-1``)."""
        if self.block is not None:
            self.block.in_transit += step


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease handed to a waiter whose ``token`` the caller queued."""

    token: Hashable
    lease: Lease


class Outcome(NamedTuple):
    """What a decision left for the caller to act on (see the module's docstring)."""

    freed: tuple[BlockRecord, ...] | list[BlockRecord] = ()  # removed: free their memory
    dropped: tuple[Waiter, ...] | list[Waiter] = ()  # waits on removed blocks: an error
    grants: tuple[Grant, ...] | list[Grant] = ()  # leases granted to waiters: answer them
    admitted: tuple[Delivery, ...] | list[Delivery] = ()  # now in an inbox: answer success
    failed: tuple[Delivery, ...] | list[Delivery] = ()  # can no longer happen: an error
    leases: int = 0  # (unregister) leases the process still held


NOTHING = Outcome()
"""The outcome of a decision that left nothing to do."""


def _hold(proc: ProcessRecord, rec: BlockRecord) -> None:
    """``proc`` holds ``rec`` now (as its owner or a grantee): its count of held bytes,
    which a quota may bound, follows its ``blocks``, and its count of owned bytes (what
    STATS shows) those of its ``blocks`` whose owner it is (see :func:`_own`)."""
    if rec.id not in proc.blocks:
        proc.blocks.add(rec.id)
        proc.held_bytes += rec.capacity
        if rec.owner is proc:
            proc.owned_bytes += rec.capacity


def _unhold(proc: ProcessRecord, rec: BlockRecord) -> None:
    if rec.id in proc.blocks:
        proc.blocks.discard(rec.id)
        proc.held_bytes -= rec.capacity
        if rec.owner is proc:
            proc.owned_bytes -= rec.capacity


def _unwait(rec: BlockRecord, waiter: Waiter) -> None:
    """``waiter`` left ``rec``'s queue (granted or withdrawn): its holder's index of the
    blocks it waits on follows (see ``ProcessRecord.waiting``)."""
    waiting = waiter.holder.waiting
    left = waiting.get(rec, 0) - 1
    if left > 0:
        waiting[rec] = left
    else:
        waiting.pop(rec, None)


def _own(rec: BlockRecord, proc: ProcessRecord | None) -> None:
    """``rec``'s owner is ``proc`` now (``None``: it has none). The one way an owner
    changes once the block exists, so that each process's ``owned_bytes`` stays the
    capacity of the blocks in its ``blocks`` that it owns."""
    old = rec.owner
    if old is proc:
        return
    if old is not None and rec.id in old.blocks:
        old.owned_bytes -= rec.capacity
    rec.owner = proc
    if proc is not None and rec.id in proc.blocks:
        proc.owned_bytes += rec.capacity


class RoutingTable:
    """Blocks, processes, rights, leases and inboxes of one coordinator.

    >>> table = RoutingTable()
    >>> proc = table.register("producer", pid=1, uid=0)
    >>> rec = table.add_block(proc, segment=0, offset=0, capacity=4096, size=100)
    >>> table.lookup(proc, rec.id, "w").size
    100
    """

    def __init__(
        self, on_bump: Callable[[BlockRecord], None] | None = None, first_block: int = 1
    ) -> None:
        """``first_block``: the id of the first block; a coordinator starts its table at
        a random one, so that no block id of one coordinator names a block of the next
        (a client that reconnected after a restart may still hold old ids)."""
        self._on_bump = on_bump
        self.names: dict[str, BlockRecord] = {}
        # named cacheable objects, least recently used first
        self.evictable: OrderedDict[str, None] = OrderedDict()
        self.blocks: dict[int, BlockRecord] = {}
        self.processes: dict[str, ProcessRecord] = {}
        self.topics: Subscriptions[ProcessRecord] = Subscriptions()
        self.channels: dict[int, ChannelRecord] = {}
        if not 0 < first_block <= FIRST_BLOCK_MAX:
            raise ValueError(f"first_block must be 1 to {FIRST_BLOCK_MAX}, not {first_block}")
        self._next_block = first_block
        self._next_lease = 1
        self._leases = 0  # see lease_count
        self._next_channel = 1
        self._next_key = 1

    # -- processes ---------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        pid: int,
        uid: int,
        inbox_messages: int = 1024,
        inbox_bytes: int = 1 << 62,
    ) -> ProcessRecord:
        check_process_name(name)
        if inbox_messages < 1 or inbox_bytes < 1:
            raise InvalidRequest("inbox limits must be at least 1 message and 1 byte")
        if name in self.processes:
            raise NameTaken(
                f"process name {name!r} is already taken by a live connection: "
                "connect with another name, or close that client first"
            )
        proc = ProcessRecord(self._next_key, name, pid, uid, inbox_messages, inbox_bytes)
        self._next_key += 1
        self.processes[name] = proc
        return proc

    def unregister(self, proc: ProcessRecord, *, limit: int | None = None) -> Outcome:
        """Remove ``proc``, which has disconnected.

        At once, whatever ``limit`` says: it is marked ``gone`` and leaves every lookup
        (its name is free again: a restarted process may register it), its
        subscriptions, its lease waits, its queued deliveries (to it and from it) and
        its inbox go, and the waiters its waits held up are granted. So nothing is ever
        granted or delivered to it after this call. Then its leases end and its holds
        drop: all of them, or with ``limit`` at most that many blocks' worth, the rest
        being left to :meth:`reclaim_some` (while :meth:`reclaim_left` is not 0), so
        that a process that held many blocks is reclaimed in slices. Deliveries to it
        that were still queued are the outcome's ``failed``; its ``leases`` counts every
        lease ``proc`` held, ended now or later."""
        proc.gone = True
        if self.processes.get(proc.name) is proc:
            del self.processes[proc.name]
        unexported = self._end_exports(proc)
        for topic in list(proc.topics):
            self.unsubscribe(proc, topic)
        reclaimed = len(proc.leases)
        touched = sorted(proc.waiting, key=lambda rec: rec.id)  # (the table's order)
        for rec in touched:
            rec.waiters = deque(w for w in rec.waiters if w.holder is not proc)
        proc.waiting.clear()
        # deliveries waiting for this process's inbox fail; its own queued sends vanish
        failed = list(proc.pending)
        proc.pending.clear()
        for other in self.processes.values():
            if any(d.sender is proc for d in other.pending):
                for d in other.pending:
                    if d.sender is proc:
                        d.in_transit(-1)
                other.pending = deque(d for d in other.pending if d.sender is not proc)
        for d in failed:
            d.in_transit(-1)
        proc.inbox.clear()
        proc.inbox_used = 0
        grants: list[Grant] = []
        for rec in touched:  # (one it holds or leases is granted when that hold ends)
            if rec.id not in proc.blocks and not self._leased_by(rec, proc):
                grants.extend(self._grant_waiters(rec))
        admitted: list[Delivery] = []
        for other in self.processes.values():
            admitted.extend(self._admit(other))
        rest = self.reclaim_some(proc, limit)
        return Outcome(
            [*unexported, *rest.freed],
            rest.dropped,
            [*grants, *rest.grants],
            admitted,
            failed,
            reclaimed,
        )

    def reclaim_some(self, proc: ProcessRecord, limit: int | None = None) -> Outcome:
        """End the leases and drop the holds of ``proc``, which :meth:`unregister`
        removed, on at most ``limit`` more blocks (``None``: all of them). The blocks
        no one holds now are the outcome's ``freed`` (or, leased by readers, doomed),
        the waits on them its ``dropped``, the leases its end made possible its
        ``grants``. The same as one call with no ``limit``, however it is sliced."""
        budget = self.reclaim_left(proc) if limit is None else limit
        removed: list[BlockRecord] = []
        dropped: list[Waiter] = []
        grants: list[Grant] = []
        while budget > 0 and (proc.leases or proc.blocks):
            budget -= 1
            if proc.leases:  # a block it leases: end its leases on it, then its hold
                _, lease = proc.leases.popitem()
                rec = lease.block
                ended = [x for x in rec.leases.values() if x.holder is proc]  # (lease too)
                for each in ended:
                    self._drop_lease(each)
                if rec.id in self.blocks and any(
                    x.mode == "w" and not x.transient for x in ended
                ):  # it may have written through its view, as release() knows
                    self.bump(rec)
                held = rec.id in proc.blocks
                _unhold(proc, rec)
            else:  # (popped: a set iterated from its start after removals is slow)
                rec = self.blocks[proc.blocks.pop()]
                proc.held_bytes -= rec.capacity
                if rec.owner is proc:
                    proc.owned_bytes -= rec.capacity
                held = True
            if held:
                self._drop_hold(rec, proc)
                out = self._let_go(rec)
                dropped.extend(out.dropped)
                removed.extend(out.freed)
            out = self.reap(rec)
            dropped.extend(out.dropped)
            removed.extend(out.freed)
            if rec.waiters and rec.id in self.blocks:
                grants.extend(self._grant_waiters(rec))
        return Outcome(removed, dropped, grants)

    @staticmethod
    def reclaim_left(proc: ProcessRecord) -> int:
        """How many blocks ``proc`` still leases or holds: for a process that
        :meth:`unregister` removed, what :meth:`reclaim_some` has still to do (at
        most; a block it both leases and holds is one)."""
        return len(proc.leases) + len(proc.blocks)

    @staticmethod
    def _leased_by(rec: BlockRecord, proc: ProcessRecord) -> bool:
        return any(lease.holder is proc for lease in rec.leases.values())

    def find_process(self, name: str) -> ProcessRecord:
        try:
            return self.processes[name]
        except KeyError:
            raise PeerUnreachable(f"no process named {name!r} is registered") from None

    # -- blocks ------------------------------------------------------------------
    def add_block(
        self,
        proc: ProcessRecord,
        *,
        segment: int,
        offset: int,
        capacity: int,
        size: int,
        slot: int = 0,
        generation: int = 0,
    ) -> BlockRecord:
        rec = BlockRecord(self._next_block, segment, offset, capacity, size, proc, generation, slot)
        self._next_block += 1
        self.blocks[rec.id] = rec
        _hold(proc, rec)
        return rec

    def lookup(self, proc: ProcessRecord, block_id: int, need: Need = "own") -> BlockRecord:
        """Return the block if ``proc`` has the right ``need``, or raise why not."""
        rec = self.blocks.get(block_id)
        if rec is None:
            raise BlockNotFound(f"block {block_id} does not exist (never allocated, or freed)")
        if rec.owner is proc:
            return rec
        grant = rec.grants.get(proc.key)
        if grant is None:
            raise AccessDenied(self._not_yours(rec))
        if _RANK[grant[1]] < _RANK[need]:
            wanted = {"r": "read", "w": "write", "own": "owner"}[need]
            raise AccessDenied(
                f"block {block_id}: this process has a {grant[1]!r} grant, not the {wanted} right"
            )
        return rec

    def readable(self, proc: ProcessRecord, block_id: int) -> BlockRecord:
        """A block ``proc`` may read: one it holds with the read right, or a named
        object (any local process may read those, by name or by id)."""
        rec = self.blocks.get(block_id)
        if rec is not None and rec.name:
            return rec
        return self.lookup(proc, block_id, "r")

    @staticmethod
    def _not_yours(rec: BlockRecord) -> str:
        """Why a process that neither owns nor was granted ``rec`` may not use it."""
        if rec.name:
            return (
                f"block {rec.id} is bound to the name {rec.name!r}, not held by a process: "
                f"get({rec.name!r}) reads it, put(obj, name={rec.name!r}) replaces it, "
                f"delete({rec.name!r}) frees it"
            )
        if rec.channel:
            return f"block {rec.id} is the ring of channel {rec.channel}: closing its ends frees it"
        if rec.job:
            return f"block {rec.id} is a job in a work queue: take() it, then ack() or nack() it"
        if rec.owner is None:
            return f"block {rec.id} is held by other processes (its owner let it go)"
        if rec.owner.gone:
            return f"block {rec.id} belonged to a process that disconnected (being reclaimed)"
        return f"block {rec.id} belongs to another process ({rec.owner.name!r})"

    @staticmethod
    def check_bounds(rec: BlockRecord, offset: int, size: int) -> None:
        check_range(rec.id, offset, size, rec.size)

    def release_hold(self, proc: ProcessRecord, rec: BlockRecord) -> Outcome:
        """``free`` by a holder: drop its hold (the block is freed if that was its last).
        Refused while ``proc`` holds a lease on it, and while the block waits for room
        in an inbox if ``proc`` owns it (it is the sender, or the publisher) or is its
        last holder; a subscriber or grantee may let go meanwhile: the owner's hold keeps
        the block alive for the deliveries still queued."""
        self.check_release(proc, rec)
        self._drop_hold(rec, proc)
        _unhold(proc, rec)
        return self._let_go(rec)

    @staticmethod
    def check_release(proc: ProcessRecord, rec: BlockRecord) -> None:
        """Raise why ``proc`` may not drop its hold on ``rec`` now (see
        :meth:`release_hold`); return if it may."""
        own = [lease for lease in rec.leases.values() if lease.holder is proc]
        if own:
            raise AccessDenied(
                f"block {rec.id} has {len(own)} active lease(s) of yours; end them before freeing"
            )
        if rec.in_transit and (rec.owner is proc or len(rec.holders()) <= 1):
            raise AccessDenied(f"block {rec.id} is being sent; it cannot be freed until delivered")

    def _let_go(self, rec: BlockRecord) -> Outcome:
        """After a hold ended: remove the block if nothing holds it. Readers that lease
        it without holding it (a ``get`` of a named object) finish first: the block is
        *doomed* now (its generation moves on) and removed by :meth:`reap` after them."""
        if rec.held():
            return NOTHING
        if rec.leases:
            if not rec.doomed:
                rec.doomed = True
                self.bump(rec)
            return NOTHING
        return self._gone(rec)

    def reap(self, rec: BlockRecord) -> Outcome:
        """Remove a doomed block once its last lease ended."""
        if rec.doomed and not rec.leases and rec.id in self.blocks:
            return self._gone(rec)
        return NOTHING

    def _gone(self, rec: BlockRecord) -> Outcome:
        """Remove ``rec``; its memory goes back to the pool (the outcome's ``freed``)
        unless a process may still reach it (:meth:`mark_exported`)."""
        dropped = self._remove(rec)
        if rec.exported:
            for proc in rec.exported:  # what it keeps out of the pool counts as held
                proc.held_bytes += rec.capacity
            return Outcome((), dropped)
        return Outcome((rec,), dropped)

    # -- views that outlived their lease -------------------------------------------
    def mark_exported(self, lease: Lease) -> None:
        """A view of ``lease`` outlived it in its holder's process (an array or a slice
        made from it still lives there), so that process may read and write the block's
        bytes for as long as that lives (or it stays connected): the block's memory must
        never become another block's meanwhile. The block lives on as it would (freed,
        moved, named, doomed); when it is removed, its memory stays out of the pool
        (counted in the process's held bytes, which a quota bounds) until the last such
        process says no view of it is left (:meth:`unexport`) or unregisters."""
        rec, proc = lease.block, lease.holder
        if rec.id not in proc.exports:
            rec.exported = (*rec.exported, proc)
            proc.exports[rec.id] = rec

    def unexport(self, proc: ProcessRecord, block_id: int) -> Outcome:
        """``proc`` says nothing made from a view of block ``block_id`` lives in it any
        more (it tells so only once the last one is gone). A block removed meanwhile
        that no other process reaches is freed now (the outcome's ``freed``). A block
        ``proc`` did not mark (or no longer reaches) is no error: nothing changes."""
        rec = proc.exports.pop(block_id, None)
        if rec is None:
            return NOTHING
        rec.exported = tuple(p for p in rec.exported if p is not proc)
        if self.blocks.get(rec.id) is rec:  # still live: its memory is the block's
            return NOTHING
        proc.held_bytes -= rec.capacity  # counted as held since its removal (_gone)
        return NOTHING if rec.exported else Outcome((rec,))

    def _end_exports(self, proc: ProcessRecord) -> list[BlockRecord]:
        """``proc`` is going: it reaches no block any more. Returns the removed blocks
        that only its exports kept out of the pool (free their memory now)."""
        freed = []
        for rec in proc.exports.values():
            rec.exported = tuple(p for p in rec.exported if p is not proc)
            if not rec.exported and self.blocks.get(rec.id) is not rec:
                freed.append(rec)
        proc.exports.clear()
        return freed

    def bump(self, rec: BlockRecord) -> None:
        """The block's bytes or life changed: move its generation on (and publish it)."""
        rec.generation += 1
        if self._on_bump is not None:
            self._on_bump(rec)

    def _drop_hold(self, rec: BlockRecord, proc: ProcessRecord) -> None:
        if rec.owner is proc:
            _own(rec, None)
        rec.grants.pop(proc.key, None)

    def _remove(self, rec: BlockRecord) -> list[Waiter]:
        for lease in list(rec.leases.values()):
            self._drop_lease(lease)
        dropped = list(rec.waiters)
        rec.waiters.clear()
        for w in dropped:
            w.holder.waiting.pop(rec, None)
        if not rec.doomed:
            self.bump(rec)
        del self.blocks[rec.id]
        for holder in rec.holders():
            _unhold(holder, rec)
        return dropped

    def grant(self, owner: ProcessRecord, rec: BlockRecord, to: ProcessRecord, mode: str) -> None:
        checked = check_mode("grant", mode)
        if to is owner:
            return
        rec.grants[to.key] = (to, checked)
        _hold(to, rec)

    def revoke(self, owner: ProcessRecord, rec: BlockRecord, to: ProcessRecord) -> None:
        """Take ``to``'s grant away; refused while it holds a lease on the block."""
        if to.key not in rec.grants:
            raise AccessDenied(f"{to.name!r} holds no grant on block {rec.id}")
        if any(lease.holder is to for lease in rec.leases.values()):
            raise AccessDenied(
                f"{to.name!r} holds a lease on block {rec.id}; it must end before a revoke"
            )
        del rec.grants[to.key]
        _unhold(to, rec)

    # -- channels ----------------------------------------------------------------
    def open_channel(
        self,
        sender: ProcessRecord,
        receiver: ProcessRecord,
        *,
        segment: int,
        offset: int,
        capacity: int,
        size: int,
        slot: int = 0,
        generation: int = 0,
    ) -> ChannelRecord:
        """A channel from ``sender`` to ``receiver`` whose ring is a block held by the
        channel itself (no process may free, write or lease it through the table);
        offered to the receiver until it accepts."""
        rec = BlockRecord(self._next_block, segment, offset, capacity, size, None, generation, slot)
        self._next_block += 1
        chan = ChannelRecord(self._next_channel, rec, sender, receiver, sender.name, receiver.name)
        self._next_channel += 1
        rec.channel = chan.id
        self.blocks[rec.id] = rec
        self.channels[chan.id] = chan
        sender.channels[chan.id] = chan
        receiver.channels[chan.id] = chan
        receiver.channel_offers.append(chan)
        return chan

    def accept_channel(self, proc: ProcessRecord) -> ChannelRecord | None:
        """The oldest channel offered to ``proc``, now accepted; ``None`` if none."""
        while proc.channel_offers:
            chan = proc.channel_offers.popleft()
            if chan.receiver is proc:
                chan.accepted = True
                return chan
        return None

    def channel_end(self, proc: ProcessRecord, channel: int) -> ChannelRecord:
        """A channel ``proc`` is an open end of (the receiver only once it accepted)."""
        chan = proc.channels.get(channel)
        if chan is None or (chan.receiver is proc and not chan.accepted):
            raise AccessDenied(f"this process is not an open end of channel {channel}")
        return chan

    def withdraw_offer(self, chan: ChannelRecord) -> None:
        """``chan``, never accepted, is no longer offered: its receiver's end goes too
        (that process never learned of it), so closing the sender's end frees the ring."""
        receiver = chan.receiver
        if chan.accepted or receiver is None:
            return
        with contextlib.suppress(ValueError):
            receiver.channel_offers.remove(chan)
        receiver.channels.pop(chan.id, None)
        chan.receiver = None

    def close_channel_end(self, chan: ChannelRecord, proc: ProcessRecord) -> bool:
        """``proc``'s end of ``chan`` is closed; True when that was the last end and
        the ring's block is gone (the caller frees its memory)."""
        if chan.sender is proc:
            chan.sender = None
        if chan.receiver is proc:
            chan.receiver = None
            if chan in proc.channel_offers:
                proc.channel_offers.remove(chan)
        proc.channels.pop(chan.id, None)
        if chan.sender is not None or chan.receiver is not None:
            return False
        del self.channels[chan.id]
        chan.block.channel = 0
        return bool(self._let_go(chan.block).freed)  # nobody could lease it: nothing waits

    # -- deliveries --------------------------------------------------------------
    def check_movable(self, proc: ProcessRecord, rec: BlockRecord) -> None:
        if rec.in_transit:
            raise AccessDenied(f"block {rec.id} is already on its way to an inbox")
        if any(lease.holder is proc for lease in rec.leases.values()) or rec in proc.waiting:
            raise AccessDenied(
                f"block {rec.id} has active or queued leases of yours; end them before sending"
            )

    def offer(self, delivery: Delivery, *, nowait: bool = False) -> bool:
        """Deliver now if ``delivery.to`` has room (True), else queue it (False), or with
        ``nowait`` raise :class:`InboxFull`. A batch of inline messages is admitted
        whole or waits whole; one of more messages than the inbox may ever hold is
        refused (:class:`InvalidRequest`)."""
        to = delivery.to
        if delivery.count > to.inbox_messages:
            raise InvalidRequest(
                f"a batch of {delivery.count} messages can never fit the inbox of "
                f"{to.name!r} ({to.inbox_messages} messages at most): send smaller batches"
            )
        if not to.pending and self._fits(to, delivery.size, delivery.count):
            self._apply(delivery)
            return True
        if nowait:
            raise InboxFull(
                f"the inbox of {to.name!r} is full ({len(to.inbox)} messages, "
                f"{to.inbox_used} bytes)"
            )
        to.pending.append(delivery)
        delivery.in_transit(+1)
        return False

    def has_room(self, to: ProcessRecord, size: int) -> bool:
        """Whether a block of ``size`` bytes would get into ``to``'s inbox now (nothing
        waits for room before it, and it fits: the rule :meth:`offer` applies)."""
        return not to.pending and self._fits(to, size)

    def withdraw(self, to: ProcessRecord, token: Hashable) -> Delivery | None:
        """Remove a queued delivery (its sender cancelled)."""
        for d in to.pending:
            if d.token == token:
                to.pending.remove(d)
                d.in_transit(-1)
                return d
        return None

    def take(self, proc: ProcessRecord) -> tuple[InboxEntry, list[Delivery]]:
        """Pop ``proc``'s next message; returns it and the deliveries admitted after."""
        entry = proc.inbox.popleft()
        proc.inbox_used -= entry.size
        return entry, self._admit(proc)

    def take_run(
        self, proc: ProcessRecord, first: InboxEntry, most: int, budget: int
    ) -> tuple[list[bytes], int, list[Delivery]]:
        """Pop the inline messages at the head of ``proc``'s inbox that continue ``first``
        (taken already: the same sender, header, topic, codec and meta, as a batch's
        are), at most ``most`` of them and ``budget`` bytes counted as 9 + payload each;
        returns their payloads, the budget left, and the deliveries admitted after."""
        inbox = proc.inbox
        payloads: list[bytes] = []
        sender, header, topic, codec, meta = (
            first.sender,
            first.header,
            first.topic,
            first.codec,
            first.meta,
        )
        used = 0
        while inbox and len(payloads) < most:
            e = inbox[0]
            p = e.payload
            if (
                p is None
                or e.header is not header
                or e.meta is not meta
                or e.sender != sender
                or e.topic != topic
                or e.codec != codec
                or budget < 9 + len(p)
            ):
                break
            inbox.popleft()
            budget -= 9 + len(p)
            used += len(p)
            payloads.append(p)
        proc.inbox_used -= used
        return payloads, budget, self._admit(proc) if payloads else []

    @staticmethod
    def _fits(to: ProcessRecord, size: int, count: int = 1) -> bool:
        """The inbox bound: ``count`` messages of ``size`` bytes together get in now."""
        if len(to.inbox) + count > to.inbox_messages:
            return False
        # a block (or batch) larger than the byte limit still gets in when the inbox is empty
        return not to.inbox or to.inbox_used + size <= to.inbox_bytes

    def _admit(self, to: ProcessRecord) -> list[Delivery]:
        admitted = []
        while to.pending and self._fits(to, to.pending[0].size, to.pending[0].count):
            delivery = to.pending.popleft()
            delivery.in_transit(-1)
            self._apply(delivery)
            admitted.append(delivery)
        return admitted

    def _apply(self, d: Delivery) -> None:
        rec, to = d.block, d.to
        if d.payloads is not None:  # inline messages: their bytes are the entries'
            name, header, codec, meta = d.sender.name, d.header, d.codec, d.meta
            for payload in d.payloads:
                to.inbox.append(InboxEntry(None, name, header, d.topic, payload, codec, meta))
                to.inbox_used += len(payload)
            return
        if rec is None:  # a header alone
            pass
        elif d.move:
            if rec.owner is not None:
                _unhold(rec.owner, rec)
            rec.grants.pop(to.key, None)
            _own(rec, to)
            _hold(to, rec)
        elif rec.owner is not to and rec.grants.get(to.key, (to, "r"))[1] != "w":
            rec.grants[to.key] = (to, "r")
            _hold(to, rec)
        entry = InboxEntry(rec, d.sender.name, d.header, d.topic)
        to.inbox.append(entry)
        to.inbox_used += entry.size

    # -- work queues -------------------------------------------------------------
    # The queue's rules are in _core/queues.py; what they change of holds and leases is
    # here. A queued job's block is held by the job (``job``, like a channel's ring): no
    # process has rights on it. A taken job's block is also held by its consumer, with a
    # read grant and a read lease, until the consumer acks it, nacks it or goes.
    def queue_job(self, proc: ProcessRecord, rec: BlockRecord, job: int) -> None:
        """``proc``, ``rec``'s owner, gives it to job ``job`` of a work queue. Refused,
        before anything changes, while the block is shared (another process's grant or
        lease), in transit, or under leases of ``proc``'s own."""
        self.check_queueable(proc, rec)
        _unhold(proc, rec)
        _own(rec, None)
        rec.job = job

    def check_queueable(self, proc: ProcessRecord, rec: BlockRecord) -> None:
        """Raise why ``proc`` may not give ``rec`` to a job now (:meth:`queue_job`)."""
        self.check_movable(proc, rec)
        if rec.grants or rec.leases or rec.job:
            raise AccessDenied(
                f"block {rec.id} is shared with other processes; a job's block must be "
                "this process's alone (revoke its grants first)"
            )

    def lend_job(self, rec: BlockRecord, consumer: ProcessRecord) -> tuple[Lease, bool]:
        """``consumer`` took the job holding ``rec``: it gets a read grant (unless it
        holds one) and a read lease, granted now (nobody may write a job's block).
        Returns the lease and whether the grant is the job's (to drop on its return)."""
        added = consumer.key not in rec.grants and rec.owner is not consumer
        if added:
            rec.grants[consumer.key] = (consumer, "r")
            _hold(consumer, rec)
        return self._grant(rec, Waiter(consumer, "r", None, False)), added

    @staticmethod
    def check_job_return(rec: BlockRecord, consumer: ProcessRecord, lease: Lease) -> None:
        """Raise why ``consumer`` may not hand a taken job's block back now: a lease of
        its own on it besides the job's, or a send of it still waiting for an inbox."""
        if any(other.holder is consumer and other is not lease for other in rec.leases.values()):
            raise AccessDenied(
                f"block {rec.id} has active lease(s) of yours; end them before ack or nack"
            )
        if rec.in_transit:
            raise AccessDenied(f"block {rec.id} is being sent; ack or nack it once delivered")

    def return_job(
        self, rec: BlockRecord, consumer: ProcessRecord, lease: Lease, granted: bool
    ) -> None:
        """The job holding ``rec`` goes back to its queue: ``consumer``'s lease ends, and
        its grant if the job gave it (the job still holds the block)."""
        self._drop_lease(lease)
        if granted and consumer.key in rec.grants:
            del rec.grants[consumer.key]
            _unhold(consumer, rec)

    def end_job(
        self, rec: BlockRecord, consumer: ProcessRecord, lease: Lease, granted: bool
    ) -> Outcome:
        """The job holding ``rec`` is done (acked): as :meth:`return_job`, and the job
        lets go; the block is freed unless another process holds it."""
        self.return_job(rec, consumer, lease, granted)
        rec.job = 0
        return self._let_go(rec)

    # -- request/reply -----------------------------------------------------------
    # The rules are in _core/requests.py; what they change of holds is here. A block a
    # request or a reply carries moves from its sender to the other side, as a moving
    # send does; while a request waits for its responder to receive it, its block stays
    # the requester's, in transit (``carry``: nobody may move it, its owner may not free
    # it), until it is handed over (``hand_over``) or the request is withdrawn
    # (``uncarry``: it is the requester's again).
    def carry(self, proc: ProcessRecord, rec: BlockRecord) -> None:
        """``rec``, ``proc``'s, rides on a request waiting for its responder. Refused,
        before anything changes, as :meth:`check_movable` says."""
        self.check_movable(proc, rec)
        rec.in_transit += 1

    @staticmethod
    def uncarry(rec: BlockRecord) -> None:
        """The request that carried ``rec`` was withdrawn: it stays its owner's."""
        rec.in_transit -= 1

    def hand_over(
        self, rec: BlockRecord, sender: ProcessRecord, to: ProcessRecord, *, carried: bool
    ) -> None:
        """``rec`` moves from ``sender`` to ``to`` (a request's block, to its responder;
        a reply's, to its requester): ``to`` owns it now. A block not ``carried`` so far
        is checked first, as :meth:`check_movable` says."""
        if carried:
            rec.in_transit -= 1
        else:
            self.check_movable(sender, rec)
        if rec.owner is not None:
            _unhold(rec.owner, rec)
        rec.grants.pop(to.key, None)
        _own(rec, to)
        _hold(to, rec)

    # -- transfers to other nodes ------------------------------------------------
    def start_transfer(
        self, proc: ProcessRecord, rec: BlockRecord, pin: ProcessRecord, *, move: bool
    ) -> None:
        """``proc`` sends ``rec`` to another node: ``pin`` (the link's record) holds the
        block until :meth:`end_transfer`, as its owner for a move (``proc`` gives it up)
        or as a read holder with ``move=False`` (such transfers of one block may
        overlap). The block is in transit meanwhile: nobody may move it, and its owner
        may not free it. Refused, before anything changes, under a write lease, and for
        a move as :meth:`check_movable` says."""
        if move:
            self.check_movable(proc, rec)
        if any(lease.mode == "w" for lease in rec.leases.values()):
            raise AccessDenied(f"block {rec.id} is under a write lease; end it before sending")
        if move:
            _unhold(proc, rec)
            _own(rec, pin)
        else:
            rec.grants[pin.key] = (pin, "r")
        _hold(pin, rec)
        rec.in_transit += 1
        rec.transfers += 1

    def end_transfer(
        self, rec: BlockRecord, pin: ProcessRecord, sender: ProcessRecord, *, failed: bool
    ) -> Outcome:
        """A transfer begun by :meth:`start_transfer` is over. A move that ``failed``
        gives the block back to its sender if that process is still registered; else
        ``pin`` lets go once the block's last transfer is over, and the block goes the
        way of any block whose hold ended (a bound name, a grant, a reader's lease still
        keep it), as after :meth:`release_hold`."""
        if self.blocks.get(rec.id) is not rec:
            return NOTHING
        rec.in_transit -= 1
        rec.transfers -= 1
        if failed and rec.owner is pin and self.processes.get(sender.name) is sender:
            _own(rec, sender)
            _hold(sender, rec)
            _unhold(pin, rec)
            return NOTHING
        if rec.transfers:
            return NOTHING
        self._drop_hold(rec, pin)
        _unhold(pin, rec)
        return self._let_go(rec)

    # -- topics ------------------------------------------------------------------
    def subscribe(self, proc: ProcessRecord, topic: str) -> None:
        """Subscribe ``proc`` to ``topic``, a topic or a wildcard pattern (``_core.topics``);
        at most :data:`MAX_SUBSCRIPTIONS` of them per process."""
        check_pattern(topic)
        if topic in proc.topics:
            return
        check_subscriptions(len(proc.topics), proc.name)
        self.topics.add(topic, proc)
        proc.topics.add(topic)

    def unsubscribe(self, proc: ProcessRecord, topic: str) -> None:
        self.topics.discard(topic, proc)
        proc.topics.discard(topic)

    def subscribers(self, topic: str) -> list[ProcessRecord]:
        """Every process whose subscription matches the published ``topic``, once each."""
        check_topic(topic)
        return sorted(self.topics.match(topic), key=lambda p: p.key)

    # -- named objects -----------------------------------------------------------
    def find_name(self, name: str) -> BlockRecord:
        rec = self.names.get(name)
        if rec is None:
            raise BlockNotFound(f"no object named {name!r} (never put, deleted, or evicted)")
        if name in self.evictable:
            self.evictable.move_to_end(name)
        return rec

    def touch(self, block_ids: Iterable[int]) -> int:
        """Count these blocks' named cacheable objects as used now (a client's own cache
        served them). Blocks that are gone, unnamed or not cacheable are skipped: a
        touch is a hint, and the block may have been freed since. Returns how many moved."""
        moved = 0
        for bid in block_ids:
            rec = self.blocks.get(bid)
            if rec is not None and rec.name in self.evictable:
                self.evictable.move_to_end(rec.name)
                moved += 1
        return moved

    def bind(self, proc: ProcessRecord, rec: BlockRecord, name: str, *, cacheable: bool) -> Outcome:
        """Bind ``name`` to ``rec`` (which ``proc`` gives up), replacing any previous
        object atomically: a reader gets the old or the new, never a mix. The replaced
        object goes the way of a block whose hold ended."""
        if rec.owner is proc:
            _own(rec, None)
            _unhold(proc, rec)
        rec.name = name
        rec.cacheable = cacheable
        old = self.names.get(name)
        self.names[name] = rec
        self.evictable.pop(name, None)
        if cacheable:
            self.evictable[name] = None
        if old is None or old is rec:
            return NOTHING
        old.name = ""
        return self._let_go(old)

    def unbind(self, name: str) -> Outcome:
        """``delete(name)``: the object goes the way of a block whose hold ended."""
        rec = self.names.pop(name, None)
        if rec is None:
            raise BlockNotFound(f"no object named {name!r}")
        self.evictable.pop(name, None)
        rec.name = ""
        return self._let_go(rec)

    def evict_one(self) -> tuple[str, Outcome] | None:
        """Unbind the least recently used cacheable object that nobody uses (its block
        is the outcome's one ``freed``), or None if there is none."""
        for name in self.evictable:
            rec = self.names[name]
            if (
                not rec.leases
                and not rec.waiters
                and not rec.held_by_process()
                and not rec.exported  # its memory would not come back
            ):
                return name, self.unbind(name)
        return None

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
        waiter = Waiter(proc, check_mode("lease", mode), token, transient)
        if not rec.waiters and self._compatible(rec, waiter):
            return self._grant(rec, waiter)
        rec.waiters.append(waiter)
        proc.waiting[rec] = proc.waiting.get(rec, 0) + 1
        return None

    def release(self, lease: Lease) -> list[Grant]:
        """End ``lease``; returns the leases this made possible, in FIFO order."""
        self._drop_lease(lease)
        if lease.mode == "w" and not lease.transient:  # routed writes bump it themselves
            self.bump(lease.block)
        if lease.block.id not in self.blocks:
            return []
        return self._grant_waiters(lease.block)

    def end_lease(self, lease: Lease) -> Outcome:
        """End ``lease`` (as :meth:`release`); a doomed block whose last lease this was
        is gone with it."""
        grants = self.release(lease)
        out = self.reap(lease.block)
        return Outcome(out.freed, out.dropped, grants) if grants else out

    def cancel_wait(self, rec: BlockRecord, token: Hashable) -> bool:
        for w in rec.waiters:
            if w.token == token:
                rec.waiters.remove(w)
                _unwait(rec, w)
                return True
        return False

    def withdraw_wait(self, rec: BlockRecord, token: Hashable) -> list[Grant]:
        """Remove a queued lease request (its requester cancelled); returns the leases
        this made possible (a writer queued ahead of readers no longer holds them up)."""
        if not self.cancel_wait(rec, token) or rec.id not in self.blocks:
            return []
        return self._grant_waiters(rec)

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
        self._leases += 1
        rec.leases[lease.id] = lease
        waiter.holder.leases[lease.id] = lease
        return lease

    def _grant_waiters(self, rec: BlockRecord) -> list[Grant]:
        grants = []
        while rec.waiters and self._compatible(rec, rec.waiters[0]):
            waiter = rec.waiters.popleft()
            _unwait(rec, waiter)
            grants.append(Grant(waiter.token, self._grant(rec, waiter)))
        return grants

    def _drop_lease(self, lease: Lease) -> None:
        if lease.block.leases.pop(lease.id, None) is not None:
            self._leases -= 1
        lease.holder.leases.pop(lease.id, None)

    @property
    def lease_count(self) -> int:
        """How many leases are held now (over every block): counted as they are granted
        (:meth:`_grant`) and end (:meth:`_drop_lease`), not by walking the blocks."""
        return self._leases
