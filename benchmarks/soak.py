"""Chaos soak: worker processes doing every operation, with checksums, while random
ones are ``kill -9``ed and restarted; then nothing may be left behind.

    python benchmarks/soak.py [--seconds 600] [--workers 8] [--seed 1] [--kill-every 2]

It starts ``blockipc serve`` (its own process, from this checkout) and ``--workers``
worker processes. Each worker loops over every operation kind: alloc/write/read/free,
write and read leases, copy, send to another worker (moving and shared), publish to a
topic every worker subscribes to, put/get of named objects with each codec (its own
and other workers'), and channels (open, send a burst, the peer accepts and reads).
Every payload carries its own checksum (``_chaos.payload``), so whoever reads it checks
it. Every ``--kill-every`` seconds (on average) the driver ``kill -9``s a random worker
and starts a new one under the same name.

At the end the workers are stopped, their named objects deleted, and the coordinator
must be back where it began: no block, lease, channel or process, 0 bytes used, as
many file descriptors as before the first worker, nothing new in ``/dev/shm``. It
prints ops/s, kills survived, bytes verified, mismatches and leaks; the exit status is
1 on any mismatch, unexpected error, stuck operation, worker crash or leak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chaos import (
    MIN_PAYLOAD,
    SRC,
    check_payload,
    child_env,
    fd_count,
    human_bytes,
    leak_count,
    payload,
    rss,
    serve,
    wait_for,
)

sys.path.insert(0, str(SRC))
import blockipc
from blockipc.testing import shm_files

TOPIC = "soak-topic"
NAMES_PER_WORKER = 4
OP_TIMEOUT = 30.0  # an operation still running after this is stuck: a failure
CODECS = ("raw", "json", "msgpack", "numpy")
# refusals a peer's death or a full pool explains: counted, not failures
EXPECTED = (
    blockipc.PeerUnreachable,
    blockipc.InboxFull,
    blockipc.PoolExhausted,
    blockipc.ChannelClosed,
)


def worker_name(slot: int) -> str:
    return f"soak-w{slot}"


def object_name(slot: int, k: int) -> str:
    return f"soak-w{slot}-o{k}"


# -- the worker -------------------------------------------------------------------------
class Worker:
    def __init__(self, slot: int, workers: int, rng: random.Random, out: Path) -> None:
        self.slot, self.workers, self.rng, self.out = slot, workers, rng, out
        self.name = worker_name(slot)
        self.peers = [worker_name(j) for j in range(workers) if j != slot]
        self.ops: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.verified = 0
        self.mismatches = 0
        self.errors = 0
        self.stuck = 0
        self.client: blockipc.Client

    # what must not be lost to a kill -9 is appended at once, O_APPEND
    def _log(self, file: str, text: str) -> None:
        fd = os.open(self.out.parent / file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (f"{self.name} {self.out.stem}: {text}".rstrip() + "\n").encode())
        finally:
            os.close(fd)

    def check(self, data: bytes | memoryview, what: str, expected: bytes | None = None) -> None:
        problem = check_payload(data)
        if problem is None and expected is not None and bytes(data) != expected:
            problem = "intact payload, but not the one written"
        if problem is not None:
            self.mismatches += 1
            self._log("mismatches.log", f"{what}: {problem}")
        else:
            self.verified += len(data)

    def size(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(MIN_PAYLOAD, 4096)  # inline
        if r < 0.9:
            return self.rng.randint(4097, 64 * 1024)
        return self.rng.randint(64 * 1024, 512 * 1024)  # leases underneath

    def save(self) -> None:
        state = {
            "ops": dict(self.ops),
            "refused": dict(self.refused),
            "verified": self.verified,
            "mismatches": self.mismatches,
            "errors": self.errors,
            "stuck": self.stuck,
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.out)

    async def run(self, address: str, stop: Path) -> None:
        deadline = time.monotonic() + 60
        while True:  # the killed incarnation's name is free once the coordinator reclaimed it
            try:
                self.client = await blockipc.connect(address, name=self.name, inbox_messages=16)
                break
            except blockipc.NameTaken:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        async with self.client:
            await self.client.subscribe(TOPIC)
            background = [
                asyncio.create_task(self.guard("recv", self.recv_loop)),
                asyncio.create_task(self.guard("accept", self.accept_loop)),
                asyncio.create_task(self.save_loop()),
            ]
            kinds = [
                self.op_alloc_rw,
                self.op_lease,
                self.op_copy,
                self.op_send,
                self.op_publish,
                self.op_objects,
                self.op_channel,
            ]
            try:
                while not stop.exists():
                    op = self.rng.choice(kinds)
                    kind = op.__name__[3:]
                    try:
                        async with asyncio.timeout(OP_TIMEOUT):
                            await op()
                        self.ops[kind] += 1
                    except EXPECTED as exc:
                        self.refused[f"{kind}:{type(exc).__name__}"] += 1
                    except TimeoutError:
                        self.stuck += 1
                        self._log("errors.log", f"{kind}: stuck for {OP_TIMEOUT:.0f} s")
                    except Exception:  # noqa: BLE001 (an unexpected error: counted, logged)
                        self.errors += 1
                        self._log("errors.log", f"{kind}: {traceback.format_exc()}")
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                self.save()

    async def guard(self, what: str, loop: Any) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 (an unexpected error: counted, logged)
            self.errors += 1
            self._log("errors.log", f"{what} loop: {traceback.format_exc()}")

    async def save_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.save()

    async def free(self, *blocks: blockipc.Block) -> None:
        for block in blocks:
            with contextlib.suppress(blockipc.BlockNotFound):
                await self.client.free(block)

    # the operations ------------------------------------------------------------------
    async def op_alloc_rw(self) -> None:
        data = payload(self.rng, self.size())
        block = await self.client.alloc(len(data))
        try:
            await self.client.write(block, data)
            self.check(await self.client.read(block), "read back", data)
        finally:
            await self.free(block)

    async def op_lease(self) -> None:
        data = payload(self.rng, self.size())
        block = await self.client.alloc(len(data))
        try:
            async with self.client.lease(block, "w") as view:
                view[:] = data
            async with self.client.lease(block, "r") as view:
                self.check(view, "read lease", data)
        finally:
            await self.free(block)

    async def op_copy(self) -> None:
        data = payload(self.rng, self.size())
        src = await self.client.alloc(len(data))
        try:
            dst = await self.client.alloc(len(data) + self.rng.randint(0, 4096))
            try:
                await self.client.write(src, data)
                at = dst.size - len(data)
                await self.client.copy(src, dst, dst_offset=at)
                self.check(await self.client.read(dst, at, len(data)), "copy", data)
            finally:
                await self.free(dst)
        finally:
            await self.free(src)

    async def op_send(self) -> None:
        data = payload(self.rng, self.size())
        block = await self.client.alloc(len(data))
        move = self.rng.random() < 0.7
        sent = False
        try:
            await self.client.write(block, data)
            to = self.rng.choice(self.peers)
            await self.client.send(block, to=to, move=move, nowait=True, header={"n": len(data)})
            sent = move
        finally:
            if not sent:  # refused, or shared: our hold goes
                await self.free(block)

    async def op_publish(self) -> None:
        data = payload(self.rng, self.size())
        block = await self.client.alloc(len(data))
        published = False
        try:
            await self.client.write(block, data)
            await self.client.publish(block, TOPIC, nowait=True)
            published = True
        finally:
            if not published:
                await self.free(block)

    def encode(self, codec: str, data: bytes) -> Any:
        if codec == "raw":
            return data
        if codec == "numpy":
            import numpy

            return numpy.frombuffer(data, dtype=numpy.uint8)
        if codec == "json":
            return {"p": data.hex()}
        return {"p": data}

    @staticmethod
    def decode(codec: str, value: Any) -> bytes:
        if codec == "raw":
            return bytes(value)
        if codec == "numpy":
            return bytes(value.tobytes())
        return bytes.fromhex(value["p"]) if codec == "json" else bytes(value["p"])

    async def op_objects(self) -> None:
        codec = self.rng.choice(CODECS)
        size = self.size() if codec in ("raw", "numpy") else self.rng.randint(MIN_PAYLOAD, 8192)
        data = payload(self.rng, size)
        name = object_name(self.slot, self.rng.randrange(NAMES_PER_WORKER))
        await self.client.put(self.encode(codec, data), codec, name=name)
        self.check(self.decode(codec, await self.client.get(name)), f"get own {name}", data)
        # another worker's object (maybe of a dead incarnation, maybe being replaced)
        other = object_name(self.rng.randrange(self.workers), self.rng.randrange(NAMES_PER_WORKER))
        try:
            value = await self.client.get(other)
        except blockipc.BlockNotFound:
            self.refused["objects:absent"] += 1
        else:
            for c in CODECS:  # which codec the writer used shows in the value's type
                try:
                    raw = self.decode(c, value)
                except (TypeError, KeyError, ValueError, AttributeError):
                    continue
                self.check(raw, f"get {other}")
                break
            else:
                self.mismatches += 1
                self._log("mismatches.log", f"get {other}: a value of no known shape")
        if self.rng.random() < 0.1:
            with contextlib.suppress(blockipc.BlockNotFound):
                await self.client.delete(name)

    async def op_channel(self) -> None:
        to = self.rng.choice(self.peers)
        tx = await self.client.open_channel(to, capacity=256 * 1024)
        async with tx:
            for _ in range(self.rng.randint(1, 24)):
                data = payload(self.rng, self.rng.randint(MIN_PAYLOAD, 32 * 1024))
                await tx.send(data)

    # what arrives -----------------------------------------------------------------------
    async def recv_loop(self) -> None:
        while True:
            msg = await self.client.recv()
            # (not freed when cancelled mid-read, at the stop: the client's close gives
            # it back, and a free right after a cancelled read is refused, AccessDenied,
            # until the orphaned lease's grant has come back and been released)
            what = f"recv from {msg.sender}" + (f" on {msg.topic}" if msg.topic else "")
            self.check(await self.client.read(msg.block), what)
            self.ops["recv"] += 1
            await self.free(msg.block)

    async def accept_loop(self) -> None:
        readers: set[asyncio.Task[None]] = set()
        try:
            while True:
                rx = await self.client.accept_channel()
                task = asyncio.create_task(self.guard("channel", lambda rx=rx: self.drain(rx)))
                readers.add(task)
                task.add_done_callback(readers.discard)
        finally:
            for task in readers:
                task.cancel()

    async def drain(self, rx: blockipc.ChannelReceiver) -> None:
        async with rx:
            try:
                async for msg in rx:
                    with msg:
                        self.check(msg.data, f"channel from {rx.peer}")
                self.ops["channel_recv"] += 1
            except EXPECTED as exc:  # the sender was killed mid-stream
                self.refused[f"channel_recv:{type(exc).__name__}"] += 1


async def worker_main(args: argparse.Namespace) -> None:
    out = Path(args.dir) / f"w{args.worker}.{args.incarnation}.json"
    rng = random.Random(f"{args.seed}/{args.worker}/{args.incarnation}")
    worker = Worker(args.worker, args.workers, rng, out)
    try:
        await worker.run(args.address, Path(args.dir) / "stop")
    except Exception:
        worker.errors += 1
        worker._log("errors.log", f"worker: {traceback.format_exc()}")
        worker.save()
        raise


# -- the driver -------------------------------------------------------------------------
class Driver:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.address = str(tmp / "c.sock")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.incarnation: Counter[int] = Counter()
        self.kills = 0
        self.crashes: list[str] = []

    def start(self, slot: int) -> None:
        self.incarnation[slot] += 1
        n = self.incarnation[slot]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(slot)]
        cmd += ["--incarnation", str(n), "--dir", str(self.tmp), "--address", self.address]
        cmd += ["--workers", str(self.args.workers), "--seed", str(self.args.seed)]
        with open(self.tmp / f"w{slot}.{n}.log", "wb") as log:
            self.procs[slot] = subprocess.Popen(
                cmd, env=child_env(), stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.kills += 1
        else:
            self.crashed(slot)
        self.start(slot)

    def crashed(self, slot: int, what: str = "exited") -> None:
        """A worker ended on its own: a failure, with the end of what it printed."""
        n = self.incarnation[slot]
        tail = (self.tmp / f"w{slot}.{n}.log").read_text(errors="replace")[-3000:]
        code = self.procs[slot].returncode
        self.crashes.append(f"worker {slot}.{n} {what} (exit status {code})\n{tail}")

    def run(self, coord: subprocess.Popen[bytes]) -> int:
        args = self.args
        shm_before = shm_files()
        asyncio.run(self.warm_up())  # a serve opens an fd (/dev/null) at its first client
        fds_before = fd_count(coord.pid)
        rss_before = rss(coord.pid, "RssAnon")
        print(
            f"soak: {args.workers} workers for {args.seconds:g} s, a kill -9 every "
            f"~{args.kill_every:g} s, seed {args.seed}, coordinator pid {coord.pid} "
            f"(pool {args.pool_size}, {fds_before} fds)",
            flush=True,
        )
        for slot in range(args.workers):
            self.start(slot)
        t0 = time.monotonic()
        end = t0 + args.seconds
        next_kill = t0 + self.rng.uniform(0.5, 1.5) * args.kill_every
        next_report = t0 + 60
        while (now := time.monotonic()) < end and coord.poll() is None:
            for slot, proc in self.procs.items():
                if proc.poll() is not None:  # died on its own
                    self.crashed(slot)
                    self.start(slot)
            if now >= next_kill:
                self.kill(self.rng.randrange(args.workers))
                next_kill = now + self.rng.uniform(0.5, 1.5) * args.kill_every
            if now >= next_report:
                print(f"  {now - t0:.0f} s: {self.kills} kills", flush=True)
                next_report += 60
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        failures: list[str] = []
        if coord.poll() is not None:
            failures.append(f"the coordinator exited with {coord.returncode}")
            return self.report(elapsed, failures, {}, 0, 0, rss_before, coord)

        (self.tmp / "stop").touch()
        for slot, proc in self.procs.items():
            try:
                proc.wait(timeout=OP_TIMEOUT + 15)
            except subprocess.TimeoutExpired:
                failures.append(f"worker {slot} did not stop within {OP_TIMEOUT + 15:.0f} s")
                proc.kill()
                proc.wait()
            if proc.returncode != 0:
                self.crashed(slot, "failed at the stop")
        failures += self.crashes

        leaks = asyncio.run(self.leftovers(coord))
        wait_for(lambda: fd_count(coord.pid) <= fds_before, 10)
        leaks["fds"] = fd_count(coord.pid) - fds_before
        new_files = shm_files() - shm_before
        leaks["/dev/shm"] = len(new_files)
        if new_files:  # (any process on the machine may have made them: named here)
            print(f"new in /dev/shm: {sorted(new_files)}")
        return self.report(elapsed, failures, leaks, fds_before, len(shm_before), rss_before, coord)

    async def warm_up(self) -> None:
        async with blockipc.connect(self.address, name="soak-driver") as client:
            await client.stats()
        await asyncio.sleep(0.5)  # and has closed that connection

    async def leftovers(self, coord: subprocess.Popen[bytes]) -> dict[str, int]:
        """Delete the workers' names, wait for the reclaims; what is still there."""
        me = "soak-driver"
        async with blockipc.connect(self.address, name=me) as client:
            for name in (await client.stats()).names:
                if name.startswith("soak-"):
                    with contextlib.suppress(blockipc.BlockNotFound):
                        await client.delete(name)
            deadline = time.monotonic() + 20
            while True:
                s = await client.stats()
                others = [p for p in s.processes if p != me]
                leaks = {
                    "blocks": s.blocks,
                    "leases": s.leases,
                    "channels": s.channels,
                    "processes": len(others),
                    "used_bytes": s.used_bytes,
                    "names": len(s.names),
                }
                if not any(leaks.values()) or time.monotonic() > deadline:
                    return leaks
                await asyncio.sleep(0.1)

    def report(
        self,
        elapsed: float,
        failures: list[str],
        leaks: dict[str, int],
        fds_before: int,
        shm_before: int,
        rss_before: int,
        coord: subprocess.Popen[bytes],
    ) -> int:
        ops: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        verified = mismatches = errors = stuck = 0
        for path in sorted(self.tmp.glob("w*.*.json")):
            state = json.loads(path.read_text())
            ops.update(state["ops"])
            refused.update(state["refused"])
            verified += state["verified"]
            mismatches += state["mismatches"]
            errors += state["errors"]
            stuck += state["stuck"]
        # the logs are complete even where a kill lost a worker's last counters
        for file in ("mismatches.log", "errors.log"):
            path = self.tmp / file
            if path.exists():
                lines = path.read_text()
                n = sum(1 for line in lines.splitlines() if line.startswith("soak-w"))
                if file == "mismatches.log":
                    mismatches = max(mismatches, n)
                else:
                    errors = max(errors, n - stuck)
                print(f"--- {file} ---\n{lines[-6000:]}", flush=True)
        total = sum(ops.values())
        alive = coord.poll() is None
        rss_after = rss(coord.pid, "RssAnon") if alive else 0
        print(f"ops: {total:,} in {elapsed:.0f} s ({total / elapsed:,.0f} ops/s)")
        print("  " + ", ".join(f"{k} {v:,}" for k, v in sorted(ops.items())))
        print(f"refused (explained by a kill or a full pool): {sum(refused.values()):,}")
        if refused:
            print("  " + ", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())))
        print(f"kills survived: {self.kills} ({sum(self.incarnation.values())} worker starts)")
        print(f"bytes verified: {verified:,} ({human_bytes(verified)})")
        print(f"mismatches: {mismatches}")
        print(f"unexpected errors: {errors}, stuck operations: {stuck}")
        n_leaks = leak_count(leaks) if leaks else -1
        detail = ", ".join(f"{k} {v}" for k, v in leaks.items())
        print(
            f"leaks: {n_leaks if leaks else 'not checked'} ({detail}; "
            f"baseline {fds_before} fds, {shm_before} files in /dev/shm)"
        )
        print(
            f"coordinator: {'alive' if alive else 'dead'}, private RSS {rss_before / 2**20:.0f} -> "
            f"{rss_after / 2**20:.0f} MiB"
        )
        if mismatches:
            failures.append(f"{mismatches} mismatches")
        if errors or stuck:
            failures.append(f"{errors} unexpected errors, {stuck} stuck operations")
        if n_leaks:
            failures.append(f"leaks: {detail or 'not checked'}")
        if total == 0:
            failures.append("no operation completed")
        for failure in failures:
            print(f"FAIL: {failure}")
        if failures:
            text = (self.tmp / "serve.log").read_text(errors="replace")
            log = [line for line in text.splitlines() if "[info" not in line][-40:]
            if log:
                print("--- blockipc serve's output (warnings and errors) ---\n" + "\n".join(log))
        print("result:", "FAIL" if failures else "PASS", flush=True)
        return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="exit status 1 on any mismatch or leak"
    )
    parser.add_argument("--seconds", type=float, default=600, help="how long (default 600)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--kill-every", type=float, default=2.0, help="mean seconds between kills (default 2)"
    )
    parser.add_argument("--pool-size", default="64MiB", help="the serve's pool (default 64MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    for hidden in ("--worker", "--incarnation", "--dir", "--address"):  # a worker's own
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        args.worker, args.incarnation = int(args.worker), int(args.incarnation)
        blockipc.run(worker_main, args)
        return 0
    if args.workers < 2:
        parser.error("--workers: at least 2 (they send to each other)")
    tmp = Path(tempfile.mkdtemp(prefix="bipc-soak-"))
    try:
        driver = Driver(args, tmp)
        try:
            with serve(Path(driver.address), args.pool_size, tmp / "serve.log") as coord:
                return driver.run(coord)
        finally:
            for proc in driver.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        if args.keep:
            print(f"work directory: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
