"""Remote send throughput: blockipc's link against raw pyzmq and a raw asyncio stream.

    python benchmarks/bench_remote.py [--rounds 3] [--sizes 1MiB,16MiB] [--json out.json]
                                      [--recv-tasks 4]

What runs, each party a process of its own, everything on loopback (127.0.0.1):

* **blockipc plain / CURVE**: coordinator A and coordinator B (``node="a"``/``"b"``),
  a producer on A whose 16 tasks each ``send(block, to="b/consumer", move=False)`` in
  a loop (16 sends in flight; the link's window lets 8 of them travel at a time) from a
  ring of 16 pre-filled blocks, and a consumer on B that takes what its inbox holds
  with ``recv_many(64)`` and frees it with one ``free_many`` (pipelined as a task;
  ``--recv-batch 0`` gives a consumer whose ``--recv-tasks`` tasks each ``recv()`` and
  ``free()`` one block at a time). Every byte crosses the link and is copied into B's
  pool. A consumer with one ``recv`` at a time (``--recv-batch 0 --recv-tasks 1``)
  falls behind the link: its inbox backlog grows until it fills B's pool, every copy
  then lands in cold memory, and the link waits for room.
* **raw pyzmq plain / CURVE**: PUSH (``copy=False``, from a ring of 16 prebuilt
  buffers, the size of the blockipc producer's ring of blocks) -> PULL (``copy=False``)
  over ``tcp://``, the same bytes.
* **raw pyzmq PUSH/PULL + one copy into a pool** (information): the plain raw PULL,
  which also copies each message into the next of 4 slots of a prefaulted memfd ring.
  A link must land every block in the receiving coordinator's pool, and libzmq cannot
  receive into a buffer of ours, so this copy is the least any link adds to a raw
  receive: its ratio to the raw PULL bounds what the plain link can reach when the
  receiving CPU is the bottleneck.
* **raw pyzmq PUSH/PULL + a channel ring + a consumer process** (information): the
  plain raw PULL copies each message into a blockipc channel ring of 16 slots (the
  library's own ring and eventfd wake-ups), which a consumer process forked on the
  same CPU reads and releases; it reports the last message. Nothing of a coordinator
  (no allocation, routing, acknowledgement or window): the least a receiver that hands
  the bytes to another process in shared memory can do, on a CPU it shares with it
  (at 1 MiB; at 16 MiB its 256 MiB ring is colder memory than the pool blocks a link
  reuses, so it bounds nothing there).
* **link sending side alone / receiving side alone** (information): half the link
  against a stand-in for the other half, to see which side caps it. Sending side: A
  and its producer (first CPU) send to a ROUTER (second CPU) that acks each message's
  blocks as soon as it has parsed it. Receiving side: a DEALER (first CPU) writes link
  messages as A does (A's window and message sizes, from 16 buffers) to B and its
  consumer (second CPU).
* **raw asyncio TCP (uvloop)**: ``writer.write`` + ``drain`` of length-prefixed messages
  (from the same ring of 16 buffers) -> ``reader.readexactly``.

Timing: the sender takes ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, comparable across
processes) after an untimed warm-up, the receiver when it holds the last byte; the rate
is bytes / elapsed. Sender-side processes (A and its producer, the PUSH, the stream
writer) are pinned to the first CPU with ``os.sched_setaffinity`` before any thread
starts, receiver-side ones to the second. Rounds are interleaved, the order of the
contenders rotating every round; the table shows medians and the ratios the issue
asks for (plain link >= 0.7x raw pyzmq and >= 2x the raw stream, CURVE link >= 0.7x
raw pyzmq CURVE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SRC = HERE.parent.parent / "src"
WARMUP = 4
INFLIGHT = 16
"""Sends the producer keeps in flight (one task each)."""
EVENT_TIMEOUT = 300.0
"""Seconds the parent waits for a child's next event before it gives up."""


def pin(cpu: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[int(cpu) % len(cpus)]})


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def payloads(size: int) -> list[bytes]:
    """What a raw sender sends, in turn: as many distinct buffers as the blockipc
    producer's ring of blocks, so both send from the same amount of memory (one buffer
    sent over and over stays in the sending CPU's cache, which no real stream does)."""
    return [bytes([i + 1]) * size for i in range(INFLIGHT)]


