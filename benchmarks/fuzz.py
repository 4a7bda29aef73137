"""Frame fuzzer: many connections send malformed, random and mutated frames to a live
``blockipc serve`` while a good client keeps verifying its own work.

    python benchmarks/fuzz.py [--frames 100000] [--seed 1] [--connections 8]

It starts ``blockipc serve`` (its own process, from this checkout). ``--connections``
fuzz tasks connect over and over; each either tries a junk handshake (random bytes, a
mutated or wrong-version ``HELLO``, an ``ATTACH`` with a made-up token, a request
before ``HELLO``) or registers properly and sends a burst of frames: valid requests of
every op with random field values (the schema table's own fields, so block ids, names
and sizes hit real ones too), and the same frames mutated (bytes flipped, truncated,
wrong or huge length prefixes, random kinds and op codes, fields of the wrong types,
missing or unknown fields, data where none is allowed, replies sent as requests, plain
noise). Replies are read and thrown away; when the coordinator drops a connection the
task connects again. Meanwhile two good clients write and read back checksummed
payloads, use leases, copy, put/get a named object and send blocks to each other.

At the end the coordinator must be alive, every good operation verified, its RSS
growth within ``--max-rss-growth`` and its fds back to the baseline once the fuzz
connections are gone, and its stats clean once the good clients have left. Prints
frames sent, connections dropped, good operations verified; exit status 1 on any
failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chaos import SRC, MiB, check_payload, fd_count, leak_count, payload, rss, serve, wait_for

sys.path.insert(0, str(SRC))
import anyio
import msgpack

import blockipc
from blockipc._core.limits import MAX_INT
from blockipc._core.protocol import (
    _SCHEMAS,
    HEADER,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Connection,
    Kind,
    Op,
    Reply,
    Request,
    Role,
)
from blockipc._handshake import close_fds, receive_event
from blockipc.testing import shm_files

GOOD_A, GOOD_B = "fuzz-good-a", "fuzz-good-b"
GOOD_OBJECT = "fuzz-good-object"  # (not in the fuzzers' vocabulary: anyone may delete a name)
NAMES = [GOOD_A, GOOD_B, "fuzz-0", "fuzz-1", "fuzz-2", "", "x" * 300, "a/b", "topic"]
_STRUCT_KINDS = ("seglist", "strlist", "intlist", "linklist", "proclist", "msglist")


class Vocabulary:
    """Random field values: mostly of the schema's type, within its bounds."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self) -> int:
        r = self.rng
        return r.choice(
            [
                0,
                1,
                2,
                4096,
                1 << 26,
                MAX_INT,
                r.randrange(64),
                r.randrange(4096),
                r.randrange(1 << 20),
                r.randrange(1 << 32),
                r.randrange(MAX_INT),
            ]
        )

    def string(self) -> str:
        r = self.rng
        if r.random() < 0.7:
            return r.choice(NAMES)
        return "".join(chr(r.randrange(32, 0x3000)) for _ in range(r.randrange(40)))

    def anything(self, depth: int = 0) -> Any:
        """A value of any msgpack type (the wrong one, mostly)."""
        r = self.rng
        pick = r.randrange(10 if depth < 3 else 7)
        if pick == 0:
            return None
        if pick == 1:
            return r.random() < 0.5
        if pick == 2:
            return r.choice([-1, -(1 << 63), (1 << 64) - 1, MAX_INT + 1, self.integer()])
        if pick == 3:
            return r.random() * 1e300
        if pick == 4:
            return self.string()
        if pick == 5:
            return r.randbytes(r.randrange(100))
        if pick == 6:
            return "s" * r.choice([1025, 70000])
        if pick == 7:
            return [self.anything(depth + 1) for _ in range(r.randrange(6))]
        if pick == 8:
            return {
                r.choice([None, 1, -5, b"k", 1.5, True]): self.anything(depth + 1)
            }  # no str key
        return {self.string(): self.anything(depth + 1) for _ in range(r.randrange(4))}

    def value(self, kind: Any) -> Any:
        r = self.rng
        if kind is int:
            return self.integer()
        if kind is str:
            return r.choice(["r", "w"]) if r.random() < 0.2 else self.string()
        if kind is bool:
            return r.random() < 0.5
        if kind is bytes:
            return r.randbytes(r.choice([16, 32, 64]))
        if kind is dict:
            return {} if r.random() < 0.5 else {"k": self.integer(), "s": self.string()}
        if kind == "intlist":
            return [self.integer() for _ in range(r.randrange(8))]
        if kind == "strlist":
            return [self.string() for _ in range(r.randrange(4))]
        return []

    def args(self, op: Op) -> dict[str, Any]:
        schema = _SCHEMAS[(Kind.REQUEST, op)][0]
        return {name: self.value(kind) for name, kind in schema.items()}


