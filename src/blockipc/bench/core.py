"""``blockipc bench``: blockipc against the baselines it must beat, in one run.

Theory of operation
-------------------
Every party runs in its own process (``multiprocessing`` spawn context), pinned to one
CPU with :func:`os.sched_setaffinity` before it starts any thread, and runs its event
loop on uvloop. For every contender alike the *server side* (the blockipc coordinator,
the echo server, the ZeroMQ ROUTER, the bulk receiver) sits on the first CPU and the
*client side* (blockipc clients and the ping-pong peer, the echo client, the DEALER,
the bulk sender, the memcpy loop) on the second.

All processes are started once, connected and warmed up; then the parent runs
``rounds`` rounds. In each round it asks every contender in turn for one measurement
slice (each slice begins with a short untimed warm-up of its own), rotating the order
from round to round, so slow drifts of the machine (frequency, noisy neighbours) hit
every contender alike. Samples are taken with :func:`time.perf_counter_ns`
(``CLOCK_MONOTONIC``, comparable across processes) inside the processes that do the
work; the parent only collects them and prints a Markdown table.

The parent never runs blockipc itself and sleeps on a pipe while a slice runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from .floor import SLOTS as FLOOR_SLOTS
from .floor import floor_role, memcpy_role, reader, ring_file, run_floor, source
from .harness import (
    COMMAND_TIMEOUT,
    START_TIMEOUT,
    Party,
    coordinator_role,
    cpu_snapshot,
    fmt_us,
    has,
    load_notes,
    machine_info,
    pick_cpus,
    process_cpu_ns,
    rounds_progress,
    run_worker,
    serve_commands,
    summary,
    table,
    timed_loop,
    until_stop,
    verdict,
    worker_context,
)

if TYPE_CHECKING:
    from .harness import Pipe, Role

__all__ = ["main"]

PING_SIZE: Final = 64
BULK_SIZE: Final = 64 << 20
SMALL_BLOCK: Final = 4096
POOL_SIZE: Final = "160MiB"
_STAMP: Final = struct.Struct("<q")

# targets (see the "Measured facts" of the design brief)
TARGET_READ_VS_RAW: Final = 1.3
TARGET_READ_VS_ZMQ: Final = 1.0
TARGET_ALLOC_VS_RTT: Final = 1.3
TARGET_HANDOFF_SPEEDUP: Final = 50.0


@dataclass(frozen=True, slots=True)
class Plan:
    """How much one run measures; every count is per contender and per round."""

    rounds: int
    pings: int  # 64-byte round trips (blockipc read, raw socket, zmq)
    allocs: int  # sequential alloc+free pairs
    pipe_tasks: int  # concurrent tasks for pipelined alloc+free
    pipe_each: int  # alloc+free pairs per task
    sends: int  # blockipc send ping-pongs (A -> B -> A)
    bulk: int  # 64 MiB socket transfers
    copies: int  # 64 MiB memcpys
    warmup: int  # untimed small operations before each slice
    tp_rounds: int = 5  # interleaved rounds of the throughput table
    tp_counts: tuple[int, ...] = (20_000, 2_000, 200, 6)  # payloads per stream, by TP_SIZES
    fanout: int = 4  # 64 MiB blocks published to FANOUT subscribers per slice
    floor_seconds: float = 0.1  # each two-core floor slice (see .floor), by size


FULL: Final = Plan(
    rounds=24,
    pings=1500,
    allocs=600,
    pipe_tasks=32,
    pipe_each=40,
    sends=200,
    bulk=4,
    copies=6,
    warmup=100,
)
QUICK: Final = Plan(
    rounds=3,
    pings=400,
    allocs=200,
    pipe_tasks=32,
    pipe_each=15,
    sends=60,
    bulk=2,
    copies=4,
    warmup=50,
    tp_rounds=2,
    tp_counts=(2_000, 200, 40, 2),
    fanout=2,
    floor_seconds=0.03,
)


# =====================================================================================
# worker processes
# =====================================================================================


def _worker(role: str, cpu: int | None, conn: Pipe, arg: dict[str, Any]) -> None:
    """Entry point of every child process (the spawn context imports it by name)."""
    run_worker(_ROLES, role, cpu, conn, arg)


# -- servers (first CPU) --------------------------------------------------------------


async def _echo_server_role(conn: Pipe, arg: dict[str, Any]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(await reader.readexactly(PING_SIZE))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, arg["path"])
    async with server:
        conn.send(("ready", {}))
        await until_stop(conn)


async def _zmq_router_role(conn: Pipe, arg: dict[str, Any]) -> None:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(arg["endpoint"])

    async def echo() -> None:
        while True:
            await sock.send_multipart(await sock.recv_multipart())

    task = asyncio.create_task(echo())
    conn.send(("ready", {}))
    try:
        await until_stop(conn)
    finally:
        task.cancel()
        sock.close(linger=0)
        ctx.term()


class _BulkReceiver(asyncio.BufferedProtocol):
    """Reads ``stamp + size`` bytes straight into a preallocated buffer, then answers
    with the nanoseconds since the sender's stamp."""

    def __init__(self, size: int) -> None:
        self._buffer = bytearray(b"\0" * (_STAMP.size + size))  # touched: no lazy pages
        self._view = memoryview(self._buffer)
        self._got = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._got :]

    def buffer_updated(self, nbytes: int) -> None:
        self._got += nbytes
        if self._got == len(self._buffer):
            elapsed = time.perf_counter_ns() - _STAMP.unpack_from(self._buffer)[0]
            self._got = 0
            assert self._transport is not None
            self._transport.write(_STAMP.pack(elapsed))


async def _bulk_server_role(conn: Pipe, arg: dict[str, Any]) -> None:
    size: int = arg["size"]
    loop = asyncio.get_running_loop()
    server: asyncio.AbstractServer
    if arg["kind"] == "protocol":
        server = await loop.create_unix_server(lambda: _BulkReceiver(size), arg["path"])
    else:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    stamp = await reader.readexactly(_STAMP.size)
                    await reader.readexactly(size)
                    elapsed = time.perf_counter_ns() - _STAMP.unpack(stamp)[0]
                    writer.write(_STAMP.pack(elapsed))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_unix_server(handle, arg["path"])
    async with server:
        conn.send(("ready", {}))
        await until_stop(conn)


# -- clients (second CPU) -------------------------------------------------------------


