"""Tests of the pure buddy allocator: tables for the rules, a state machine for the rest."""

from __future__ import annotations

import ast
import bisect
import inspect

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import blockipc._core.buddy as buddy_module
from blockipc._core.buddy import BuddyAllocator

KiB = 1 << 10
MiB = 1 << 20


def test_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(buddy_module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "bisect", "heapq"}


# -- construction -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "min_block", "top"),
    [
        (4096, 4096, [(0, 4096)]),
        (64 * KiB, 4096, [(0, 64 * KiB)]),
        (12 * KiB, 4096, [(0, 8 * KiB), (8 * KiB, 4 * KiB)]),
        (100 * MiB, 4096, [(0, 64 * MiB), (64 * MiB, 32 * MiB), (96 * MiB, 4 * MiB)]),
        (7 * 64, 64, [(0, 256), (256, 128), (384, 64)]),
        (1 << 40, 1 << 20, [(0, 1 << 40)]),
    ],
)
def test_top_level_blocks(size: int, min_block: int, top: list[tuple[int, int]]) -> None:
    a = BuddyAllocator(size, min_block)
    assert a.size == size
    assert a.min_block == min_block
    assert a.top_level_blocks() == top
    assert a.free_blocks() == dict(top)
    assert a.max_block == top[0][1]
    assert a.largest_free == top[0][1]
    assert a.free_bytes == size
    assert a.used_bytes == 0
    assert a.allocations() == {}
    for offset, capacity in top:
        assert offset % capacity == 0


@pytest.mark.parametrize(
    ("size", "min_block"),
    [
        (4096, 0),
        (4096, 32),  # below 64
        (4096, 3000),  # not a power of two
        (4096, -4096),
        (4096, True),
        (4096, 4096.0),
        (0, 4096),
        (-4096, 4096),
        (6000, 4096),  # not a multiple
        (4096.0, 4096),
        (True, 64),
    ],
)
def test_bad_construction(size: object, min_block: object) -> None:
    with pytest.raises(ValueError):
        BuddyAllocator(size, min_block)  # type: ignore[arg-type]


def test_default_min_block() -> None:
    assert BuddyAllocator(MiB).min_block == 4096


# -- capacity_for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "min_block", "capacity"),
    [
        (1, 4096, 4096),
        (4095, 4096, 4096),
        (4096, 4096, 4096),
        (4097, 4096, 8192),
        (8192, 4096, 8192),
        (1_000_000, 4096, MiB),
        (MiB + 1, 4096, 2 * MiB),
        (1, 64, 64),
        (65, 64, 128),
        (10**12, 4096, 1 << 40),
    ],
)
def test_capacity_for(nbytes: int, min_block: int, capacity: int) -> None:
    assert BuddyAllocator(min_block, min_block).capacity_for(nbytes) == capacity


@pytest.mark.parametrize("nbytes", [0, -1, -4096, True, 1.5, "10"])
def test_bad_nbytes(nbytes: object) -> None:
    a = BuddyAllocator(MiB)
    with pytest.raises(ValueError):
        a.capacity_for(nbytes)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        a.alloc(nbytes)  # type: ignore[arg-type]
    assert a.free_bytes == MiB


# -- split and coalesce ----------------------------------------------------------


def test_split_takes_lowest_offset_and_coalesces_back() -> None:
    a = BuddyAllocator(64 * KiB, 4096)
    assert a.alloc(1) == (0, 4096)
    # splitting 64K for a 4K block leaves one free buddy at each order above
    assert a.free_blocks() == {4096: 4096, 8192: 8192, 16384: 16384, 32768: 32768}
    assert a.alloc(4096) == (4096, 4096)
    assert a.alloc(5000) == (8192, 8192)
    assert a.alloc(16384) == (16384, 16384)
    assert a.largest_free == 32768
    assert a.used_bytes == 32768
    assert a.free(4096) == 4096
    assert a.free_blocks() == {4096: 4096, 32768: 32768}  # buddy 0 still allocated
    assert a.free(0) == 4096
    assert a.free_blocks() == {0: 8192, 32768: 32768}
    assert a.free(16384) == 16384
    assert a.free_blocks() == {0: 8192, 16384: 16384, 32768: 32768}
    assert a.free(8192) == 8192
    assert a.free_blocks() == {0: 64 * KiB}
    assert a.free_bytes == 64 * KiB


