"""Block generations, published in a small shared segment that clients map read-only.

Theory of operation
-------------------
Every block has a *generation*: a counter the coordinator bumps before it
acknowledges anything that changes the block's bytes or its life (a routed write, the
end of a write lease, a copy into it, a replace, a free). A client that cached a value
decoded from a block checks the block's current generation against the one it cached
with: two integers, no round trip, never a stale value.

The counters live in one memfd of u64 *slots*, one slot per minimum block of the
largest pool the coordinator may grow to: a block's slot is the index of its first
minimum block, ``(segment base + offset) // min_block``, unique among live blocks. A
slot's counter only ever grows, also across the blocks that use it in turn, so a
cached ``(slot, generation)`` can never match a later block by accident. Clients map
the memfd with ``PROT_READ``: the routing table stays private, and nobody but the
coordinator can move a counter. The memfd is sealed once the coordinator has mapped it
(:data:`SEALS`): no resize, no ``write()``, no new writable mapping, even through a
reopened ``/proc/PID/fd``; only the coordinator's own mapping writes.

The memfd is not reserved up front (unlike pool segments): it is 1/512 of the largest
pool, and pages appear as slots are first bumped.
"""

from __future__ import annotations

import fcntl
import mmap
import os

__all__ = ["GenerationTable", "GenerationView"]

_SLOT = 8

F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)  # Linux 5.1 (not in 3.11)
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL
"""The table's size is fixed and nobody can write it but the mapping the coordinator
made before sealing: a client cannot truncate it (SIGBUS in the coordinator) nor write
a slot (a stale ``get`` in every other client), whatever fd it reopens."""


class GenerationTable:
    """The coordinator's read-write side."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.size = -(-self.slots * _SLOT // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = os.memfd_create("blockipc-generations", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, self.size)
            self._mmap = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        """The fd clients get (sealed: they can map it read-only, and nothing else)."""
        self._view = memoryview(self._mmap).cast("Q")

    def get(self, slot: int) -> int:
        return int(self._view[slot])

    def set(self, slot: int, generation: int) -> None:
        self._view[slot] = generation

    def close(self) -> None:
        if self.fd < 0:
            return
        self._view.release()
        self._mmap.close()
        os.close(self.fd)
        self.fd = -1


class GenerationView:
    """A client's read-only mapping of the coordinator's generation table."""

    def __init__(self, fd: int, size: int) -> None:
        self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        self._view = memoryview(self._mmap).cast("Q")
        self.slots = size // _SLOT

    def get(self, slot: int) -> int:
        return int(self._view[slot])

    def close(self) -> None:
        self._view.release()
        self._mmap.close()
