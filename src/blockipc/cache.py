"""A byte-bounded and count-bounded LRU cache with counters, no I/O.

Theory of operation
-------------------

Entries live in one :class:`collections.OrderedDict` kept in recency order, least
recently used first: a hit is ``move_to_end`` and an eviction is
``popitem(last=False)``, both O(1). Each entry records its value, the byte size the
caller declared for it (the cache never measures objects) and an optional *group*.

Two bounds hold after every call: the declared sizes add up to at most
``max_bytes`` and there are at most ``max_items`` entries. ``put`` makes room by
evicting from the least recently used end, and only after taking out the old entry
of the same key, so a replacement never evicts itself and never counts twice.

An entry larger than ``max_bytes`` is *rejected*: it is not stored, nothing else is
evicted for it (emptying the cache would not make it fit), any older entry under the
same key is dropped (so a ``get`` can never return the value the caller has just
replaced) and the ``rejections`` counter moves. A cache with ``max_bytes == 0`` or
``max_items == 0`` is disabled: it rejects every ``put``.

Coherence is the caller's business, and groups make it cheap. blockipc keys a
decoded value by ``(block_id, generation, codec)`` and puts it in the group
``block_id``; when a block is written, copied, replaced or freed,
``invalidate_group(block_id)`` drops every generation and codec cached from it in
O(entries of that block), where ``invalidate_where`` would scan the whole cache.
A secondary index maps each group to the keys in it (a ``dict`` used as an ordered
set); a group disappears from the index with its last entry, so the index never
outgrows the cache.

Counters: a ``get`` of a present key is a hit, of an absent key a miss; an entry
pushed out by a bound (or by ``evict_lru``) is an eviction; one taken out by
``invalidate``, ``invalidate_group`` or ``invalidate_where`` is an invalidation.
``clear`` and the replacement of a key by ``put`` move no counter.

The class is not thread-safe; it is meant to be used from one event loop, whose
callbacks never interleave inside a method.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

from ._core.sizes import parse_size
from ._exceptions import InvalidRequest

__all__ = ("CacheStats", "LRUCache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of an :class:`LRUCache`'s counters and occupancy.

    >>> cache = LRUCache[str, bytes](max_bytes=100)
    >>> cache.put("a", b"x" * 10, nbytes=10)
    []
    >>> cache.get("a"), cache.get("b")
    (b'xxxxxxxxxx', None)
    >>> s = cache.statistics()
    >>> s.hits, s.misses, s.items, s.nbytes, s.hit_ratio
    (1, 1, 1, 10, 0.5)
    """

    hits: int
    """``get`` calls that found their key."""
    misses: int
    """``get`` calls that did not."""
    evictions: int
    """Entries pushed out to respect ``max_bytes``/``max_items``, or by ``evict_lru``."""
    invalidations: int
    """Entries taken out by ``invalidate``, ``invalidate_group`` or ``invalidate_where``."""
    rejections: int
    """``put`` calls not stored: the entry was larger than ``max_bytes``, or the cache
    is disabled."""
    items: int
    """Entries held now."""
    nbytes: int
    """Sum of the declared sizes of the entries held now."""
    max_bytes: int
    """The byte bound."""
    max_items: int | None
    """The count bound, ``None`` for none."""

    @property
    def hit_ratio(self) -> float:
        """``hits / (hits + misses)``, or ``0.0`` before the first ``get``."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    nbytes: int
    group: Hashable | None


def _check_nbytes(nbytes: int) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise InvalidRequest(f"invalid nbytes {nbytes!r}: expected an int >= 0")
    return nbytes


class LRUCache(Generic[K, V]):
    """A least-recently-used cache bounded by total bytes and by entry count.

    ``max_bytes`` is an int or a size string (``"64MiB"``, see
    :func:`blockipc.parse_size`); ``0`` disables the cache. ``max_items`` is an int
    ``>= 0`` or ``None`` for no count bound. Sizes are declared by the caller on
    ``put``; every operation is O(1) except the invalidations that take many entries.

        >>> cache = LRUCache[tuple[int, int, str], bytes](max_bytes="1KiB", max_items=2)
        >>> cache.put((7, 1, "raw"), b"v1", nbytes=2, group=7)
        []
        >>> cache.put((8, 1, "raw"), b"w1", nbytes=2, group=8)
        []
        >>> cache.get((7, 1, "raw"))          # a hit makes (7, 1) the most recent
        b'v1'
        >>> cache.put((9, 1, "raw"), b"z1", nbytes=2, group=9)   # over max_items
        [(8, 1, 'raw')]
        >>> cache.invalidate_group(7)         # block 7 was written: drop all of it
        1
        >>> cache.keys(), cache.nbytes
        ([(9, 1, 'raw')], 2)
    """

    __slots__ = (
        "_data",
        "_evictions",
        "_groups",
        "_hits",
        "_invalidations",
        "_max_bytes",
        "_max_items",
        "_misses",
        "_nbytes",
        "_rejections",
    )

    def __init__(self, max_bytes: int | str, max_items: int | None = None) -> None:
        """Make an empty cache.

        :raises InvalidRequest: for a ``max_bytes`` that is not ``0`` or a valid size,
            or a ``max_items`` that is not ``None`` or an int ``>= 0``.
        """
        if isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes == 0:
            self._max_bytes = 0
        else:
            self._max_bytes = parse_size(max_bytes)
        if max_items is not None and (
            isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0
        ):
            raise InvalidRequest(f"invalid max_items {max_items!r}: expected None or an int >= 0")
        self._max_items = max_items
        self._data: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._groups: dict[Hashable, dict[K, None]] = {}
        self._nbytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._invalidations = 0
        self._rejections = 0

    # -- reading -------------------------------------------------------------------

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        """Return the value cached under ``key`` and make it the most recently used
        (a hit), or return ``default`` (a miss).

            >>> cache = LRUCache[str, int](max_bytes=10)
            >>> cache.get("a", -1)
            -1
        """
        entry = self._data.get(key)
        if entry is None:
            self._misses += 1
            return default
        self._data.move_to_end(key)
        self._hits += 1
        return entry.value

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached; neither a hit nor a miss, and no change of order."""
        return key in self._data

    def __len__(self) -> int:
        """The number of entries."""
        return len(self._data)

    def keys(self) -> list[K]:
        """The cached keys, from the least to the most recently used (next to be
        evicted first).

            >>> cache = LRUCache[str, int](max_bytes=10)
            >>> for k in "abc":
            ...     _ = cache.put(k, 0, nbytes=1)
            >>> _ = cache.get("a")
            >>> cache.keys()
            ['b', 'c', 'a']
        """
        return list(self._data)

    @property
    def nbytes(self) -> int:
        """The sum of the declared sizes of the cached entries."""
        return self._nbytes

    @property
    def max_bytes(self) -> int:
        """The byte bound (``0``: disabled)."""
        return self._max_bytes

    @property
    def max_items(self) -> int | None:
        """The count bound (``None``: no bound, ``0``: disabled)."""
        return self._max_items

    def statistics(self) -> CacheStats:
        """A snapshot of the counters and the occupancy; see :class:`CacheStats`."""
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            invalidations=self._invalidations,
            rejections=self._rejections,
            items=len(self._data),
            nbytes=self._nbytes,
            max_bytes=self._max_bytes,
            max_items=self._max_items,
        )

    def __repr__(self) -> str:
        return (
            f"<LRUCache items={len(self._data)} nbytes={self._nbytes} "
            f"max_bytes={self._max_bytes} max_items={self._max_items}>"
        )

    # -- writing -------------------------------------------------------------------

    def put(self, key: K, value: V, nbytes: int, *, group: Hashable | None = None) -> list[K]:
        """Cache ``value`` under ``key`` as the most recently used entry, declared to
        take ``nbytes`` bytes, in ``group`` (``None``: no group); return the keys
        evicted to make room, least recently used first.

        An existing entry under ``key`` is replaced (it is not reported as evicted).
        An entry larger than ``max_bytes``, or any entry in a disabled cache, is not
        stored: the old entry under ``key`` is still dropped, nothing is evicted,
        ``[]`` is returned and the ``rejections`` counter moves.

            >>> cache = LRUCache[str, str](max_bytes=10)
            >>> cache.put("a", "A", nbytes=6), cache.put("b", "B", nbytes=6)
            ([], ['a'])
            >>> cache.put("c", "C", nbytes=11), cache.statistics().rejections
            ([], 1)

        :raises InvalidRequest: if ``nbytes`` is not an int ``>= 0``.
        """
        _check_nbytes(nbytes)
        old = self._data.pop(key, None)
        if old is not None:
            self._forget(key, old)
        if nbytes > self._max_bytes or self._max_bytes == 0 or self._max_items == 0:
            self._rejections += 1
            return []
        evicted: list[K] = []
        max_items = self._max_items
        while self._data and (
            self._nbytes + nbytes > self._max_bytes
            or (max_items is not None and len(self._data) >= max_items)
        ):
            lru_key, lru = self._data.popitem(last=False)
            self._forget(lru_key, lru)
            evicted.append(lru_key)
        self._evictions += len(evicted)
        self._data[key] = _Entry(value, nbytes, group)
        self._nbytes += nbytes
        if group is not None:
            self._groups.setdefault(group, {})[key] = None
        return evicted

    def evict_lru(self) -> tuple[K, V] | None:
        """Evict the least recently used entry and return it as ``(key, value)``, or
        return ``None`` if the cache is empty. Counts as an eviction: this is how a
        pool under memory pressure gives up cached blocks one at a time.

            >>> cache = LRUCache[str, int](max_bytes=10)
            >>> _ = cache.put("a", 1, nbytes=1); _ = cache.put("b", 2, nbytes=1)
            >>> cache.evict_lru(), len(cache)
            (('a', 1), 1)
        """
        if not self._data:
            return None
        key, entry = self._data.popitem(last=False)
        self._forget(key, entry)
        self._evictions += 1
        return key, entry.value

    def invalidate(self, key: K) -> bool:
        """Drop the entry under ``key``; return whether there was one.

        >>> cache = LRUCache[str, int](max_bytes=10)
        >>> _ = cache.put("a", 1, nbytes=1)
        >>> cache.invalidate("a"), cache.invalidate("a")
        (True, False)
        """
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        self._forget(key, entry)
        self._invalidations += 1
        return True

    def invalidate_group(self, group: Hashable) -> int:
        """Drop every entry put with ``group``; return how many. O(size of the group).

        >>> cache = LRUCache[tuple[int, int], str](max_bytes=10)
        >>> _ = cache.put((7, 1), "old", nbytes=1, group=7)
        >>> _ = cache.put((7, 2), "new", nbytes=1, group=7)
        >>> cache.invalidate_group(7), len(cache)
        (2, 0)
        """
        keys = self._groups.pop(group, None)
        if not keys:
            return 0
        for key in keys:
            entry = self._data.pop(key)
            self._nbytes -= entry.nbytes
        self._invalidations += len(keys)
        return len(keys)

    def invalidate_where(self, predicate: Callable[[K], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate``; return how many. O(n).

        ``predicate`` is called on every key before anything is dropped, so if it
        raises, the cache is left as it was.

            >>> cache = LRUCache[tuple[int, str], str](max_bytes=10)
            >>> _ = cache.put((1, "json"), "a", nbytes=1)
            >>> _ = cache.put((1, "raw"), "b", nbytes=1)
            >>> cache.invalidate_where(lambda key: key[1] == "raw"), cache.keys()
            (1, [(1, 'json')])
        """
        doomed = [key for key in self._data if predicate(key)]
        for key in doomed:
            self._forget(key, self._data.pop(key))
        self._invalidations += len(doomed)
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry. The counters are kept and do not move."""
        self._data.clear()
        self._groups.clear()
        self._nbytes = 0

    def _forget(self, key: K, entry: _Entry[V]) -> None:
        """Account for ``entry`` having been taken out of ``_data``."""
        self._nbytes -= entry.nbytes
        if entry.group is not None:
            members = self._groups[entry.group]
            del members[key]
            if not members:
                del self._groups[entry.group]
