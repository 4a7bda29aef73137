"""Tests of the pool: real memfd segments, growth, accounting, cleanup."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import itertools
import mmap
import os
import random
from collections.abc import Iterator

import pytest

from blockipc._core.sizes import parse_size
from blockipc._exceptions import BlockIPCError, InvalidRequest, OutOfBounds, PoolExhausted
from blockipc._shm.pool import Allocation, Pool, Segment
from blockipc.testing import capture_logs

KiB = 1 << 10
MiB = 1 << 20
ALL_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def memfds() -> set[tuple[int, str]]:
    """The (fd, target) of this process's open blockipc segment memfds."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone already
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("/memfd:blockipc-seg"):
                found.add((int(name), target))
    return found


def mapped_segments() -> int:
    """How many blockipc segment mappings this process has."""
    with open("/proc/self/maps") as maps:
        return sum("/memfd:blockipc-seg" in line for line in maps)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    fds, maps = memfds(), mapped_segments()
    yield
    gc.collect()
    assert memfds() == fds
    assert mapped_segments() == maps


def check_accounting(pool: Pool) -> None:
    assert pool.free_bytes + pool.used_bytes == pool.size
    assert pool.size == sum(seg.size for seg in pool.segments.values())
    assert pool.size <= pool.max_pool_size


# -- parse_size --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4096, 4096),
        (1 << 40, 1 << 40),
        ("4096", 4096),
        (" 4096 ", 4096),
        ("4096B", 4096),
        ("64KiB", 64 * KiB),
        ("64kib", 64 * KiB),
        ("256MiB", 256 * MiB),
        ("256 MiB", 256 * MiB),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("64K", 64 * KiB),
        ("256M", 256 * MiB),
        ("256m", 256 * MiB),
        ("1G", 1 << 30),
        ("64KB", 64_000),
        ("64kb", 64_000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1.5GiB", 3 << 29),
        ("0.5 KiB", 512),
        ("2.5MB", 2_500_000),
    ],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        True,
        False,
        1.5,
        None,
        b"1MiB",
        "",
        "   ",
        "0",
        "0MiB",
        "-1",
        "-4KiB",
        "abc",
        "MiB",
        "12 parsecs",
        "1.5",  # not whole bytes
        "0.1KiB",
        "1e6",
        "1,000",
        "1 2 MiB",
        "1MiBs",
        "0x1000",
    ],
)
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


# -- segments -----------------------------------------------------------------------


