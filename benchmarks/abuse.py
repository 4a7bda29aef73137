"""What a misbehaving client makes a ``blockipc serve`` hold: the figures of
``docs/reliability.md``.

    python benchmarks/abuse.py unread-replies [--reads 3000]
    python benchmarks/abuse.py parked [--requests 100000]

Each starts ``blockipc serve`` (its own process, from this checkout), does the abuse
over the raw protocol, and prints the coordinator's resident memory before and after,
and how a well-behaved client fares meanwhile (round trips of a 64 B routed read).

* ``unread-replies``: pipeline ``--reads`` routed reads of 1 MiB each and never read a
  reply (issue 14, item 3: 3,000 of them grew a serve by 3 GB before the fix).
* ``parked``: pipeline ``--requests`` RECVs on an empty inbox (each would wait); the
  coordinator refuses all but ``MAX_PARKED`` of them (item 4: 500k grew it by
  108-800 MB before the fix).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("unread-replies", help="pipelined 1 MiB reads, replies never read")
    p.add_argument("--reads", type=int, default=3000)
    p = sub.add_parser("parked", help="pipelined RECVs that would all wait")
    p.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bipc-abuse-") as tmp:
        sock = Path(tmp) / "c.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blockipc",
                "serve",
                "--socket",
                str(sock),
                "--pool-size",
                "16MiB",
            ],
            env=env,
        )
        try:
            while not sock.exists():
                time.sleep(0.05)
            if args.what == "unread-replies":
                anyio.run(unread_replies, str(sock), server.pid, args.reads)
            else:
                anyio.run(parked, str(sock), server.pid, args.requests)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
