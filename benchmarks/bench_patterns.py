"""Messaging patterns against what a user would pick instead (issue 15's benchmark).

    python benchmarks/bench_patterns.py [--rounds 5] [--jobs 4000] [--big-jobs 400]
    python benchmarks/bench_patterns.py --only queue --rounds 2   # the work queue alone

**Work queue**: 4 producer and 4 consumer processes move jobs of 64 B and of 1 MiB
through one queue: blockipc's per job (`enqueue`, `take(queue, ack=previous)`, `value`:
at-least-once, the payload in a block of the pool, a 64 B one inline in the frames, a
1 MiB one PUT then committed and enqueued by one ENQUEUE_COMMIT), blockipc's in
batches (`enqueue_many` of 32 jobs, of 8 at 1 MiB; `take_many(queue, max_jobs=32,
ack=previous_jobs)`), at 1 MiB also the path of before ENQUEUE_COMMIT (`put` then
`enqueue` of the block: PUT, COMMIT, ENQUEUE), side by side with one
`multiprocessing.Queue` shared by the same processes (at-most-once, pickled through a
pipe, one `put`/`get` per item), and Redis Streams with a
consumer group (`XADD`, `XREADGROUP`, `XACK`) when `redis-server` and the `redis`
module are both present (else the row says it was skipped). The coordinator (and the
Redis server) run in a process of their own. The workers are started once, and each
round runs every contender in turn, rotating the order, so that the machine's drifts hit
all alike; jobs/s is counted from the start signal to the last consumer's last job.
Medians over the rounds, and the ratio to `multiprocessing.Queue`. Every queue holds
at most 64 jobs waiting (a producer waits for room), so 1 MiB jobs fit the 256 MiB pool.

**Request/reply**: one requester process asks one responder process 64 B questions one
at a time (each answered with 64 B): blockipc's `request` / `requests()` (past the
first request, on the responder's direct socket: `_client/direct.py`), pyzmq REQ/REP
over `ipc://`, and a raw uvloop Unix-socket echo (the floor).
The servers (coordinator, REP, echo server) and the responder are on the first CPU, the
requesters on the second; each round runs every contender's slice in turn, rotating the
order. Median round trip over all samples, the ratio to the raw echo, and the CPU each
end used per round trip (its threads' on-CPU time, /proc/<pid>/task/*/schedstat, warm-up
round trips included).

Targets (issue 15): work queue at least 2x `multiprocessing.Queue` at 1 MiB and at least
1x at 64 B; request/reply at most 1.3x a raw uvloop Unix-socket round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blockipc.bench.harness import (  # noqa: E402 (from ROOT/src)
    process_cpu_ns,
    stop_workers,
    worker_context,
)

PRODUCERS = CONSUMERS = 4  # (equal: each mp.Queue producer puts one consumer's stop)
MAXSIZE = 64  # jobs waiting in a queue, for every contender (64 MiB of 1 MiB jobs)
SIZES = {"64 B": 64, "1 MiB": 1 << 20}
BATCH = {64: 32, 1 << 20: 8}  # jobs per enqueue_many (8 MiB at 1 MiB: the pool is 256 MiB)
BATCHED, PUT_ENQUEUE = "blockipc batch", "blockipc put+enqueue"


# -- workers (each a process of its own, started once) ----------------------------------
def worker(
    role: str, index: int, address: str, mpq: Any, redis_port: int, conn: Connection
) -> None:
    """Run the parent's commands: ``(contender, size, jobs, queue)`` -> end time (ns)."""
    import blockipc

    async def main() -> None:
        async with blockipc.connect(address, name=f"{role}{index}") as client:
            conn.send("ready")
            loop = asyncio.get_running_loop()
            while True:
                cmd = await loop.run_in_executor(None, conn.recv)
                if cmd is None:
                    return
                contender, size, jobs, queue = cmd
                conn.send("armed")
                await loop.run_in_executor(None, conn.recv)  # the start signal
                if contender == "blockipc":
                    end = await _blockipc(client, role, size, jobs, queue)
                elif contender == PUT_ENQUEUE:
                    end = await _blockipc(client, role, size, jobs, queue, put_first=True)
                elif contender == BATCHED:
                    end = await _blockipc_batched(client, role, size, jobs, queue)
                elif contender == "mp.Queue":
                    end = await loop.run_in_executor(None, _mp, mpq, role, size, jobs)
                else:
                    end = await loop.run_in_executor(
                        None, _redis, redis_port, role, index, size, jobs, queue
                    )
                conn.send(end)

    blockipc.run(main)


