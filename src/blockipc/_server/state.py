"""What the server holds, and the one place that acts on the routing table's outcomes.

:class:`ServerState` is shared by the listener, the sessions, the operation handlers
(``ops/``), reclaim and the link's port: the routing table, the pool and its generation
table, the sessions by process, the channels' eventfds, the cache counters and the
requests waiting for a peer. Handlers decide through the routing table, which returns an
:class:`~.._core.routing.Outcome`; :meth:`ServerState.settle` applies it (free what is
gone, answer the waits it dropped, run the grants, answer and wake the deliveries it
admitted), so each of those follow-ups is written once.

It knows the session (below it) and nothing above: the handlers are given to it
(``handlers``), and the tokens the routing table hands back are known by the small
interfaces :class:`LeaseToken` and :class:`DeliveryToken`, which the parking kinds
implement.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from .._core.claims import Claims
from .._core.limits import RECLAIM_SLICE, Quotas
from .._core.protocol import (
    NO_BLOCK,
    REPLY_LISTS_BUDGET,
    ErrorReply,
    Op,
    Reply,
    Request,
    message_bound,
    read_only_refusal,
)
from .._core.queues import QueueTable
from .._core.requests import RequestTable
from .._core.routing import (
    FIRST_BLOCK_MAX,
    BlockRecord,
    Delivery,
    Grant,
    Lease,
    Outcome,
    ProcessRecord,
    RoutingTable,
)
from .._exceptions import (
    AccessDenied,
    BlockIPCError,
    ConnectionClosed,
    ErrorCode,
    InvalidRequest,
    PoolExhausted,
)
from .._log import get_logger
from .._shm.generations import GenerationTable
from .._shm.pool import Allocation, Pool
from .._types import ProcessStats, Stats
from .session import ParkedEntry, Session, block_fields, error_reply

try:  # optional for anyio; when present, it is how anyio tells the event loop in use
    from sniffio import current_async_library_cvar as _sniffio_cvar

    _SNIFFIO: contextvars.ContextVar[str | None] | None = _sniffio_cvar
except ImportError:  # pragma: no cover - installed with trio, httpx and others
    _SNIFFIO = None

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .._link.link import Link

__all__ = ["DeliveryToken", "Handler", "LeaseToken", "PeerWaiting", "PeerWaits", "ServerState"]

log = get_logger("blockipc.coordinator")

Handler = Callable[["ServerState", Session, Request], None]


class LeaseToken(Protocol):
    """What the routing table queues for a lease (a ``Waiter``'s token) here: told
    when the lease is granted, or the block is gone."""

    def granted(self, lease: Lease) -> list[Grant]:
        """The lease is this request's now; returns leases its completion released."""
        ...

    def dropped(self) -> None:
        """The block was freed while the request waited."""
        ...


class DeliveryToken(Protocol):
    """What the routing table queues for a delivery waiting for room in an inbox."""

    def done(self, error: BlockIPCError | None) -> None:
        """The delivery reached the inbox (``error`` None) or never will."""
        ...


class PeerWaiting(ParkedEntry, Protocol):
    """A request parked until a process ``name`` registers (``parking.PeerWait``)."""

    name: str
    timer: asyncio.TimerHandle | None
    session: Session


class PeerWaits:
    """The requests waiting for a process name to register, by name, in order."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[PeerWaiting, None]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def add(self, wait: PeerWaiting, seconds: float, expire: Callable[[], Any]) -> None:
        self.by_name.setdefault(wait.name, {})[wait] = None
        wait.timer = asyncio.get_running_loop().call_later(seconds, expire)

    def remove(self, wait: PeerWaiting) -> None:
        if wait.timer is not None:
            wait.timer.cancel()
            wait.timer = None
        waits = self.by_name.get(wait.name)
        if waits is not None and waits.pop(wait, 0) is None and not waits:
            del self.by_name[wait.name]

    def pop(self, name: str) -> list[PeerWaiting]:
        """The waits for ``name``, out of the index and the registry: it registered."""
        waits = list(self.by_name.pop(name, {}))
        for wait in waits:
            if wait.timer is not None:
                wait.timer.cancel()
                wait.timer = None
            wait.unpark()
        return waits


class ServerState:
    """The coordinator's state and its effects (see the module's docstring)."""

    def __init__(
        self,
        pool: Pool,
        gens: GenerationTable,
        handlers: Mapping[Op, Handler],
        quotas: Quotas | None = None,
    ) -> None:
        self.handlers = handlers
        self.quotas = quotas or Quotas()
        # block ids of its own: none of them names a block of an earlier coordinator
        first = secrets.randbelow(FIRST_BLOCK_MAX) + 1
        self.table = RoutingTable(on_bump=self._publish_generation, first_block=first)
        self.pool = pool
        self.gens = gens
        self.link: Link | None = None
        self.tg: TaskGroup | None = None  # the running task group: large copies run in it
        self.sessions: dict[int, Session] = {}  # process record key -> session
        self.tokens: dict[bytes, ProcessRecord] = {}  # session token -> process (ATTACH)
        # processes connected read-only (access="r"), by record key: set by the listener
        # at HELLO (their ATTACH side connections too get read-only fds), dropped when
        # their connection ends; handle() refuses what read_only_refusal names
        self.read_only: set[int] = set()
        self.bells: dict[int, tuple[int, int]] = {}  # channel -> (data, space) eventfds
        self.peer_waits = PeerWaits()
        # get_or_put: who computes which missing name, and who waits for it
        self.claims: Claims[ProcessRecord, ParkedEntry] = Claims()
        self.expiry: dict[str, asyncio.TimerHandle] = {}  # name -> its ttl's timer
        self.queues = QueueTable(self.table)  # work queues (ops/queues.py)
        self.requests = RequestTable(self.table)  # request/reply (ops/requests.py)
        self.cache_counts = [0, 0, 0]  # gets by name found, not found; evictions
        # process key -> the task reclaiming the rest of what it held (reclaim.py)
        self.reclaims: dict[int, asyncio.Task[None]] = {}
        self.reclaim_slice = RECLAIM_SLICE  # blocks given back per step of a reclaim
        self._bases: dict[int, int] = {}  # segment id -> its first byte in the pool's span

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Start ``fn(*args)`` in the coordinator's task group, from a protocol callback
        (a handler). anyio asks sniffio which event loop runs, and sniffio, once
        installed (trio and many web libraries bring it), looks for the current task,
        which a callback has none of: ``NoEventLoopError``. Say it, for this call.

        :raises ConnectionClosed: if the coordinator is closing (no task group).
        """
        if self.tg is None:
            raise ConnectionClosed("the coordinator is closing")
        token = None if _SNIFFIO is None else _SNIFFIO.set("asyncio")
        try:
            self.tg.start_soon(fn, *args)
        finally:
            if token is not None:
                _SNIFFIO.reset(token)  # type: ignore[union-attr]

    # -- requests ----------------------------------------------------------------
    def handle(self, session: Session, req: Request) -> None:
        """Answer ``req`` now, or park it; errors become error replies. A read-only
        connection's request that needs write access is refused here, for every op
        (the rule: :func:`~.._core.protocol.read_only_refusal`), before any handler."""
        try:
            if self.read_only and session.proc.key in self.read_only:
                refusal = read_only_refusal(req.op, req.args)
                if refusal is not None:
                    raise AccessDenied(refusal)
            self.handlers[req.op](self, session, req)
        except BlockIPCError as exc:
            session.reply(error_reply(req, exc))
        except Exception as exc:  # a bug must cost one request, not the coordinator
            log.exception("coordinator.internal_error", op=req.op.name, error=repr(exc))
            session.reply(
                ErrorReply(req.req_id, req.op, ErrorCode.INTERNAL, f"internal error: {exc!r}")
            )

    def retry_peer_waits(self, name: str) -> None:
        """``name`` registered: handle again the requests that waited for it."""
        for wait in self.peer_waits.pop(name):
            if not wait.session.closed.is_set():  # (its reclaim may be still to run)
                self.handle(wait.session, wait.request)

    # -- outcomes ----------------------------------------------------------------
    def settle(self, outcome: Outcome) -> int:
        """Act on what the routing table decided: free the memory of the blocks it
        removed, answer the waits it dropped, run the leases it granted, and answer
        (and wake the receivers of) the deliveries it admitted. Returns the bytes freed.
        (Failed deliveries need a reason: the caller answers them, with
        :meth:`deliveries_done`.)"""
        freed = 0
        for rec in outcome.freed:
            freed += self.pool.free(rec.segment, rec.offset)
        for waiter in outcome.dropped:
            cast(LeaseToken, waiter.token).dropped()
        if outcome.grants:
            self.run_grants(outcome.grants)
        if outcome.admitted:
            self.deliveries_done(outcome.admitted)
        return freed

    def run_grants(self, grants: Iterable[Grant]) -> None:
        """Complete the requests that were granted their lease (their completion may
        release leases that others wait for: those run too, in order)."""
        work = deque(grants)
        while work:
            grant = work.popleft()
            work.extend(cast(LeaseToken, grant.token).granted(grant.lease))

    def deliveries_done(
        self,
        deliveries: Sequence[Delivery],
        error: BlockIPCError | None = None,
        *,
        wake: bool = True,
    ) -> None:
        """Answer the senders of queued deliveries that reached their inbox (``error``
        None; then wake the receivers) or never will."""
        if not deliveries:  # (every RECV asks, and almost always nothing was queued)
            return
        for d in deliveries:
            cast(DeliveryToken, d.token).done(error)
        if wake and error is None:
            for proc in {id(d.to): d.to for d in deliveries}.values():
                self.wake_receiver(proc)

    def wake_receiver(self, proc: ProcessRecord) -> None:
        """Answer ``proc``'s waiting ``recv`` calls, in order, from its inbox."""
        session = self.sessions.get(proc.key)
        if session is None or not (session.recv_waits and proc.inbox):
            return
        held = session.hold()  # one write for all the replies
        try:
            while session.recv_waits and proc.inbox:
                wait = session.recv_waits.popleft()
                wait.unpark()
                self.deliver(session, wait.request)
        finally:
            if held:
                session.release()

    def deliver(self, session: Session, req: Request) -> None:
        """Answer a RECV or RECV_MANY from the session's (non-empty) inbox; an inline
        message's payload is the reply's data (RECV_MANY: theirs, joined in order)."""
        proc = session.proc
        if req.op is Op.RECV:
            entry, admitted = self.table.take(proc)
            rec = entry.block
            fields = {
                **block_fields(rec),
                "owner": "" if rec is None else rec.owner_name,
                "sender": entry.sender,
                "header": entry.header,
                "topic": entry.topic,
                "codec": entry.codec,
                "meta": entry.meta,
            }
            data = b""
            if entry.payload is not None:
                data = entry.payload
                fields["size"] = len(data)
            session.reply(Reply(req.req_id, Op.RECV, fields, data))
            self.deliveries_done(admitted, wake=False)
            return
        messages: list[list[Any]] = []
        payloads: list[bytes] = []
        sizes: list[int] = []
        admitted = []
        budget = REPLY_LISTS_BUDGET  # a reply must stay under the frame limit, so count
        # each message at its largest (its names as they are, a dict as the largest)
        taken, most = 0, req.args["max"]
        while proc.inbox and taken < most:
            first = proc.inbox[0]
            owner = "" if first.block is None else first.block.owner_name
            budget -= message_bound(
                owner, first.sender, first.topic, first.header, first.codec, first.meta, first.size
            )
            if messages and budget < 0:
                break
            entry, more = self.table.take(proc)
            taken += 1
            admitted += more
            rec = entry.block
            if entry.payload is not None:  # a run of inline messages: one row
                run, budget, more = self.table.take_run(proc, entry, most - taken, budget)
                run.insert(0, entry.payload)
                taken += len(run) - 1
                admitted += more
                run_sizes = list(map(len, run))
                payloads += run
                sizes += run_sizes
                row = [NO_BLOCK, sum(run_sizes), len(run), 0, 0, "", entry.sender, entry.header]
                messages.append([*row, entry.topic, entry.codec, entry.meta])
                continue
            if rec is None:  # a header alone
                place = [NO_BLOCK, 0, 0, 0, 0]
            else:
                place = [rec.id, rec.size, rec.capacity, rec.segment, rec.offset]
            messages.append([*place, owner, entry.sender, entry.header, entry.topic, "", {}])
        data = b"".join(payloads) if payloads else b""
        result = {"messages": messages, "sizes": sizes}
        session.reply(Reply(req.req_id, Op.RECV_MANY, result, data))
        self.deliveries_done(admitted, wake=False)

    # -- memory ------------------------------------------------------------------
    def new_block(self, proc: ProcessRecord, size: int, *, quiet: bool = False) -> BlockRecord:
        """Allocate a block for ``proc``; under memory pressure, evict cacheable named
        objects that nobody uses, least recently used first, before giving up (``quiet``:
        a caller that retries logs nothing on failure)."""
        if proc.key and size > 0:  # (the link's own record, key 0, has no quota)
            self.quotas.check_hold(
                blocks=len(proc.blocks),
                held_bytes=proc.held_bytes,
                capacity=self.pool.capacity_for(min(size, self.pool.max_request())),
            )
        a, slot = self.allocate(proc, size, quiet=quiet)
        return self.table.add_block(
            proc,
            segment=a.segment,
            offset=a.offset,
            capacity=a.capacity,
            size=size,
            slot=slot,
            generation=self.gens.get(slot),
        )

    def allocate(
        self, proc: ProcessRecord, size: int, *, quiet: bool = False
    ) -> tuple[Allocation, int]:
        """Memory for a block of ``size`` bytes and its generation slot."""
        if size <= 0:
            raise InvalidRequest(f"block size must be positive, not {size}")
        while True:
            try:
                a = self.pool.alloc(size)
                break
            except PoolExhausted as exc:
                if size > self.pool.max_request() or not self._evict_one():
                    if not quiet:
                        self.pool.log_limit.warning(  # a client can make this happen at will
                            log, "block.alloc_failed", name=proc.name, size=size, error=str(exc)
                        )
                    raise
        return a, (self._base(a.segment) + a.offset) // self.pool.min_block

    def _evict_one(self) -> bool:
        evicted = self.table.evict_one()
        if evicted is None:
            return False
        name, outcome = evicted
        rec = outcome.freed[0]
        self.settle(outcome)
        self.cache_counts[2] += 1
        log.info("cache.evicted", name=name, block=rec.id, size=rec.size)
        return True

    def _base(self, segment: int) -> int:
        base = self._bases.get(segment)
        if base is None:  # segments only ever get added, with growing ids
            base = sum(s.size for i, s in self.pool.segments.items() if i < segment)
            self._bases[segment] = base
        return base

    def _publish_generation(self, rec: BlockRecord) -> None:
        self.gens.set(rec.slot, rec.generation)

    # -- reclaims ----------------------------------------------------------------
    async def finish_reclaims(self) -> None:
        """Wait until every reclaim in progress has given back all it had to (the
        coordinator's close, before it frees the pool); cancelling this wait cancels
        none of them."""
        while self.reclaims:
            await asyncio.wait(list(self.reclaims.values()))

    # -- stats -------------------------------------------------------------------
    def stats(self) -> Stats:
        """The pool and admin space now: every process and name. A process that
        disconnected is in neither ``processes`` nor ``usage`` (its name is free at
        once); while its reclaim is in progress, what it still held counts in
        ``blocks``, ``used_bytes`` and ``leases``."""
        pool, table = self.pool, self.table
        return Stats(
            pool_size=pool.size,
            max_pool_size=pool.max_pool_size,
            free_bytes=pool.free_bytes,
            used_bytes=pool.used_bytes,
            blocks=len(table.blocks),
            segments=len(pool.segments),
            processes=tuple(sorted(table.processes)),
            leases=table.lease_count,
            cache_hits=self.cache_counts[0],
            cache_misses=self.cache_counts[1],
            cache_evictions=self.cache_counts[2],
            names=tuple(sorted(table.names)),
            channels=len(table.channels),
            links=() if self.link is None else tuple(self.link.stats()),
            usage=tuple(self._usage(p) for _, p in sorted(table.processes.items())),
            names_total=len(table.names),
            processes_total=len(table.processes),
            queues=tuple(self.queues.stats()),
            largest_free=pool.largest_free,
            queue_inline_bytes=self.queues.inline_bytes,
        )

    @staticmethod
    def _usage(proc: ProcessRecord) -> ProcessStats:
        """One process's row: its counters, kept as they change (no walk of its blocks)."""
        return ProcessStats(
            proc.name,
            proc.pid,
            blocks=len(proc.blocks),
            owned_bytes=proc.owned_bytes,
            leases=len(proc.leases),
            inbox=len(proc.inbox),
            inbox_bytes=proc.inbox_used,
            channels=len(proc.channels),
            requests=proc.requests,
        )