def frame(kind: int, op: int, req_id: int, meta: bytes, data: bytes = b"") -> bytes:
    """A frame laid out by hand (any bytes in any field)."""
    body = HEADER.size - 4 + len(meta) + len(data)
    return HEADER.pack(body, kind, op, req_id, len(meta)) + meta + data


def ready_client() -> Connection:
    """A client-side ``Connection`` past its handshake, to encode any request with."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    hello = {"version": PROTOCOL_VERSION, "name": "x", "pid": 1, "inbox_messages": 8}
    server.receive_data(client.send(Request(1, Op.HELLO, {**hello, "inbox_bytes": MiB})))
    server.next_event()
    result = {"version": PROTOCOL_VERSION, "token": b"t" * 16, "min_block": 4096}
    result |= {"max_inline": 4096, "segments": [[0, MiB]], "gen_size": 4096}
    client.receive_data(server.send(Reply(1, Op.HELLO, result)))
    client.next_event()
    return client


REQUEST_OPS = [op for (kind, op) in _SCHEMAS if kind is Kind.REQUEST]
READY_OPS = [op for op in REQUEST_OPS if op not in (Op.HELLO, Op.ATTACH, Op.BYE)]
REPLY_KEYS = [key for key in _SCHEMAS if key[0] is Kind.REPLY]


class Mutator:
    """Frames for a registered connection: valid ones with random values, and those
    mutated in every way a broken or hostile client could."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.words = rng, Vocabulary(rng)
        self.req_id = 1

    def valid(self, ops: list[Op] = READY_OPS) -> bytes:
        self.req_id += 1
        op = self.rng.choice(ops)
        data = self.rng.randbytes(self.rng.randrange(5000)) if op is Op.WRITE else b""
        client = ready_client() if op not in (Op.HELLO, Op.ATTACH) else Connection(Role.CLIENT)
        return client.send(Request(self.req_id, op, self.words.args(op), data))

    def meta_of(self, op: Op, mangle: str) -> bytes:
        args: dict[Any, Any] = self.words.args(op)
        if mangle == "type" and args:
            args[self.rng.choice(list(args))] = self.words.anything()
        elif mangle == "missing" and args:
            del args[self.rng.choice(list(args))]
        elif mangle == "unknown":
            args[self.words.string() or "extra"] = self.words.anything()
        else:  # not a map at all
            return msgpack.packb(self.words.anything(), use_bin_type=True)
        return msgpack.packb(args, use_bin_type=True)

    def next(self) -> tuple[str, bytes]:
        """One frame and what was done to it."""
        r = self.rng
        how = r.choice(
            ["valid"] * 6
            + ["flip", "truncate", "length", "huge", "op", "kind", "type", "missing"]
            + ["unknown", "notmap", "metalen", "data", "reply", "noise", "handshake", "many"]
        )
        f = bytearray(self.valid())
        if how == "valid":
            pass
        elif how == "flip":
            for _ in range(r.randint(1, 8)):
                f[r.randrange(len(f))] ^= 1 << r.randrange(8)
        elif how == "truncate":
            f = f[: r.randrange(len(f))]
        elif how == "length":
            struct.pack_into("<I", f, 0, r.randrange(len(f) + 200))
        elif how == "huge":
            big = [0xFFFFFFFF, MAX_FRAME_SIZE + 1, MAX_FRAME_SIZE - 4, 1 << 31]
            struct.pack_into("<I", f, 0, r.choice(big))
        elif how == "op":
            f[5] = r.randrange(256)
        elif how == "kind":
            f[4] = r.choice([0, 2, 3, 4, 255])
        elif how in ("type", "missing", "unknown", "notmap"):
            op = r.choice(READY_OPS)
            self.req_id += 1
            f = bytearray(frame(Kind.REQUEST, op, self.req_id, self.meta_of(op, how)))
        elif how == "metalen":
            struct.pack_into("<I", f, 10, r.choice([0, 1, 0xFFFFFFFF, r.randrange(1 << 16)]))
        elif how == "data":
            f = bytearray(f) + r.randbytes(r.randint(1, 100))
            struct.pack_into("<I", f, 0, len(f) - 4)
        elif how == "reply":
            kind, op = r.choice(REPLY_KEYS)
            schema = _SCHEMAS[(kind, op)][0]
            meta = {n: self.words.value(k) for n, k in schema.items()}
            f = bytearray(frame(Kind.REPLY, op, 7, msgpack.packb(meta, use_bin_type=True)))
        elif how == "noise":
            f = bytearray(r.randbytes(r.randrange(1, 200)))
        elif how == "handshake":
            f = bytearray(self.valid([Op.HELLO, Op.ATTACH]))
        else:  # the same request many times (one burst)
            f = f * r.randint(2, 64)
        return how, bytes(f)

    def junk_handshake(self) -> tuple[str, bytes]:
        r = self.rng
        how = r.choice(["noise", "version", "hello", "attach", "early", "empty", "mutated"])
        words = self.words
        if how == "noise":
            return how, r.randbytes(r.randrange(1, 300))
        if how == "empty":
            return how, b""
        if how == "early":  # a ready-state request before HELLO
            return how, self.valid()
        hello = {
            "version": PROTOCOL_VERSION if how != "version" else r.choice([0, 2, MAX_INT]),
            "name": words.string(),
            "pid": words.integer(),
            "inbox_messages": words.integer(),
            "inbox_bytes": words.integer(),
        }
        if how == "attach":
            args = {"token": r.randbytes(16), "segments": [words.integer()], "channel": 0}
            return how, frame(Kind.REQUEST, Op.ATTACH, 1, msgpack.packb(args))
        f = bytearray(frame(Kind.REQUEST, Op.HELLO, 1, msgpack.packb(hello)))
        if how == "mutated":
            for _ in range(r.randint(1, 6)):
                f[r.randrange(len(f))] = r.randrange(256)
        return how, bytes(f)