def test_smallest_fitting_order_wins_over_lower_offset() -> None:
    a = BuddyAllocator(100 * MiB, 4096)
    # the 4 MiB top-level block at 96 MiB is the smallest that fits 4 MiB
    assert a.alloc(4 * MiB) == (96 * MiB, 4 * MiB)
    assert a.alloc(4 * MiB) == (64 * MiB, 4 * MiB)
    assert a.alloc(32 * MiB) == (0, 32 * MiB)


def test_lowest_offset_reused_after_free() -> None:
    a = BuddyAllocator(64 * KiB, 4096)
    offsets = [a.alloc(4096) for _ in range(16)]
    assert offsets == [(i * 4096, 4096) for i in range(16)]
    assert a.alloc(1) is None
    for off in (40960, 8192, 49152):
        a.free(off)
    assert [a.alloc(1) for _ in range(3)] == [(8192, 4096), (40960, 4096), (49152, 4096)]


def test_coalescing_never_crosses_top_level_blocks() -> None:
    a = BuddyAllocator(12 * KiB, 4096)  # top-level 8K at 0, 4K at 8K
    assert a.alloc(4096) == (8192, 4096)
    assert a.alloc(4096) == (0, 4096)
    assert a.alloc(4096) == (4096, 4096)
    assert a.alloc(1) is None
    a.free(4096)
    a.free(8192)  # its XOR "buddy" 12K is outside the region
    a.free(0)
    assert a.free_blocks() == {0: 8192, 8192: 4096}
    assert a.largest_free == 8192
    assert a.alloc(12 * KiB) is None  # 16K never exists


@pytest.mark.parametrize(
    ("size", "request_size"),
    [
        (64 * KiB, 64 * KiB + 1),  # larger than the region
        (100 * MiB, 65 * MiB),  # fits in size but not in any top-level block
        (12 * KiB, 12 * KiB),
    ],
)
def test_never_fits_returns_none(size: int, request_size: int) -> None:
    a = BuddyAllocator(size, 4096)
    assert a.alloc(request_size) is None
    assert a.free_bytes == size
    assert a.free_blocks() == dict(a.top_level_blocks())


def test_exhaustion_returns_none_and_changes_nothing() -> None:
    a = BuddyAllocator(32 * KiB, 4096)
    assert a.alloc(16 * KiB) == (0, 16 * KiB)
    assert a.alloc(8 * KiB) == (16 * KiB, 8 * KiB)
    before = (a.free_blocks(), a.allocations(), a.free_bytes)
    assert a.alloc(8 * KiB + 1) is None
    assert a.alloc(16 * KiB) is None
    assert (a.free_blocks(), a.allocations(), a.free_bytes) == before
    assert a.alloc(8 * KiB) == (24 * KiB, 8 * KiB)
    assert a.largest_free == 0
    assert a.alloc(1) is None
    assert a.free_bytes == 0


@pytest.mark.parametrize("offset", [0, 4096, 1, -1, 1 << 30])
def test_bogus_and_double_free(offset: int) -> None:
    a = BuddyAllocator(64 * KiB, 4096)
    assert a.alloc(8192) == (0, 8192)
    assert a.alloc(4096) == (8192, 4096)
    if offset == 0:
        assert a.free(0) == 8192  # first free is fine, the second is a double free
    before = (a.free_blocks(), a.allocations(), a.used_bytes)
    with pytest.raises(KeyError, match="not an allocated block"):
        a.free(offset)
    assert (a.free_blocks(), a.allocations(), a.used_bytes) == before


def test_heap_stays_bounded_under_churn() -> None:
    # Coalescing removes buddies from the sets only; the heaps must not grow without bound.
    a = BuddyAllocator(MiB, 4096)
    keep = a.alloc(4096)
    assert keep == (0, 4096)
    for _ in range(2000):
        got = a.alloc(4096)
        assert got == (4096, 4096)
        a.free(got[0])
    assert all(len(h) <= 2 * len(s) + 32 for h, s in zip(a._heaps, a._free, strict=True))
    a.free(0)
    assert a.free_blocks() == {0: MiB}


