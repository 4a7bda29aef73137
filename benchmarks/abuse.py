"""What a misbehaving client makes a ``blockipc serve`` hold: the figures of
``docs/reliability.md``.

    python benchmarks/abuse.py unread-replies [--reads 3000]
    python benchmarks/abuse.py parked [--requests 100000]
    python benchmarks/abuse.py reclaim [--blocks 262144]

Each starts ``blockipc serve`` (its own process, from this checkout), does the abuse
over the raw protocol, and prints the coordinator's resident memory before and after,
and how a well-behaved client fares meanwhile (round trips of a 64 B routed read).

* ``unread-replies``: pipeline ``--reads`` routed reads of 1 MiB each and never read a
  reply (issue 14, item 3: 3,000 of them grew a serve by 3 GB before the fix).
* ``parked``: pipeline ``--requests`` RECVs on an empty inbox (each would wait); the
  coordinator refuses all but ``MAX_PARKED`` of them (item 4: 500k grew it by
  108-800 MB before the fix).
* ``reclaim``: a client process holding ``--blocks`` blocks of 4 KiB is ``kill -9``ed;
  prints how long after the kill the coordinator had them all back (its
  ``client.disconnect`` event), and a good client's slowest round trip meanwhile
  (item 11: 262k blocks froze every client for 0.9 s before the reclaim ran in slices).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import blockipc  # noqa: E402
from blockipc._core.limits import MAX_PARKED  # noqa: E402
from blockipc._core.protocol import (  # noqa: E402
    PROTOCOL_VERSION,
    Connection,
    ErrorReply,
    Op,
    Reply,
    Request,
    Role,
)
from blockipc._handshake import close_fds, receive_event  # noqa: E402

MiB = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def hello(address: str, name: str) -> tuple[anyio.abc.SocketStream, Connection]:
    stream = await anyio.connect_unix(address)
    conn = Connection(Role.CLIENT)
    args = {"version": PROTOCOL_VERSION, "name": name, "pid": os.getpid()}
    req = Request(1, Op.HELLO, {**args, "inbox_messages": 8, "inbox_bytes": 1 << 20})
    await stream.send(conn.send(req))
    _, fds = await receive_event(stream, conn, with_fds=True)
    close_fds(fds)
    return stream, conn


async def round_trips(address: str, seconds: float) -> tuple[int, float]:
    """A good client's 64 B routed reads for ``seconds``: how many, the slowest (ms)."""
    async with blockipc.connect(address, name="good") as good:
        block = await good.alloc(64)
        n, worst, end = 0, 0.0, time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            await good.read(block, 0, 64)
            worst = max(worst, time.perf_counter() - t0)
            n += 1
        return n, worst * 1e3


async def unread_replies(address: str, pid: int, reads: int) -> None:
    stream, conn = await hello(address, "hog")
    await stream.send(conn.send(Request(2, Op.ALLOC, {"size": MiB})))
    reply, _ = await receive_event(stream, conn)
    assert isinstance(reply, Reply), reply
    block = reply.result["block"]
    before = rss(pid)
    args = {"block": block, "offset": 0, "size": MiB}
    await stream.send(b"".join(conn.send(Request(10 + i, Op.READ, args)) for i in range(reads)))
    n, worst = await round_trips(address, 2.0)
    after = rss(pid)
    print(
        f"{reads} unread 1 MiB replies: coordinator RSS {before / MiB:.0f} -> "
        f"{after / MiB:.0f} MiB (+{(after - before) / MiB:.0f} MiB); a good client "
        f"meanwhile: {n} round trips in 2 s, slowest {worst:.1f} ms"
    )
    await stream.aclose()


async def parked(address: str, pid: int, requests: int) -> None:
    stream, conn = await hello(address, "hog")
    before = rss(pid)
    frames = b"".join(conn.send(Request(10 + i, Op.RECV, {})) for i in range(requests))
    refused = 0
    async with anyio.create_task_group() as tg:
        # (sent while the replies are read: a coordinator stops reading from a client
        # whose replies back up, so a client that only writes would wait for ever)
        tg.start_soon(stream.send, frames)
        with anyio.move_on_after(60):
            while refused < requests - MAX_PARKED:
                event, _ = await receive_event(stream, conn)
                refused += isinstance(event, ErrorReply)
    n, worst = await round_trips(address, 2.0)
    after = rss(pid)
    print(
        f"{requests} pipelined RECVs: {requests - refused} parked, {refused} refused "
        f"(QuotaExceeded); coordinator RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB "
        f"(+{(after - before) / MiB:.0f} MiB); a good client then: {n} round trips "
        f"in 2 s, slowest {worst:.1f} ms"
    )
    await stream.aclose()