class Fuzz:
    def __init__(self, address: str, frames: int, rng: random.Random) -> None:
        self.address, self.target, self.rng = address, frames, rng
        self.sent = 0
        self.connections = 0
        self.dropped = 0
        self.hellos_refused = 0
        self.kinds: Counter[str] = Counter()
        self.errors: list[str] = []

    def take(self) -> bool:
        return self.sent < self.target

    async def drain(self, stream: Any, dropped: asyncio.Event) -> None:
        with contextlib.suppress(Exception):
            while True:
                await stream.receive(65536)
        dropped.set()

    async def one(self, n: int) -> None:
        rng = random.Random(self.rng.random())
        mutator = Mutator(rng)
        name = f"fuzz-{n}"
        while self.take():
            self.connections += 1
            try:
                stream = await anyio.connect_unix(self.address)
            except OSError as exc:
                self.errors.append(f"connect refused: {exc!r}")
                return
            # (the reader ends when the stream is closed, never by a cancel: anyio's
            # socket wait on uvloop then logs an InvalidStateError from its callback)
            dropped = asyncio.Event()
            reader: asyncio.Task[None] | None = None
            try:
                if rng.random() < 0.2:
                    how, junk = mutator.junk_handshake()
                    self.kinds[f"handshake:{how}"] += 1
                    reader = asyncio.create_task(self.drain(stream, dropped))
                    with contextlib.suppress(Exception):
                        if junk:
                            await stream.send(junk)
                            self.sent += 1
                        await asyncio.wait_for(dropped.wait(), 0.05)
                    continue
                conn = Connection(Role.CLIENT)
                hello = {"version": PROTOCOL_VERSION, "name": name, "pid": os.getpid()}
                hello |= {"inbox_messages": 8, "inbox_bytes": MiB}
                try:
                    await stream.send(conn.send(Request(1, Op.HELLO, hello)))
                    with anyio.fail_after(30):
                        event, fds = await receive_event(stream, conn, with_fds=True)
                    close_fds(fds)
                except TimeoutError:
                    self.errors.append("a HELLO was not answered in 30 s")
                    continue
                except (blockipc.BlockIPCError, OSError, anyio.BrokenResourceError):
                    self.hellos_refused += 1  # e.g. the name's last holder not reclaimed yet
                    await anyio.sleep(0.01)
                    continue
                if not isinstance(event, Reply):
                    self.hellos_refused += 1
                    await anyio.sleep(0.01)
                    continue
                reader = asyncio.create_task(self.drain(stream, dropped))
                for _ in range(rng.randint(1, 60)):
                    if dropped.is_set() or not self.take():
                        break
                    how, f = mutator.next()
                    try:
                        with anyio.fail_after(10):
                            await stream.send(f)
                    except TimeoutError:
                        self.kinds["send-blocked"] += 1  # not reading us: bounded replies
                        break
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break
                    self.sent += 1
                    self.kinds[how] += 1
                    if rng.random() < 0.05:
                        await asyncio.sleep(0.002)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dropped.wait(), 0.02)
                if dropped.is_set():
                    self.dropped += 1
            finally:
                await stream.aclose()
                if reader is not None:
                    await reader