# -- roles (children) --------------------------------------------------------------
async def role_coord(cpu: str, sock: str, node: str, listen: str, peer: str, keys: str) -> None:
    import blockipc

    pin(cpu)
    async with blockipc.Coordinator(
        path=sock,
        pool_size="256MiB",
        node=node,
        listen=listen or None,
        peers={"b": peer} if peer else {},
        keys=keys or None,
        insecure=not keys,  # plain: no keys, insecure (else the default key directory)
    ) as coord:
        say(event="ready", link=coord.link_address)
        await coord.serve_forever()


async def role_bipc_send(cpu: str, sock: str, size: str, count: str) -> None:
    import blockipc

    pin(cpu)
    n, total = int(size), int(count)
    async with blockipc.connect(sock, name="producer") as client:
        ring = []
        for i in range(INFLIGHT):
            block = await client.alloc(n)
            async with client.lease(block, "w") as view:
                view[:] = bytes([i]) * n
            ring.append(block)
        while True:  # wait for the consumer to register
            try:
                await client.send(ring[0], to="b/consumer", move=False)
                break
            except blockipc.PeerUnreachable:
                await asyncio.sleep(0.02)

        async def stream(k: int) -> None:
            async def sender(first: int) -> None:  # sends first, first + INFLIGHT, ...
                for i in range(first, k, INFLIGHT):
                    await client.send(ring[i % INFLIGHT], to="b/consumer", move=False)

            await asyncio.gather(*(sender(j) for j in range(INFLIGHT)))

        await stream(WARMUP - 1)
        t0 = time.perf_counter_ns()
        await stream(total)
        say(event="sent", t0=t0, t1=time.perf_counter_ns())
        await asyncio.sleep(3600)


async def role_bipc_recv(cpu: str, sock: str, count: str, tasks: str, batch: str) -> None:
    import blockipc

    pin(cpu)
    async with blockipc.connect(sock, name="consumer") as client:
        say(event="ready")
        frees = []
        left = WARMUP + int(count)

        async def receiver() -> None:  # several recv() in flight, as a pipelining user has
            nonlocal left
            while left > 0:
                left -= 1
                msg = await client.recv()
                frees.append(asyncio.create_task(client.free(msg.block)))  # pipelined

        async def batch_receiver() -> None:  # what the inbox holds, one request each way
            nonlocal left
            while left > 0:
                msgs = await client.recv_many(int(batch))
                left -= len(msgs)
                frees.append(asyncio.create_task(client.free_many(m.block for m in msgs)))

        if int(batch):
            await batch_receiver()
        else:
            await asyncio.gather(*(receiver() for _ in range(int(tasks))))
        t1 = time.perf_counter_ns()
        await asyncio.gather(*frees)
        say(event="done", t1=t1)
        await asyncio.sleep(3600)


def _curve(sock: Any, keys: str, server: bool) -> None:
    if not keys:
        return
    spub, ssec, cpub, csec = (k.encode() for k in keys.split(","))
    if server:
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = spub, ssec
    else:
        sock.curve_serverkey = spub
        sock.curve_publickey, sock.curve_secretkey = cpub, csec


def role_zmq_pull(cpu: str, size: str, count: str, keys: str, copy: str = "") -> None:
    """PULL each message. With ``copy``: also copy it into the next of 4 slots of a
    memfd ring mapped (and prefaulted) like a coordinator's pool, small enough to stay
    in the caches (the kindest case): the one copy that landing a block in a pool adds
    to a raw receive, and nothing else. With ``ring``: copy it into a channel ring with
    room for 16 messages (blockipc's own ring and wake-up code, as many as the sender
    rotates) that a consumer process on the same CPU reads and releases: a bare receiver
    that lands the bytes in shared memory for another process, with no allocation,
    no routing, no acknowledgement."""
    pin(cpu)
    import mmap

    import zmq

    n = int(size)
    total = WARMUP + int(count)
    slots = INFLIGHT if copy == "ring" else 4
    ring: memoryview | None = None
    if copy:
        fd = os.memfd_create("bench-pool")
        os.ftruncate(fd, slots * n + (4096 if copy == "ring" else 0))
        mm = mmap.mmap(fd, os.fstat(fd).st_size)
        os.close(fd)
        ring = memoryview(mm)
        ring[:] = b"\x01" * len(ring)  # every page mapped before the clock starts
    if copy == "ring":
        assert ring is not None
        _pull_into_ring(ring, n, total, keys)
        return
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    _curve(pull, keys, server=True)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    say(event="ready", port=port)
    for i in range(total):
        frame = pull.recv(copy=False)
        assert len(frame) == n
        if ring is not None:
            at = (i % slots) * n
            ring[at : at + n] = frame.buffer
    say(event="done", t1=time.perf_counter_ns())
    time.sleep(3600)