async def _blockipc_client_role(conn: Pipe, arg: dict[str, Any]) -> None:
    from .. import connect

    async with connect(arg["address"], name="bench-a") as client:
        ping = await client.alloc(PING_SIZE)
        await client.write(ping, b"r" * PING_SIZE)
        blocks = {"big": await client.alloc(BULK_SIZE), "small": await client.alloc(SMALL_BLOCK)}
        for block in blocks.values():  # filled beforehand, not timed
            async with client.lease(block, "w") as view:
                view[:] = b"\x5a" * len(view)

        async def read(args: dict[str, Any]) -> dict[str, Any]:
            samples: list[int] = []
            record = timed_loop(samples, args["warmup"])
            for _ in range(args["warmup"] + args["n"]):
                t0 = time.perf_counter_ns()
                await client.read(ping, 0, PING_SIZE)
                record(t0)
            return {"samples": samples}

        async def alloc_seq(args: dict[str, Any]) -> dict[str, Any]:
            samples: list[int] = []
            record = timed_loop(samples, args["warmup"])
            for _ in range(args["warmup"] + args["n"]):
                t0 = time.perf_counter_ns()
                await client.free(await client.alloc(SMALL_BLOCK))
                record(t0)
            return {"samples": samples, "ops": len(samples), "elapsed": sum(samples)}

        async def pairs(k: int) -> None:
            for _ in range(k):
                await client.free(await client.alloc(SMALL_BLOCK))

        async def alloc_pipe(args: dict[str, Any]) -> dict[str, Any]:
            tasks, each = args["tasks"], args["each"]
            await asyncio.gather(*(pairs(max(1, args["warmup"] // tasks)) for _ in range(tasks)))
            t0 = time.perf_counter_ns()
            await asyncio.gather(*(pairs(each) for _ in range(tasks)))
            return {"ops": tasks * each, "elapsed": time.perf_counter_ns() - t0}

        async def send(args: dict[str, Any]) -> dict[str, Any]:
            """One way: from calling ``send`` to the peer's ``recv`` returning, timed by
            the peer against the stamp in the header; the peer sends the block back."""
            block = blocks[args["which"]]
            samples: list[int] = []
            for i in range(args["warmup"] + args["n"]):
                await client.send(block, to="bench-b", header={"t0": time.perf_counter_ns()})
                msg = await client.recv()
                assert msg.block is not None  # (the peer sends blocks only)
                block = msg.block
                if i >= args["warmup"]:
                    samples.append(msg.header["elapsed"])
            blocks[args["which"]] = block
            return {"samples": samples}

        await serve_commands(
            conn, {"read": read, "alloc_seq": alloc_seq, "alloc_pipe": alloc_pipe, "send": send}
        )


async def _blockipc_peer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    from .. import connect

    async with connect(arg["address"], name="bench-b") as client:

        async def echo() -> None:
            # the next recv is always posted before the block goes back, so the
            # coordinator can hand the next message over the moment it arrives
            pending = asyncio.ensure_future(client.recv())
            try:
                while True:
                    msg = await pending
                    elapsed = time.perf_counter_ns() - msg.header["t0"]
                    pending = asyncio.ensure_future(client.recv())
                    await client.send(msg.block, to=msg.sender, header={"elapsed": elapsed})
            finally:
                pending.cancel()

        task = asyncio.create_task(echo())
        conn.send(("ready", {}))
        try:
            await until_stop(conn)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # its CANCEL goes out before the client says goodbye


async def _echo_client_role(conn: Pipe, arg: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_unix_connection(arg["path"])
    payload = b"p" * PING_SIZE

    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        samples: list[int] = []
        record = timed_loop(samples, args["warmup"])
        for _ in range(args["warmup"] + args["n"]):
            t0 = time.perf_counter_ns()
            writer.write(payload)
            await reader.readexactly(PING_SIZE)
            record(t0)
        return {"samples": samples}

    try:
        await serve_commands(conn, {"ping": ping})
    finally:
        writer.close()


async def _zmq_dealer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(arg["endpoint"])
    payload = b"p" * PING_SIZE

    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        samples: list[int] = []
        record = timed_loop(samples, args["warmup"])
        for _ in range(args["warmup"] + args["n"]):
            t0 = time.perf_counter_ns()
            await sock.send(payload)
            await sock.recv()
            record(t0)
        return {"samples": samples}

    try:
        await serve_commands(conn, {"ping": ping})
    finally:
        sock.close(linger=0)
        ctx.term()


async def _bulk_client_role(conn: Pipe, arg: dict[str, Any]) -> None:
    size: int = arg["size"]
    reader, writer = await asyncio.open_unix_connection(arg["path"])
    payload = b"\x5a" * size  # filled beforehand, not timed

    async def bulk(args: dict[str, Any]) -> dict[str, Any]:
        samples: list[int] = []
        for i in range(args["warmup"] + args["n"]):
            writer.write(_STAMP.pack(time.perf_counter_ns()))
            writer.write(payload)
            await writer.drain()
            elapsed = _STAMP.unpack(await reader.readexactly(_STAMP.size))[0]
            if i >= args["warmup"]:
                samples.append(elapsed)  # measured by the receiver, from the stamp
        return {"samples": samples}

    try:
        await serve_commands(conn, {"bulk": bulk})
    finally:
        writer.close()


async def _memcpy_role(conn: Pipe, arg: dict[str, Any]) -> None:
    size: int = arg["size"]
    copy: Callable[[], None]
    if arg["numpy"]:
        import numpy as np

        src = np.full(size, 0x5A, dtype=np.uint8)
        dst = np.ones(size, dtype=np.uint8)

        def copy() -> None:
            np.copyto(dst, src)

    else:
        src_b = bytearray(b"\x5a" * size)
        dst_b = bytearray(b"\1" * size)
        src_v, dst_v = memoryview(src_b), memoryview(dst_b)

        def copy() -> None:
            dst_v[:] = src_v

    async def memcpy(args: dict[str, Any]) -> dict[str, Any]:
        samples: list[int] = []
        record = timed_loop(samples, args["warmup"])
        for _ in range(args["warmup"] + args["n"]):
            t0 = time.perf_counter_ns()
            copy()
            record(t0)
        return {"samples": samples}

    await serve_commands(conn, {"memcpy": memcpy})


# -- throughput: producer -> consumer streams (issue 3) -------------------------------
#
# Every contender streams ``n`` payloads of one size from a producer process to a
# consumer process. The producer *writes* each payload (one copy from a prepared
# source buffer into the buffer it sends: a shared-memory block for blockipc, a new
# ``bytes`` object for the others) and the consumer *reads it once* (:func:`_read_once`,
# the same function for every contender). The parent arms the consumer first (it says
# when it is waiting), then starts the producer; the stream's time runs from the
# producer's first write to the consumer's last read (``CLOCK_MONOTONIC`` in both).

TP_SIZES: Final = (64, 64 << 10, 1 << 20, 64 << 20)
TP_POOL: Final = "1GiB"
TP_MAX: Final = 64 << 20
FANOUT: Final = 8
_SMALL_IO: Final = 4096  # blockipc: payloads up to this travel inline, larger via leases
TARGET_TP_VS_BEST: Final = 4.0
TARGET_TP_VS_FLOOR: Final = 0.9
TARGET_SMALL_VS_RAW: Final = 0.8
TARGET_SMALL_VS_QUEUE: Final = 2.0
TARGET_SMALL_VS_ZMQ: Final = 3.0


_source: Final = source
_reader: Final = reader


async def _tp_blockipc_producer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    from .. import connect

    src = _source()
    async with connect(arg["address"], name=arg["name"]) as client:

        async def produce(args: dict[str, Any]) -> dict[str, Any]:
            n, size, depth = args["n"], args["size"], args["depth"]
            to = args["to"]
            todo = iter(range(n))  # shared by the tasks: many sends in flight

            async def worker() -> None:
                for _ in todo:
                    block = await client.alloc(size)
                    if size <= _SMALL_IO:
                        await client.write(block, src[:size])
                    else:
                        async with client.lease(block, "w") as view:
                            view[:] = src[:size]
                    if args.get("topic"):
                        await client.publish(block, args["topic"])
                    else:
                        await client.send(block, to=to)

            t0 = time.perf_counter_ns()
            await asyncio.gather(*(worker() for _ in range(min(depth, n))))
            return {"t0": t0}

        await serve_commands(conn, {"produce": produce})


async def _tp_blockipc_consumer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    from .. import connect

    read_once = _reader()
    async with connect(
        arg["address"], name=arg["name"], inbox_messages=64, inbox_bytes="128MiB"
    ) as client:
        if arg.get("topic"):
            await client.subscribe(arg["topic"])

        async def consume(args: dict[str, Any]) -> dict[str, Any]:
            todo = iter(range(args["n"]))
            end = 0

            async def worker() -> None:
                nonlocal end
                for _ in todo:
                    block = (await client.recv()).block
                    assert block is not None  # (the producers send blocks only)
                    if block.size <= _SMALL_IO:
                        read_once(await client.read(block))
                    else:
                        async with client.lease(block, "r") as view:
                            read_once(view)
                    await client.free(block)
                    end = max(end, time.perf_counter_ns())

            await asyncio.gather(*(worker() for _ in range(min(args["depth"], args["n"]))))
            return {"end": end}

        await serve_commands(conn, {"consume": consume}, armed=True)


def _ring_capacity(size: int) -> int:
    """The ring a channel benchmark opens for ``size``-byte payloads: a few in flight."""
    return max(1 << 20, 4 * size)


async def _tp_channel_producer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    from .. import connect

    src = _source()
    async with connect(arg["address"], name=arg["name"]) as client:
        channels = {
            size: await client.open_channel(arg["to"], capacity=_ring_capacity(size))
            for size in TP_SIZES
        }

        async def produce(args: dict[str, Any]) -> dict[str, Any]:
            tx, payload = channels[args["size"]], src[: args["size"]]
            t0 = time.perf_counter_ns()
            for _ in range(args["n"]):
                await tx.send(payload)
            return {"t0": t0}

        await serve_commands(conn, {"produce": produce})


async def _tp_channel_consumer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    from .. import connect

    read_once = _reader()
    async with connect(arg["address"], name=arg["name"]) as client:
        channels: dict[int, Any] = {}

        async def consume(args: dict[str, Any]) -> dict[str, Any]:
            if not channels:  # the producer opened one per size, in order, at its start
                channels.update({size: await client.accept_channel() for size in TP_SIZES})
            rx = channels[args["size"]]
            for _ in range(args["n"]):
                msg = await rx.recv()
                read_once(msg.data)
                msg.release()
            return {"end": time.perf_counter_ns()}

        await serve_commands(conn, {"consume": consume}, armed=True)


async def _tp_queue_producer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    src, queue = _source(), arg["queue"]

    async def produce(args: dict[str, Any]) -> dict[str, Any]:
        size = args["size"]
        t0 = time.perf_counter_ns()
        for _ in range(args["n"]):
            queue.put(bytes(src[:size]))
        return {"t0": t0}

    await serve_commands(conn, {"produce": produce})


async def _tp_queue_consumer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    read_once, queue = _reader(), arg["queue"]

    async def consume(args: dict[str, Any]) -> dict[str, Any]:
        for _ in range(args["n"]):
            read_once(queue.get())
        return {"end": time.perf_counter_ns()}

    await serve_commands(conn, {"consume": consume}, armed=True)


async def _tp_pipe_producer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    src, pipe = _source(), arg["pipe"]

    async def produce(args: dict[str, Any]) -> dict[str, Any]:
        size = args["size"]
        t0 = time.perf_counter_ns()
        for _ in range(args["n"]):
            pipe.send_bytes(bytes(src[:size]))
        return {"t0": t0}

    await serve_commands(conn, {"produce": produce})


async def _tp_pipe_consumer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    read_once, pipe = _reader(), arg["pipe"]
    buffer = bytearray(b"\0" * TP_MAX)  # touched: no lazy pages
    view = memoryview(buffer)

    async def consume(args: dict[str, Any]) -> dict[str, Any]:
        for _ in range(args["n"]):
            read_once(view[: pipe.recv_bytes_into(buffer)])
        return {"end": time.perf_counter_ns()}

    await serve_commands(conn, {"consume": consume}, armed=True)


class _StreamReceiver(asyncio.BufferedProtocol):
    """Reads fixed-size messages into a preallocated buffer and reads each once."""

    def __init__(self, read_once: Callable[[Any], int]) -> None:
        self._buffer = bytearray(b"\0" * (TP_MAX + (1 << 20)))  # touched: no lazy pages
        self._view = memoryview(self._buffer)
        self._have = 0
        self._read_once = read_once
        self._left = 0
        self._size = 1
        self.done: asyncio.Future[int] | None = None

    def arm(self, n: int, size: int) -> asyncio.Future[int]:
        self._left, self._size = n, size
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._have :]

    def buffer_updated(self, nbytes: int) -> None:
        self._have += nbytes
        pos, size, view = 0, self._size, self._view
        while self._left and self._have - pos >= size:
            self._read_once(view[pos : pos + size])
            pos += size
            self._left -= 1
        if not self._left and self.done is not None and not self.done.done():
            self.done.set_result(time.perf_counter_ns())
        if pos:
            rest = self._have - pos
            view[:rest] = view[pos : self._have]
            self._have = rest


async def _tp_socket_consumer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    receivers: list[_StreamReceiver] = []
    connected = asyncio.Event()
    read_once = _reader()

    def factory() -> _StreamReceiver:
        receivers.append(_StreamReceiver(read_once))
        connected.set()
        return receivers[-1]

    server = await loop.create_unix_server(factory, arg["path"])

    async def consume(args: dict[str, Any]) -> dict[str, Any]:
        await connected.wait()  # the producer connected at its start; accepted soon
        return {"end": await receivers[-1].arm(args["n"], args["size"])}

    async with server:
        await serve_commands(conn, {"consume": consume}, armed=True)


async def _tp_socket_producer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    src = _source()
    _, writer = await asyncio.open_unix_connection(arg["path"])

    async def produce(args: dict[str, Any]) -> dict[str, Any]:
        size = args["size"]
        t0 = time.perf_counter_ns()
        for _ in range(args["n"]):
            writer.write(bytes(src[:size]))
            await writer.drain()
        return {"t0": t0}

    try:
        await serve_commands(conn, {"produce": produce})
    finally:
        writer.close()


async def _tp_zmq_producer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    import zmq
    import zmq.asyncio

    src = _source()
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(arg["endpoint"])

    async def produce(args: dict[str, Any]) -> dict[str, Any]:
        size = args["size"]
        t0 = time.perf_counter_ns()
        for _ in range(args["n"]):
            await sock.send(bytes(src[:size]), copy=False)  # zero-copy frames
        return {"t0": t0}

    try:
        await serve_commands(conn, {"produce": produce})
    finally:
        sock.close(linger=1000)
        ctx.term()


async def _tp_zmq_consumer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    import zmq
    import zmq.asyncio

    read_once = _reader()
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(arg["endpoint"])

    async def consume(args: dict[str, Any]) -> dict[str, Any]:
        for _ in range(args["n"]):
            frame = await sock.recv(copy=False)
            read_once(frame.buffer)
        return {"end": time.perf_counter_ns()}

    try:
        await serve_commands(conn, {"consume": consume}, armed=True)
    finally:
        sock.close(linger=0)
        ctx.term()


_SERVER_ROLES: Final = frozenset(
    {"coordinator", "echo_server", "zmq_router", "bulk_server", "tp_socket_consumer"}
)
_ROLES: Final[dict[str, Role]] = {
    "coordinator": coordinator_role,
    "echo_server": _echo_server_role,
    "zmq_router": _zmq_router_role,
    "bulk_server": _bulk_server_role,
    "blockipc_client": _blockipc_client_role,
    "blockipc_peer": _blockipc_peer_role,
    "echo_client": _echo_client_role,
    "zmq_dealer": _zmq_dealer_role,
    "bulk_client": _bulk_client_role,
    "memcpy": _memcpy_role,
    "tp_blockipc_producer": _tp_blockipc_producer_role,
    "tp_blockipc_consumer": _tp_blockipc_consumer_role,
    "tp_channel_producer": _tp_channel_producer_role,
    "tp_channel_consumer": _tp_channel_consumer_role,
    "tp_queue_producer": _tp_queue_producer_role,
    "tp_queue_consumer": _tp_queue_consumer_role,
    "tp_pipe_producer": _tp_pipe_producer_role,
    "tp_pipe_consumer": _tp_pipe_consumer_role,
    "tp_socket_producer": _tp_socket_producer_role,
    "tp_socket_consumer": _tp_socket_consumer_role,
    "tp_zmq_producer": _tp_zmq_producer_role,
    "tp_zmq_consumer": _tp_zmq_consumer_role,
    "tp_memcpy": memcpy_role,
    "tp_floor": floor_role,
}


# =====================================================================================
# the parent: start, interleave, collect, report
# =====================================================================================


@dataclass(frozen=True, slots=True)
class _Slice:
    """One contender's measurement in a round."""

    key: str
    party: str
    cmd: str
    args: dict[str, Any]
    server: str | None = None
    """The party that answers this one's requests: when set, the CPU both use during
    the slice is measured (``cpu_client_ns``, ``cpu_server_ns``, ``trips``)."""


def _measure(plan: Plan, notes: list[str]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    server_cpu, client_cpu, pin_note = pick_cpus()
    if pin_note:
        notes.append(pin_note)
    have_zmq, have_numpy = has("zmq"), has("numpy")
    if not have_zmq:
        notes.append("pyzmq is not installed: the ZeroMQ DEALER/ROUTER rows are skipped")
    if not have_numpy:
        notes.append("numpy is not installed: memcpy measured with a bytearray slice copy")
    ctx = worker_context("blockipc.bench.core", "uvloop", "zmq", "numpy")
    tmp = tempfile.TemporaryDirectory(prefix="blockipc-bench-")
    parties: dict[str, Party] = {}
    try:

        def start(name: str, role: str, cpu: int | None, **arg: Any) -> None:
            parties[name] = Party(ctx, role, cpu, arg, _worker)

        path = os.path.join
        echo_sock = path(tmp.name, "echo.sock")
        endpoint = "ipc://" + path(tmp.name, "zmq.ipc")
        bulk_socks = {kind: path(tmp.name, f"bulk-{kind}.sock") for kind in ("protocol", "streams")}
        # server side, first CPU
        start("coordinator", "coordinator", server_cpu, pool_size=POOL_SIZE)
        start("echo_server", "echo_server", server_cpu, path=echo_sock)
        if have_zmq:
            start("zmq_router", "zmq_router", server_cpu, endpoint=endpoint)
        for kind, sock in bulk_socks.items():
            start(
                f"bulk_{kind}_server",
                "bulk_server",
                server_cpu,
                path=sock,
                kind=kind,
                size=BULK_SIZE,
            )
        servers = list(parties)
        address = parties["coordinator"].receive(START_TIMEOUT)["address"]
        for name in servers[1:]:
            parties[name].receive(START_TIMEOUT)
        # client side, second CPU
        start("blockipc_peer", "blockipc_peer", client_cpu, address=address)
        parties["blockipc_peer"].receive(START_TIMEOUT)  # registered before anyone sends
        start("blockipc", "blockipc_client", client_cpu, address=address)
        start("echo_client", "echo_client", client_cpu, path=echo_sock)
        if have_zmq:
            start("zmq_dealer", "zmq_dealer", client_cpu, endpoint=endpoint)
        for kind, sock in bulk_socks.items():
            start(f"bulk_{kind}_client", "bulk_client", client_cpu, path=sock, size=BULK_SIZE)
        start("memcpy", "memcpy", client_cpu, size=BULK_SIZE, numpy=have_numpy)
        for name, party in parties.items():
            if name not in servers and name != "blockipc_peer":
                party.receive(START_TIMEOUT)

        w, n = plan.warmup, plan.pings
        slices = [
            _Slice("read_blockipc", "blockipc", "read", {"n": n, "warmup": w}, "coordinator"),
            _Slice("ping_raw", "echo_client", "ping", {"n": n, "warmup": w}, "echo_server"),
            _Slice("alloc_seq", "blockipc", "alloc_seq", {"n": plan.allocs, "warmup": w}),
            _Slice(
                "alloc_pipe",
                "blockipc",
                "alloc_pipe",
                {"tasks": plan.pipe_tasks, "each": plan.pipe_each, "warmup": w},
            ),
            _Slice("send_big", "blockipc", "send", {"which": "big", "n": plan.sends, "warmup": 10}),
            _Slice("bulk_protocol", "bulk_protocol_client", "bulk", {"n": plan.bulk, "warmup": 1}),
            _Slice(
                "send_small", "blockipc", "send", {"which": "small", "n": plan.sends, "warmup": 10}
            ),
            _Slice("bulk_streams", "bulk_streams_client", "bulk", {"n": plan.bulk, "warmup": 1}),
            _Slice("memcpy", "memcpy", "memcpy", {"n": plan.copies, "warmup": 1}),
        ]
        if have_zmq:
            slices.insert(2, _Slice("ping_zmq", "zmq_dealer", "ping", {"n": n, "warmup": w}))
        # one untimed pass warms every contender (page faults, code paths, caches)
        for s in slices:
            parties[s.party].ask(s.cmd, s.args)
        results: dict[str, list[dict[str, Any]]] = {s.key: [] for s in slices}
        order = collections.deque(slices)
        pids = [os.getpid()] + [p.process.pid for p in parties.values() if p.process.pid]
        before, started = cpu_snapshot(pids), time.perf_counter()
        with rounds_progress(plan.rounds) as done:
            for _ in range(plan.rounds):
                for s in order:
                    results[s.key].append(_ask(parties, s))
                order.rotate(-1)
                done()
        notes += load_notes(before, cpu_snapshot(pids), started)
        return results, notes
    finally:
        # clients first (they say goodbye to their servers), then the servers
        for party in reversed(parties.values()):
            party.stop()
            if party.role not in _SERVER_ROLES:
                party.join()
        for party in parties.values():
            party.join()
        tmp.cleanup()


def _ask(parties: dict[str, Party], s: _Slice) -> dict[str, Any]:
    """Run one slice; with its CPU on both ends when it names its server."""
    party = parties[s.party]
    if s.server is None:
        return party.ask(s.cmd, s.args)
    pids = (party.process.pid or 0, parties[s.server].process.pid or 0)
    before = [process_cpu_ns(pid) for pid in pids]
    result = party.ask(s.cmd, s.args)
    client, server = (process_cpu_ns(pid) - b for pid, b in zip(pids, before, strict=True))
    # warm-up round trips included: the CPU is over the whole command
    trips = s.args["n"] + s.args["warmup"]
    return {**result, "cpu_client_ns": client, "cpu_server_ns": server, "trips": trips}


def _cpu_per_trip(rounds: list[dict[str, Any]]) -> tuple[float, float]:
    """CPU (µs) per round trip over all rounds: (client, server)."""
    trips = sum(r["trips"] for r in rounds)
    client = sum(r["cpu_client_ns"] for r in rounds) / trips / 1e3
    server = sum(r["cpu_server_ns"] for r in rounds) / trips / 1e3
    return client, server


# -- statistics and the report --------------------------------------------------------


def _rate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    per_round = [r["ops"] / (r["elapsed"] / 1e9) for r in rounds]
    return {"ops_per_s": statistics.median(per_round), "round_ops_per_s": per_round}


def _analyse(
    plan: Plan, results: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, Any], list[list[str]]]:
    m: dict[str, Any] = {}
    for key in ("read_blockipc", "ping_raw", "ping_zmq", "send_big", "send_small"):
        if key in results:
            m[key] = summary(results[key])
    for key in ("bulk_protocol", "bulk_streams", "memcpy"):
        m[key] = summary(results[key])
        m[key]["gb_per_s"] = BULK_SIZE / (m[key]["median_us"] * 1e3)
    m["alloc_seq"] = {**summary(results["alloc_seq"]), **_rate(results["alloc_seq"])}
    m["alloc_pipe"] = _rate(results["alloc_pipe"])

    rows: list[list[str]] = []
    rd, raw, zq = m["read_blockipc"], m["ping_raw"], m.get("ping_zmq")

    # alloc + free
    two_rtt = 2 * raw["median_us"]
    seq = m["alloc_seq"]
    seq_cell = f"{seq['ops_per_s']:,.0f} pairs/s ({fmt_us(seq['median_us'])} per pair)"
    ratio = m["alloc_seq"]["median_us"] / two_rtt
    rows.append(
        [
            "alloc+free, sequential (one pair at a time)",
            seq_cell,
            f"2 raw socket RTTs: {fmt_us(two_rtt)}",
            f"{ratio:.2f}x",
            f"≤ {TARGET_ALLOC_VS_RTT}x",
            verdict(ratio <= TARGET_ALLOC_VS_RTT),
        ]
    )
    speedup = m["alloc_pipe"]["ops_per_s"] / m["alloc_seq"]["ops_per_s"]
    rows.append(
        [
            f"alloc+free, pipelined ({plan.pipe_tasks} tasks)",
            f"{m['alloc_pipe']['ops_per_s']:,.0f} pairs/s",
            f"sequential: {m['alloc_seq']['ops_per_s']:,.0f} pairs/s",
            f"{speedup:.1f}x",
            "—",
            "info",
        ]
    )

    # 64-byte round trips
    ratio_raw = rd["median_us"] / raw["median_us"]
    rows.append(
        [
            "64 B routed read RTT, median",
            fmt_us(rd["median_us"]),
            f"raw uvloop socket: {fmt_us(raw['median_us'])}",
            f"{ratio_raw:.2f}x",
            f"≤ {TARGET_READ_VS_RAW}x",
            verdict(ratio_raw <= TARGET_READ_VS_RAW),
        ]
    )
    if zq is not None:
        ratio_zmq = rd["median_us"] / zq["median_us"]
        rows.append(
            [
                "64 B routed read RTT, median",
                fmt_us(rd["median_us"]),
                f"pyzmq DEALER/ROUTER ipc: {fmt_us(zq['median_us'])}",
                f"{ratio_zmq:.2f}x",
                f"< {TARGET_READ_VS_ZMQ}x",
                verdict(ratio_zmq < TARGET_READ_VS_ZMQ),
            ]
        )
    cpu_rd = _cpu_per_trip(results["read_blockipc"])
    cpu_raw = _cpu_per_trip(results["ping_raw"])
    m["read_blockipc"]["cpu_us"], m["ping_raw"]["cpu_us"] = cpu_rd, cpu_raw
    extra = sum(cpu_rd) - sum(cpu_raw)
    rows.append(
        [
            "64 B routed read, CPU per round trip: client / coordinator",
            f"{fmt_us(cpu_rd[0])} / {fmt_us(cpu_rd[1])}",
            f"raw client / echo server: {fmt_us(cpu_raw[0])} / {fmt_us(cpu_raw[1])}",
            f"{'+' if extra >= 0 else '-'}{fmt_us(abs(extra))} on both ends",
            "—",
            "info",
        ]
    )
    p99_base = f"raw: {fmt_us(raw['p99_us'])}"
    p99_ratio = f"{rd['p99_us'] / raw['p99_us']:.2f}x raw"
    if zq is not None:
        p99_base += f"; zmq: {fmt_us(zq['p99_us'])}"
        p99_ratio += f"; {rd['p99_us'] / zq['p99_us']:.2f}x zmq"
    rows.append(
        ["64 B routed read RTT, p99", fmt_us(rd["p99_us"]), p99_base, p99_ratio, "—", "info"]
    )

    # 64 MiB hand-over
    big = m["send_big"]
    for key, label in (
        ("bulk_protocol", "asyncio socket, BufferedProtocol"),
        ("bulk_streams", "asyncio socket, streams"),
    ):
        base = m[key]
        sp = base["median_us"] / big["median_us"]
        rows.append(
            [
                "64 MiB to another process, median",
                f"send: {fmt_us(big['median_us'])} (p99 {fmt_us(big['p99_us'])})",
                f"{label}: {fmt_us(base['median_us'])} ({base['gb_per_s']:.2f} GB/s)",
                f"{sp:,.0f}x faster",
                f"≥ {TARGET_HANDOFF_SPEEDUP:.0f}x",
                verdict(sp >= TARGET_HANDOFF_SPEEDUP),
            ]
        )
    small = m["send_small"]
    rows.append(
        [
            "send 4 KiB vs 64 MiB block (size independence)",
            f"4 KiB: {fmt_us(small['median_us'])}",
            f"64 MiB: {fmt_us(big['median_us'])}",
            f"{big['median_us'] / small['median_us']:.2f}x",
            "≈ 1x",
            "info",
        ]
    )
    mc = m["memcpy"]
    rows.append(
        [
            "memcpy 64 MiB in one process (context)",
            "—",
            f"{fmt_us(mc['median_us'])} ({mc['gb_per_s']:.2f} GB/s)",
            f"send = {mc['median_us'] / big['median_us']:,.0f}x faster than one copy",
            "—",
            "info",
        ]
    )
    return m, rows


# -- throughput table (issue 3) -------------------------------------------------------

_TP_LABELS: Final = {
    "blockipc": "blockipc channel",
    "blocks": "blockipc blocks (send/recv)",
    "queue": "mp.Queue",
    "pipe": "mp.Pipe",
    "socket": "uvloop Unix socket",
    "zmq": "pyzmq PUSH/PULL ipc",
    "memcpy": "memcpy",
    "floor": "two-core floor",
}
_TP_ALTERNATIVES: Final = ("queue", "pipe", "socket", "zmq")
_TP_COLUMNS: Final = ("blockipc", "blocks", *_TP_ALTERNATIVES, "memcpy", "floor")  # of the table
_TP_DEPTH: Final = {64: 32, 64 << 10: 8, 1 << 20: 4, 64 << 20: 2}  # block sends in flight


def _tp_key(contender: str, size: int) -> str:
    return f"{contender}@{size}"


def _measure_throughput(plan: Plan, notes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Start every stream's producer and consumer, then run interleaved rounds."""
    server_cpu, client_cpu, pin_note = pick_cpus()
    if pin_note and pin_note not in notes:
        notes.append(pin_note)
    have_zmq, have_numpy = has("zmq"), has("numpy")
    if not have_zmq:
        notes.append("pyzmq is not installed: the PUSH/PULL throughput column is skipped")
    if not have_numpy:
        notes.append("numpy is not installed: the memcpy throughput column is skipped")
    ctx = worker_context("blockipc.bench.core", "uvloop", "zmq", "numpy")
    tmp = tempfile.TemporaryDirectory(prefix="blockipc-tp-")
    parties: dict[str, Party] = {}

    def start(key: str, role: str, cpu: int | None, **arg: Any) -> Party:
        parties[key] = Party(ctx, role, cpu, arg, _worker)
        return parties[key]

    try:
        address = start("tp_coordinator", "coordinator", server_cpu, pool_size=TP_POOL).receive(
            START_TIMEOUT
        )["address"]
        cpus = (server_cpu, client_cpu)
        consumers = {"blockipc": "tp_channel_consumer", "blocks": "tp_blockipc_consumer"}
        start(
            "tp_channel_consumer",
            "tp_channel_consumer",
            server_cpu,
            address=address,
            name="tp-ch-consumer",
        )
        start(
            "tp_blockipc_consumer",
            "tp_blockipc_consumer",
            server_cpu,
            address=address,
            name="tp-consumer",
        )
        for i in range(FANOUT):
            start(
                f"tp_sub{i}",
                "tp_blockipc_consumer",
                cpus[i % 2],
                address=address,
                name=f"tp-sub-{i}",
                topic="tp-fanout",
            )
        queue = ctx.Queue()
        start("tp_queue_consumer", "tp_queue_consumer", server_cpu, queue=queue)
        consumers["queue"] = "tp_queue_consumer"
        pipe_producer_end, pipe_consumer_end = ctx.Pipe()
        start("tp_pipe_consumer", "tp_pipe_consumer", server_cpu, pipe=pipe_consumer_end)
        consumers["pipe"] = "tp_pipe_consumer"
        sock = os.path.join(tmp.name, "tp.sock")
        start("tp_socket_consumer", "tp_socket_consumer", server_cpu, path=sock)
        consumers["socket"] = "tp_socket_consumer"
        endpoint = "ipc://" + os.path.join(tmp.name, "tp-zmq.ipc")
        if have_zmq:
            start("tp_zmq_consumer", "tp_zmq_consumer", server_cpu, endpoint=endpoint)
            consumers["zmq"] = "tp_zmq_consumer"
        for name in list(parties)[1:]:
            parties[name].receive(START_TIMEOUT)  # bound, registered, subscribed
        producers = {
            "blockipc": start(
                "tp_channel_producer",
                "tp_channel_producer",
                client_cpu,
                address=address,
                name="tp-ch-producer",
                to="tp-ch-consumer",
            ),
            "blocks": start(
                "tp_blockipc_producer",
                "tp_blockipc_producer",
                client_cpu,
                address=address,
                name="tp-producer",
            ),
            "queue": start("tp_queue_producer", "tp_queue_producer", client_cpu, queue=queue),
            "pipe": start(
                "tp_pipe_producer", "tp_pipe_producer", client_cpu, pipe=pipe_producer_end
            ),
            "socket": start("tp_socket_producer", "tp_socket_producer", client_cpu, path=sock),
        }
        if have_zmq:
            producers["zmq"] = start(
                "tp_zmq_producer", "tp_zmq_producer", client_cpu, endpoint=endpoint
            )
        if have_numpy:
            producers["memcpy"] = start("tp_memcpy", "tp_memcpy", client_cpu)
        for party in producers.values():
            party.receive(START_TIMEOUT)
        pipe_producer_end.close()
        pipe_consumer_end.close()
        floor: tuple[Party, Party] | None = None
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            # writer beside the producers, reader beside the consumers; the memfd only
            # has to live until both have mapped it
            with ring_file(FLOOR_SLOTS * TP_MAX) as path:
                floor = (
                    start("tp_floor_write", "tp_floor", client_cpu, side="write", path=path),
                    start("tp_floor_read", "tp_floor", server_cpu, side="read", path=path),
                )
                for party in floor:
                    party.receive(START_TIMEOUT)
        else:
            notes.append("no memfd on this platform: the two-core floor column is skipped")

        def stream(contender: str, size: int, n: int) -> dict[str, Any]:
            if contender == "floor":
                assert floor is not None
                return run_floor(*floor, size, plan.floor_seconds)
            prod_args: dict[str, Any] = {"n": n, "size": size}
            cons_args: dict[str, Any] = {"n": n, "size": size}
            cons = [] if contender == "memcpy" else [consumers.get(contender, "")]
            if contender == "blocks":
                depth = _TP_DEPTH[size]
                prod_args.update(depth=depth, to="tp-consumer")
                cons_args.update(depth=depth)
            elif contender == "fanout":
                prod_args.update(depth=1, to="", topic="tp-fanout")
                cons_args.update(depth=1)
                cons = [f"tp_sub{i}" for i in range(FANOUT)]
            for c in cons:
                parties[c].ask("consume", cons_args)  # answers once armed
            party = producers["blocks" if contender == "fanout" else contender]
            result = party.ask("produce", prod_args)
            ends = [parties[c].receive(COMMAND_TIMEOUT)["end"] for c in cons]
            end = max(ends) if ends else result["end"]
            return {"elapsed": end - result["t0"], "n": n, "size": size}

        slices: list[tuple[str, int, int]] = [
            (contender, size, n)
            for size, n in zip(TP_SIZES, plan.tp_counts, strict=True)
            for contender in [*producers, *(["floor"] if floor else [])]
        ]
        slices.append(("fanout", TP_MAX, plan.fanout))
        for contender, size, n in slices:  # one untimed pass: page faults, code paths
            stream(contender, size, max(1, n // 4))
        results: dict[str, list[dict[str, Any]]] = {_tp_key(c, s): [] for c, s, _ in slices}
        order = collections.deque(slices)
        pids = [os.getpid()] + [p.process.pid for p in parties.values() if p.process.pid]
        before, started = cpu_snapshot(pids), time.perf_counter()
        with rounds_progress(plan.tp_rounds, "throughput round") as done:
            for _ in range(plan.tp_rounds):
                for contender, size, n in order:
                    results[_tp_key(contender, size)].append(stream(contender, size, n))
                order.rotate(-1)
                done()
        notes += load_notes(before, cpu_snapshot(pids), started, "throughput: ")
        return results
    finally:
        for party in reversed(parties.values()):
            party.stop()
            if party.role not in _SERVER_ROLES:
                party.join()
        for party in parties.values():
            party.join()
        tmp.cleanup()


def _fmt_rate(bytes_per_s: float, msgs_per_s: float, size: int) -> str:
    if size < 4096:
        return f"{msgs_per_s / 1e3:,.0f} k msg/s ({bytes_per_s / 1e6:.1f} MB/s)"
    return f"{bytes_per_s / 1e9:.2f} GB/s"


def _fmt_size(size: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def _analyse_throughput(
    results: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, Any], list[list[str]]]:
    m: dict[str, Any] = {}
    for key, rounds in results.items():
        # a floor slice measures its rate itself (see .floor); a stream, its time
        rates = [
            r["bytes_per_s"] if "bytes_per_s" in r else r["n"] * r["size"] / (r["elapsed"] / 1e9)
            for r in rounds
        ]
        m[key] = {
            "bytes_per_s": statistics.median(rates),
            "msgs_per_s": statistics.median(rates) / rounds[0]["size"],
            "round_bytes_per_s": rates,
        }
        if "write" in rounds[0]:
            for side in ("write", "read"):
                m[key][f"{side}_bytes_per_s"] = statistics.median(r[side] for r in rounds)
    alternatives = [c for c in _TP_ALTERNATIVES if _tp_key(c, 64) in m]
    rows: list[list[str]] = []
    for size in TP_SIZES:

        def rate(c: str, size: int = size) -> float | None:
            entry = m.get(_tp_key(c, size))
            return None if entry is None else float(entry["bytes_per_s"])

        ours = rate("blockipc")
        assert ours is not None
        cells = [_fmt_size(size)]
        for c in _TP_COLUMNS:  # a column each, always
            r = rate(c)
            cells.append("—" if r is None else _fmt_rate(r, r / size, size))
        best_c = max(alternatives, key=lambda c: rate(c) or 0.0)
        best = rate(best_c) or 1.0
        fl = rate("floor")
        vs_best = ours / best
        vs_floor = None if fl is None else ours / fl
        cells.append(f"{vs_best:.2f}x ({_TP_LABELS[best_c]})")
        cells.append("—" if vs_floor is None else f"{vs_floor:.2f}x")
        if size == 64:
            ratios = {c: ours / (rate(c) or 1.0) for c in ("socket", "queue", "zmq") if rate(c)}
            goals = {
                "socket": TARGET_SMALL_VS_RAW,
                "queue": TARGET_SMALL_VS_QUEUE,
                "zmq": TARGET_SMALL_VS_ZMQ,
            }
            cells[-2] = "; ".join(f"{ratios[c]:.2f}x {_TP_LABELS[c]}" for c in ratios)
            cells.append(", ".join(f"≥ {goals[c]}x {_TP_LABELS[c]}" for c in ratios))
            cells.append(verdict(all(ratios[c] >= goals[c] for c in ratios)))
        elif size >= 1 << 20:
            ok = vs_best >= TARGET_TP_VS_BEST and (
                vs_floor is None or vs_floor >= TARGET_TP_VS_FLOOR
            )
            target = f"≥ {TARGET_TP_VS_BEST:.0f}x best"
            cells.append(target + ("" if fl is None else f", ≥ {TARGET_TP_VS_FLOOR}x floor"))
            cells.append(verdict(ok))
        else:
            cells += ["—", "info"]
        rows.append(cells)
    fan = m.get(_tp_key("fanout", TP_MAX))
    if fan is not None:
        best_c = max(alternatives, key=lambda c: m[_tp_key(c, TP_MAX)]["bytes_per_s"])
        one = TP_MAX / m[_tp_key(best_c, TP_MAX)]["bytes_per_s"]  # s per 64 MiB message
        ours_s = TP_MAX / fan["bytes_per_s"]  # s per block delivered to all FANOUT readers
        m["fanout_vs_best"] = {"blockipc_s": ours_s, "best": best_c, "best_s": FANOUT * one}
        cells = [f"1-to-{FANOUT} fan-out, 64 MiB", f"{fmt_us(ours_s * 1e6)} per block"]
        cells += ["—"] * (len(_TP_COLUMNS) - 1)
        cells[1 + _TP_COLUMNS.index(best_c)] = f"{FANOUT} sends: {fmt_us(FANOUT * one * 1e6)}"
        cells += [
            f"{FANOUT * one / ours_s:.1f}x faster ({_TP_LABELS[best_c]})",
            "—",
            "—",
            "info",
        ]
        rows.append(cells)
    return m, rows


def _tp_table(rows: list[list[str]], contenders: list[str]) -> str:
    head = [
        "payload",
        *(_TP_LABELS[c] for c in contenders),
        "vs best alternative",
        "vs floor",
        "target",
        "result",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``blockipc bench``: print a Markdown table of blockipc against its baselines."""
    parser = argparse.ArgumentParser(
        prog="blockipc bench",
        description=(
            "Benchmark blockipc against a raw uvloop Unix socket, pyzmq DEALER/ROUTER over "
            "ipc:// and asyncio sockets moving 64 MiB. Every party runs in its own process, "
            "servers pinned to one CPU and clients to another; contenders are measured in "
            "interleaved rounds. Prints a Markdown table."
        ),
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"interleaved rounds (default {FULL.rounds}; {QUICK.rounds} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument(
        "--suite",
        choices=["all", "core", "throughput", "cache"],
        default="all",
        help="core: round trips, alloc and hand-over; throughput: producer -> consumer "
        "streams and fan-out (default: both); cache: get/put of objects against "
        "Manager().dict(), Redis and shared_memory (its own options: --suite cache --help)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="also draw latency.png and throughput.png into DIR (matplotlib: blockipc[bench])",
    )
    args, rest = parser.parse_known_args(argv)
    if args.suite == "cache" and args.plot:
        parser.error("--plot draws the core and throughput suites, not --suite cache")
    if args.suite == "cache":
        from .cache import main as cache_main

        forwarded = [*rest, *(["--quick"] if args.quick else [])]
        forwarded += ["--json", args.json] if args.json else []
        forwarded += ["--rounds", str(args.rounds)] if args.rounds is not None else []
        return cache_main(forwarded)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})

    machine = machine_info()
    notes: list[str] = []
    started = time.perf_counter()
    metrics: dict[str, Any] = {}
    rows: list[list[str]] = []
    tp_rows: list[list[str]] = []
    try:
        if args.suite in ("all", "core"):
            results, notes = _measure(plan, notes)
            metrics, rows = _analyse(plan, results)
        if args.suite in ("all", "throughput"):
            tp_metrics, tp_rows = _analyse_throughput(_measure_throughput(plan, notes))
            metrics["throughput"] = tp_metrics
    except (RuntimeError, OSError) as exc:
        print(f"blockipc bench: {exc}", file=sys.stderr)
        return 1
    duration = time.perf_counter() - started

    v = machine["versions"]
    print(
        f"blockipc bench — {machine['date']}, {machine['cpu']}, {machine['cpus']} CPUs, "
        f"{machine['kernel']}, Python {v['python']}, uvloop {v['uvloop']}, pyzmq {v['zmq']}, "
        f"numpy {v['numpy']}"
    )
    print(
        f"{plan.rounds} interleaved rounds (throughput: {plan.tp_rounds}), {duration:.0f} s; "
        "servers/coordinator on one CPU, clients/peers on the other\n"
    )
    if rows:
        print(table(rows))
    if tp_rows:
        print(
            "\nProducer -> consumer throughput (the producer writes each payload, the "
            "consumer reads it once; medians of the rounds). The two-core floor, measured "
            "in the same rounds: two pinned processes copy into and read a shared memfd "
            "ring of 4 slots with no synchronisation at all, min(write, read):\n"
        )
        print(_tp_table(tp_rows, list(_TP_COLUMNS)))
    for note in notes:
        print(f"\nNote: {note}")
    if args.json:
        doc = {
            "machine": machine,
            "plan": asdict(plan),
            "duration_s": duration,
            "notes": notes,
            "metrics": metrics,
            "table": rows,
            "throughput_table": tp_rows,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")
    if args.plot:
        from .plots import write_plots

        try:
            written = write_plots(metrics, args.plot, sizes=TP_SIZES, labels=_TP_LABELS)
        except RuntimeError as exc:
            print(f"blockipc bench: {exc}", file=sys.stderr)
            return 1
        print("\nPlots: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