async def hold_blocks(address: str, blocks: int) -> None:
    """The hog (a child process): hold ``blocks`` blocks of 4 KiB, say so, wait to be
    killed. Pipelined ALLOCs, their replies read meanwhile (a coordinator stops reading
    from a client whose replies back up)."""
    stream, conn = await hello(address, "hog")
    frames = b"".join(conn.send(Request(2 + i, Op.ALLOC, {"size": 4096})) for i in range(blocks))
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.send, frames)
        for _ in range(blocks):
            reply, _ = await receive_event(stream, conn)
            assert isinstance(reply, Reply), reply
    print("ready", flush=True)
    await anyio.sleep(3600)


async def reclaim(address: str, server: subprocess.Popen[str], blocks: int) -> None:
    # the serve's client.disconnect event (logged once all is back) says when
    reclaimed = threading.Event()
    at: list[float] = []

    def watch_log() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            event = json.loads(line)
            if event.get("event") == "client.disconnect" and event.get("name") == "hog":
                at.append(datetime.fromisoformat(event["timestamp"]).timestamp())
                reclaimed.set()

    threading.Thread(target=watch_log, daemon=True).start()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    hog = subprocess.Popen(
        [sys.executable, __file__, "_hold", address, str(blocks)], env=env, stdout=subprocess.PIPE
    )
    try:
        assert hog.stdout is not None
        t0 = time.monotonic()
        await anyio.to_thread.run_sync(hog.stdout.readline)
        held_in = time.monotonic() - t0
        async with blockipc.connect(address, name="good") as good:
            block = await good.alloc(64)
            before = rss(server.pid)
            warm, warm_worst = 0, 0.0
            for _ in range(2000):  # the round trip before the kill, for comparison
                t = time.perf_counter()
                await good.read(block, 0, 64)
                warm_worst = max(warm_worst, time.perf_counter() - t)
                warm += 1
            hog.kill()  # SIGKILL: nothing is released by the hog itself
            killed = time.time()
            n, worst = 0, 0.0
            while not reclaimed.is_set():
                t = time.perf_counter()
                await good.read(block, 0, 64)
                worst = max(worst, time.perf_counter() - t)
                n += 1
            back = at[0] - killed
            assert (await good.stats()).blocks == 1  # all back but the good client's
            await good.free(block)
        print(
            f"{blocks} blocks held (in {held_in:.1f} s; coordinator RSS {before / MiB:.0f} "
            f"MiB), then kill -9: all back in the pool {back * 1e3:.0f} ms after the kill "
            f"(client.disconnect); a good client meanwhile: {n} round trips (64 B reads), "
            f"the slowest {worst * 1e3:.1f} ms (before the kill: the slowest of {warm}, "
            f"{warm_worst * 1e3:.1f} ms)"
        )
    finally:
        hog.kill()
        hog.wait(timeout=30)


def main() -> None:
    if sys.argv[1:2] == ["_hold"]:  # the child process of the reclaim scenario
        anyio.run(hold_blocks, sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("unread-replies", help="pipelined 1 MiB reads, replies never read")
    p.add_argument("--reads", type=int, default=3000)
    p = sub.add_parser("parked", help="pipelined RECVs that would all wait")
    p.add_argument("--requests", type=int, default=100_000)
    p = sub.add_parser("reclaim", help="kill -9 a client holding many blocks")
    p.add_argument("--blocks", type=int, default=262_144)
    args = parser.parse_args()
    pool = f"{max(16, args.blocks * 4096 // MiB + 16)}MiB" if args.what == "reclaim" else "16MiB"
    with tempfile.TemporaryDirectory(prefix="bipc-abuse-") as tmp:
        sock = Path(tmp) / "c.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        logs = ["--log-json"] if args.what == "reclaim" else []
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blockipc",
                *logs,
                "serve",
                "--socket",
                str(sock),
                "--pool-size",
                pool,
            ],
            env=env,
            stderr=subprocess.PIPE if logs else None,
            text=True,
        )
        try:
            while not sock.exists():
                time.sleep(0.05)
            if args.what == "unread-replies":
                anyio.run(unread_replies, str(sock), server.pid, args.reads)
            elif args.what == "parked":
                anyio.run(parked, str(sock), server.pid, args.requests)
            else:
                anyio.run(reclaim, str(sock), server, args.blocks)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
