"""What isolating the data plane per client would cost: the figures behind the design
note in ``docs/reliability.md`` ("Isolating the data plane").

    python benchmarks/isolation.py [--rounds 5]

Today a client maps each pool segment once, read-write, and a lease hands out a slice
of that mapping. Two ways to give a client only the blocks it may use, and what they add
per lease (measured here in one process, on a memfd like the pool's):

* ``slice``: today's lease, a ``memoryview`` slice of the segment's one mapping;
* ``mmap per lease``: the client maps just the leased block (``mmap(fd, size,
  offset)``) and unmaps it at release, then touches every page once (a fresh mapping
  faults its pages in again, where the segment's mapping had them);
* ``mmap populated``: the same with ``MAP_POPULATE`` (the pages mapped in one call);
* ``mprotect``: the segment stays mapped ``PROT_NONE`` and a lease opens its range
  (``mprotect`` read-write, then back): protects against bugs only, since a process can
  call ``mprotect`` itself.

Each is timed for a 4 KiB and a 1 MiB block, touching the bytes once (a read of each page).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import time

SEGMENT = 64 << 20
PROT_NONE = 0
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


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
    t0 = time.perf_counter()
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
        v = memoryview(m)
        touch(v, size)
        v.release()
        m.close()
    out["mmap per lease"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        m = mmap.mmap(fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
        v = memoryview(m)
        touch(v, size)
        v.release()
        m.close()
    out["mmap populated"] = (time.perf_counter() - t0) / n
    anchor = ctypes.c_char.from_buffer(seg)
    addr = ctypes.addressof(anchor)
    t0 = time.perf_counter()
    for i in range(n):
        off = (i * size) % (SEGMENT - size)
        libc.mprotect(addr + off, size, mmap.PROT_READ | mmap.PROT_WRITE)
        v = base[off : off + size]
        touch(v, size)
        v.release()
        libc.mprotect(addr + off, size, PROT_NONE)
    out["mprotect"] = (time.perf_counter() - t0) / n
    libc.mprotect(addr, SEGMENT, mmap.PROT_READ | mmap.PROT_WRITE)
    del anchor, base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best of)")
    args = parser.parse_args()
    fd = os.memfd_create("bipc-isolation", os.MFD_CLOEXEC)
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
            for k in ("slice", "mmap per lease", "mmap populated", "mprotect")
        )
        print(f"{label}: {row}")
    seg.close()
    os.close(fd)


if __name__ == "__main__":
    main()
