"""The admin space on its own: routing table, process records, leases (no I/O)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockipc import (
    AccessDenied,
    BlockIPCError,
    BlockNotFound,
    InboxFull,
    InvalidRequest,
    OutOfBounds,
    PeerUnreachable,
)
from blockipc._core.routing import NOTHING, Delivery, Outcome, RoutingTable


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable()


def _block(table: RoutingTable, owner: str = "a", size: int = 100):  # type: ignore[no-untyped-def]
    proc = table.processes.get(owner) or table.register(owner, pid=1, uid=0)
    return proc, table.add_block(proc, segment=0, offset=0, capacity=4096, size=size)


@pytest.mark.parametrize("name", ["", "x" * 256, "a/b", "tab\there"])
def test_invalid_names_are_refused(table: RoutingTable, name: str) -> None:
    with pytest.raises(InvalidRequest):
        table.register(name, pid=1, uid=0)
    assert table.processes == {}


def test_duplicate_name_is_refused_until_the_first_leaves(table: RoutingTable) -> None:
    first = table.register("worker", pid=1, uid=0)
    with pytest.raises(BlockIPCError, match="already taken"):
        table.register("worker", pid=2, uid=0)
    table.unregister(first)
    assert table.register("worker", pid=2, uid=0).pid == 2


def test_lookup_checks_existence_and_owner(table: RoutingTable) -> None:
    a, rec = _block(table, "a")
    b = table.register("b", pid=2, uid=0)
    assert table.lookup(a, rec.id) is rec
    with pytest.raises(AccessDenied):
        table.lookup(b, rec.id)
    with pytest.raises(BlockNotFound):
        table.lookup(a, rec.id + 1)


@pytest.mark.parametrize(
    ("offset", "size", "ok"),
    [
        (0, 100, True),
        (99, 1, True),
        (100, 0, True),
        (0, 101, False),
        (100, 1, False),
        (50, 51, False),
    ],
)
def test_bounds_are_checked_against_size_not_capacity(
    table: RoutingTable, offset: int, size: int, ok: bool
) -> None:
    _, rec = _block(table, size=100)
    if ok:
        table.check_bounds(rec, offset, size)
    else:
        with pytest.raises(OutOfBounds):
            table.check_bounds(rec, offset, size)


def test_readers_share_and_a_writer_waits_fifo(table: RoutingTable) -> None:
    a, rec = _block(table)
    r1 = table.request_lease(a, rec, "r", "r1")
    r2 = table.request_lease(a, rec, "r", "r2")
    assert r1 is not None and r2 is not None
    assert table.request_lease(a, rec, "w", "w1") is None
    # a reader arriving after a queued writer waits too: writers are not starved
    assert table.request_lease(a, rec, "r", "r3") is None
    assert table.release(r1) == []
    grants = table.release(r2)
    assert [g.token for g in grants] == ["w1"]
    assert rec.generation == 0
    grants = table.release(grants[0].lease)
    assert rec.generation == 1  # a write lease ending bumps the generation
    assert [g.token for g in grants] == ["r3"]


def test_bad_lease_mode(table: RoutingTable) -> None:
    a, rec = _block(table)
    with pytest.raises(InvalidRequest):
        table.request_lease(a, rec, "x", "t")
    assert rec.leases == {} and not rec.waiters


def test_routed_requests_do_not_wait_for_their_own_process(table: RoutingTable) -> None:
    a, rec = _block(table)
    b = table.register("b", pid=2, uid=0)
    lease = table.request_lease(a, rec, "w", "hold")
    assert lease is not None
    assert table.request_lease(a, rec, "w", "routed", transient=True) is not None
    # ...but another process's routed request waits for the lease
    assert table.request_lease(b, rec, "r", "other", transient=True) is None


def test_cancel_wait_removes_only_that_waiter(table: RoutingTable) -> None:
    a, rec = _block(table)
    held = table.request_lease(a, rec, "w", "held")
    assert held is not None
    table.request_lease(a, rec, "w", "x")
    table.request_lease(a, rec, "w", "y")
    assert table.cancel_wait(rec, "x")
    assert not table.cancel_wait(rec, "x")
    assert [g.token for g in table.release(held)] == ["y"]


def test_free_refuses_while_leased(table: RoutingTable) -> None:
    a, rec = _block(table)
    lease = table.request_lease(a, rec, "r", "t")
    assert lease is not None
    with pytest.raises(AccessDenied, match="lease"):
        table.release_hold(a, rec)
    assert rec.id in table.blocks
    table.release(lease)
    assert table.release_hold(a, rec).freed == (rec,)
    assert rec.id not in table.blocks and rec.id not in a.blocks


def test_move_hands_ownership_to_the_receivers_inbox(table: RoutingTable) -> None:
    a, rec = _block(table)
    b = table.register("b", pid=2, uid=0)
    assert table.offer(Delivery(rec, a, b, {"k": 1}, True, "t"))
    assert rec.owner is b and rec.id in b.blocks and rec.id not in a.blocks
    assert b.inbox[0].sender == "a" and b.inbox[0].header == {"k": 1}
    with pytest.raises(AccessDenied):
        table.lookup(a, rec.id)
    with pytest.raises(PeerUnreachable):
        table.find_process("nobody")


def test_move_refuses_a_leased_block(table: RoutingTable) -> None:
    a, rec = _block(table)
    b = table.register("b", pid=2, uid=0)
    assert table.request_lease(a, rec, "r", "t") is not None
    with pytest.raises(AccessDenied):
        table.check_movable(a, rec)
    assert rec.owner is a and not b.inbox


def test_unregister_reclaims_everything(table: RoutingTable) -> None:
    a, rec_a = _block(table, "a")
    b, rec_b = _block(table, "b")
    # a holds a write lease on its block and waits on nothing; b's block is in a's inbox
    held = table.request_lease(a, rec_a, "w", "held")
    assert held is not None
    assert table.offer(Delivery(rec_b, b, a, {}, True, "t"))
    done = table.unregister(a)
    assert sorted(r.id for r in done.freed) == sorted([rec_a.id, rec_b.id])
    assert done.leases == 1
    assert table.blocks == {} and table.lease_count == 0
    assert "a" not in table.processes and "b" in table.processes


def test_unregister_grants_waiters_behind_its_leases(table: RoutingTable) -> None:
    a = table.register("a", pid=1, uid=0)
    b, rec = _block(table, "b")
    # the table itself does not check rights (lookup does): a holds a lease on b's block
    held = table.request_lease(a, rec, "w", "held")
    assert held is not None
    assert table.request_lease(b, rec, "r", "b-read", transient=True) is None
    done = table.unregister(a)
    assert [g.token for g in done.grants] == ["b-read"]
    assert done.dropped == [] and done.freed == []


def test_freeing_a_block_drops_other_processes_waits(table: RoutingTable) -> None:
    a, rec = _block(table, "a")
    b = table.register("b", pid=2, uid=0)
    held = table.request_lease(a, rec, "w", "held")
    assert held is not None
    assert table.request_lease(b, rec, "r", "b-read", transient=True) is None
    done = table.unregister(a)
    assert [w.token for w in done.dropped] == ["b-read"]
    assert done.grants == []


def test_grants_rights_and_holders(table: RoutingTable) -> None:
    a, rec = _block(table, "a")
    b = table.register("b", pid=2, uid=0)
    table.grant(a, rec, b, "r")
    assert table.lookup(b, rec.id, "r") is rec
    with pytest.raises(AccessDenied, match="'r' grant"):
        table.lookup(b, rec.id, "w")
    with pytest.raises(AccessDenied):
        table.lookup(b, rec.id, "own")
    # the owner lets go: the grantee still holds the block, so it stays
    assert table.release_hold(a, rec) == NOTHING
    assert rec.id in table.blocks and rec.owner is None
    assert table.release_hold(b, rec).freed == (rec,)
    assert rec.id not in table.blocks


def test_revoke(table: RoutingTable) -> None:
    a, rec = _block(table, "a")
    b = table.register("b", pid=2, uid=0)
    with pytest.raises(AccessDenied):
        table.revoke(a, rec, b)
    table.grant(a, rec, b, "w")
    lease = table.request_lease(b, rec, "r", "t")
    assert lease is not None
    with pytest.raises(AccessDenied, match="lease"):
        table.revoke(a, rec, b)
    table.release(lease)
    table.revoke(a, rec, b)
    with pytest.raises(AccessDenied):
        table.lookup(b, rec.id, "r")
    assert rec.id not in b.blocks


def test_full_inbox_queues_in_order_and_take_admits(table: RoutingTable) -> None:
    a = table.register("a", pid=1, uid=0)
    b = table.register("b", pid=2, uid=0, inbox_messages=2)
    recs = [
        table.add_block(a, segment=0, offset=i * 4096, capacity=4096, size=10) for i in range(4)
    ]
    results = [table.offer(Delivery(r, a, b, {"i": i}, True, i)) for i, r in enumerate(recs)]
    assert results == [True, True, False, False]
    assert recs[2].in_transit == 1 and recs[2].owner is a
    with pytest.raises(InboxFull):
        table.offer(Delivery(recs[3], a, b, {}, False, "x"), nowait=True)
    with pytest.raises(AccessDenied, match="being sent"):
        table.release_hold(a, recs[2])
    entry, admitted = table.take(b)
    assert entry.header == {"i": 0}
    assert [d.token for d in admitted] == [2]
    assert recs[2].owner is b and recs[2].in_transit == 0
    assert [e.header["i"] for e in b.inbox] == [1, 2]


def test_byte_limit_admits_an_oversized_block_into_an_empty_inbox(table: RoutingTable) -> None:
    a = table.register("a", pid=1, uid=0)
    b = table.register("b", pid=2, uid=0, inbox_bytes=100)
    big = table.add_block(a, segment=0, offset=0, capacity=4096, size=1000)
    small = table.add_block(a, segment=0, offset=4096, capacity=4096, size=10)
    assert table.offer(Delivery(big, a, b, {}, True, "big"))
    assert not table.offer(Delivery(small, a, b, {}, True, "small"))


def test_receiver_leaving_fails_queued_deliveries(table: RoutingTable) -> None:
    a = table.register("a", pid=1, uid=0)
    b = table.register("b", pid=2, uid=0, inbox_messages=1)
    r1 = table.add_block(a, segment=0, offset=0, capacity=4096, size=10)
    r2 = table.add_block(a, segment=0, offset=4096, capacity=4096, size=10)
    assert table.offer(Delivery(r1, a, b, {}, True, 1))
    assert not table.offer(Delivery(r2, a, b, {}, True, 2))
    done = table.unregister(b)
    assert [d.token for d in done.failed] == [2]
    assert [r.id for r in done.freed] == [r1.id]  # delivered: b's, freed with b
    assert r2.owner is a and r2.in_transit == 0  # never delivered: still a's


def test_topics(table: RoutingTable) -> None:
    a = table.register("a", pid=1, uid=0)
    b = table.register("b", pid=2, uid=0)
    table.subscribe(a, "t")
    table.subscribe(b, "t")
    assert table.subscribers("t") == [a, b]
    table.unregister(a)
    assert table.subscribers("t") == [b]
    table.unsubscribe(b, "t")
    assert len(table.topics) == 0


def test_touch_moves_only_named_cacheable_objects(table: RoutingTable) -> None:
    a, first = _block(table, "a")
    _, second = _block(table, "a")
    _, plain = _block(table, "a")
    _, unnamed = _block(table, "a")
    table.bind(a, first, "first", cacheable=True)
    table.bind(a, second, "second", cacheable=True)
    table.bind(a, plain, "plain", cacheable=False)
    assert list(table.evictable) == ["first", "second"]
    # gone, unnamed, and named but not cacheable: skipped, nothing moves
    assert table.touch([10_000, unnamed.id, plain.id]) == 0
    assert list(table.evictable) == ["first", "second"]
    assert table.touch([first.id, first.id]) == 2
    assert list(table.evictable) == ["second", "first"]
    assert table.evict_one() == ("second", Outcome(freed=(second,), dropped=[]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 2), st.integers(0, 2)), max_size=60))
def test_held_bytes_follow_the_blocks_a_process_holds(
    steps: list[tuple[int, int, int]],
) -> None:
    # random allocs, grants, revokes, moves, shares, binds and frees: each process's
    # held_bytes (what a quota bounds) is always the capacity of exactly its blocks
    table = RoutingTable()
    procs = [table.register(n, pid=1, uid=0, inbox_messages=4) for n in "abc"]
    for op, i, j in steps:
        p, q = procs[i], procs[j]
        held = [table.blocks[b] for b in sorted(p.blocks)]
        owned = [r for r in held if r.owner is p and not r.in_transit]
        if op == 0 or not held:
            cap = 4096 << (len(table.blocks) % 3)
            table.add_block(p, segment=0, offset=0, capacity=cap, size=10)
        elif op == 1 and owned and p is not q:
            table.grant(p, owned[0], q, "r")
        elif op == 2 and owned and p is not q and q.key in owned[0].grants:
            with contextlib.suppress(AccessDenied):
                table.revoke(p, owned[0], q)
        elif op in (3, 4) and owned and p is not q:
            table.offer(Delivery(owned[0], p, q, {}, op == 3, None))
        elif op == 5 and q.inbox:
            table.take(q)
        elif op == 6 and owned:
            table.bind(p, owned[0], f"n{len(table.names)}", cacheable=True)
        else:
            with contextlib.suppress(AccessDenied):
                table.release_hold(p, held[0])
        for proc in procs:
            expected = sum(table.blocks[b].capacity for b in proc.blocks)
            assert proc.held_bytes == expected, (op, proc.name)
    for proc in procs:
        table.unregister(proc)
        assert proc.held_bytes == 0 and not proc.blocks