def test_lowest_offset_first_after_heavy_churn() -> None:
    # Fill with min blocks, free them in a scrambled order (which coalesces and leaves
    # stale heap entries, forcing heap rebuilds), refill: the order must stay lowest-first.
    a = BuddyAllocator(MiB, 4096)
    n = MiB // 4096
    for round_ in range(4):
        assert [a.alloc(1) for _ in range(n)] == [(i * 4096, 4096) for i in range(n)]
        assert a.alloc(1) is None
        step = 2 * round_ + 3  # coprime with n (a power of two): a permutation
        for i in range(n):
            a.free((i * step % n) * 4096)
            if i % 3 == 0:
                # interleave: the smallest free order's lowest offset is taken, then returned
                free = a.free_blocks()
                smallest = min(free.values())
                expected = min(off for off, cap in free.items() if cap == smallest)
                assert a.alloc(1) == (expected, 4096)
                a.free(expected)
        assert a.free_blocks() == {0: MiB}


# -- stateful -------------------------------------------------------------------


class BuddyMachine(RuleBasedStateMachine):
    """Random allocs and frees against an independent model of who holds what."""

    def __init__(self) -> None:
        super().__init__()
        self.a = BuddyAllocator(64, 64)
        self.model: dict[int, int] = {}  # offset -> capacity, kept by the test alone
        self.used = 0

    @initialize(
        min_block=st.sampled_from([64, 4096]),
        units=st.one_of(st.integers(1, 300), st.sampled_from([1, 2, 64, 100, 127, 256])),
    )
    def setup(self, min_block: int, units: int) -> None:
        self.a = BuddyAllocator(units * min_block, min_block)
        self.model = {}
        self.used = 0

    @rule(data=st.data())
    def alloc(self, data: st.DataObject) -> None:
        a = self.a
        nbytes = data.draw(
            st.one_of(
                st.integers(1, 4 * a.min_block),
                st.integers(1, a.size + a.min_block),
                st.sampled_from([a.largest_free or 1, a.max_block, a.max_block + 1]),
            ),
            label="nbytes",
        )
        capacity = a.capacity_for(nbytes)
        largest = a.largest_free
        got = a.alloc(nbytes)
        if got is None:
            assert capacity > largest
            return
        offset, cap = got
        assert cap == capacity <= largest
        assert offset not in self.model
        self.model[offset] = cap
        self.used += cap

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        if not self.model:
            return
        offset = data.draw(st.sampled_from(sorted(self.model)), label="offset")
        capacity = self.model.pop(offset)
        assert self.a.free(offset) == capacity
        self.used -= capacity

    @rule(offset=st.integers(-1, 1 << 22))
    def bogus_free(self, offset: int) -> None:
        if offset in self.model:
            return
        before = self.a.free_bytes
        with pytest.raises(KeyError):
            self.a.free(offset)
        assert self.a.free_bytes == before

    @invariant()
    def accounting(self) -> None:
        a = self.a
        assert a.free_bytes + a.used_bytes == a.size
        assert a.used_bytes == self.used == sum(self.model.values())
        assert a.allocations() == self.model
        assert sum(a.free_blocks().values()) == a.free_bytes
        assert 0 <= a.largest_free <= a.max_block

    @invariant()
    def blocks_are_aligned_and_disjoint(self) -> None:
        a = self.a
        top = a.top_level_blocks()
        starts = [off for off, _ in top]
        blocks = sorted([*a.allocations().items(), *a.free_blocks().items()])
        end = 0
        for offset, capacity in blocks:
            assert offset >= end, "blocks overlap"
            end = offset + capacity
            assert capacity >= a.min_block
            assert capacity & (capacity - 1) == 0
            base, top_cap = top[bisect.bisect_right(starts, offset) - 1]
            assert base % top_cap == 0
            assert (offset - base) % capacity == 0
            assert offset + capacity <= base + top_cap
        # allocated and free blocks tile the region exactly
        assert end == a.size
        assert sum(c for _, c in blocks) == a.size

    def teardown(self) -> None:
        a = self.a
        for offset in sorted(self.model):
            a.free(offset)
        assert a.free_bytes == a.size
        assert a.used_bytes == 0
        assert a.largest_free == a.max_block
        assert a.free_blocks() == dict(a.top_level_blocks())


BuddyMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
)
test_buddy_state_machine = BuddyMachine.TestCase
