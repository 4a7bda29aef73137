"""Tests of the pure LRU cache: tables for the rules, a state machine against a plain
list-based model for everything else."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import inspect
from collections.abc import Hashable
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import blockipc.cache as cache_module
from _helpers import check_each
from blockipc import InvalidRequest
from blockipc.cache import CacheStats, LRUCache

Key = tuple[int, int, str]


def test_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(cache_module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "typing"}


def test_docstring_examples() -> None:
    result = doctest.testmod(cache_module)
    assert result.attempted > 10
    assert result.failed == 0


def test_public_names() -> None:
    assert cache_module.__all__ == ("CacheStats", "LRUCache")
    for name in cache_module.__all__:
        assert getattr(cache_module, name).__doc__


# -- construction ----------------------------------------------------------------
#
# Tables run as one pytest item each: the conftest's per-test fd-leak check (two full
# gc.collect() calls) costs far more than these checks, and `check_each` still reports
# every failing row.


def test_max_bytes() -> None:
    def check(case: tuple[int | str, int]) -> None:
        cache = LRUCache[str, int](case[0])
        assert cache.max_bytes == case[1]
        assert cache.max_items is None
        assert cache.nbytes == 0
        assert len(cache) == 0
        assert cache.keys() == []

    cases: list[tuple[int | str, int]] = [
        (0, 0),
        (1, 1),
        (4096, 4096),
        ("1KiB", 1024),
        ("64MiB", 64 << 20),
        ("1 MB", 10**6),
    ]
    check_each(cases, check)


def test_bad_arguments() -> None:
    def bad_max_bytes(max_bytes: Any) -> None:
        with pytest.raises(InvalidRequest):
            LRUCache(max_bytes)

    def bad_max_items(max_items: Any) -> None:
        with pytest.raises(InvalidRequest):
            LRUCache(100, max_items=max_items)

    def bad_nbytes(nbytes: Any) -> None:
        cache = LRUCache[str, int](100)
        cache.put("a", 1, 10)
        with pytest.raises(InvalidRequest):
            cache.put("a", 2, nbytes)
        assert cache.get("a") == 1  # a refused put changes nothing
        assert cache.nbytes == 10

    check_each([-1, "0", "-5", "lots", 1.5, True, False, None, b"1K"], bad_max_bytes)
    check_each([-1, True, 1.5, "3"], bad_max_items)
    check_each([-1, True, 1.5, "3", None], bad_nbytes)


# -- get, put, eviction order ------------------------------------------------------

# Each op: ("put", key, nbytes) -> expected evicted keys, or ("get", key) -> hit?
TABLE: list[tuple[str, int, int | None, list[tuple[Any, ...]], list[str], int]] = [
    (
        "bytes bound evicts the least recently put",
        10,
        None,
        [("put", "a", 4, []), ("put", "b", 4, []), ("put", "c", 4, ["a"])],
        ["b", "c"],
        8,
    ),
    (
        "a hit protects an entry",
        10,
        None,
        [
            ("put", "a", 4, []),
            ("put", "b", 4, []),
            ("get", "a", True),
            ("put", "c", 4, ["b"]),
        ],
        ["a", "c"],
        8,
    ),
    (
        "one big put evicts several, oldest first",
        10,
        None,
        [
            ("put", "a", 3, []),
            ("put", "b", 3, []),
            ("put", "c", 3, []),
            ("put", "d", 9, ["a", "b", "c"]),
        ],
        ["d"],
        9,
    ),
    (
        "count bound",
        1000,
        2,
        [("put", "a", 1, []), ("put", "b", 1, []), ("put", "c", 1, ["a"]), ("get", "a", False)],
        ["b", "c"],
        2,
    ),
    (
        "an entry of exactly max_bytes fits",
        10,
        None,
        [("put", "a", 1, []), ("put", "b", 10, ["a"])],
        ["b"],
        10,
    ),
    (
        "replacing a key does not evict it, and makes it the most recent",
        10,
        None,
        [("put", "a", 4, []), ("put", "b", 4, []), ("put", "a", 7, ["b"])],
        ["a"],
        7,
    ),
    (
        "replacing with a smaller entry frees bytes",
        10,
        None,
        [("put", "a", 8, []), ("put", "a", 2, []), ("put", "b", 8, [])],
        ["a", "b"],
        10,
    ),
    (
        "replacing a key at the count bound evicts nothing",
        1000,
        2,
        [("put", "a", 1, []), ("put", "b", 1, []), ("put", "a", 1, [])],
        ["b", "a"],
        2,
    ),
    (
        "zero-byte entries are bounded by count only",
        1,
        3,
        [("put", "a", 0, []), ("put", "b", 1, []), ("put", "c", 0, []), ("put", "d", 0, ["a"])],
        ["b", "c", "d"],
        1,
    ),
    (
        "an oversized entry is rejected and evicts nothing",
        10,
        None,
        [("put", "a", 5, []), ("put", "b", 11, []), ("get", "b", False), ("get", "a", True)],
        ["a"],
        5,
    ),
    (
        "an oversized replacement drops the old value",
        10,
        None,
        [("put", "a", 5, []), ("put", "b", 5, []), ("put", "a", 11, []), ("get", "a", False)],
        ["b"],
        5,
    ),
    (
        "max_bytes=0 disables the cache",
        0,
        None,
        [("put", "a", 0, []), ("get", "a", False)],
        [],
        0,
    ),
    (
        "max_items=0 disables the cache",
        100,
        0,
        [("put", "a", 0, []), ("put", "b", 1, []), ("get", "a", False)],
        [],
        0,
    ),
]


def test_put_get_table() -> None:
    def check(case: tuple[str, int, int | None, list[tuple[Any, ...]], list[str], int]) -> None:
        _, max_bytes, max_items, ops, keys, nbytes = case
        cache = LRUCache[str, str](max_bytes, max_items)
        for op in ops:
            if op[0] == "put":
                _, key, size, evicted = op
                assert cache.put(key, key.upper(), size) == evicted, op
            else:
                _, key, hit = op
                assert cache.get(key) == (key.upper() if hit else None), op
            assert cache.nbytes <= max_bytes
            assert max_items is None or len(cache) <= max_items
        assert cache.keys() == keys
        assert cache.nbytes == nbytes
        assert len(cache) == len(keys)

    check_each(TABLE, check)


def test_counters() -> None:
    cache = LRUCache[str, str](10, max_items=3)
    cache.put("a", "A", 5)
    cache.put("b", "B", 5)
    assert cache.get("a") == "A"
    assert cache.get("zz") is None
    assert cache.put("c", "C", 5) == ["b"]  # eviction
    assert cache.put("d", "D", 50) == []  # rejection
    assert cache.invalidate("a") is True  # invalidation
    assert cache.invalidate("a") is False
    assert cache.statistics() == CacheStats(
        hits=1,
        misses=1,
        evictions=1,
        invalidations=1,
        rejections=1,
        items=1,
        nbytes=5,
        max_bytes=10,
        max_items=3,
    )
    assert cache.statistics().hit_ratio == 0.5


def test_statistics_is_a_frozen_snapshot() -> None:
    cache = LRUCache[str, int](10)
    stats = cache.statistics()
    assert stats.hit_ratio == 0.0
    cache.get("a")
    assert stats.misses == 0
    assert cache.statistics().misses == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 5  # type: ignore[misc]


def test_get_default_and_none_values() -> None:
    cache = LRUCache[str, int | None](10)
    cache.put("none", None, 1)
    missing = object()
    assert cache.get("none", missing) is None
    assert cache.get("other", missing) is missing
    assert cache.get("other", -1) == -1
    stats = cache.statistics()
    assert (stats.hits, stats.misses) == (1, 2)


def test_contains_does_not_touch() -> None:
    cache = LRUCache[str, int](2)
    cache.put("a", 1, 1)
    cache.put("b", 2, 1)
    assert "a" in cache
    assert "z" not in cache
    with pytest.raises(TypeError):
        assert [] in cache  # unhashable, as for a dict
    assert cache.keys() == ["a", "b"]
    assert cache.put("c", 3, 1) == ["a"]  # "a" was not refreshed by `in`
    stats = cache.statistics()
    assert (stats.hits, stats.misses) == (0, 0)


def test_evict_lru() -> None:
    cache = LRUCache[str, int](10)
    assert cache.evict_lru() is None
    cache.put("a", 1, 2, group="g")
    cache.put("b", 2, 3, group="g")
    cache.get("a")
    assert cache.evict_lru() == ("b", 2)
    assert cache.nbytes == 2
    assert cache.statistics().evictions == 1
    assert cache.invalidate_group("g") == 1


# -- invalidation ------------------------------------------------------------------


def test_invalidate_group_takes_every_generation_and_codec() -> None:
    cache = LRUCache[Key, str](100)
    for gen in range(3):
        for codec in ("raw", "numpy"):
            cache.put((7, gen, codec), f"7/{gen}/{codec}", 1, group=7)
            cache.put((8, gen, codec), f"8/{gen}/{codec}", 1, group=8)
    cache.put((9, 0, "raw"), "ungrouped", 1)
    assert cache.invalidate_group(7) == 6
    assert all(key[0] != 7 for key in cache.keys())  # noqa: SIM118  # a list, in order
    assert len(cache) == 7
    assert cache.nbytes == 7
    assert cache.invalidate_group(7) == 0
    assert cache.invalidate_group("never") == 0
    assert cache.invalidate_group(None) == 0  # None means "no group": never a group itself
    assert cache.statistics().invalidations == 6
    assert cache.get((9, 0, "raw")) == "ungrouped"


def test_regrouping_a_key_moves_it() -> None:
    cache = LRUCache[str, int](100)
    cache.put("k", 1, 1, group="old")
    cache.put("k", 2, 1, group="new")
    assert cache.invalidate_group("old") == 0
    assert cache.get("k") == 2
    cache.put("k", 3, 1)  # no group any more
    assert cache.invalidate_group("new") == 0
    assert cache.get("k") == 3
    assert cache._groups == {}


def test_group_index_does_not_outlive_entries() -> None:
    cache = LRUCache[int, int](4)
    for i in range(100):
        cache.put(i, i, 1, group=i % 7)
    assert sorted(cache.keys()) == [96, 97, 98, 99]
    assert cache._groups == {
        96 % 7: {96: None},
        97 % 7: {97: None},
        98 % 7: {98: None},
        99 % 7: {99: None},
    }
    cache.invalidate(96)
    cache.evict_lru()
    cache.invalidate_where(lambda k: k == 98)
    cache.put(99, 0, 50)  # rejected: the old 99 goes too
    assert cache._groups == {}
    assert len(cache) == 0


def test_invalidate_where() -> None:
    cache = LRUCache[Key, int](100)
    for block in range(4):
        cache.put((block, 1, "raw"), block, 2, group=block)
    assert cache.invalidate_where(lambda key: key[0] % 2 == 0) == 2
    assert cache.keys() == [(1, 1, "raw"), (3, 1, "raw")]
    assert cache.nbytes == 4
    assert cache.invalidate_group(1) == 1  # the index followed
    assert cache.invalidate_where(lambda key: False) == 0
    assert cache.statistics().invalidations == 3


def test_invalidate_where_predicate_error_changes_nothing() -> None:
    cache = LRUCache[int, int](100)
    for i in range(5):
        cache.put(i, i, 1)

    def predicate(key: int) -> bool:
        if key == 3:
            raise RuntimeError("boom")
        return True

    with pytest.raises(RuntimeError):
        cache.invalidate_where(predicate)
    assert cache.keys() == [0, 1, 2, 3, 4]
    assert cache.nbytes == 5


def test_clear_keeps_counters() -> None:
    cache = LRUCache[str, int](10)
    cache.put("a", 1, 4, group="g")
    cache.get("a")
    cache.get("b")
    cache.clear()
    assert len(cache) == 0
    assert cache.nbytes == 0
    assert cache.keys() == []
    assert cache._groups == {}
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.evictions, stats.invalidations) == (1, 1, 0, 0)
    cache.put("a", 2, 10)
    assert cache.get("a") == 2


def test_repr() -> None:
    cache = LRUCache[str, int]("1KiB", max_items=8)
    cache.put("a", 1, 100)
    assert repr(cache) == "<LRUCache items=1 nbytes=100 max_bytes=1024 max_items=8>"


# -- state machine against a reference model ---------------------------------------------

# few keys, so that gets hit, puts replace and groups hold several entries
KEYS = [(block, gen, codec) for block in range(2) for gen in range(2) for codec in ("raw", "numpy")]


class ListLRU:
    """The obvious model: a list of (key, value, nbytes, group), least recent first."""

    def __init__(self, max_bytes: int, max_items: int | None) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.entries: list[tuple[Key, int, int, Hashable | None]] = []
        self.hits = self.misses = self.evictions = self.invalidations = self.rejections = 0

    def _find(self, key: Key) -> int | None:
        for i, entry in enumerate(self.entries):
            if entry[0] == key:
                return i
        return None

    def _remove_where(self, doomed: Any) -> int:
        before = len(self.entries)
        self.entries = [e for e in self.entries if not doomed(e)]
        return before - len(self.entries)

    @property
    def nbytes(self) -> int:
        return sum(e[2] for e in self.entries)

    def get(self, key: Key) -> int | None:
        i = self._find(key)
        if i is None:
            self.misses += 1
            return None
        self.hits += 1
        entry = self.entries.pop(i)
        self.entries.append(entry)
        return entry[1]

    def put(self, key: Key, value: int, nbytes: int, group: Hashable | None) -> list[Key]:
        self._remove_where(lambda e: e[0] == key)
        if self.max_bytes == 0 or self.max_items == 0 or nbytes > self.max_bytes:
            self.rejections += 1
            return []
        evicted = []
        while (self.nbytes + nbytes > self.max_bytes) or (
            self.max_items is not None and len(self.entries) >= self.max_items
        ):
            evicted.append(self.entries.pop(0)[0])
        self.evictions += len(evicted)
        self.entries.append((key, value, nbytes, group))
        return evicted

    def invalidate(self, key: Key) -> bool:
        n = self._remove_where(lambda e: e[0] == key)
        self.invalidations += n
        return n == 1

    def invalidate_group(self, group: Hashable) -> int:
        n = self._remove_where(lambda e: e[3] is not None and e[3] == group)
        self.invalidations += n
        return n

    def invalidate_where(self, predicate: Any) -> int:
        n = self._remove_where(lambda e: predicate(e[0]))
        self.invalidations += n
        return n

    def evict_lru(self) -> tuple[Key, int] | None:
        if not self.entries:
            return None
        self.evictions += 1
        key, value, _, _ = self.entries.pop(0)
        return key, value

    def clear(self) -> None:
        self.entries = []


class LRUMachine(RuleBasedStateMachine):
    cache: LRUCache[Key, int]
    model: ListLRU

    def __init__(self) -> None:
        super().__init__()
        self.counter = 0

    @initialize(
        max_bytes=st.sampled_from([20, 100, 8, 1, 0]),
        max_items=st.sampled_from([None, 3, 1, 5, 0]),
    )
    def setup(self, max_bytes: int, max_items: int | None) -> None:
        self.cache = LRUCache(max_bytes, max_items)
        self.model = ListLRU(max_bytes, max_items)

    keys = st.sampled_from(KEYS)
    groups = st.sampled_from(["block", "block", "none", "other"])

    def _put(self, key: Key, nbytes: int, group: str) -> None:
        g: Hashable | None = {"block": key[0], "none": None, "other": -1 - key[1]}[group]
        self.counter += 1
        assert self.cache.put(key, self.counter, nbytes, group=g) == self.model.put(
            key, self.counter, nbytes, g
        )

    @rule(key=keys, nbytes=st.integers(0, 2), group=groups)
    def put_small(self, key: Key, nbytes: int, group: str) -> None:
        self._put(key, nbytes, group)  # the count bound binds

    @rule(key=keys, nbytes=st.integers(0, 4))
    def put_in_block_group(self, key: Key, nbytes: int) -> None:
        self._put(key, nbytes, "block")  # as blockipc does: groups of several entries

    @rule(key=keys, data=st.data(), group=groups)
    def put(self, key: Key, data: st.DataObject, group: str) -> None:
        nbytes = data.draw(
            st.integers(0, self.model.max_bytes // 3 + 1)  # the byte bound binds
            | st.integers(0, self.model.max_bytes + 2)  # up to oversized
        )
        self._put(key, nbytes, group)

    @rule(key=keys)
    def get(self, key: Key) -> None:
        assert self.cache.get(key) == self.model.get(key)

    @precondition(lambda self: self.model.entries)
    @rule(data=st.data())
    def get_present(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from([e[0] for e in self.model.entries]))
        assert self.cache.get(key) == self.model.get(key)

    @precondition(lambda self: len(self.model.entries) > 1)
    @rule(key=keys)
    def invalidate(self, key: Key) -> None:
        assert self.cache.invalidate(key) == self.model.invalidate(key)

    @precondition(lambda self: len(self.model.entries) > 1)
    @rule(group=st.sampled_from([0, 1, -1, -2, "x"]))
    def invalidate_group(self, group: Hashable) -> None:
        assert self.cache.invalidate_group(group) == self.model.invalidate_group(group)

    @precondition(lambda self: len(self.model.entries) > 1)
    @rule(codec=st.sampled_from(["raw", "numpy"]), gen=st.integers(0, 1))
    def invalidate_where(self, codec: str, gen: int) -> None:
        def predicate(key: Key) -> bool:
            return key[1] == gen and key[2] == codec

        assert self.cache.invalidate_where(predicate) == self.model.invalidate_where(predicate)

    @precondition(lambda self: len(self.model.entries) > 1)
    @rule()
    def evict_lru(self) -> None:
        assert self.cache.evict_lru() == self.model.evict_lru()

    @precondition(lambda self: len(self.model.entries) > 3)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @invariant()
    def same_contents_order_and_counters(self) -> None:
        model = self.model
        assert self.cache.keys() == [e[0] for e in model.entries]
        assert [k in self.cache for k in KEYS] == [model._find(k) is not None for k in KEYS]
        assert len(self.cache) == len(model.entries)
        assert self.cache.nbytes == model.nbytes <= model.max_bytes
        assert model.max_items is None or len(self.cache) <= model.max_items
        assert self.cache.statistics() == CacheStats(
            hits=model.hits,
            misses=model.misses,
            evictions=model.evictions,
            invalidations=model.invalidations,
            rejections=model.rejections,
            items=len(model.entries),
            nbytes=model.nbytes,
            max_bytes=model.max_bytes,
            max_items=model.max_items,
        )
        # the group index holds exactly the grouped entries, and no empty group
        expected: dict[Hashable, set[Key]] = {}
        for key, _, _, group in model.entries:
            if group is not None:
                expected.setdefault(group, set()).add(key)
        assert {g: set(keys) for g, keys in self.cache._groups.items()} == expected


LRUMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_lru_machine = LRUMachine.TestCase