async def _blockipc(
    client: Any, role: str, size: int, jobs: int, queue: str, *, put_first: bool = False
) -> int:
    if role == "producer":
        payload = bytes(size)
        for _ in range(jobs):
            if put_first:  # PUT, COMMIT, then ENQUEUE of the block
                await client.enqueue(queue, await client.put(payload, codec="raw"))
            else:
                await client.enqueue(queue, payload, codec="raw")
        return time.perf_counter_ns()
    # Each take carries the previous job's ack (one round trip for both). A job is
    # counted done once its value is read: its ack rides on the next take, the last
    # one's on the take that gets the stop job, one round trip later, not counted.
    end = time.perf_counter_ns()
    job = await client.take(queue)
    while not job.header.get("stop"):
        _ = job.value
        end = time.perf_counter_ns()
        job = await client.take(queue, ack=job)
    await job.ack()
    return end


async def _blockipc_batched(client: Any, role: str, size: int, jobs: int, queue: str) -> int:
    batch = BATCH[size]
    if role == "producer":
        payload = bytes(size)
        for start in range(0, jobs, batch):
            await client.enqueue_many(queue, [payload] * min(batch, jobs - start), codec="raw")
        return time.perf_counter_ns()
    # Each take_many carries the previous batch's acks. The stop jobs come after every
    # job (FIFO); a consumer that took more than one puts the others back as new jobs.
    end = time.perf_counter_ns()
    jobs_in_hand = await client.take_many(queue, max_jobs=32)
    while True:
        stops = 0
        for job in jobs_in_hand:
            if job.header.get("stop"):
                stops += 1
                continue
            _ = job.value
            end = time.perf_counter_ns()
        if stops:
            for _ in range(stops - 1):
                await client.enqueue(queue, b"", codec="raw", header={"stop": True})
            for job in jobs_in_hand:
                await job.ack()
            return end
        jobs_in_hand = await client.take_many(queue, max_jobs=32, ack=jobs_in_hand)


def _mp(mpq: Any, role: str, size: int, jobs: int) -> int:
    if role == "producer":
        # Each producer ends its jobs with a stop (one per consumer): put() only hands
        # an item to this process's feeder thread, so a stop put by the parent once the
        # producers returned could overtake their last jobs, and the consumers stopped
        # early (jobs left over for the next round, producers stuck at exit flushing
        # them: 10 s each).
        payload = bytes(size)
        for _ in range(jobs):
            mpq.put(payload)
        mpq.put(None)
        return time.perf_counter_ns()
    end = time.perf_counter_ns()
    while (item := mpq.get()) is not None:
        end = time.perf_counter_ns()
        del item
    return end


def _redis(port: int, role: str, index: int, size: int, jobs: int, stream: str) -> int:
    import redis

    r = redis.Redis(port=port)
    if role == "producer":
        payload = bytes(size)
        for _ in range(jobs):
            r.xadd(stream, {"d": payload})
        return time.perf_counter_ns()
    end = time.perf_counter_ns()
    while True:
        got = r.xreadgroup("g", f"c{index}", {stream: ">"}, count=1, block=0)
        for _, entries in got:
            for entry_id, fields in entries:
                r.xack(stream, "g", entry_id)
                if b"stop" in fields:
                    return end
                end = time.perf_counter_ns()


