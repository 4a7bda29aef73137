"""Child processes for tests/client/test_arrays_in_place.py: a producer that fills
frames in place under writable numpy leases and sends them.

Run as ``python tests/_array_procs.py ROLE ADDRESS ARGS...``; like tests/_procs.py
(whose :func:`~_procs.report` and ``main`` this reuses), a child reports one JSON object
per line on stdout and logs to stderr. The test side uses :func:`spawn`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

import _procs
from _procs import Child, report

HERE = Path(__file__).resolve()


def spawn(role: str, *args: object) -> contextlib.AbstractAsyncContextManager[Child]:
    """Start ``python tests/_array_procs.py ROLE ARGS...``; killed and waited for."""
    return _procs.spawn(role, *args, script=HERE)


def frame_pattern(shape: Sequence[int], dtype: str, order: str, i: int) -> Any:
    """What frame ``i`` holds: distinct values in every element (memory order matters)."""
    import numpy as np

    values = (np.arange(int(np.prod(shape))) * 7 + i) % 251
    return values.astype(dtype).reshape(shape, order=order)  # type: ignore[call-overload]


async def frame_producer(
    address: str, name: str, to: str, shape: str, dtype: str, order: str, count: str
) -> None:
    """Fill ``count`` frames (``shape`` as ``"48x64x3"``) in place under a writable
    numpy lease, then send each to ``to``; report each as ``sent``."""
    import blockipc

    dims = [int(n) for n in shape.split("x")]
    async with blockipc.connect(address, name=name) as client:
        for i in range(int(count)):
            frame = await client.empty(dims, dtype, order=order)
            async with client.lease(frame, "w", codec="numpy") as arr:
                assert arr.flags.writeable and arr.shape == tuple(dims), arr.flags
                arr[...] = frame_pattern(dims, dtype, order, i)
                del arr
            await client.send(frame, to=to, header={"i": i})
            report("sent", block=frame.id, i=i)
        report("done")
        await anyio.sleep_forever()


_procs.ROLES.update(frame_producer=frame_producer)


if __name__ == "__main__":
    _procs.main()
