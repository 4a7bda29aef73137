"""The pool: segments of shared memory, each managed by a buddy allocator.

Theory of operation
-------------------

A *segment* is an anonymous memory file made with ``memfd_create``: it has no name
in any file system, so nothing is ever left in ``/dev/shm`` whoever crashes; the
memory goes away when the last fd and the last mapping are gone. Its fd is what the
coordinator hands to clients (over the Unix socket), and its ``memoryview`` is what
the coordinator itself copies through.

Creating a segment reserves its memory at once with ``posix_fallocate``: on tmpfs
(which backs memfd) a page that cannot be backed when it is first touched kills
the process with ``SIGBUS``. Reserving up front turns a full machine into a
:class:`~blockipc.PoolExhausted` at allocation time instead. The size is then
sealed (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``) so that no client holding the
fd can truncate it under another process's mapping, which would also mean ``SIGBUS``.

A read-write client gets the segment's own fd (``Segment.fd``); a read-only one
(``connect(..., access="r")``) a fresh ``O_RDONLY`` open of it
(:meth:`Segment.open_read_only`), which it can map ``PROT_READ`` only and can neither
``ftruncate`` (``EINVAL``) nor ``fallocate`` (hole punching: ``EBADF``). The memfd's
mode is 0400, so reopening such an fd read-write through ``/proc/PID/fd`` fails with
``EACCES`` for a process that is not root, unless it first changes that mode (it can:
the memfd is its uid's): this stops a reader's bugs, not a hostile process of the uid.

The :class:`Pool` starts with one segment of ``pool_size`` bytes and, if
``max_pool_size`` allows, grows by adding segments (never by resizing one, since
mappings in other processes could not follow). Blocks never span segments, so an
allocation is ``(segment, offset, capacity)``. Segments are tried in id order, so
the oldest are filled first. Segments are not removed while the pool is open: a
client may hold a mapping of any of them.

Everything here is synchronous and quick (only segment creation does system
calls); the coordinator calls it from its event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .._core.buddy import BuddyAllocator
from .._core.sizes import parse_size
from .._exceptions import BlockIPCError, InvalidRequest, OutOfBounds, PoolExhausted
from .._log import RateLimiter, get_logger

__all__ = ["Allocation", "Pool", "Segment"]


log = get_logger("blockipc.pool")


# What a closed segment's ``buffer`` is: any use raises ValueError.
_RELEASED = memoryview(b"")
_RELEASED.release()

# Before Python 3.13 an mmap always keeps a dup of its fd; from 3.13 it can be told not to.
_MMAP_OPTIONS: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}

# errno values that mean "the machine cannot give this much memory".
_NO_MEMORY = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EFBIG})


def _largest_power_of_two_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


@dataclass(frozen=True, slots=True)
class Allocation:
    """A block assigned in the pool: ``capacity`` bytes at ``offset`` in segment ``segment``."""

    segment: int
    offset: int
    capacity: int


class Segment:
    """One memfd of shared memory, mapped read/write, with the buddy allocator of its blocks.

    Make one with :meth:`create`; ``fd`` is what another process maps. ::

        seg = Segment.create(0, 1 << 20, min_block=4096)
        seg.buffer[:5] = b"hello"
        seg.close()
    """

    __slots__ = ("_mmap", "allocator", "buffer", "fd", "id", "size")

    id: int
    size: int
    fd: int
    allocator: BuddyAllocator
    buffer: memoryview

    def __init__(
        self, seg_id: int, size: int, fd: int, mapping: mmap.mmap, allocator: BuddyAllocator
    ) -> None:
        """Wrap an already created memfd and its mapping; use :meth:`create` instead."""
        self.id = seg_id
        self.size = size
        self.fd = fd
        self.allocator = allocator
        self._mmap: mmap.mmap | None = mapping
        self.buffer = memoryview(mapping)

    @classmethod
    def create(cls, seg_id: int, size: int, min_block: int) -> Segment:
        """Create a sealed memfd of ``size`` bytes with its memory reserved, and map it.

        :raises PoolExhausted: if the machine cannot reserve ``size`` bytes of memory.
        :raises ValueError: if ``size`` is not a positive multiple of ``min_block``.
        """
        allocator = BuddyAllocator(size, min_block)
        fd = os.memfd_create(f"blockipc-seg{seg_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            while True:
                try:
                    os.posix_fallocate(fd, 0, size)
                    break
                except InterruptedError:
                    continue
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            os.fchmod(fd, 0o400)  # a read-only fd cannot simply be reopened read-write
            mapping = mmap.mmap(
                fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, **_MMAP_OPTIONS
            )
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_MEMORY:
                raise PoolExhausted(
                    f"cannot reserve {size} bytes of shared memory: {exc.strerror or exc}"
                ) from exc
            raise
        except BaseException:
            os.close(fd)
            raise
        return cls(seg_id, size, fd, mapping, allocator)

    def open_read_only(self) -> int:
        """A new ``O_RDONLY`` fd of this segment, for a read-only client: mapped, it
        reads; it cannot write, truncate or punch holes. The caller closes it."""
        if self.fd < 0:
            raise ValueError(f"segment {self.id} is closed")
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self.fd < 0

    def close(self) -> None:
        """Release the buffer, unmap and close the fd. Idempotent; never raises.

        If views into the segment are still alive elsewhere, the mapping cannot be
        closed now: it is left to the garbage collector (which unmaps it when the
        last view goes) and ``pool.segment_close_deferred`` is logged.
        """
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        mapping, self._mmap = self._mmap, None
        buffer, self.buffer = self.buffer, _RELEASED
        try:
            buffer.release()
            if mapping is not None:
                mapping.close()
        except BufferError:
            # Views exported to the user keep the mapping alive; dropping our
            # references lets the garbage collector unmap it when the last one goes.
            log.warning("pool.segment_close_deferred", segment=self.id, size=self.size)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"<Segment id={self.id} size={self.size} {state}>"


class Pool:
    """Segments of shared memory handing out power-of-two blocks.

    ::

        with Pool("4MiB", max_pool_size="16MiB") as pool:
            a = pool.alloc(1000)              # Allocation(segment=0, offset=0, capacity=4096)
            pool.view(a.segment, a.offset, 5)[:] = b"hello"
            pool.free(a.segment, a.offset)
    """

    segments: dict[int, Segment]
    """Open segments by id, in id order."""

    def __init__(
        self,
        pool_size: int | str = "256MiB",
        max_pool_size: int | str | None = None,
        min_block: int = 4096,
    ) -> None:
        """Create the pool and its first segment (id 0) of ``pool_size`` bytes.

        ``pool_size`` is rounded up to a multiple of ``min_block``; ``max_pool_size``
        (default: ``pool_size``) bounds growth and is rounded down to a multiple of
        ``min_block``, but never below the rounded ``pool_size``.

        :raises InvalidRequest: if ``min_block`` is not a power of two and a multiple of
            the page size, a size is invalid, or ``max_pool_size < pool_size``.
        :raises PoolExhausted: if the machine cannot reserve the first segment.
        """
        if (
            isinstance(min_block, bool)
            or not isinstance(min_block, int)
            or min_block <= 0
            or min_block & (min_block - 1)
            or min_block % mmap.PAGESIZE
        ):
            raise InvalidRequest(
                f"invalid min_block {min_block!r}: must be a power of two and a multiple "
                f"of the page size ({mmap.PAGESIZE})"
            )
        requested = parse_size(pool_size)
        limit = requested if max_pool_size is None else parse_size(max_pool_size)
        if limit < requested:
            raise InvalidRequest(
                f"max_pool_size {max_pool_size!r} is smaller than pool_size {pool_size!r}"
            )
        self._min_block = min_block
        self._pool_size = -(-requested // min_block) * min_block
        self._max_pool_size = max(self._pool_size, limit // min_block * min_block)
        self._closed = False
        self.log_limit = RateLimiter()
        """Bounds the warnings about this pool's failed allocations, which a client can
        cause at will (``pool.exhausted``, the coordinator's ``block.alloc_failed``)."""
        self.segments = {}
        first = Segment.create(0, self._pool_size, min_block)
        self.segments[0] = first
        self._next_id = 1
        self._max_request = max(
            first.allocator.max_block,
            _largest_power_of_two_at_most(self._max_pool_size - self._pool_size),
        )

    # -- accounting ---------------------------------------------------------

    @property
    def min_block(self) -> int:
        """The smallest capacity handed out."""
        return self._min_block

    @property
    def pool_size(self) -> int:
        """The size of the first segment, and the usual size of the segments added."""
        return self._pool_size

    @property
    def max_pool_size(self) -> int:
        """The most bytes all segments together may hold."""
        return self._max_pool_size

    @property
    def size(self) -> int:
        """Bytes in all current segments (``free_bytes + used_bytes == size``)."""
        return sum(seg.size for seg in self.segments.values())

    @property
    def free_bytes(self) -> int:
        """Bytes not in any allocated block, over all segments."""
        return sum(seg.allocator.free_bytes for seg in self.segments.values())

    @property
    def used_bytes(self) -> int:
        """Bytes in allocated blocks (by capacity), over all segments."""
        return sum(seg.allocator.used_bytes for seg in self.segments.values())

    @property
    def largest_free(self) -> int:
        """The largest capacity available now without growing, or 0."""
        return max((seg.allocator.largest_free for seg in self.segments.values()), default=0)

    def max_request(self) -> int:
        """The largest capacity this pool could ever give: the largest top-level block of
        the first segment, or the largest power of two that fits in the room left to grow."""
        return self._max_request

    def capacity_for(self, nbytes: int) -> int:
        """The capacity a block of ``nbytes`` bytes gets (the buddy allocator's rounding:
        the next power of two, at least ``min_block``); a request whose capacity is over
        :meth:`max_request` can never be met.

        :raises ValueError: if ``nbytes <= 0``.
        """
        return self.segments[0].allocator.capacity_for(nbytes)

    # -- alloc / free -------------------------------------------------------

    def alloc(self, nbytes: int) -> Allocation:
        """Assign a block of at least ``nbytes`` bytes, growing the pool if needed and allowed.

        :raises InvalidRequest: if ``nbytes <= 0``.
        :raises PoolExhausted: if no block is free and the pool may not grow, if the
            machine cannot back a new segment, or if the request is larger than the
            largest block the pool could ever hold. The pool is unchanged then.
        """
        self._check_open()
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise InvalidRequest(f"invalid allocation size {nbytes!r}: must be greater than zero")
        capacity = self.capacity_for(nbytes)
        if capacity > self._max_request:
            self.log_limit.warning(  # a client can make this happen at will
                log,
                "pool.exhausted",
                reason="too_large",
                requested=nbytes,
                capacity=capacity,
                max_request=self._max_request,
            )
            raise PoolExhausted(
                f"a request of {nbytes} bytes (capacity {capacity}) is larger than the "
                f"largest block this pool can ever hold ({self._max_request})"
            )
        for seg in self.segments.values():
            got = seg.allocator.alloc(nbytes)
            if got is not None:
                return Allocation(seg.id, got[0], got[1])
        grown = self._grow(capacity)
        if grown is None:
            size, free, largest = self.size, self.free_bytes, self.largest_free
            self.log_limit.warning(  # a client can make this happen at will
                log,
                "pool.exhausted",
                reason="full",
                requested=nbytes,
                capacity=capacity,
                free_bytes=free,
                largest_free=largest,
                pool_size=size,
                max_pool_size=self._max_pool_size,
            )
            raise PoolExhausted(
                f"no free block for {nbytes} bytes (capacity {capacity}): {free} bytes free, "
                f"largest free block {largest}, pool size {size} of at most "
                f"{self._max_pool_size}"
            )
        got = grown.allocator.alloc(nbytes)
        if got is None:  # pragma: no cover - _grow only returns a segment that fits
            raise AssertionError("a new segment could not hold the block it was made for")
        return Allocation(grown.id, got[0], got[1])

    def _grow(self, capacity: int) -> Segment | None:
        size = self.size
        room = self._max_pool_size - size
        seg_size = min(room, max(self._pool_size, capacity)) // self._min_block * self._min_block
        if seg_size <= 0 or _largest_power_of_two_at_most(seg_size) < capacity:
            return None
        seg = Segment.create(self._next_id, seg_size, self._min_block)
        self.segments[seg.id] = seg
        self._next_id += 1
        log.info(
            "pool.segment_added",
            segment=seg.id,
            size=seg_size,
            pool_size=size + seg_size,
            max_pool_size=self._max_pool_size,
        )
        return seg

    def free(self, segment: int, offset: int) -> int:
        """Free the block at ``offset`` in ``segment`` and return its capacity.

        :raises KeyError: for an unknown segment or an offset that is not an allocated
            block (double free); the pool is unchanged then.
        """
        return self._segment(segment).allocator.free(offset)

    def view(self, segment: int, offset: int, length: int) -> memoryview:
        """Return a writable ``memoryview`` of ``length`` bytes at ``offset`` in ``segment``.

        :raises KeyError: for an unknown segment.
        :raises OutOfBounds: if the range is not inside the segment.
        """
        seg = self._segment(segment)
        if offset < 0 or length < 0 or offset + length > seg.size:
            raise OutOfBounds(
                f"range [{offset}, {offset + length}) is outside segment {segment} "
                f"of {seg.size} bytes"
            )
        return seg.buffer[offset : offset + length]

    def _segment(self, segment: int) -> Segment:
        self._check_open()
        try:
            return self.segments[segment]
        except KeyError:
            raise KeyError(f"no segment {segment!r} in this pool") from None

    # -- lifetime -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise BlockIPCError("the pool is closed")

    def close(self) -> None:
        """Close every segment (unmap, close fds). Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        segments, self.segments = self.segments, {}
        for seg in segments.values():
            seg.close()

    def __enter__(self) -> Self:
        """Return the pool; leaving the ``with`` block closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Pool segments={len(self.segments)} size={self.size} used={self.used_bytes} "
            f"max={self._max_pool_size}{' closed' if self._closed else ''}>"
        )