# -- request/reply: a server side and a client side per contender -----------------------
def _pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def rr_server(kind: str, address: str, conn: Connection) -> None:
    """The answering side of ``kind``: a blockipc responder, a REP socket or an echo
    server; reports ``ready`` and serves until terminated."""
    _pin(0)
    import blockipc

    async def main() -> None:
        if kind == "blockipc":
            async with blockipc.connect(address, name="responder") as client:
                conn.send("ready")
                async for req in client.requests():
                    await req.reply(req.value)
        elif kind == "pyzmq":
            import zmq
            import zmq.asyncio

            ctx = zmq.asyncio.Context()
            sock = ctx.socket(zmq.REP)
            sock.bind(address)
            conn.send("ready")
            while True:
                await sock.send(await sock.recv())
        else:

            class Echo(asyncio.Protocol):
                def connection_made(self, transport: Any) -> None:
                    self.transport = transport

                def data_received(self, data: bytes) -> None:
                    self.transport.write(data)

            server = await asyncio.get_running_loop().create_unix_server(Echo, address)
            conn.send("ready")
            async with server:
                await server.serve_forever()

    blockipc.run(main)


def rr_client(kind: str, address: str, conn: Connection) -> None:
    """The asking side: each command ``n`` times ``n`` sequential round trips of 64 B,
    answered with their durations (ns)."""
    _pin(1)
    import blockipc

    payload = bytes(64)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "blockipc":
            client = await blockipc.connect(address, name="requester")

            async def once() -> None:
                await client.request("responder", payload, codec="raw")
        elif kind == "pyzmq":
            import zmq
            import zmq.asyncio

            sock = zmq.asyncio.Context().socket(zmq.REQ)
            sock.connect(address)

            async def once() -> None:
                await sock.send(payload)
                await sock.recv()
        else:
            reader, writer = await asyncio.open_unix_connection(address)

            async def once() -> None:
                writer.write(payload)
                await reader.readexactly(len(payload))

        conn.send("ready")
        while (n := await loop.run_in_executor(None, conn.recv)) is not None:
            for _ in range(min(n, 100)):  # the slice's own warm-up
                await once()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await once()
                samples.append(time.perf_counter_ns() - t0)
            conn.send(samples)

    blockipc.run(main)


def request_reply(
    ctx: Any, address: str, tmp: Path, rounds: int, n: int
) -> dict[str, tuple[float, float, float]]:
    """Median round trip (µs) of each contender, rounds interleaved, and the CPU (µs)
    per round trip of its server (the responder) and of its client (the requester)."""
    kinds = {
        "blockipc": address,
        "pyzmq REQ/REP": f"ipc://{tmp}/rr.ipc",
        "raw": str(tmp / "e.sock"),
    }
    try:
        import zmq  # noqa: F401
    except ImportError:
        del kinds["pyzmq REQ/REP"]
    procs, clients = [], {}
    pids: dict[str, list[int]] = {label: [] for label in kinds}  # (server, client)
    cpu: dict[str, list[int]] = {label: [0, 0] for label in kinds}
    try:
        for label, addr in kinds.items():
            kind = label.split()[0]
            for target in (rr_server, rr_client):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=target, args=(kind, addr, child), daemon=True)
                p.start()
                procs.append(p)
                assert parent.recv() == "ready"
                assert p.pid is not None
                pids[label].append(p.pid)
                if target is rr_client:
                    clients[label] = parent
        samples: dict[str, list[int]] = {label: [] for label in kinds}
        labels = list(kinds)
        for rnd in range(rounds):
            for label in labels[rnd % len(labels) :] + labels[: rnd % len(labels)]:
                before = [process_cpu_ns(pid) for pid in pids[label]]
                clients[label].send(n)
                samples[label] += clients[label].recv()
                for i, pid in enumerate(pids[label]):
                    cpu[label][i] += process_cpu_ns(pid) - before[i]
        for pipe in clients.values():
            pipe.send(None)
    finally:
        for p in procs:
            p.terminate()
            p.join(timeout=10)
    # each slice also runs min(n, 100) warm-up round trips, counted in the CPU
    trips = rounds * (n + min(n, 100))
    return {
        label: (statistics.median(v) / 1000, *(ns / trips / 1000 for ns in cpu[label]))
        for label, v in samples.items()
    }


