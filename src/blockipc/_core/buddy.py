"""A pure buddy allocator: offsets and capacities inside one region, no I/O.

Theory of operation
-------------------

The region of ``size`` bytes is cut into *top-level blocks* following the binary
decomposition of ``size // min_block``, largest first from offset 0. A 100 MiB
region with 4 KiB blocks becomes blocks of 64, 32 and 4 MiB at offsets 0, 64 Mi
and 96 Mi. Because the larger blocks come first, every top-level block starts at a
multiple of its own size, so ``offset ^ capacity`` (the buddy of a block) computed
on absolute offsets is the same as computed relative to its top-level block.

A block of *order* ``k`` has a capacity of ``min_block << k``. There is one free
list per order: a ``set`` of offsets (O(1) membership and removal, which coalescing
needs to take a buddy out) plus a heap of the same offsets so that allocation can
take the *lowest* free offset of an order deterministically. Entries removed from
the set by coalescing stay in the heap until popped (lazy deletion); the heap is
rebuilt from the set when stale entries outnumber live ones, so its size stays
within a constant factor of the set and every operation is O(log n) amortised.

``alloc`` takes the smallest order that has a free block, pops its lowest offset
and splits it down to the requested order, putting each upper half on the free
list of its order. ``free`` walks up: while the buddy is free (and the block is
still smaller than its top-level block), the two merge. Coalescing never crosses a
top-level block, so freeing everything gives back exactly the top-level blocks.
"""

from __future__ import annotations

import bisect
import heapq

__all__ = ["BuddyAllocator"]


