"""The counts STATS reads and the index a disconnect walks, kept as they change: after
any sequence of allocs, grants, leases (granted or queued), releases, withdrawn waits,
frees, sends, binds, jobs, transfers and unregisters (reclaimed in slices), they equal
a full recount of the table."""

from __future__ import annotations

import contextlib
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from blockipc import BlockIPCError
from blockipc._core.routing import (
    BlockRecord,
    Delivery,
    Grant,
    Lease,
    ProcessRecord,
    RoutingTable,
)


def _queued(rec: BlockRecord, token: str) -> bool:
    return any(w.token == token for w in rec.waiters)


def _check(table: RoutingTable, procs: list[ProcessRecord]) -> None:
    """Every counter against a walk of every block."""
    assert table.lease_count == sum(len(rec.leases) for rec in table.blocks.values())
    for proc in procs:
        waits: Counter[BlockRecord] = Counter(
            rec for rec in table.blocks.values() for w in rec.waiters if w.holder is proc
        )
        assert proc.waiting == dict(waits), proc.name
        owned = sum(
            rec.capacity
            for bid in proc.blocks
            if (rec := table.blocks.get(bid)) is not None and rec.owner is proc
        )
        assert proc.owned_bytes == owned, proc.name


# leases, their ends and withdrawn waits weigh more: a wait needs a lease before it
OPS = st.sampled_from(
    [0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
)
STEPS = st.lists(
    st.tuples(OPS, st.integers(0, 2), st.integers(0, 2), st.integers(0, 7)),
    min_size=40,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_counters_equal_a_full_recount(steps: list[tuple[int, int, int, int]]) -> None:
    table = RoutingTable()
    procs = [table.register(n, pid=1, uid=0, inbox_messages=2) for n in "abc"]
    pin = ProcessRecord(0, "(link b)", 1, 0)  # a link's holder, outside the table
    every = [*procs, pin]  # gone ones too: their counters must end at nothing
    leases: list[Lease] = []
    waits: list[tuple[BlockRecord, str]] = []
    jobs: list[tuple[BlockRecord, ProcessRecord, Lease, bool]] = []
    transfers: list[tuple[BlockRecord, ProcessRecord]] = []
    gone: list[ProcessRecord] = []

    def granted(grants: list[Grant] | tuple[Grant, ...]) -> None:
        leases.extend(g.lease for g in grants)

    for i, (op, x, y, z) in enumerate(steps):
        p, q = procs[x], procs[y]
        held = [table.blocks[b] for b in sorted(p.blocks)]
        owned = [r for r in held if r.owner is p and not r.in_transit]
        with contextlib.suppress(BlockIPCError):  # refused before anything changed
            if op == 0 or not held:
                table.add_block(p, segment=0, offset=0, capacity=4096 << (i % 3), size=10)
            elif op == 1 and owned and p is not q:
                table.grant(p, owned[z % len(owned)], q, "rw"[z % 2])
            elif op == 2:  # granted now or queued behind other leases; on any block
                # of the table at times (the core checks no rights here): such a wait
                # may outlive the block, dropped when its last holder goes
                near = held if z < 4 else list(table.blocks.values())
                rec, token = near[y % len(near)], f"lease{i}"
                lease = table.request_lease(p, rec, "rw"[z % 2], token, transient=z % 4 > 1)
                if lease is None:
                    waits.append((rec, token))
                else:
                    leases.append(lease)
            elif op == 3 and leases:
                lease = leases.pop(z % len(leases))
                if lease.id in lease.holder.leases and not lease.holder.gone:
                    granted(table.end_lease(lease).grants)
            elif op == 4 and (queued := [(r, t) for r, t in waits if _queued(r, t)]):
                rec, token = queued[z % len(queued)]
                granted(table.withdraw_wait(rec, token))
            elif op == 5:
                table.release_hold(p, held[z % len(held)])
            elif op == 6 and owned and p is not q:
                table.offer(Delivery(owned[z % len(owned)], p, q, {}, z % 2 == 0, f"send{i}"))
            elif op == 7 and q.inbox:
                table.take(q)
            elif op == 8 and owned:
                table.bind(p, owned[0], f"n{z}", cacheable=False)
            elif op == 9 and table.names:
                table.unbind(min(table.names))
            elif op == 10 and owned and p is not q:  # a job, taken by q at once
                rec = owned[z % len(owned)]
                table.queue_job(p, rec, i)
                lease, added = table.lend_job(rec, q)
                jobs.append((rec, q, lease, added))
            elif op == 11 and jobs:
                rec, consumer, lease, added = jobs.pop(z % len(jobs))
                if not consumer.gone and lease.id in consumer.leases:
                    if z % 2:
                        table.end_job(rec, consumer, lease, added)
                    else:  # back in its queue, which holds it
                        table.return_job(rec, consumer, lease, added)
            elif op == 12 and owned:
                rec = owned[z % len(owned)]
                table.start_transfer(p, rec, pin, move=z % 2 == 0)
                transfers.append((rec, p))
            elif op == 13 and transfers:
                rec, sender = transfers.pop(z % len(transfers))
                table.end_transfer(rec, pin, sender, failed=z > 1)
            elif op == 14:  # p disconnects, reclaimed in slices; a new p takes its name
                out = table.unregister(p, limit=z)
                granted(out.grants)
                gone.append(p)
                procs[x] = table.register(p.name, pid=1, uid=0, inbox_messages=2)
                every.append(procs[x])
        for proc in gone[:]:  # the reclaims in progress go on, a slice each step
            granted(table.reclaim_some(proc, 1).grants)
            if not table.reclaim_left(proc):
                gone.remove(proc)
        _check(table, every)
    for proc in gone:
        table.reclaim_some(proc)
    _check(table, every)
    for proc in every:
        if proc.gone:
            assert not proc.waiting and not proc.owned_bytes and not proc.blocks