class Good:
    """Two well-behaved clients verifying everything they do, the whole time."""

    def __init__(self, address: str, rng: random.Random) -> None:
        self.address, self.rng = address, rng
        self.attempted = 0
        self.verified = 0
        self.foreign = 0
        self.failures: list[str] = []

    def check(self, data: bytes | memoryview, what: str, expected: bytes | None = None) -> None:
        self.attempted += 1
        problem = check_payload(data)
        if problem is None and expected is not None and bytes(data) != expected:
            problem = "intact, but not the payload written"
        if problem:
            self.failures.append(f"{what}: {problem}")
        else:
            self.verified += 1

    async def run(self, stop: asyncio.Event, a: blockipc.Client, b: blockipc.Client) -> None:
        r = self.rng
        blocks = [await a.alloc(r.choice([64, 4096, 20000, 300000])) for _ in range(6)]
        dst = await a.alloc(300000)
        returned: asyncio.Queue[blockipc.Block] = asyncio.Queue()

        async def echo() -> None:  # b sends back what a sent it, after checking it
            while True:
                msg = await b.recv()
                if msg.sender != GOOD_A:  # a fuzz connection's block: anyone may send
                    self.foreign += 1
                    if msg.block is not None:  # (inline and header-only ones have none)
                        await b.free(msg.block)
                    continue
                self.check(await b.read(msg.block), "b received")
                await b.send(msg.block, to=GOOD_A)

        async def home() -> None:
            while True:
                msg = await a.recv()
                if msg.sender != GOOD_B:
                    self.foreign += 1
                    if msg.block is not None:  # (inline and header-only ones have none)
                        await a.free(msg.block)
                    continue
                self.check(await a.read(msg.block), "a got back")
                returned.put_nowait(msg.block)

        async def refuse_channels(client: blockipc.Client) -> None:
            while True:  # fuzz connections may open channels to us: closed unread
                rx = await client.accept_channel()
                self.foreign += 1
                await rx.aclose()

        tasks = [asyncio.create_task(t) for t in (echo(), home())]
        tasks += [asyncio.create_task(refuse_channels(c)) for c in (a, b)]
        try:
            while not stop.is_set():
                while not returned.empty():
                    blocks.append(returned.get_nowait())
                if not blocks:
                    await asyncio.sleep(0.001)
                    continue
                block = blocks.pop(r.randrange(len(blocks)))
                data = payload(r, r.randint(40, block.size))
                pick = r.randrange(5)
                if pick == 0:
                    await a.write(block, data)
                    self.check(await a.read(block, 0, len(data)), "write/read", data)
                elif pick == 1:
                    async with a.lease(block, "w") as view:
                        view[: len(data)] = data
                    async with a.lease(block, "r") as view:
                        self.check(view[: len(data)], "lease", data)
                elif pick == 2:
                    await a.write(block, data)
                    await a.copy(block, dst, size=len(data))
                    self.check(await a.read(dst, 0, len(data)), "copy", data)
                elif pick == 3:
                    await a.put(data, "raw", name=GOOD_OBJECT)
                    self.check(await b.get(GOOD_OBJECT), "put/get", data)
                else:  # round trip through b (checked on the way there and back)
                    await a.write(block, payload(r, block.size))
                    await a.send(block, to=GOOD_B)
                    self.attempted += 1  # the send itself; the block comes back, checked
                    self.verified += 1
                    continue
                blocks.append(block)
        finally:
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for res in results:
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    self.failures.append(f"good client task: {res!r}")
            for blk in [*blocks, dst]:
                with contextlib.suppress(blockipc.BlockIPCError):
                    await a.free(blk)
            while not returned.empty():
                await a.free(returned.get_nowait())


