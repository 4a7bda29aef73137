"""Many small messages into one inbox against what a user would pick instead (issue 17,
item 3).

    python benchmarks/bench_inbox.py [--rounds 5] [--messages 40000] [--single 8000]

4 producer processes send 64 B messages to 1 consumer process: blockipc's inbox, one
message per request (`send_value` / `recv`: the payload inline in the frames, no block)
and batched (`send_many` of `--batch` messages / `recv_many(1024)`), side by side with
one `multiprocessing.Queue` shared by the same processes (bounded as the inbox is, 1024
items) and pyzmq PUSH sockets into one PULL over `ipc://`. The coordinator runs in a
process of its own; the workers are started once, and each round runs every contender in
turn, rotating the order, so that the machine's drifts hit all alike. msg/s is counted
from the start signal to the consumer's last message; medians over the rounds (round 0
is a warm-up, not counted), and the ratios to `multiprocessing.Queue` and pyzmq.

Target (issue 17): batched blockipc at least 100,000 msg/s at 64 B with 4 producers.
The machine this runs on is shared: read the ratios rather than the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blockipc.bench.harness import stop_workers, worker_context  # noqa: E402 (from ROOT/src)

PRODUCERS = 4
INBOX = 1024  # messages waiting, at most: the inbox's default, and the mp.Queue's maxsize
TARGET = 100_000  # msg/s, batched blockipc
CONTENDERS = ("blockipc send_value/recv", "blockipc send_many/recv_many", "mp.Queue", "pyzmq")


def worker(role: str, index: int, address: str, mpq: Any, zmq_addr: str, conn: Connection) -> None:
    """Run the parent's commands ``(contender, messages, size, batch)`` -> end time (ns)."""
    import blockipc

    pool = ThreadPoolExecutor(max_workers=1)  # the blocking contenders' one thread

    def zmq_socket() -> Any:
        try:
            import zmq
        except ImportError:
            return None
        sock = zmq.Context.instance().socket(zmq.PULL if role == "consumer" else zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        if role == "consumer":
            sock.bind(zmq_addr)
        else:
            sock.connect(zmq_addr)
        return sock

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(pool, zmq_socket)
        name = "consumer" if role == "consumer" else f"producer{index}"
        async with blockipc.connect(address, name=name) as client:
            conn.send("ready" if sock is not None else "ready-nozmq")
            while True:
                cmd = await loop.run_in_executor(None, conn.recv)
                if cmd is None:
                    break
                contender, messages, size, batch = cmd
                conn.send("armed")
                await loop.run_in_executor(None, conn.recv)  # the start signal
                if contender.startswith("blockipc"):
                    end = await _blockipc(client, role, contender, messages, size, batch)
                elif contender == "mp.Queue":
                    end = await loop.run_in_executor(pool, _mp, mpq, role, messages, size)
                else:
                    end = await loop.run_in_executor(pool, _zmq, sock, role, messages, size)
                conn.send(end)
        if sock is not None:
            await loop.run_in_executor(pool, sock.close)
        pool.shutdown()

    blockipc.run(main)


async def _blockipc(
    client: Any, role: str, contender: str, messages: int, size: int, batch: int
) -> int:
    payload = bytes(size)
    batched = "send_many" in contender
    if role == "producer":
        if batched:
            for start in range(0, messages, batch):
                n = min(batch, messages - start)
                await client.send_many("consumer", [payload] * n, codec="raw")
        else:
            for _ in range(messages):
                await client.send_value("consumer", payload, codec="raw")
        return time.perf_counter_ns()
    got = 0
    if batched:
        while got < messages:
            for msg in await client.recv_many(1024):
                assert len(msg.data) == size
                got += 1
    else:
        while got < messages:
            msg = await client.recv()
            assert len(msg.data) == size
            got += 1
    return time.perf_counter_ns()


def _mp(mpq: Any, role: str, messages: int, size: int) -> int:
    if role == "producer":
        payload = bytes(size)
        for _ in range(messages):
            mpq.put(payload)
        return time.perf_counter_ns()
    for _ in range(messages):
        assert len(mpq.get()) == size
    return time.perf_counter_ns()


def _zmq(sock: Any, role: str, messages: int, size: int) -> int:
    if role == "producer":
        payload = bytes(size)
        for _ in range(messages):
            sock.send(payload)
        return time.perf_counter_ns()
    for _ in range(messages):
        assert len(sock.recv()) == size
    return time.perf_counter_ns()


@contextlib.contextmanager
def coordinator(tmp: Path) -> Iterator[str]:
    sock = tmp / "c.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock)]
    proc = subprocess.Popen([*cmd, "--pool-size", "64MiB"], env=env)
    try:
        while not sock.exists():
            if proc.poll() is not None:
                raise RuntimeError("the coordinator did not start")
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_round(
    pipes: list[tuple[str, Connection]], contender: str, total: int, size: int, batch: int
) -> float:
    """One contender once: msg/s from the start signal to the consumer's last message."""
    per = total // PRODUCERS
    for role, pipe in pipes:
        pipe.send((contender, per * PRODUCERS if role == "consumer" else per, size, batch))
    for _, pipe in pipes:
        assert pipe.recv() == "armed"
    t0 = time.perf_counter_ns()
    for _, pipe in pipes:
        pipe.send("go")
    ends = {role + str(i): pipe.recv() for i, (role, pipe) in enumerate(pipes)}
    end = max(v for k, v in ends.items() if k.startswith("consumer"))
    return per * PRODUCERS / ((end - t0) / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=40000, help="per round, all producers")
    parser.add_argument(
        "--single", type=int, default=8000, help="per round for blockipc send_value/recv"
    )
    parser.add_argument("--batch", type=int, default=256, help="messages per send_many")
    parser.add_argument("--size", type=int, default=64, help="bytes per message")
    args = parser.parse_args()

    ctx = worker_context("uvloop", "zmq", "zmq.asyncio", "__main__")
    with (
        tempfile.TemporaryDirectory(prefix="bipc-inbox-") as tmpdir,
        coordinator(Path(tmpdir)) as address,
    ):
        mpq = ctx.Queue(maxsize=INBOX)
        zmq_addr = f"ipc://{tmpdir}/inbox.ipc"
        procs, pipes = [], []
        roles = [("consumer", 0)] + [("producer", i) for i in range(PRODUCERS)]
        for role, i in roles:  # the consumer first: it binds the PULL socket
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(role, i, address, mpq, zmq_addr, child))
            p.start()
            procs.append(p)
            pipes.append((role, parent))
            ready = parent.recv()
        contenders = [c for c in CONTENDERS if c != "pyzmq" or ready == "ready"]
        results: dict[str, list[float]] = {c: [] for c in contenders}
        try:
            for rnd in range(args.rounds + 1):  # round 0: a warm-up, not counted
                k = rnd % len(contenders)
                for contender in contenders[k:] + contenders[:k]:
                    total = args.single if "send_value" in contender else args.messages
                    rate = run_round(pipes, contender, total, args.size, args.batch)
                    if rnd:
                        results[contender].append(rate)
                print(f"inbox: round {rnd}/{args.rounds} done", file=sys.stderr)
        finally:
            stop_workers(pipes, procs)
    med = {c: statistics.median(v) for c, v in results.items()}
    zmq_rate = med.get("pyzmq")
    print(
        f"| inbox, {PRODUCERS} producers -> 1 consumer, {args.size} B | msg/s (median) "
        "| vs multiprocessing.Queue | vs pyzmq PUSH/PULL | target |"
    )
    print("|---|---|---|---|---|")
    for contender in contenders:
        rate = med[contender]
        vs_zmq = f"{rate / zmq_rate:.2f}x" if zmq_rate else "n/a"
        target = f">= {TARGET:,}" if "send_many" in contender else ""
        label = "pyzmq PUSH/PULL" if contender == "pyzmq" else contender
        print(f"| {label} | {rate:,.0f} | {rate / med['mp.Queue']:.2f}x | {vs_zmq} | {target} |")
    if zmq_rate is None:
        print("\npyzmq PUSH/PULL: skipped (no `zmq` module).")
    batched = med["blockipc send_many/recv_many"]
    verdict = "PASS" if batched >= TARGET else "FAIL"
    print(
        f"\ntarget: blockipc send_many/recv_many >= {TARGET:,} msg/s at {args.size} B: "
        f"{batched:,.0f} msg/s, {verdict} ({args.rounds} rounds; a shared machine: "
        "rates move with its load, the ratios less)"
    )


if __name__ == "__main__":
    main()