# -- the parent ----------------------------------------------------------------------
@contextlib.contextmanager
def coordinator(tmp: Path) -> Iterator[str]:
    sock = tmp / "c.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock)]
    proc = subprocess.Popen([*cmd, "--pool-size", "256MiB"], env=env)
    try:
        while not sock.exists():
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[int | None]:
    """A redis-server of its own, or None (with why) when it or the module is missing."""
    exe = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        exe = None
    if exe is None:
        yield None
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_round(
    pipes: list[tuple[str, Connection]],
    contender: str,
    size: int,
    jobs: int,
    queue: str,
    stop: Any,
) -> float:
    """One contender once: jobs/s from the start signal to the last consumer's end."""
    per = jobs // PRODUCERS
    for role, pipe in pipes:
        pipe.send((contender, size, per if role == "producer" else 0, queue))
    for _, pipe in pipes:
        assert pipe.recv() == "armed"
    t0 = time.perf_counter_ns()
    for _, pipe in pipes:
        pipe.send("go")
    ends = {}
    for role, pipe in pipes:
        if role == "producer":
            ends[id(pipe)] = pipe.recv()
    stop()  # one stop per consumer, after every job
    for role, pipe in pipes:
        if role == "consumer":
            ends[id(pipe)] = pipe.recv()
    return per * PRODUCERS / ((max(ends.values()) - t0) / 1e9)


def contenders_at(size: int, contenders: list[str]) -> list[str]:
    """The work-queue contenders run at ``size`` (the PUT-first path: large jobs only)."""
    return [c for c in contenders if c != PUT_ENQUEUE or size > 4096]


