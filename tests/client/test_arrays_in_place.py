"""Writable arrays in place (issue 15, item 6).

``client.empty(shape, dtype)`` makes a block recorded with the numpy codec and its
meta, no bytes written; ``lease(block, "w", codec="numpy")`` gives a writable array over
the block's own memory, so a producer fills a frame in shared memory with no copy, and
whoever reads the block (``get``, a codec lease) sees that array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import blockipc
from _array_procs import frame_pattern, spawn
from _helpers import connected
from blockipc import AccessDenied, CodecError, InvalidRequest
from blockipc.testing import capture_logs


@pytest.mark.parametrize(
    ("shape", "dtype", "order"),
    [((48, 64, 3), "uint8", "C"), ((5, 7), ">f8", "F")],
    ids=["frame", "fortran"],
)
async def test_a_frame_filled_in_place_seen_by_another_process(
    coord: blockipc.Coordinator, client: blockipc.Client, shape: Any, dtype: str, order: str
) -> None:
    """A producer process fills frames under writable numpy leases and sends them; this
    process sees each as an array of that shape, dtype and order, by get and by lease."""
    count = 3
    dims = "x".join(map(str, shape))
    async with spawn(
        "frame_producer", coord.address, "camera", client.name, dims, dtype, order, count
    ) as child:
        for i in range(count):
            event = await child.expect("sent")
            msg = await client.recv()
            assert msg.block.id == event["block"] and msg.header == {"i": i}
            want = frame_pattern(shape, dtype, order, i)
            got = await client.get(msg.block)
            assert isinstance(got, np.ndarray) and not got.flags.writeable
            assert got.shape == tuple(shape) and got.dtype == np.dtype(dtype)
            assert np.array_equal(got, want)
            async with client.lease(msg.block, "r", codec="numpy") as arr:
                assert arr.shape == tuple(shape) and arr.dtype == np.dtype(dtype)
                assert arr.flags.f_contiguous if order == "F" else arr.flags.c_contiguous
                assert not arr.flags.writeable and np.array_equal(arr, want)
                del arr
            await client.free(msg.block)
        await child.expect("done")
    assert coord.stats().used_bytes == 0


async def test_a_write_lease_writes_the_block_in_place(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.empty((4, 1024), np.float32)
    assert block.size == 4 * 1024 * 4 and block.owner == client.name
    with capture_logs() as logs:
        async with client.lease(block, "w", codec="numpy") as arr:
            assert arr.dtype == np.float32 and arr.shape == (4, 1024)
            assert arr.flags.writeable and arr.base is not None  # over shared memory
            arr[:] = 1.5
            arr[2, 7] = -3
            del arr
    assert not [e for e in logs if e["log_level"] == "warning"]
    first = await client.get(block)
    assert first[2, 7] == -3 and first.sum() == 1.5 * (4096 - 1) - 3
    # the bytes are the block's: a plain read sees them, a second write is seen (the
    # cached first value is not served: the write lease moved the generation on)
    assert await client.read(block, 4 * (2 * 1024 + 7), 4) == np.float32(-3).tobytes()
    async with client.lease(block, "w", codec="numpy") as arr:
        arr[0, 0] = 42
        del arr
    assert (await client.get(block))[0, 0] == 42
    await client.grant(block, other.name, "r")
    seen = await other.get(block)
    assert seen.shape == (4, 1024) and seen[0, 0] == 42 and seen[2, 7] == -3
    await client.free(block)
    await other.free(block)
    assert coord.stats().used_bytes == 0


async def test_empty_arrays_of_every_shape(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    cases: list[tuple[Any, Any, str]] = [
        (10, "i2", "C"),  # an int shape
        ((), np.int64, "C"),  # 0-d
        ((0, 3), "f4", "C"),  # no data: a block of 1 byte
        (np.array([2, 3])[:1].tolist(), np.dtype(">u4"), "F"),
        ((np.int64(2), 3), [("a", "<i4"), ("b", "S3")], "C"),  # numpy ints, structured
        ((2, 3), "(4,)i2", "C"),  # a sub-array dtype: as numpy.empty, an array of (2, 3, 4)
    ]
    for shape, dtype, order in cases:
        block = await client.empty(shape, dtype, order=order)
        want = np.empty(shape, dtype, order=order)  # type: ignore[call-overload]
        dims, dtype = want.shape, want.dtype
        assert block.size == max(want.nbytes, 1)
        async with client.lease(block, "w", codec="numpy") as arr:
            assert arr.shape == dims and arr.dtype == np.dtype(dtype), (shape, dtype)
            assert arr.flags.writeable
            del arr
        got = await client.get(block)
        assert got.shape == dims and got.dtype == np.dtype(dtype)
        await client.free(block)
    assert coord.stats().used_bytes == 0


@pytest.mark.parametrize(
    ("shape", "dtype", "order", "says"),
    [
        ((2, 3), "no-such-dtype", "C", "is not a dtype"),
        ((2, 3), object, "C", "holds Python objects"),
        ((2, -1), "u1", "C", "ints >= 0"),
        ((2, 3.0), "u1", "C", "sequence of ints"),
        ("23", "u1", "C", "sequence of ints"),
        (None, "u1", "C", "sequence of ints"),
        ((1,) * 65, "u1", "C", "at most 64"),
        ((2, 3), "u1", "K", "'C' or 'F'"),
    ],
)
async def test_empty_refuses_what_numpy_cannot_record(
    coord: blockipc.Coordinator,
    client: blockipc.Client,
    shape: Any,
    dtype: Any,
    order: str,
    says: str,
) -> None:
    with pytest.raises(CodecError, match=says):
        await client.empty(shape, dtype, order=order)
    assert coord.stats().used_bytes == 0  # refused before any request


async def test_empty_larger_than_any_pool(client: blockipc.Client) -> None:
    with pytest.raises(blockipc.PoolExhausted, match="larger than any pool"):
        await client.empty((1 << 40, 1 << 40), "u1")
    with pytest.raises(blockipc.PoolExhausted):
        await client.empty((1 << 20, 1 << 20), "u1")  # what this coordinator refuses


async def test_a_write_lease_with_numpy_on_something_else(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """A block of raw bytes, or an object of another codec: CodecError, as a read lease
    with a codec raises, and the lease is released (the next one is granted)."""
    raw = await client.alloc(64)
    packed = await client.put({"not": "an array"}, codec="msgpack")
    for block, holds in ((raw, "raw bytes"), (packed, "codec='msgpack'")):
        for mode in ("w", "r"):
            with pytest.raises(CodecError, match=holds):
                async with client.lease(block, mode, codec="numpy"):
                    pass
        async with client.lease(block, "w") as view:
            view[:1] = b"x"
        await client.free(block)
    assert coord.stats().used_bytes == 0 and coord.stats().leases == 0


async def test_a_write_lease_with_a_codec_that_cannot_write_in_place(
    client: blockipc.Client,
) -> None:
    block = await client.put([1, 2, 3], codec="json")
    with pytest.raises(InvalidRequest, match="in place"):
        client.lease(block, "w", codec="json")
    async with client.lease(block, "w", codec="raw") as view:  # raw: the bytes themselves
        assert bytes(view) == b"[1,2,3]"
    await client.free(block)


async def test_a_read_only_connection_gets_no_writable_array(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    block = await client.empty((8,), "u1")
    async with connected(coord, "viewer", access="r") as viewer:
        await client.grant(block, viewer.name, "w")
        with pytest.raises(AccessDenied, match="read-only"):
            async with viewer.lease(block, "w", codec="numpy"):
                pass
        with pytest.raises(AccessDenied, match="read-only"):
            await viewer.empty((8,), "u1")
        async with viewer.lease(block, "r", codec="numpy") as arr:
            assert arr.shape == (8,) and not arr.flags.writeable
            del arr
    await client.free(block)
