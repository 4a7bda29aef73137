"""The listener under stress: a coordinator that runs out of file descriptors keeps its
sessions and accepts again once fds are free; a connection that stalls mid-frame after
its handshake is closed, one that idles between frames is not."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import raw_hello
from _procs import spawn, wait_until
from blockipc._core.protocol import Op, Reply, Request
from blockipc._handshake import receive_event
from blockipc.testing import unique_name

FD_LIMIT = 64
"""The child coordinator's RLIMIT_NOFILE: a few dozen connections exhaust it."""

# A coordinator in a process of its own, with few fds; its events go to stdout as JSON
# lines (the test reads them with Child.event), "coordinator.started" first.
LOW_FD_COORDINATOR = """
import asyncio, resource, sys

loop, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

import blockipc

blockipc.configure_logging("info", json=True, stream=sys.stdout)


async def main():
    async with blockipc.Coordinator(path, pool_size="4MiB") as coord:
        await coord.serve_forever()


if loop == "uvloop":
    import uvloop

    uvloop.run(main())
else:
    asyncio.run(main())
"""


def _loop_name() -> str:
    """The loop this test runs on, for its child coordinator to run on too."""
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    return "uvloop" if uvloop else "asyncio"


async def _check_client(client: blockipc.Client, data: bytes) -> None:
    block = await client.alloc(len(data))
    await client.write(block, data)
    assert await client.read(block, 0, len(data)) == data
    await client.free(block)


async def test_running_out_of_fds_keeps_the_listener_and_its_sessions(short_dir: Path) -> None:
    script = short_dir / "low_fd_coordinator.py"
    script.write_text(LOW_FD_COORDINATOR)
    path = short_dir / "c.sock"
    events: list[dict[str, Any]] = []
    failed, resumed = anyio.Event(), anyio.Event()
    async with spawn(_loop_name(), path, FD_LIMIT, script=script) as child:
        await child.expect("coordinator.started")

        async def watch() -> None:
            while True:
                event = await child.event(timeout=120)
                events.append(event)
                if event["event"] == "listener.accept_failed":
                    failed.set()
                elif event["event"] == "listener.accept_resumed":
                    resumed.set()

        extra: list[UNIXSocketStream] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                async with blockipc.connect(str(path), name="good") as good:
                    await _check_client(good, b"before")
                    # Connections that send nothing: each holds one of the coordinator's
                    # fds while its handshake waits (HANDSHAKE_TIMEOUT); more of them than
                    # it may open leave accept() failing with EMFILE.
                    extra.extend([await anyio.connect_unix(path) for _ in range(FD_LIMIT + 8)])
                    with anyio.fail_after(10):
                        await failed.wait()
                    await _check_client(good, b"while out of fds")
                    for stream in extra:
                        await stream.aclose()
                    extra.clear()
                    async with blockipc.connect(str(path), name="after") as after:
                        await _check_client(after, b"after")
                    await _check_client(good, b"still")
                with anyio.fail_after(10):
                    await resumed.wait()
            finally:
                for stream in extra:
                    with contextlib.suppress(Exception):
                        await stream.aclose()
                tg.cancel_scope.cancel()
    warnings = [e for e in events if e["event"] == "listener.accept_failed"]
    assert warnings[0]["level"] == "warning", warnings
    assert warnings[0]["errno"] == "EMFILE", warnings
    # rate-limited: one warning for the whole burst, not one per failed accept
    assert len(warnings) <= 2, warnings
    assert not [e for e in events if e["level"] in ("error", "critical")], events


# -- a connection stalled mid-frame ---------------------------------------------------
IDLE = 0.3
"""The test coordinators' idle_frame_timeout, in seconds (the default is 30)."""


async def _closed_by_peer(stream: UNIXSocketStream) -> None:
    with anyio.fail_after(10):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def test_a_connection_stalled_mid_frame_is_closed() -> None:
    async with blockipc.Coordinator(pool_size="4MiB", idle_frame_timeout=IDLE) as coord:
        name = unique_name("stalled")
        stream, conn = await raw_hello(coord.address, name)
        async with stream, blockipc.connect(coord.address, name=unique_name("good")) as good:
            await stream.send(conn.send(Request(2, Op.ALLOC, {"size": 4096})))
            await receive_event(stream, conn)
            assert coord.stats().blocks == 1
            half = conn.send(Request(3, Op.ALLOC, {"size": 4096}))
            with blockipc.testing.capture_logs() as logs:
                await stream.send(half[: len(half) // 2])
                await _closed_by_peer(stream)
                await wait_until(lambda: name not in coord.stats().processes)
            idle = [e for e in logs if e["event"] == "protocol.error"]
            assert [(e["phase"], e["name"], e["log_level"]) for e in idle] == [
                ("idle", name, "warning")
            ], logs
            assert "idle_frame_timeout" in idle[0]["error"]
            assert coord.stats().blocks == 0  # what it held went with it
            await _check_client(good, b"still served")


async def test_idle_between_frames_or_trickling_a_frame_is_not_closed() -> None:
    idle = 1.0  # longer than IDLE: the pauses below must not overrun it on a busy machine
    async with blockipc.Coordinator(pool_size="4MiB", idle_frame_timeout=idle) as coord:
        stream, conn = await raw_hello(coord.address, unique_name("patient"))
        async with stream:
            with blockipc.testing.capture_logs() as logs:
                await anyio.sleep(1.5 * idle)  # between frames: no limit
                frame = conn.send(Request(2, Op.ALLOC, {"size": 4096}))
                pieces = [frame[i : i + 4] for i in range(0, len(frame), 4)]
                assert len(pieces) * idle / 4 > idle  # the frame takes longer than idle
                for piece in pieces:  # but each piece comes within idle of the last
                    await stream.send(piece)
                    await anyio.sleep(idle / 4)
                reply, _ = await receive_event(stream, conn)
                assert isinstance(reply, Reply), reply
                assert reply.op is Op.ALLOC
                await anyio.sleep(1.5 * idle)
                await stream.send(conn.send(Request(3, Op.FREE, {"block": reply.result["block"]})))
                freed, _ = await receive_event(stream, conn)
                assert isinstance(freed, Reply), freed
            assert not [e for e in logs if e["event"] == "protocol.error"], logs


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "30", True])
def test_idle_frame_timeout_is_checked(bad: Any) -> None:
    with pytest.raises(blockipc.InvalidRequest, match="idle_frame_timeout"):
        blockipc.Coordinator(idle_frame_timeout=bad)