def _pull_into_ring(block: memoryview, n: int, total: int, keys: str) -> None:
    """The ``ring`` mode of :func:`role_zmq_pull`: a forked consumer (same CPU) reads
    the ring with :class:`blockipc._client.channel.ChannelReceiver` and reports ``done``."""
    import zmq

    from blockipc._core.ring import W_WANT_DATA, RingWriter, fence, init_ring

    init_ring(block)
    data_fd, space_fd = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    if os.fork() == 0:  # before any zmq thread starts
        try:
            asyncio.run(_ring_consumer(block, total, data_fd, space_fd, os.getppid()))
        finally:
            os._exit(0)
    writer = RingWriter(block)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    _curve(pull, keys, server=True)
    say(event="ready", port=pull.bind_to_random_port("tcp://127.0.0.1"))
    for _ in range(total):
        buf = pull.recv(copy=False).buffer
        while (at := writer.reserve(n, b"")) is None:  # full: sleep until a release
            writer.set_want_space(True)
            fence()
            if (at := writer.reserve(n, b"")) is not None:
                writer.set_want_space(False)
                break
            select.select([space_fd], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(space_fd)
            writer.set_want_space(False)
        writer.data[at : at + n] = buf
        writer.commit(at, n)
        fence()
        if writer.ctl[W_WANT_DATA]:
            os.eventfd_write(data_fd, 1)
    time.sleep(3600)


async def _ring_consumer(
    block: memoryview, total: int, data_fd: int, space_fd: int, parent: int
) -> None:
    from blockipc._client.channel import ChannelReceiver, _Bell
    from blockipc._core.ring import RingReader

    async def orphaned() -> None:  # the PULL was killed: do not outlive it
        while os.getppid() == parent:
            await asyncio.sleep(1)
        os._exit(1)

    watchdog = asyncio.create_task(orphaned())
    loop = asyncio.get_running_loop()
    bell = _Bell(loop, data_fd, space_fd)
    receiver = ChannelReceiver(0, "pull", RingReader(block), bell, lambda end: None)
    for _ in range(total):
        msg = await receiver.recv()
        msg.release()
    say(event="done", t1=time.perf_counter_ns())
    watchdog.cancel()


def role_link_acker(cpu: str) -> None:
    """Stands in for coordinator B: a ROUTER that parses every link message and acks
    its blocks at once (no pool, no inbox, no consumer), so only the sending side works."""
    pin(cpu)
    import zmq

    from blockipc._core.linkwire import BLOCKS, decode_blocks, encode_acks

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    say(event="ready", port=port)
    while True:
        ident, *head_and_data = router.recv_multipart(copy=False)
        head, data = head_and_data[:2], head_and_data[2:]
        if head[0].bytes != BLOCKS:  # (a node's question about subscriptions: unanswered)
            continue
        blocks = decode_blocks([f.bytes for f in head], [len(f) for f in data])
        router.send_multipart([ident.bytes, *encode_acks([b.seq for b in blocks])])


def role_link_feeder(cpu: str, port: str, size: str, count: str) -> None:
    """Stands in for coordinator A: a DEALER that writes link messages of blocks to B
    as A does (A's window and message sizes for blocks of this size, from a ring of 16
    buffers), so only the receiving side (B and its consumer) works."""
    pin(cpu)
    import zmq

    from blockipc._core.linkwire import BLOCKS, OutboundState, decode_acks, encode_blocks

    n, total = int(size), WARMUP + int(count)
    state = OutboundState("b", 1.0)  # A's window rules, for blocks of this size
    fly = state.window(n)
    state.submit(None, n, 0.0)
    per_message = max(1, min(state.batch_size(), (4 << 20) // n))
    ring = payloads(n)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    seq = acked = 0
    t0 = None
    while acked < total:
        while seq < total and (seq == acked or seq - acked + per_message <= fly):
            k = min(per_message, total - seq)
            entries = [[seq + i + 1, "producer", "consumer", n, {}] for i in range(k)]
            frames = [ring[(seq + i) % INFLIGHT] for i in range(k)]
            dealer.send_multipart([BLOCKS, encode_blocks("a", entries), *frames], copy=False)
            seq += k
        for ack in decode_acks(dealer.recv_multipart()):
            assert ack.code == 0, ack
            acked += 1
            if acked == WARMUP:
                t0 = time.perf_counter_ns()
    say(event="sent", t0=t0)
    time.sleep(3600)


def role_zmq_push(cpu: str, port: str, size: str, count: str, keys: str) -> None:
    pin(cpu)
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    _curve(push, keys, server=False)
    push.connect(f"tcp://127.0.0.1:{port}")
    ring = payloads(int(size))
    for i in range(WARMUP):
        push.send(ring[i % INFLIGHT], copy=False)
    t0 = time.perf_counter_ns()
    for i in range(int(count)):
        push.send(ring[i % INFLIGHT], copy=False)
    say(event="sent", t0=t0)
    time.sleep(3600)


async def role_tcp_recv(cpu: str, size: str, count: str) -> None:
    pin(cpu)
    done = asyncio.Event()
    n, total = int(size), WARMUP + int(count)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total):
            length = int.from_bytes(await reader.readexactly(8), "little")
            await reader.readexactly(length)
        say(event="done", t1=time.perf_counter_ns())
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=n + 16)
    say(event="ready", port=server.sockets[0].getsockname()[1])
    await done.wait()
    await asyncio.sleep(3600)


async def role_tcp_send(cpu: str, port: str, size: str, count: str) -> None:
    pin(cpu)
    _reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    ring = payloads(int(size))
    prefix = int(size).to_bytes(8, "little")
    for i in range(WARMUP):
        writer.write(prefix)
        writer.write(ring[i % INFLIGHT])
        await writer.drain()
    t0 = time.perf_counter_ns()
    for i in range(int(count)):
        writer.write(prefix)
        writer.write(ring[i % INFLIGHT])
        await writer.drain()
    say(event="sent", t0=t0)
    await asyncio.sleep(3600)


ROLES: dict[str, Any] = {
    "coord": role_coord,
    "bipc_send": role_bipc_send,
    "bipc_recv": role_bipc_recv,
    "link_acker": role_link_acker,
    "link_feeder": role_link_feeder,
    "zmq_pull": role_zmq_pull,
    "zmq_push": role_zmq_push,
    "tcp_recv": role_tcp_recv,
    "tcp_send": role_tcp_send,
}


def child_main(role: str, args: list[str]) -> None:
    import blockipc

    blockipc.configure_logging("error")
    fn = ROLES[role]
    if asyncio.iscoroutinefunction(fn):
        blockipc.run(lambda: fn(*args))
    else:
        fn(*args)


# -- the parent ----------------------------------------------------------------------
class Proc:
    def __init__(self, role: str, *args: object) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        self.p = subprocess.Popen(
            [sys.executable, str(HERE), "--role", role, *map(str, args)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )

    def event(self, name: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        assert self.p.stdout is not None
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:  # e.g. a peer of this child died: never wait forever
            raise RuntimeError(f"no {name!r} event from {self.p.args[3]!r} in {timeout:g} s")
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited ({self.p.wait()})")
        event: dict[str, Any] = json.loads(line)
        assert event["event"] == name, event
        return event

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        if self.p.stdout is not None:
            self.p.stdout.close()


def size_label(size: int) -> str:
    """``1 MiB``, ``64 KiB``, ``100 B``: a message size for the table."""
    for shift, unit in ((20, "MiB"), (10, "KiB")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_receiver(
    procs: list[Proc], tmp: Path, port: int, keys: str, count: int, tasks: int, batch: int
) -> Proc:
    """Coordinator B listening on ``port`` and its consumer, on the second CPU (added to
    ``procs``); returns the consumer."""
    b = Proc("coord", 1, tmp / "b.sock", "b", f"tcp://127.0.0.1:{port}", "", keys)
    procs.append(b)
    b.event("ready")
    recv = Proc("bipc_recv", 1, tmp / "b.sock", count, tasks, batch)
    procs.append(recv)
    recv.event("ready")
    return recv


def start_sender(procs: list[Proc], tmp: Path, port: int, keys: str, size: int, count: int) -> Proc:
    """Coordinator A linked to ``port`` and its producer, on the first CPU (added to
    ``procs``); returns the producer, which starts sending at once."""
    a = Proc("coord", 0, tmp / "a.sock", "a", "", f"tcp://127.0.0.1:{port}", keys)
    procs.append(a)
    a.event("ready")
    send = Proc("bipc_send", 0, tmp / "a.sock", size, count)
    procs.append(send)
    return send


def run_blockipc(
    size: int, count: int, keys: str, tmp: Path, recv_tasks: int, recv_batch: int
) -> float:
    port = free_port()
    procs: list[Proc] = []
    try:
        recv = start_receiver(procs, tmp, port, keys, count, recv_tasks, recv_batch)
        send = start_sender(procs, tmp, port, keys, size, count)
        t1 = recv.event("done")["t1"]
        t0 = send.event("sent")["t0"]
        return size * count / ((t1 - t0) / 1e9) / 1e9
    finally:
        for p in reversed(procs):
            p.stop()


def run_sending_side(size: int, count: int, tmp: Path) -> float:
    """A and its producer (first CPU) against a ROUTER that acks at once (second CPU)."""
    procs: list[Proc] = []
    try:
        acker = Proc("link_acker", 1)
        procs.append(acker)
        port = acker.event("ready")["port"]
        sent = start_sender(procs, tmp, port, "", size, count).event("sent")
        return size * count / ((sent["t1"] - sent["t0"]) / 1e9) / 1e9
    finally:
        for p in reversed(procs):
            p.stop()


def run_receiving_side(size: int, count: int, tmp: Path, recv_tasks: int, recv_batch: int) -> float:
    """A DEALER writing link messages (first CPU) to B and its consumer (second CPU)."""
    port = free_port()
    procs: list[Proc] = []
    try:
        recv = start_receiver(procs, tmp, port, "", count, recv_tasks, recv_batch)
        feeder = Proc("link_feeder", 0, port, size, count)
        procs.append(feeder)
        t1 = recv.event("done")["t1"]
        t0 = feeder.event("sent")["t0"]
        return size * count / ((t1 - t0) / 1e9) / 1e9
    finally:
        for p in reversed(procs):
            p.stop()


def run_zmq(size: int, count: int, keys: str, copy: str = "") -> float:
    pull = Proc("zmq_pull", 1, size, count, keys, copy)
    push = None
    try:
        port = pull.event("ready")["port"]
        push = Proc("zmq_push", 0, port, size, count, keys)
        t1 = pull.event("done")["t1"]
        t0 = push.event("sent")["t0"]
        return size * count / ((t1 - t0) / 1e9) / 1e9
    finally:
        pull.stop()
        if push is not None:
            push.stop()


def run_tcp(size: int, count: int) -> float:
    recv = Proc("tcp_recv", 1, size, count)
    send = None
    try:
        port = recv.event("ready")["port"]
        send = Proc("tcp_send", 0, port, size, count)
        t1 = recv.event("done")["t1"]
        t0 = send.event("sent")["t0"]
        return size * count / ((t1 - t0) / 1e9) / 1e9
    finally:
        recv.stop()
        if send is not None:
            send.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1MiB,16MiB")
    parser.add_argument("--bytes", default="512MiB", help="moved per measurement")
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument("--only", default="", help="run contenders whose name has this")
    parser.add_argument(
        "--recv-tasks", type=int, default=4, help="recv() calls the blockipc consumer keeps waiting"
    )
    parser.add_argument(
        "--recv-batch",
        type=int,
        default=64,
        help="the consumer takes up to this many messages per recv_many() and frees them "
        "with one free_many(); 0: one recv() and free() per message (--recv-tasks)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.role:
        child_main(args.role, rest)
        return 0
    import zmq
    from zmq.utils import z85

    from blockipc import parse_size

    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-", dir="/tmp"))
    try:
        subprocess.run(
            [sys.executable, "-m", "blockipc", "keygen", "a", "--dir", str(tmp / "keys")],
            env={**os.environ, "PYTHONPATH": str(SRC)},
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [sys.executable, "-m", "blockipc", "keygen", "b", "--dir", str(tmp / "keys")],
            env={**os.environ, "PYTHONPATH": str(SRC)},
            check=True,
            capture_output=True,
        )
        spub, ssec = zmq.curve_keypair()
        cpub, csec = zmq.curve_keypair()
        raw_keys = ",".join(k.decode() for k in (spub, ssec, cpub, csec))
        assert z85.decode(spub)
        total = parse_size(args.bytes)
        contenders = {
            "blockipc link, plain": lambda s, n: run_blockipc(
                s, n, "", tmp, args.recv_tasks, args.recv_batch
            ),
            "blockipc link, CURVE": lambda s, n: run_blockipc(
                s, n, str(tmp / "keys"), tmp, args.recv_tasks, args.recv_batch
            ),
            "raw pyzmq PUSH/PULL, plain": lambda s, n: run_zmq(s, n, ""),
            "raw pyzmq PUSH/PULL, CURVE": lambda s, n: run_zmq(s, n, raw_keys),
            "raw pyzmq PUSH/PULL + one copy into a pool, plain": lambda s, n: run_zmq(
                s, n, "", copy="copy"
            ),
            "raw pyzmq PUSH/PULL + a channel ring + consumer process, plain": lambda s, n: run_zmq(
                s, n, "", copy="ring"
            ),
            "raw asyncio TCP stream (uvloop)": lambda s, n: run_tcp(s, n),
            "link sending side alone, plain (B: a ROUTER that acks)": lambda s, n: run_sending_side(
                s, n, tmp
            ),
            "link receiving side alone, plain (A: a DEALER)": lambda s, n: run_receiving_side(
                s, n, tmp, args.recv_tasks, args.recv_batch
            ),
        }
        contenders = {k: v for k, v in contenders.items() if args.only in k}
        sizes = [parse_size(s) for s in args.sizes.split(",")]
        samples: dict[str, dict[int, list[float]]] = {c: {s: [] for s in sizes} for c in contenders}
        names = list(contenders)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for size in sizes:
                count = max(8, total // size)
                for name in order:
                    samples[name][size].append(contenders[name](size, count))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {c: {s: statistics.median(v) for s, v in per.items()} for c, per in samples.items()}
    print(f"| contender | {' | '.join(f'{size_label(s)} GB/s' for s in sizes)} |")
    print(f"|---|{'---|' * len(sizes)}")
    for name in names:
        print(f"| {name} | {' | '.join(f'{med[name][s]:.2f}' for s in sizes)} |")
    print()
    checks = [
        ("plain link / raw pyzmq plain", "blockipc link, plain", "raw pyzmq PUSH/PULL, plain", 0.7),
        (
            "plain link / raw asyncio stream",
            "blockipc link, plain",
            "raw asyncio TCP stream (uvloop)",
            2.0,
        ),
        ("CURVE link / raw pyzmq CURVE", "blockipc link, CURVE", "raw pyzmq PUSH/PULL, CURVE", 0.7),
        (
            "ceiling: raw PULL + one copy into a pool / raw pyzmq plain (info)",
            "raw pyzmq PUSH/PULL + one copy into a pool, plain",
            "raw pyzmq PUSH/PULL, plain",
            0.0,
        ),
        (
            "bound: raw PULL + a ring + consumer process / raw pyzmq plain (info)",
            "raw pyzmq PUSH/PULL + a channel ring + consumer process, plain",
            "raw pyzmq PUSH/PULL, plain",
            0.0,
        ),
        (
            "sending side alone / raw pyzmq plain (info)",
            "link sending side alone, plain (B: a ROUTER that acks)",
            "raw pyzmq PUSH/PULL, plain",
            0.0,
        ),
        (
            "receiving side alone / raw pyzmq plain (info)",
            "link receiving side alone, plain (A: a DEALER)",
            "raw pyzmq PUSH/PULL, plain",
            0.0,
        ),
    ]
    print(f"| ratio | {' | '.join(size_label(s) for s in sizes)} | target |")
    print(f"|---|{'---|' * len(sizes)}---|")
    for label, num, den, target in checks:
        if num not in med or den not in med:
            continue
        cells = []
        for s in sizes:
            ratio = med[num][s] / med[den][s]
            verdict = "" if not target else " pass" if ratio >= target else " FAIL"
            cells.append(f"{ratio:.2f}x{verdict}")
        print(f"| {label} | {' | '.join(cells)} | {f'>= {target}x' if target else '—'} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"samples": {c: {str(s): v for s, v in per.items()} for c, per in samples.items()}},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