class BuddyAllocator:
    """Power-of-two blocks inside a region of ``size`` bytes.

    The allocator only does arithmetic; it never touches memory. Offsets are
    relative to the start of the region::

        >>> a = BuddyAllocator(1 << 20, min_block=4096)
        >>> a.alloc(5000)
        (0, 8192)
        >>> a.alloc(100)
        (8192, 4096)
        >>> a.free(0)
        8192
        >>> a.used_bytes
        4096
    """

    __slots__ = (
        "_allocated",
        "_free",
        "_heaps",
        "_shift",
        "_top",
        "_top_offsets",
        "_used",
        "min_block",
        "size",
    )

    size: int
    """Bytes in the region."""
    min_block: int
    """Smallest capacity handed out (a power of two)."""

    def __init__(self, size: int, min_block: int = 4096) -> None:
        """Manage a region of ``size`` bytes in blocks of at least ``min_block`` bytes.

        :raises ValueError: if ``min_block`` is not a power of two >= 64, or ``size``
            is not a positive multiple of ``min_block``.
        """
        if (
            isinstance(min_block, bool)
            or not isinstance(min_block, int)
            or min_block < 64
            or min_block & (min_block - 1)
        ):
            raise ValueError(f"min_block must be a power of two >= 64, got {min_block!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % min_block:
            raise ValueError(
                f"size must be a positive multiple of min_block ({min_block}), got {size!r}"
            )
        self.size = size
        self.min_block = min_block
        self._shift = min_block.bit_length() - 1
        units = size >> self._shift
        top_order = units.bit_length() - 1
        self._free: list[set[int]] = [set() for _ in range(top_order + 1)]
        self._heaps: list[list[int]] = [[] for _ in range(top_order + 1)]
        # (offset, order) of each top-level block, largest (= lowest offset) first.
        self._top: list[tuple[int, int]] = []
        offset = 0
        for order in range(top_order, -1, -1):
            if units >> order & 1:
                self._top.append((offset, order))
                self._push(order, offset)
                offset += min_block << order
        self._top_offsets = [off for off, _ in self._top]
        self._allocated: dict[int, int] = {}  # offset -> order
        self._used = 0

    # -- accounting ---------------------------------------------------------

    @property
    def free_bytes(self) -> int:
        """Bytes not in any allocated block (``free_bytes + used_bytes == size``)."""
        return self.size - self._used

    @property
    def used_bytes(self) -> int:
        """Bytes in allocated blocks, counted by capacity."""
        return self._used

    @property
    def max_block(self) -> int:
        """The largest capacity this allocator could ever give: its largest top-level block."""
        return self.min_block << self._top[0][1]

    @property
    def largest_free(self) -> int:
        """The largest capacity available now, or 0 when everything is allocated."""
        for order in range(len(self._free) - 1, -1, -1):
            if self._free[order]:
                return self.min_block << order
        return 0

    def capacity_for(self, nbytes: int) -> int:
        """Return the capacity a request of ``nbytes`` gets: the next power of two
        >= ``max(nbytes, min_block)``.

        :raises ValueError: if ``nbytes <= 0``.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"nbytes must be a positive integer, got {nbytes!r}")
        if nbytes <= self.min_block:
            return self.min_block
        return 1 << (nbytes - 1).bit_length()

    def allocations(self) -> dict[int, int]:
        """Return a copy of the allocated blocks as ``{offset: capacity}``."""
        return {off: self.min_block << order for off, order in self._allocated.items()}

    def free_blocks(self) -> dict[int, int]:
        """Return a copy of the free blocks as ``{offset: capacity}`` (for tests and stats)."""
        return {
            off: self.min_block << order for order, offs in enumerate(self._free) for off in offs
        }

    def top_level_blocks(self) -> list[tuple[int, int]]:
        """Return the top-level blocks as ``[(offset, capacity), ...]``, largest first."""
        return [(off, self.min_block << order) for off, order in self._top]

    # -- alloc / free -------------------------------------------------------

    def alloc(self, nbytes: int) -> tuple[int, int] | None:
        """Allocate a block for ``nbytes`` bytes.

        Returns ``(offset, capacity)``, or ``None`` when no free block is big enough
        (the allocator is unchanged then). Among free blocks of the smallest order that
        fits, the lowest offset is taken.

        :raises ValueError: if ``nbytes <= 0``.
        """
        capacity = self.capacity_for(nbytes)
        want = (capacity >> self._shift).bit_length() - 1
        for order in range(want, len(self._free)):
            if self._free[order]:
                break
        else:
            return None
        offset = self._pop_lowest(order)
        while order > want:
            order -= 1
            self._push(order, offset + (self.min_block << order))
        self._allocated[offset] = want
        self._used += capacity
        return offset, capacity

    def free(self, offset: int) -> int:
        """Free the block at ``offset`` and return its capacity.

        :raises KeyError: if ``offset`` is not the start of an allocated block
            (a double free or a bogus offset); the allocator is unchanged then.
        """
        order = self._allocated.pop(offset, None)
        if order is None:
            raise KeyError(
                f"offset {offset!r} is not an allocated block (double free or bogus offset)"
            )
        capacity = self.min_block << order
        self._used -= capacity
        limit = self._top[bisect.bisect_right(self._top_offsets, offset) - 1][1]
        while order < limit:
            buddy = offset ^ (self.min_block << order)
            if buddy not in self._free[order]:
                break
            self._discard(order, buddy)
            offset = min(offset, buddy)
            order += 1
        self._push(order, offset)
        return capacity

    # -- free lists ---------------------------------------------------------

    def _push(self, order: int, offset: int) -> None:
        self._free[order].add(offset)
        heapq.heappush(self._heaps[order], offset)

    def _pop_lowest(self, order: int) -> int:
        # Precondition: the set of this order is not empty. Every live offset is in
        # the heap, so the loop ends; stale entries (discarded by coalescing) are skipped.
        free = self._free[order]
        heap = self._heaps[order]
        while True:
            offset = heapq.heappop(heap)
            if offset in free:
                free.remove(offset)
                return offset

    def _discard(self, order: int, offset: int) -> None:
        free = self._free[order]
        free.remove(offset)
        heap = self._heaps[order]
        if len(heap) > 2 * len(free) + 32:
            heap[:] = sorted(free)  # a sorted list is a valid heap