async def session(address: str, pid: int, args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    failures: list[str] = []
    shm_before = shm_files()
    async with (
        blockipc.connect(address, name=GOOD_A) as a,
        blockipc.connect(address, name=GOOD_B) as b,
    ):
        await a.stats()
        await asyncio.sleep(0.3)
        fds_before, rss_before, anon_before = fd_count(pid), rss(pid), rss(pid, "RssAnon")
        fuzz = Fuzz(address, args.frames, rng)
        good = Good(address, random.Random(rng.random()))
        stop = asyncio.Event()
        t0 = time.monotonic()
        good_task = asyncio.create_task(good.run(stop, a, b))
        samples: list[tuple[int, int]] = []
        progress = asyncio.create_task(sample(fuzz, t0, pid, samples))
        try:
            await asyncio.gather(*(fuzz.one(n) for n in range(args.connections)))
        finally:
            progress.cancel()
            stop.set()
            try:
                await good_task
            except Exception:  # noqa: BLE001 (whatever it was, it is reported as a failure)
                good.failures.append(f"good client: {traceback.format_exc()}")
        elapsed = time.monotonic() - t0
        rss_after, anon_after = rss(pid), rss(pid, "RssAnon")
        # the fuzz connections are gone: only the good clients stay
        wait_for(lambda: fd_count(pid) <= fds_before, 10)
        fds_after = fd_count(pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = await a.stats()
            if sorted(s.processes) == [GOOD_A, GOOD_B] and not s.leases and not s.channels:
                break
            await asyncio.sleep(0.1)
        with contextlib.suppress(blockipc.BlockNotFound):
            await a.delete(GOOD_OBJECT)
        left_names = list((await a.stats()).names)
        for name in left_names:  # bound by a fuzz PUT+COMMIT that happened to be valid
            with contextlib.suppress(blockipc.BlockIPCError):
                await a.delete(name)
        mid = await a.stats()
    await asyncio.sleep(0.2)
    async with blockipc.connect(address, name="fuzz-check") as c:
        deadline = time.monotonic() + 20
        while True:
            s = await c.stats()
            leaks = {
                "blocks": s.blocks,
                "leases": s.leases,
                "channels": s.channels,
                "processes": len([p for p in s.processes if p != "fuzz-check"]),
                "used_bytes": s.used_bytes,
                "names": len(s.names),
            }
            if not any(leaks.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

    growth = anon_after - anon_before
    # where the serve stood halfway: memory that grows with the traffic grows after it too
    anon_half = next((a for sent, a in samples if sent >= args.frames // 2), anon_after)
    late = anon_after - anon_half
    peak = max([a for _, a in samples] + [anon_after])
    print(f"frames sent: {fuzz.sent:,} in {elapsed:.0f} s ({fuzz.sent / elapsed:,.0f}/s)")
    print("  " + ", ".join(f"{k} {v:,}" for k, v in sorted(fuzz.kinds.items())))
    print(
        f"connections: {fuzz.connections:,}, dropped by the coordinator: {fuzz.dropped:,}, "
        f"handshakes refused: {fuzz.hellos_refused:,}"
    )
    print(
        f"good ops verified: {good.verified:,}/{good.attempted:,} "
        f"(foreign blocks and channels from fuzz connections freed: {good.foreign})"
    )
    print(
        f"coordinator: {'alive' if proc_alive(pid) else 'DEAD'}, RSS {rss_before / MiB:.0f} -> "
        f"{rss_after / MiB:.0f} MiB; private {anon_before / MiB:.0f} -> {anon_half / MiB:.0f} "
        f"(halfway) -> {anon_after / MiB:.0f} MiB (peak {peak / MiB:.0f}, {growth / MiB:+.1f} "
        f"MiB, {late / MiB:+.1f} in the second half); fds {fds_before} -> {fds_after} "
        f"once the fuzz connections were gone"
    )
    print(
        f"after the fuzz: processes {sorted(mid.processes)}, leases {mid.leases}, channels "
        f"{mid.channels}; names left by fuzz connections: {max(len(left_names) - 1, 0)}"
    )
    detail = ", ".join(f"{k} {v}" for k, v in leaks.items())
    leaks["/dev/shm"] = len(shm_files() - shm_before)
    print(f"leaks once everyone left: {leak_count(leaks)} ({detail}, /dev/shm {leaks['/dev/shm']})")
    failures += fuzz.errors + good.failures
    if good.verified != good.attempted or not good.attempted:
        failures.append(f"good client verified {good.verified}/{good.attempted}")
    if growth > args.max_rss_growth * MiB:
        failures.append(f"coordinator private RSS grew {growth / MiB:.0f} MiB")
    if args.frames >= 20_000 and late > args.max_late_growth * MiB:
        failures.append(f"coordinator private RSS grew {late / MiB:.0f} MiB in the second half")
    if fds_after > fds_before:
        failures.append(f"coordinator fds {fds_before} -> {fds_after}")
    if any(leaks.values()):
        failures.append(f"leaks: {leaks}")
    if fuzz.sent < args.frames:
        failures.append(f"only {fuzz.sent} of {args.frames} frames sent")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def proc_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def sample(fuzz: Fuzz, t0: float, pid: int, samples: list[tuple[int, int]]) -> None:
    """The coordinator's private RSS every 0.5 s, against frames sent so far."""
    next_print = t0 + 10
    while True:
        await asyncio.sleep(0.5)
        samples.append((fuzz.sent, rss(pid, "RssAnon")))
        if time.monotonic() >= next_print:
            next_print += 10
            print(
                f"  {time.monotonic() - t0:.0f} s: {fuzz.sent:,} frames, {fuzz.connections:,} "
                f"connections, coordinator private RSS {samples[-1][1] / MiB:.0f} MiB",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="exit status 1 on any failure"
    )
    parser.add_argument("--frames", type=int, default=100_000, help="frames (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--connections", type=int, default=8, help="fuzz tasks (default 8)")
    parser.add_argument("--pool-size", default="64MiB", help="the serve's pool (default 64MiB)")
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=128,
        help="MiB the serve's private RSS may grow in all (default 128)",
    )
    parser.add_argument(
        "--max-late-growth",
        type=float,
        default=24,
        help="MiB it may grow in the second half of a run of 20,000 frames or more (default 24)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bipc-fuzz-") as tmp:
        sock = Path(tmp) / "c.sock"
        log = Path(tmp) / "serve.log"
        print(
            f"fuzz: {args.frames:,} frames over {args.connections} connections at a time, "
            f"seed {args.seed}",
            flush=True,
        )
        with serve(sock, args.pool_size, log) as coord:
            status = blockipc.run(session, str(sock), coord.pid, args)
            alive = coord.poll() is None
        if not alive:
            print(f"FAIL: the coordinator exited with {coord.returncode}")
            status = 1
        if status:
            text = log.read_text(errors="replace")
            tail = [line for line in text.splitlines() if "[info" not in line][-60:]
            print("--- blockipc serve's output (warnings and errors) ---\n" + "\n".join(tail))
        print("result:", "FAIL" if status else "PASS", flush=True)
        return status


if __name__ == "__main__":
    sys.exit(main())