def test_segment_is_a_sealed_memfd(no_leaks: None) -> None:
    seg = Segment.create(7, MiB, 4096)
    try:
        assert (seg.id, seg.size) == (7, MiB)
        assert os.readlink(f"/proc/self/fd/{seg.fd}").startswith("/memfd:blockipc-seg7")
        assert os.fstat(seg.fd).st_size == MiB
        assert fcntl.fcntl(seg.fd, fcntl.F_GET_SEALS) & ALL_SEALS == ALL_SEALS
        assert not os.get_inheritable(seg.fd)  # MFD_CLOEXEC
        with pytest.raises(PermissionError):
            os.ftruncate(seg.fd, MiB // 2)
        with pytest.raises(PermissionError):
            os.ftruncate(seg.fd, 2 * MiB)
        with pytest.raises(PermissionError):
            fcntl.fcntl(seg.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert len(seg.buffer) == MiB
        assert not seg.buffer.readonly
        assert seg.allocator.size == MiB
        assert "fd=" in repr(seg)
    finally:
        seg.close()
    assert seg.closed
    assert "closed" in repr(seg)
    seg.close()  # idempotent
    with pytest.raises(ValueError):
        seg.buffer[0]  # a closed segment's buffer is released


def test_segment_rejects_bad_size(no_leaks: None) -> None:
    with pytest.raises(ValueError):
        Segment.create(0, 5000, 4096)


def test_data_is_shared_through_the_fd(no_leaks: None) -> None:
    with Pool("1MiB") as pool:
        a = pool.alloc(10_000)
        seg = pool.segments[a.segment]
        view = pool.view(a.segment, a.offset, 11)
        view[:] = b"hello world"
        view.release()
        assert os.pread(seg.fd, 11, a.offset) == b"hello world"
        with mmap.mmap(seg.fd, seg.size) as other:  # what another process would map
            assert other[a.offset : a.offset + 11] == b"hello world"
            other[a.offset : a.offset + 5] = b"HELLO"
        assert bytes(pool.view(a.segment, a.offset, 11)) == b"HELLO world"
        os.pwrite(seg.fd, b"!", a.offset + 10)
        assert bytes(pool.view(a.segment, a.offset, 11)) == b"HELLO worl!"


def test_nothing_appears_in_dev_shm(no_leaks: None) -> None:
    before = sorted(os.listdir("/dev/shm"))
    with Pool("1MiB", max_pool_size="4MiB") as pool:
        blocks = [pool.alloc(MiB) for _ in range(4)]
        assert len(pool.segments) == 4
        assert sorted(os.listdir("/dev/shm")) == before
        for b in blocks:
            pool.view(b.segment, b.offset, 3)[:] = b"abc"
    assert sorted(os.listdir("/dev/shm")) == before


# -- construction ---------------------------------------------------------------------


def test_defaults_and_first_segment(no_leaks: None) -> None:
    with Pool("2MiB") as pool:
        assert list(pool.segments) == [0]
        assert pool.min_block == 4096
        assert pool.pool_size == pool.size == pool.max_pool_size == 2 * MiB
        assert pool.free_bytes == 2 * MiB
        assert pool.used_bytes == 0
        assert pool.max_request() == 2 * MiB
        assert not pool.closed


@pytest.mark.parametrize(
    ("pool_size", "max_pool_size", "min_block", "size", "max_size", "max_request"),
    [
        (5000, None, 4096, 8192, 8192, 8192),  # rounded up to min_block
        ("3MiB", None, 4096, 3 * MiB, 3 * MiB, 2 * MiB),  # top-level blocks 2+1 MiB
        ("1MiB", "4MiB", 4096, MiB, 4 * MiB, 2 * MiB),  # room 3 MiB -> 2 MiB blocks
        ("1MiB", "9MiB", 4096, MiB, 9 * MiB, 8 * MiB),
        ("4MiB", "5MiB", 4096, 4 * MiB, 5 * MiB, 4 * MiB),
        ("1MiB", 1_050_000, 4096, MiB, MiB, MiB),  # max rounded down, never below pool_size
        (1000, 2000, 4096, 4096, 4096, 4096),
        ("1MiB", "2MiB", 65536, MiB, 2 * MiB, MiB),
        ("100KiB", None, 65536, 128 * KiB, 128 * KiB, 128 * KiB),
    ],
)
def test_sizes(
    pool_size: int | str,
    max_pool_size: int | str | None,
    min_block: int,
    size: int,
    max_size: int,
    max_request: int,
    no_leaks: None,
) -> None:
    with Pool(pool_size, max_pool_size, min_block) as pool:
        assert pool.size == pool.pool_size == size
        assert pool.max_pool_size == max_size
        assert pool.max_request() == max_request
        assert pool.min_block == min_block


@pytest.mark.parametrize("min_block", [0, -4096, 64, 2048, 3 * 4096, 5000, True, 4096.0])
def test_bad_min_block(min_block: object, no_leaks: None) -> None:
    with pytest.raises(InvalidRequest, match="min_block"):
        Pool("1MiB", min_block=min_block)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pool_size", "max_pool_size"),
    [(0, None), (-1, None), ("nope", None), ("0MiB", None), ("1MiB", 0), ("1MiB", "lots")],
)
def test_bad_pool_size(pool_size: object, max_pool_size: object, no_leaks: None) -> None:
    with pytest.raises(InvalidRequest):
        Pool(pool_size, max_pool_size)  # type: ignore[arg-type]


def test_max_pool_size_below_pool_size(no_leaks: None) -> None:
    with pytest.raises(InvalidRequest, match="smaller than pool_size"):
        Pool("2MiB", max_pool_size="1MiB")


# -- alloc / free ------------------------------------------------------------------------


def test_alloc_free_and_accounting(no_leaks: None) -> None:
    with Pool("1MiB") as pool:
        a = pool.alloc(1)
        assert a == Allocation(segment=0, offset=0, capacity=4096)
        b = pool.alloc(5000)
        assert b == Allocation(0, 8192, 8192)
        assert pool.used_bytes == 12 * KiB
        check_accounting(pool)
        assert pool.free(0, 8192) == 8192
        assert pool.free(0, 0) == 4096
        assert pool.used_bytes == 0
        assert pool.largest_free == MiB
        check_accounting(pool)


@pytest.mark.parametrize("nbytes", [0, -1, True, 1.0])
def test_alloc_rejects_bad_sizes(nbytes: object, no_leaks: None) -> None:
    with Pool("1MiB") as pool:
        with pytest.raises(InvalidRequest):
            pool.alloc(nbytes)  # type: ignore[arg-type]
        assert pool.used_bytes == 0


def test_free_bogus(no_leaks: None) -> None:
    with Pool("1MiB") as pool:
        a = pool.alloc(100)
        with pytest.raises(KeyError, match="no segment"):
            pool.free(1, a.offset)
        with pytest.raises(KeyError, match="not an allocated block"):
            pool.free(0, 4096)
        pool.free(a.segment, a.offset)
        with pytest.raises(KeyError, match="not an allocated block"):
            pool.free(a.segment, a.offset)  # double free
        check_accounting(pool)
        assert pool.used_bytes == 0


def test_view_bounds(no_leaks: None) -> None:
    with Pool("1MiB") as pool:
        assert len(pool.view(0, MiB - 10, 10)) == 10
        assert len(pool.view(0, 0, 0)) == 0
        for offset, length in [(MiB - 10, 11), (-1, 5), (0, -1), (MiB, 1)]:
            with pytest.raises(OutOfBounds):
                pool.view(0, offset, length)
        with pytest.raises(KeyError):
            pool.view(3, 0, 1)


def test_growth_until_max_then_exhausted(no_leaks: None) -> None:
    with capture_logs() as logs, Pool("1MiB", max_pool_size="2.5MiB") as pool:
        assert pool.max_request() == MiB
        first = pool.alloc(MiB)
        assert first == Allocation(0, 0, MiB)
        assert logs == []
        second = pool.alloc(MiB)  # grows by pool_size
        assert second == Allocation(1, 0, MiB)
        assert pool.size == 2 * MiB
        check_accounting(pool)
        with pytest.raises(PoolExhausted, match="no free block"):
            pool.alloc(MiB)  # only 512 KiB of room left: cannot hold 1 MiB
        assert pool.size == 2 * MiB
        assert list(pool.segments) == [0, 1]
        small = pool.alloc(4096)  # but a small block makes the last segment
        assert small == Allocation(2, 0, 4096)
        assert pool.segments[2].size == MiB // 2
        assert pool.size == pool.max_pool_size == 5 * MiB // 2
        assert pool.used_bytes == 2 * MiB + 4096
        check_accounting(pool)
        rest = [pool.alloc(4096) for _ in range(127)]
        assert {r.segment for r in rest} == {2}
        assert pool.free_bytes == 0
        with pytest.raises(PoolExhausted) as info:
            pool.alloc(1)
        message = str(info.value)
        for part in ("1 bytes", "capacity 4096", "0 bytes free", "largest free block 0"):
            assert part in message
        assert f"pool size {5 * MiB // 2} of at most {5 * MiB // 2}" in message
        check_accounting(pool)
        # freeing gives memory back to its own segment; segments stay
        for block in [first, second, small, *rest]:
            pool.free(block.segment, block.offset)
        assert pool.used_bytes == 0
        assert pool.free_bytes == pool.size == 5 * MiB // 2
        assert list(pool.segments) == [0, 1, 2]
        assert pool.alloc(MiB) == first  # oldest segment first
    added = [e for e in logs if e["event"] == "pool.segment_added"]
    assert [(e["segment"], e["size"], e["pool_size"]) for e in added] == [
        (1, MiB, 2 * MiB),
        (2, MiB // 2, 5 * MiB // 2),
    ]
    assert all(e["log_level"] == "info" for e in added)
    exhausted = [e for e in logs if e["event"] == "pool.exhausted"]
    assert len(exhausted) == 2
    assert exhausted[-1]["log_level"] == "warning"
    assert exhausted[-1]["requested"] == 1
    assert exhausted[-1]["free_bytes"] == 0
    assert exhausted[-1]["max_pool_size"] == 5 * MiB // 2


def test_growth_for_a_block_larger_than_pool_size(no_leaks: None) -> None:
    with capture_logs() as logs, Pool("1MiB", max_pool_size="8MiB") as pool:
        assert pool.max_request() == 4 * MiB  # 7 MiB of room -> 4 MiB
        big = pool.alloc(3 * MiB)
        assert big == Allocation(1, 0, 4 * MiB)
        assert pool.segments[1].size == 4 * MiB
        # the room left (3 MiB) now holds at most a 2 MiB block
        assert pool.alloc(2 * MiB) == Allocation(2, 0, 2 * MiB)
        assert pool.segments[2].size == 2 * MiB
        assert pool.size == 7 * MiB
        check_accounting(pool)
    assert [e["size"] for e in logs if e["event"] == "pool.segment_added"] == [4 * MiB, 2 * MiB]


def test_too_large_changes_nothing(no_leaks: None) -> None:
    with capture_logs() as logs, Pool("1MiB", max_pool_size="4MiB") as pool:
        a = pool.alloc(100)
        state = (pool.size, pool.free_bytes, pool.used_bytes, list(pool.segments))
        fds = memfds()
        for nbytes in (2 * MiB + 1, 3 * MiB, 1 << 40):
            with pytest.raises(PoolExhausted, match="largest block this pool can ever hold"):
                pool.alloc(nbytes)
        assert (pool.size, pool.free_bytes, pool.used_bytes, list(pool.segments)) == state
        assert memfds() == fds
        assert pool.segments[0].allocator.allocations() == {a.offset: a.capacity}
    assert [e["reason"] for e in logs if e["event"] == "pool.exhausted"] == ["too_large"] * 3


def test_random_churn_keeps_accounting_exact(no_leaks: None) -> None:
    rng = random.Random(1234)
    with Pool("256KiB", max_pool_size="1MiB") as pool:
        live: list[Allocation] = []
        used = 0
        for _ in range(2000):
            if live and rng.random() < 0.45:
                block = live.pop(rng.randrange(len(live)))
                assert pool.free(block.segment, block.offset) == block.capacity
                used -= block.capacity
            else:
                nbytes = rng.choice([1, 4096, 5000, 20_000, 100_000, 256 * KiB, 512 * KiB])
                try:
                    block = pool.alloc(nbytes)
                except PoolExhausted:
                    continue
                assert block.capacity >= nbytes
                live.append(block)
                used += block.capacity
            check_accounting(pool)
            assert pool.used_bytes == used
        taken = sorted((b.segment, b.offset, b.offset + b.capacity) for b in live)
        for (s1, _, end), (s2, start, _) in itertools.pairwise(taken):
            assert s1 != s2 or end <= start
        assert pool.size == MiB  # grew all the way under this load
        for block in live:
            pool.free(block.segment, block.offset)
        assert pool.used_bytes == 0


# -- the machine cannot back a segment (the one mocked failure) -------------------------


def _enospc(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_fallocate_failure_is_pool_exhausted(
    monkeypatch: pytest.MonkeyPatch, no_leaks: None
) -> None:
    before = memfds()
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(PoolExhausted, match=f"cannot reserve {MiB} bytes of shared memory"):
        Segment.create(0, MiB, 4096)
    with pytest.raises(PoolExhausted, match="cannot reserve"):
        Pool("1MiB")
    assert memfds() == before


def test_fallocate_failure_while_growing(monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    with Pool("1MiB", max_pool_size="2MiB") as pool:
        pool.alloc(MiB)
        fds = memfds()
        with monkeypatch.context() as patch:
            patch.setattr(os, "posix_fallocate", _enospc)
            with pytest.raises(PoolExhausted, match="cannot reserve"):
                pool.alloc(1)
        assert memfds() == fds
        assert list(pool.segments) == [0]
        assert pool.size == MiB
        check_accounting(pool)
        assert pool.alloc(1) == Allocation(1, 0, 4096)  # the next try may succeed


def test_fallocate_other_errors_propagate(monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    def _eio(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "posix_fallocate", _eio)
    with pytest.raises(OSError, match="I/O error") as info:
        Segment.create(0, MiB, 4096)
    assert not isinstance(info.value, PoolExhausted)


def test_fallocate_retried_on_eintr(monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    real = os.posix_fallocate
    calls = []

    def interrupted_once(fd: int, offset: int, length: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise InterruptedError(errno.EINTR, "Interrupted system call")
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", interrupted_once)
    seg = Segment.create(0, MiB, 4096)
    seg.close()
    assert len(calls) == 2


# -- close ---------------------------------------------------------------------------------


def test_close_is_idempotent_and_closes_fds(no_leaks: None) -> None:
    before = memfds()
    pool = Pool("1MiB", max_pool_size="2MiB")
    pool.alloc(MiB)
    pool.alloc(1)
    seg_fds = {seg.fd for seg in pool.segments.values()}
    assert len(seg_fds) == 2
    # (before Python 3.13, each mmap also holds a dup of the fd until it is closed)
    assert seg_fds <= {fd for fd, _ in memfds() - before}
    pool.close()
    assert pool.closed
    assert memfds() == before
    assert pool.segments == {}
    assert (pool.size, pool.free_bytes, pool.used_bytes) == (0, 0, 0)
    pool.close()
    assert memfds() == before
    for call in (lambda: pool.alloc(1), lambda: pool.free(0, 0), lambda: pool.view(0, 0, 1)):
        with pytest.raises(BlockIPCError, match="closed"):
            call()
    assert "closed" in repr(pool)


def test_close_with_views_still_exported(no_leaks: None) -> None:
    maps = mapped_segments()
    pool = Pool("1MiB")
    a = pool.alloc(100)
    view = pool.view(a.segment, a.offset, 5)
    assert mapped_segments() == maps + 1
    view[:] = b"still"
    fd = pool.segments[0].fd
    with capture_logs() as logs:
        pool.close()  # must not raise
    assert [e["event"] for e in logs] == ["pool.segment_close_deferred"]
    assert logs[0]["log_level"] == "warning"
    assert (fd, "/memfd:blockipc-seg0 (deleted)") not in memfds()
    assert bytes(view) == b"still"  # the mapping lives on while the view does
    assert mapped_segments() == maps + 1
    del view
    gc.collect()
    assert mapped_segments() == maps
