"""A disconnected process reclaimed in slices (``unregister(limit=)``, ``reclaim_some``):
out of every lookup at once, and the slices together do what one step does."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockipc import AccessDenied, PeerUnreachable
from blockipc._core.routing import Delivery, Outcome, ProcessRecord, RoutingTable


def _world(steps: list[tuple[int, int, int, int]]) -> RoutingTable:
    """Three processes doing random allocs, grants, leases (granted or queued), sends
    (delivered or queued for a full inbox), shares, binds and subscriptions."""
    table = RoutingTable()
    procs = [table.register(n, pid=1, uid=0, inbox_messages=2) for n in "abc"]
    for i, (op, x, y, z) in enumerate(steps):
        p, q = procs[x], procs[y]
        held = [table.blocks[b] for b in sorted(p.blocks)]
        owned = [r for r in held if r.owner is p and not r.in_transit]
        if op == 0 or not held:
            table.add_block(p, segment=0, offset=0, capacity=4096 << (i % 3), size=10)
        elif op == 1 and owned and p is not q:
            table.grant(p, owned[z % len(owned)], q, "rw"[z % 2])
        elif op == 2:  # a lease, granted or queued behind others
            table.request_lease(p, held[z % len(held)], "rw"[z % 2], f"lease{i}", transient=z > 1)
        elif op == 3 and owned and p is not q:
            rec = owned[z % len(owned)]
            if not any(lease.holder is p for lease in rec.leases.values()):
                table.offer(Delivery(rec, p, q, {}, z % 2 == 0, f"send{i}"))
        elif op == 4 and owned and not owned[0].leases and not owned[0].waiters:
            table.bind(p, owned[0], f"n{i}", cacheable=False)
        elif op == 5:
            table.subscribe(p, "t")
        elif op == 6 and q.inbox:
            table.take(q)
    return table


def _outcome(out: Outcome) -> dict[str, Any]:
    return {
        "freed": sorted(r.id for r in out.freed),
        "dropped": sorted(str(w.token) for w in out.dropped),
        "grants": sorted((str(g.token), g.lease.block.id, g.lease.mode) for g in out.grants),
        "admitted": sorted(str(d.token) for d in out.admitted),
        "failed": sorted(str(d.token) for d in out.failed),
        "leases": out.leases,
    }


def _joined(outs: list[Outcome]) -> Outcome:
    return Outcome(
        [r for o in outs for r in o.freed],
        [w for o in outs for w in o.dropped],
        [g for o in outs for g in o.grants],
        [d for o in outs for d in o.admitted],
        [d for o in outs for d in o.failed],
        sum(o.leases for o in outs),
    )


def _snapshot(table: RoutingTable) -> dict[str, Any]:
    """Who holds, leases and waits for what (lease ids aside: the order of grants may
    number them differently)."""
    return {
        "blocks": {
            bid: (
                rec.owner.key if rec.owner else None,
                sorted((k, m) for k, (_, m) in rec.grants.items()),
                sorted((lease.holder.key, lease.mode) for lease in rec.leases.values()),
                [str(w.token) for w in rec.waiters],
                rec.doomed,
                rec.in_transit,
                rec.generation,
                rec.name,
            )
            for bid, rec in table.blocks.items()
        },
        "processes": {
            name: (
                sorted(p.blocks),
                p.held_bytes,
                len(p.leases),
                [e.block.id for e in p.inbox],
                [str(d.token) for d in p.pending],
            )
            for name, p in table.processes.items()
        },
        "topics": {t: sorted(p.key for p in subs) for t, subs in table.topics.items()},
    }


def _not_reachable(table: RoutingTable, proc: ProcessRecord) -> None:
    """Nothing can be granted or delivered to ``proc`` any more, and none of its blocks
    shows it as an owner."""
    assert proc.gone and table.processes.get(proc.name) is not proc
    assert not proc.pending and not proc.inbox and not proc.topics
    for rec in table.blocks.values():
        assert all(w.holder is not proc for w in rec.waiters)
        assert rec.owner_name != proc.name or rec.owner is not proc
    for other in table.processes.values():
        assert all(d.sender is not proc and d.to is not proc for d in other.pending)


STEPS = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 2), st.integers(0, 2), st.integers(0, 3)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(STEPS, st.integers(0, 2), st.integers(1, 4))
def test_slices_together_equal_one_unregister(
    steps: list[tuple[int, int, int, int]], who: int, limit: int
) -> None:
    whole = _world(steps)
    sliced = copy.deepcopy(whole)
    name = "abc"[who]
    one = whole.unregister(whole.processes[name])

    proc = sliced.processes[name]
    outs = [sliced.unregister(proc, limit=limit)]
    _not_reachable(sliced, proc)
    while sliced.reclaim_left(proc):
        before = sliced.reclaim_left(proc)
        out = sliced.reclaim_some(proc, limit)
        assert sliced.reclaim_left(proc) < before  # each slice makes progress
        assert len(out.freed) <= limit
        _not_reachable(sliced, proc)
        outs.append(out)

    assert _outcome(_joined(outs)) == _outcome(one)
    assert _snapshot(sliced) == _snapshot(whole)
    for rec in sliced.blocks.values():  # nothing refers to it any more
        assert proc not in rec.holders()
        assert all(lease.holder is not proc for lease in rec.leases.values())
    assert not proc.blocks and not proc.leases and proc.held_bytes == 0


def _hog(table: RoutingTable, blocks: int) -> tuple[ProcessRecord, list[int]]:
    proc = table.register("hog", pid=1, uid=0)
    ids = [
        table.add_block(proc, segment=0, offset=i * 4096, capacity=4096, size=10).id
        for i in range(blocks)
    ]
    return proc, ids


def test_unregister_with_a_limit_reclaims_that_much_and_leaves_the_rest() -> None:
    table = RoutingTable()
    hog, ids = _hog(table, 10)
    first = table.unregister(hog, limit=3)
    assert len(first.freed) == 3 and table.reclaim_left(hog) == 7
    assert hog.held_bytes == 7 * 4096 and len(table.blocks) == 7
    freed = [r.id for r in first.freed]
    while table.reclaim_left(hog):
        freed += [r.id for r in table.reclaim_some(hog, 3).freed]
    assert sorted(freed) == ids and table.blocks == {} and hog.held_bytes == 0
    assert _outcome(table.reclaim_some(hog, 3)) == _outcome(Outcome())  # nothing left


def test_a_name_is_free_at_once_and_the_leftovers_are_nobody_live() -> None:
    table = RoutingTable()
    hog, ids = _hog(table, 10)
    table.unregister(hog, limit=1)
    again = table.register("hog", pid=2, uid=0)  # a restarted process of that name
    assert again is not hog and again.key != hog.key
    left = table.blocks[ids[-1]]
    assert left.owner is hog and left.owner_name == ""  # not the new "hog"'s
    with pytest.raises(AccessDenied, match="disconnected"):
        table.lookup(again, left.id)
    mine = table.add_block(again, segment=1, offset=0, capacity=4096, size=10)
    while table.reclaim_left(hog):
        table.reclaim_some(hog, 2)
    assert list(table.blocks) == [mine.id] and again.blocks == {mine.id}
    assert table.processes == {"hog": again}


def test_between_slices_others_use_what_it_shared_and_nothing_reaches_it() -> None:
    table = RoutingTable()
    hog, ids = _hog(table, 6)
    other = table.register("other", pid=2, uid=0)
    shared = table.blocks[ids[0]]
    table.grant(hog, shared, other, "w")
    held = table.request_lease(hog, shared, "w", "hog-lease")
    assert held is not None
    assert table.request_lease(other, shared, "r", "other-read") is None  # behind hog's
    assert table.request_lease(hog, table.blocks[ids[1]], "r", "x") is not None
    grants = [g.token for g in table.unregister(hog, limit=1).grants]
    with pytest.raises(PeerUnreachable):
        table.find_process("hog")  # no send, grant or delivery finds it
    while table.reclaim_left(hog):
        for out in [table.reclaim_some(hog, 1)]:
            assert all(g.lease.holder is other for g in out.grants)
            grants += [g.token for g in out.grants]
    assert grants == ["other-read"]  # once its write lease ended
    assert set(table.blocks) == {shared.id}  # the grantee still holds it
    assert shared.owner is None and set(shared.grants) == {other.key}
    assert [lease.holder for lease in shared.leases.values()] == [other]
