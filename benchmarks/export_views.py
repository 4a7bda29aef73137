"""What telling a view that outlives its lease costs: the figures behind "Views that
outlive a lease" in ``docs/reliability.md``.

    python benchmarks/export_views.py [--rounds 5]

A lease (or a channel message) hands out a ``memoryview`` into the segment's mapping;
when it ends, the client must know whether anything still reaches those bytes (a numpy
array made from the view, a slice, a memoryview of it). ``memoryview.release()`` cannot
tell: slices and arrays share the segment's managed buffer, not the view. Per lease,
measured here in one process on a memfd like the pool's, for a 4 KiB and a 1 MiB block,
each touching every page once:

* ``slice``: the lease before, a slice of the segment's one mapping, told nothing;
* ``lent``: what leases and channel messages do (``blockipc._client.views``): the view
  is ``memoryview(PickleBuffer(slice))``, so everything made from it keeps the slice
  exported, and the slice's ``release()`` raises ``BufferError`` while it lives;
* ``ctypes``: the view is made from a fresh ctypes array over the block
  (``from_buffer``), held only by the views' managed buffer, watched by a weak
  reference: after our own ``release()``, a live referent is a live export;
* ``mmap per lease``: the block mapped on its own (page-aligned offset) and unmapped at
  release; ``close()`` raises ``BufferError`` while exported. A fresh mapping faults
  its pages in again.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import time
import weakref
from pickle import PickleBuffer

SEGMENT = 64 << 20


def touch(view: memoryview, size: int) -> int:
    return sum(view[i] for i in range(0, size, 4096))


def run(size: int, n: int, fd: int, seg: mmap.mmap) -> dict[str, float]:
    base = memoryview(seg)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        v = base[off : off + size]
        touch(v, size)
        v.release()
    out["slice"] = (time.perf_counter() - t0) / n
    exported = 0
    t0 = time.perf_counter()
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        s = base[off : off + size]
        v = memoryview(PickleBuffer(s))
        touch(v, size)
        v.release()
        try:
            s.release()
        except BufferError:
            exported += 1
    out["lent"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        m = memoryview((ctypes.c_char * size).from_buffer(seg, off))
        v = m.cast("B")
        ref = weakref.ref(m.obj)
        m.release()
        touch(v, size)
        v.release()
        exported += ref() is not None
    out["ctypes"] = (time.perf_counter() - t0) / n
    assert not exported
    t0 = time.perf_counter()
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        start = off - off % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(
            fd, off + size - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start
        )
        v = memoryview(m)[off - start :]
        touch(v, size)
        v.release()
        m.close()
    out["mmap per lease"] = (time.perf_counter() - t0) / n
    del base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best of)")
    args = parser.parse_args()
    fd = os.memfd_create("bipc-export", os.MFD_CLOEXEC)
    os.ftruncate(fd, SEGMENT)
    os.posix_fallocate(fd, 0, SEGMENT)
    seg = mmap.mmap(fd, SEGMENT, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    seg[:] = b"\1" * SEGMENT  # every page present, as in a pool in use
    best: dict[tuple[int, str], float] = {}
    for _ in range(args.rounds):
        for size, n in ((4096, 20000), (1 << 20, 300)):
            for k, v in run(size, n, fd, seg).items():
                best[size, k] = min(best.get((size, k), 1e9), v)
    for size in (4096, 1 << 20):
        label = "4 KiB" if size == 4096 else "1 MiB"
        row = ", ".join(
            f"{k} {best[size, k] * 1e6:.1f} us"
            for k in ("slice", "lent", "ctypes", "mmap per lease")
        )
        print(f"{label}: {row}")
    seg.close()
    os.close(fd)


if __name__ == "__main__":
    main()