def work_queue(
    ctx: Any,
    address: str,
    redis_port: int | None,
    args: argparse.Namespace,
    results: dict[tuple[str, str], list[float]],
) -> list[str]:
    """The work-queue rounds (jobs/s into ``results``); returns the contenders run."""
    import blockipc

    mpq = ctx.Queue(maxsize=MAXSIZE)
    procs, pipes = [], []
    for role, count in (("producer", PRODUCERS), ("consumer", CONSUMERS)):
        for i in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(role, i, address, mpq, redis_port or 0, child))
            p.start()
            procs.append(p)
            pipes.append((role, parent))
    for _, pipe in pipes:
        assert pipe.recv() == "ready"
    contenders = ["blockipc", BATCHED, PUT_ENQUEUE, "mp.Queue"]
    contenders += ["redis"] if redis_port else []

    async def declare(queue: str) -> None:
        async with blockipc.connect(address, name=f"setup-{os.getpid()}") as c:
            await c.declare_queue(queue, maxsize=MAXSIZE)

    async def stop_blockipc(queue: str) -> None:
        async with blockipc.connect(address, name=f"stopper-{os.getpid()}") as c:
            for _ in range(CONSUMERS):
                await c.enqueue(queue, b"", codec="raw", header={"stop": True})

    def stop_redis(stream: str) -> None:
        import redis

        r = redis.Redis(port=redis_port)
        for _ in range(CONSUMERS):
            r.xadd(stream, {"stop": b"1"})

    def stopper(contender: str, queue: str) -> Any:
        if contender.startswith("blockipc"):
            return lambda: blockipc.run(lambda: stop_blockipc(queue))
        if contender == "mp.Queue":
            return lambda: None  # the producers put the stops (_mp)
        return lambda: stop_redis(queue)

    try:
        n = 0
        for rnd in range(args.rounds + 1):  # round 0: a warm-up, not counted
            for label, size in SIZES.items():
                jobs = args.jobs if size < 4096 else args.big_jobs
                here = contenders_at(size, contenders)
                order = here[rnd % len(here) :] + here[: rnd % len(here)]
                for contender in order:
                    n += 1
                    queue = f"q{n}"
                    if contender == "redis":
                        import redis

                        redis.Redis(port=redis_port).xgroup_create(
                            queue, "g", id="0", mkstream=True
                        )
                    elif contender.startswith("blockipc"):
                        blockipc.run(lambda q=queue: declare(q))
                    rate = run_round(pipes, contender, size, jobs, queue, stopper(contender, queue))
                    if contender == "redis":
                        redis.Redis(port=redis_port).delete(queue)
                    if rnd:
                        results.setdefault((label, contender), []).append(rate)
            print(f"work queue: round {rnd}/{args.rounds} done", file=sys.stderr)
    finally:
        stop_workers(pipes, procs)
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=4000, help="64 B jobs per round")
    parser.add_argument("--big-jobs", type=int, default=400, help="1 MiB jobs per round")
    parser.add_argument("--round-trips", type=int, default=1000, help="per contender and round")
    parser.add_argument(
        "--only", choices=("queue", "rr"), help="run only the work queue or the request/reply part"
    )
    args = parser.parse_args()
    ctx = worker_context("uvloop", "zmq", "zmq.asyncio", "__main__")
    with (
        tempfile.TemporaryDirectory(prefix="bipc-patterns-") as tmpdir,
        coordinator(Path(tmpdir)) as address,
        redis_server(Path(tmpdir)) as redis_port,
    ):
        results: dict[tuple[str, str], list[float]] = {}
        contenders: list[str] = []
        if args.only != "rr":
            contenders = work_queue(ctx, address, redis_port, args, results)
        rr: dict[str, tuple[float, float, float]] = {}
        if args.only != "queue":
            print("request/reply ...", file=sys.stderr)
            rr = request_reply(ctx, address, Path(tmpdir), args.rounds, args.round_trips)
    if contenders:
        _print_queue(results, contenders, redis_port)
    if rr:
        _print_rr(rr)


def _print_queue(
    results: dict[tuple[str, str], list[float]], contenders: list[str], redis_port: int | None
) -> None:
    print(
        f"| work queue, {PRODUCERS} producers x {CONSUMERS} consumers | jobs/s (median) "
        "| vs multiprocessing.Queue | target |"
    )
    print("|---|---|---|---|")
    for label, size in SIZES.items():
        base = statistics.median(results[(label, "mp.Queue")])
        for contender in contenders_at(size, contenders):
            rate = statistics.median(results[(label, contender)])
            target = ""
            if contender in ("blockipc", BATCHED):
                want = {"64 B": 1.0, "1 MiB": 2.0}[label]
                target = f">= {want:g}x: {'pass' if rate / base >= want else 'FAIL'}"
            name = f"{contender} {BATCH[size]}" if contender == BATCHED else contender
            print(f"| {label} {name} | {rate:,.0f} | {rate / base:.2f}x | {target} |")
    if not redis_port:
        print("\nRedis Streams: skipped (no `redis-server` on PATH or no `redis` module).")


def _print_rr(rr: dict[str, tuple[float, float, float]]) -> None:
    print(
        "\n| request/reply, 64 B | round trip (median) | vs raw uvloop socket "
        "| CPU per round trip: responder / requester | target |"
    )
    print("|---|---|---|---|---|")
    raw = rr["raw"][0]
    for label, (us, server, client) in rr.items():
        target = "<= 1.3x" if label == "blockipc" else ""
        cpu = f"{server:.1f} / {client:.1f} us"
        print(f"| {label} | {us:.1f} us | {us / raw:.2f}x | {cpu} | {target} |")


if __name__ == "__main__":
    main()
