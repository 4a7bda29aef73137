"""Child processes for the integration tests, and the helper that runs them.

Run as ``python tests/_procs.py ROLE ADDRESS ARGS...``. A child reports on stdout, one
JSON object per line (``{"event": "ready", ...}``); its logs go to stderr so they never
mix with what the test parses. The test side uses :func:`spawn`, which always kills
the child and waits for it, whatever happens in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent  # the repository: tests of every folder find src/, README.md, ... here
SRC = ROOT / "src"


# -- the test side ---------------------------------------------------------------------
class Child:
    """A running child process whose stdout speaks JSON lines."""

    def __init__(self, role: str, proc: asyncio.subprocess.Process) -> None:
        self.role = role
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def event(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next JSON line the child prints."""
        assert self.proc.stdout is not None
        with anyio.fail_after(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise AssertionError(f"child {self.role} exited ({code}) without reporting")
        result: dict[str, Any] = json.loads(line)
        return result

    async def expect(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        event = await self.event(timeout)
        assert event["event"] == name, event
        return event

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = 20.0) -> int:
        """Wait for the child to exit and close its pipes; returns the exit code."""
        with anyio.fail_after(timeout):
            await self.proc.communicate()  # reads stdout to EOF, which closes the pipe
        code = self.proc.returncode
        assert code is not None
        return code

    async def stop(self) -> None:
        """Kill the child (if it still runs) and wait for it."""
        with anyio.CancelScope(shield=True):
            if self.proc.returncode is None:
                self.kill()
            await self.wait()


@contextlib.asynccontextmanager
async def spawn(role: str, *args: object, script: Path = HERE) -> AsyncIterator[Child]:
    """Start ``python SCRIPT ROLE ARGS...`` (this file by default); killed and waited for
    on exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        role,
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    child = Child(role, proc)
    try:
        yield child
    finally:
        await child.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


def payload(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the child side --------------------------------------------------------------------
def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _alloc_when_free(client: Any, size: int, deadline: float = 30.0) -> Any:
    """Allocate, waiting while the pool is full (the consumer frees what it verified)."""
    import blockipc

    with anyio.fail_after(deadline):
        while True:
            try:
                return await client.alloc(size)
            except blockipc.PoolExhausted:
                await anyio.sleep(0.005)


async def producer(address: str, name: str, to: str, *sizes: str) -> None:
    """Send one block per (size, method): written through a lease, or with write()."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        seed = 0
        for size in map(int, sizes):
            for method in ("lease", "write"):
                seed += 1
                data = payload(size, seed)
                block = await _alloc_when_free(client, size)
                if method == "lease":
                    async with client.lease(block, "w") as view:
                        assert len(view) == size
                        view[:] = data
                else:
                    assert await client.write(block, data) == size
                header = {"sha256": sha256(data), "method": method, "size": size}
                await client.send(block, to=to, header=header)
                report("sent", block=block.id, size=size, method=method)
        report("done")
        await anyio.sleep_forever()  # the test ends this process


async def consumer(address: str, name: str, count: str) -> None:
    """Receive ``count`` blocks, verify their checksums two ways, free them."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        for _ in range(int(count)):
            msg = await client.recv()
            expected = msg.header["sha256"]
            async with client.lease(msg.block, "r") as view:
                assert len(view) == msg.block.size
                via_lease = sha256(view)
            via_read = sha256(await client.read(msg.block))
            await client.free(msg.block)
            report(
                "verified",
                size=msg.block.size,
                method=msg.header["method"],
                sender=msg.sender,
                ok=via_lease == expected and via_read == expected,
            )
        report("done")
        await anyio.sleep_forever()


async def holder(address: str, name: str) -> None:
    """Hold several blocks and a write lease, then sleep until killed."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        blocks = [await client.alloc(size) for size in (100, 4096, 1 << 20, 3 << 20)]
        for i, block in enumerate(blocks):
            await client.write(block, bytes([i + 1]) * min(block.size, 1000))
        async with client.lease(blocks[2], "w") as view:
            view[:5] = b"HELLO"
            async with client.lease(blocks[0], "r"):
                report("ready", blocks=[b.id for b in blocks])
                await anyio.sleep_forever()


async def lease_writer(address: str, name: str, block: str, data: str) -> None:
    """Report ``ready``; once ``block`` is granted to this process (tried until it is),
    take a write lease on it, write ``data`` through the view, report ``written``, and
    sleep with the lease held until killed."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        while True:
            try:
                lease = client.lease(int(block), "w")
                view = await lease.__aenter__()
                break
            except blockipc.AccessDenied:
                await anyio.sleep(0.01)
        view[: len(data)] = data.encode()
        report("written")
        await anyio.sleep_forever()


async def sender(address: str, name: str, to: str, size: str) -> None:
    """Send one block to ``to``, report it, then sleep until killed."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        data = payload(int(size), 7)
        block = await client.alloc(int(size))
        await client.write(block, data)
        await client.send(block, to=to, header={"sha256": sha256(data)})
        report("sent", block=block.id)
        await anyio.sleep_forever()


async def reader(address: str, name: str) -> None:
    """Receive blocks and report their checksum as seen through a read lease, and how
    many segments this process had mapped before and after."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready", segments=len(client._segments))
        while True:
            msg = await client.recv()
            before = len(client._segments)
            async with client.lease(msg.block, "r") as view:
                digest = sha256(view)
            report(
                "read",
                block=msg.block.id,
                sha256=digest,
                segments_before=before,
                segments_after=len(client._segments),
            )
            await client.free(msg.block)


async def coordinator(path: str, pool_size: str) -> None:
    """A standalone coordinator on ``path``."""
    import blockipc

    async with blockipc.Coordinator(path=path, pool_size=pool_size) as coord:
        report("ready", address=coord.address)
        await coord.serve_forever()


ROLES = {
    "lease_writer": lease_writer,
    "producer": producer,
    "consumer": consumer,
    "holder": holder,
    "sender": sender,
    "reader": reader,
    "coordinator": coordinator,
}


# -- issue 3: streams, backpressure, sharing ---------------------------------------------
def stream_payload(seq: int, size: int) -> bytes:
    """The payload of message ``seq`` of a stream: cheap, distinct per message."""
    return seq.to_bytes(8, "little") * (size // 8) + bytes(size % 8)


async def stream_producer(
    address: str, name: str, to: str, count: str, size: str, quiet: str = ""
) -> None:
    """Send ``count`` blocks of ``size`` bytes to ``to``, one after another (each send
    waits while the inbox is full), each with its sequence number and sha256 in the
    header; report every send (unless ``quiet``: a full stdout pipe would block the
    loop), then "done"."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        for seq in range(int(count)):
            data = stream_payload(seq, int(size))
            block = await client.alloc(len(data))
            await client.write(block, data)
            await client.send(block, to=to, header={"seq": seq, "sha256": sha256(data)})
            if not quiet:
                report("sent", seq=seq)
        report("done", sent=int(count))
        await anyio.sleep_forever()


async def slow_consumer(
    address: str, name: str, senders: str, count: str, inbox: str, pause_every: str
) -> None:
    """Receive ``count`` messages with a small inbox, pausing 20 ms every
    ``pause_every`` messages so that the senders keep waiting for room; verify every
    checksum and each sender's order; report a summary."""
    import blockipc

    expected_senders = senders.split(",")
    async with blockipc.connect(address, name=name, inbox_messages=int(inbox)) as client:
        report("ready")
        seen: dict[str, set[int]] = {s: set() for s in expected_senders}
        last: dict[str, int] = dict.fromkeys(expected_senders, -1)
        bad = duplicates = out_of_order = 0
        for n in range(1, int(count) + 1):
            msg = await client.recv()
            seq = msg.header["seq"]
            data = await client.read(msg.block)
            bad += sha256(data) != msg.header["sha256"] or data != stream_payload(seq, len(data))
            duplicates += seq in seen[msg.sender]
            out_of_order += seq != last[msg.sender] + 1
            seen[msg.sender].add(seq)
            last[msg.sender] = seq
            await client.free(msg.block)
            if n % int(pause_every) == 0:
                await anyio.sleep(0.02)
        report(
            "done",
            received={s: len(v) for s, v in seen.items()},
            bad=bad,
            duplicates=duplicates,
            out_of_order=out_of_order,
            stats=(await client.stats()).blocks,
        )
        await anyio.sleep_forever()


async def sink(address: str, name: str, inbox: str) -> None:
    """Register with a small inbox and never receive: senders fill it and wait."""
    import blockipc

    async with blockipc.connect(address, name=name, inbox_messages=int(inbox)):
        report("ready")
        await anyio.sleep_forever()


ROLES.update(
    stream_producer=stream_producer,
    slow_consumer=slow_consumer,
    sink=sink,
)


def run_python(
    code: str, *args: str, options: Sequence[str] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter, as a user's program would run,
    and capture what it prints: ``python [OPTIONS] -c CODE ARGS`` from ``/``."""
    return subprocess.run(
        [sys.executable, *options, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )


@dataclasses.dataclass
class Served:
    """What ``blockipc serve`` printed, once :func:`serving` stopped it."""

    stdout: str = ""
    stderr: str = ""
    pid: int = 0  # of the serving process (known from the start)


@contextlib.contextmanager
def serving(
    sock: Path, *args: str, env: dict[str, str] | None = None, options: Sequence[str] = ()
) -> Iterator[Served]:
    """``blockipc [OPTIONS] serve ARGS`` until the block ends (SIGTERM), up once ``sock``
    exists; it must then exit 0 and remove ``sock``. Its output fills the yielded
    :class:`Served` when it has stopped."""
    server = subprocess.Popen(
        [sys.executable, "-m", "blockipc", *options, "serve", "--pool-size", "32MiB", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(pid=server.pid)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "blockipc serve did not start"
            time.sleep(0.05)
        yield served
    finally:
        server.send_signal(signal.SIGTERM)
        served.stdout, served.stderr = server.communicate(timeout=30)
    assert server.returncode == 0, served.stderr
    assert not sock.exists()


def main() -> None:
    import blockipc

    blockipc.configure_logging("debug")  # a failing test shows the child's events
    role, *args = sys.argv[1:]
    blockipc.run(lambda: ROLES[role](*args))


# -- remote sends through the coordinators' link ----------------------------------------
def _random_buffer(seed: int, size: int = 32 << 20) -> bytes:
    return random.Random(seed).randbytes(size)


async def node(
    path: str, pool_size: str, name: str, listen: str, peers: str, keys: str, timeout: str
) -> None:
    """A coordinator with a link: ``listen`` of ``-`` means none, ``keys`` of ``-`` the
    default key directory and ``plain`` no CURVE (insecure), ``peers`` JSON."""
    import blockipc

    async with blockipc.Coordinator(
        path=path,
        pool_size=pool_size,
        node=name,
        listen=None if listen == "-" else listen,
        peers=json.loads(peers),
        keys=None if keys in ("-", "plain") else keys,
        insecure=keys == "plain",
        link_timeout=float(timeout),
    ) as coord:
        report("ready", address=coord.address, link_address=coord.link_address)
        await coord.serve_forever()


async def remote_producer(
    address: str,
    name: str,
    to: str,
    count: str,
    max_size: str,
    seed: str,
    inflight: str,
    fixed: str = "0",
) -> None:
    """Send ``count`` blocks of random sizes up to ``max_size`` (all of ``max_size`` with
    ``fixed`` 1) to ``to`` (NODE/NAME), up to ``inflight`` sends at once; each header
    carries the index and a crc32. Reports
    every outcome; a block whose send failed is checked to be intact, then freed."""
    import zlib

    import blockipc

    rng = random.Random(int(seed))
    source = _random_buffer(int(seed))
    slots = asyncio.Semaphore(int(inflight))
    async with blockipc.connect(address, name=name) as client:
        report("ready")

        async def send(i: int, block: Any, crc: int) -> None:
            try:
                await client.send(block, to=to, header={"i": i, "crc": crc})
                report("sent", i=i)
            except blockipc.BlockIPCError as exc:
                async with client.lease(block, "r") as view:
                    intact = zlib.crc32(view) == crc
                await client.free(block)
                report("failed", i=i, error=type(exc).__name__, message=str(exc), intact=intact)
            finally:
                slots.release()

        tasks = []
        for i in range(int(count)):
            size = int(max_size) if fixed == "1" else rng.randint(1, int(max_size))
            start = rng.randrange(0, len(source) - size + 1)
            data = memoryview(source)[start : start + size]
            await slots.acquire()
            block = await _alloc_when_free(client, size)
            async with client.lease(block, "w") as view:
                view[:] = data
            tasks.append(asyncio.create_task(send(i, block, zlib.crc32(data))))
        await asyncio.gather(*tasks)
        report("done")
        await anyio.sleep_forever()


async def remote_consumer(address: str, name: str, count: str, delay: str) -> None:
    """Receive ``count`` blocks, check each crc32 in place, free it; sleep ``delay``
    seconds after each (a slow consumer)."""
    import zlib

    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        for _ in range(int(count)):
            msg = await client.recv()
            async with client.lease(msg.block, "r") as view:
                ok = zlib.crc32(view) == msg.header["crc"]
            await client.free(msg.block)
            report("got", i=msg.header["i"], ok=ok, sender=msg.sender, size=msg.block.size)
            if float(delay):
                await asyncio.sleep(float(delay))
        report("done")
        await anyio.sleep_forever()


ROLES.update(
    node=node,
    remote_producer=remote_producer,
    remote_consumer=remote_consumer,
)


# -- named objects, codecs and the cache (tests/client/test_objects.py) -------------------
def codec_samples() -> dict[str, Any]:
    """One value per codec, built the same way in every process."""
    import numpy as np

    data = payload(3000, 11)
    return {
        "raw": data,
        "json": {"text": "h\u00e9llo", "n": [1, 2.5, None, True], "nested": {"k": "v"}},
        "msgpack": {"bin": data[:100], "n": -(2**40), "list": [1, "two", 3.0]},
        "numpy": np.arange(6000, dtype=np.float32).reshape(60, 100)[:, ::2],
        "numpy_f": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
        "pickle": {"set": {1, 2, 3}, "tuple": (1, "a"), "complex": 1 + 2j},
    }


def sample_codec(key: str) -> str:
    return key.split("_")[0]


def same_value(got: Any, want: Any) -> bool:
    """Equal values; numpy arrays also of the same dtype and shape, and read-only."""
    import numpy as np

    if isinstance(want, np.ndarray):
        return (
            isinstance(got, np.ndarray)
            and got.dtype == want.dtype
            and got.shape == want.shape
            and bool(np.array_equal(got, want))
            and not got.flags.writeable
            # the order is kept: a Fortran-ordered array comes back Fortran-ordered
            and (got.flags.f_contiguous or not want.flags.f_contiguous)
        )
    return bool(type(got) is type(want) and got == want)


async def obj_agent(address: str, name: str) -> None:
    """Run the operations the test writes on stdin, one JSON object a line, and report
    each result: ``{"event": "ok", "result": ...}`` or ``{"event": "error", ...}``."""
    import blockipc

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=64 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with blockipc.connect(address, name=name) as client:
        report("ready")
        while line := await stdin.readline():
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                result = await _agent_op(client, op, cmd)
            except blockipc.BlockIPCError as exc:
                report("error", type=type(exc).__name__, message=str(exc))
            else:
                report("ok", result=result)


_held: set[asyncio.Future[None]] = set()  # the agent's lease-holding tasks


async def _agent_op(client: Any, op: str, a: dict[str, Any]) -> Any:
    import anyio

    import blockipc

    def value() -> Any:
        return bytes.fromhex(a["value"]) if a.get("hex") else a["value"]

    if op == "put":
        codec = a.get("codec", "msgpack")
        cacheable = a.get("cacheable", False)
        block = await client.put(value(), codec, name=a.get("name"), cacheable=cacheable)
        return block.id
    if op == "put_samples":
        for key, obj in codec_samples().items():
            await client.put(obj, sample_codec(key), name=f"{a['prefix']}-{key}")
        return None
    if op == "check_samples":
        ok = {}
        for key, want in codec_samples().items():
            with anyio.fail_after(20):
                while True:
                    try:
                        got = await client.get(f"{a['prefix']}-{key}")
                        break
                    except blockipc.BlockNotFound:
                        await anyio.sleep(0.01)
            ok[key] = same_value(got, want)
        return ok
    if op == "get":
        got = await client.get(a.get("name") or a["block"], codec=a.get("codec"))
        if a.get("digest"):  # a large value: its length and checksum, not its bytes
            return [len(got), zlib.crc32(got)]
        return got.hex() if isinstance(got, bytes) else got
    if op == "alloc":
        return (await client.alloc(a["size"])).id
    if op == "write":
        return await client.write(a["block"], value(), offset=a.get("offset", 0))
    if op == "lease_write":
        data = value()
        async with client.lease(a["block"], "w") as view:
            view[: len(data)] = data
        return len(data)
    if op == "copy":
        return await client.copy(a["src"], a["dst"])
    if op == "grant":
        return await client.grant(a["block"], a["to"], a.get("mode", "r"))
    if op == "free":
        return await client.free(a["block"])
    if op == "hold":  # a read lease (with a codec) on a named object, until killed
        held = asyncio.Event()

        async def hold() -> None:
            async with client.lease(a["block"], "r", codec=a.get("codec", "raw")):
                held.set()
                await anyio.sleep_forever()

        _held.add(asyncio.ensure_future(hold()))
        await held.wait()
        return None
    if op == "delete":
        return await client.delete(a["name"])
    raise ValueError(f"unknown op {op!r}")


ROLES.update(obj_agent=obj_agent)


# -- work queues -----------------------------------------------------------------------
async def queue_producer(address: str, name: str, queue: str, count: str) -> None:
    """Enqueue ``count`` jobs ``[name, i]`` (json) with the header ``{"i": i}``."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        for i in range(int(count)):
            await client.enqueue(queue, [name, i], codec="json", header={"i": i})
        report("done", count=int(count))


async def queue_consumer(address: str, name: str, queue: str, hold: str) -> None:
    """Take jobs and ack them, reporting each (``done``) after its ack, until a job
    ``"stop"``. With ``hold`` = ``"N:K"``: ack N jobs, then take K more and report them
    (``holding``) without acking, and sleep until killed."""
    import blockipc

    acks, keep = map(int, hold.split(":")) if hold != "-" else (-1, 0)
    async with blockipc.connect(address, name=name) as client:
        report("ready")
        while acks != 0:
            job = await client.take(queue)
            value = job.value
            await job.ack()
            if value == "stop":
                report("stopped")
                return
            assert job.header == {"i": value[1]}, (job.header, value)
            report("done", job=value, attempts=job.attempts, producer=job.producer)
            acks -= 1
        held = [await client.take(queue) for _ in range(keep)]
        report("holding", jobs=[job.value for job in held])
        await anyio.sleep_forever()


async def queue_batch_producer(address: str, name: str, queue: str, count: str, batch: str) -> None:
    """Enqueue ``count`` jobs ``[name, i]`` (json) in batches of ``batch`` with
    ``enqueue_many`` (each batch's header: ``{"first": its first i}``)."""
    import blockipc

    n, size = int(count), int(batch)
    async with blockipc.connect(address, name=name) as client:
        report("ready")
        ids = []
        for start in range(0, n, size):
            objs = [[name, i] for i in range(start, min(start + size, n))]
            ids += await client.enqueue_many(queue, objs, codec="json", header={"first": start})
        report("done", count=n, ids=ids)


async def queue_batch_holder(address: str, name: str, queue: str, most: str) -> None:
    """Take one batch of up to ``most`` jobs with ``take_many``, report it (``holding``:
    the jobs' ids and values) without acking, and sleep until killed."""
    import blockipc

    async with blockipc.connect(address, name=name) as client:
        report("ready")
        jobs = await client.take_many(queue, max_jobs=int(most))
        report("holding", ids=[job.id for job in jobs], values=[job.value for job in jobs])
        await anyio.sleep_forever()


ROLES.update(
    queue_producer=queue_producer,
    queue_consumer=queue_consumer,
    queue_batch_producer=queue_batch_producer,
    queue_batch_holder=queue_batch_holder,
)


if __name__ == "__main__":
    main()
