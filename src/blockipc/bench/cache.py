"""The cache benchmark: named objects and the client cache against the stdlib's shared
dict, Redis and ``multiprocessing.shared_memory``, in one run.

Theory of operation
-------------------
Same method as :mod:`blockipc.bench.core`: every party is its own process (``spawn``),
pinned to one CPU with :func:`os.sched_setaffinity` and running uvloop; the *server
side* (the blockipc coordinator, the ``Manager()`` server process, ``redis-server``)
sits on the first CPU, the *client side* (the writer and the reader) on the second.
The parent starts everything, warms every contender once, then runs interleaved rounds
(the order rotates each round) and only collects the samples, taken with
:func:`time.perf_counter_ns` in the process that does the work.

What is measured, always from a reader process other than the one that stored the
value:

* ``get`` of a 1 MiB numpy array and of a 1 MiB bytes value (``codec="raw"``), as a
  cache **hit** (a client with the default cache, which holds the value) and as a
  **miss** (a client with ``cache_size=0``: one round trip to the coordinator for a
  read lease, one copy out of the pool and the decode, every time);
* the same 1 MiB bytes value read from a ``multiprocessing.Manager().dict()`` and from
  Redis over its Unix socket with redis-py's asyncio client (skipped, with a note,
  when ``redis-server`` or redis-py is missing);
* a 64 MiB numpy array handed to the reader: ``put`` in the writer plus an uncached
  ``get`` in the reader (the reader ends up with its own array), against
  ``multiprocessing.shared_memory`` used by hand for the same hand-over: the writer
  creates a segment and copies the array in, the reader attaches, copies it out and
  detaches, the writer unlinks. The sum of the two timed halves is one sample.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from .harness import (
    START_TIMEOUT,
    Party,
    coordinator_role,
    cpu_snapshot,
    fmt_us,
    has,
    load_notes,
    machine_info,
    pick_cpus,
    rounds_progress,
    run_worker,
    serve_commands,
    summary,
    table,
    timed_loop,
    verdict,
    worker_context,
)

if TYPE_CHECKING:
    from .harness import Pipe, Role

__all__ = ["main"]

VALUE_SIZE: Final = 1 << 20
BIG_SIZE: Final = 64 << 20
POOL_SIZE: Final = "256MiB"

# targets (issue 6)
TARGET_HIT_VS_MISS: Final = 10.0
TARGET_MISS_VS_BASELINE: Final = 2.0
TARGET_HIT_VS_BASELINE: Final = 20.0
TARGET_BIG_VS_SHM: Final = 1.5


@dataclass(frozen=True, slots=True)
class Plan:
    """How much one run measures; counts are per contender and per round."""

    rounds: int
    gets: int  # 1 MiB gets per slice
    big: int  # 64 MiB hand-overs per slice
    warmup: int  # untimed gets before each slice


FULL: Final = Plan(rounds=12, gets=400, big=4, warmup=40)
QUICK: Final = Plan(rounds=3, gets=150, big=2, warmup=20)


# =====================================================================================
# worker processes
# =====================================================================================


def _worker(role: str, cpu: int | None, conn: Pipe, arg: dict[str, Any]) -> None:
    """Entry point of every child process (the spawn context imports it by name)."""
    run_worker(_ROLES, role, cpu, conn, arg)


def _values() -> tuple[Any, bytes]:
    """The 1 MiB numpy array and bytes value, the same in every process."""
    import numpy as np

    arr = np.random.default_rng(6).standard_normal(VALUE_SIZE // 8)
    return arr, arr.tobytes()[::-1]


async def _writer_role(conn: Pipe, arg: dict[str, Any]) -> None:
    """Stores the 1 MiB values everywhere once, then does the writer's half of each
    64 MiB hand-over."""
    from multiprocessing import shared_memory

    import numpy as np

    from .. import connect

    arr, data = _values()
    big = np.random.default_rng(7).standard_normal(BIG_SIZE // 8)
    async with connect(arg["address"], name="bench-writer") as client:
        await client.put(arr, "numpy", name="value-numpy")
        await client.put(data, "raw", name="value-bytes")
        arg["shared_dict"]["value"] = data
        if arg["redis"]:
            import redis

            with redis.Redis(unix_socket_path=arg["redis"]) as r:
                r.set("value", data)
        segments: dict[str, shared_memory.SharedMemory] = {}

        async def put_big(args: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter_ns()
            await client.put(big, "numpy", name="big")
            return {"elapsed": time.perf_counter_ns() - t0}

        async def delete_big(args: dict[str, Any]) -> dict[str, Any]:
            await client.delete("big")
            return {}

        async def shm_create(args: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter_ns()
            shm = shared_memory.SharedMemory(create=True, size=big.nbytes)
            np.ndarray(big.shape, big.dtype, buffer=shm.buf)[...] = big
            elapsed = time.perf_counter_ns() - t0
            segments[shm.name] = shm
            return {"elapsed": elapsed, "name": shm.name, "shape": big.shape, "dtype": "f8"}

        async def shm_unlink(args: dict[str, Any]) -> dict[str, Any]:
            shm = segments.pop(args["name"])
            shm.close()
            shm.unlink()
            return {}

        await serve_commands(
            conn,
            {
                "put_big": put_big,
                "delete_big": delete_big,
                "shm_create": shm_create,
                "shm_unlink": shm_unlink,
            },
        )


async def _reader_role(conn: Pipe, arg: dict[str, Any]) -> None:
    """Every timed get: blockipc hit and miss, the shared dict, Redis, and the reader's
    half of the 64 MiB hand-overs."""
    from multiprocessing import shared_memory

    import numpy as np

    from .. import connect

    arr, data = _values()
    shared = arg["shared_dict"]
    redis_client: Any = None
    if arg["redis"]:
        import redis.asyncio

        redis_client = redis.asyncio.Redis(unix_socket_path=arg["redis"])
    async with (
        connect(arg["address"], name="bench-reader") as cached,
        connect(arg["address"], name="bench-reader-nocache", cache_size=0) as uncached,
    ):
        want = {"value-numpy": arr, "value-bytes": data}
        for name, value in want.items():  # check once, untimed: the same value everywhere
            for c in (cached, uncached):
                got = await c.get(name)
                if not (
                    np.array_equal(got, value) if isinstance(value, np.ndarray) else got == value
                ):
                    raise RuntimeError(f"{name}: blockipc returned a different value")
        if shared["value"] != data:
            raise RuntimeError("the shared dict returned a different value")
        if redis_client is not None and await redis_client.get("value") != data:
            raise RuntimeError("Redis returned a different value")

        async def timed(get: Callable[[], Any], args: dict[str, Any]) -> dict[str, Any]:
            samples: list[int] = []
            record = timed_loop(samples, args["warmup"])
            for _ in range(args["warmup"] + args["n"]):
                t0 = time.perf_counter_ns()
                await get()
                record(t0)
            return {"samples": samples}

        async def blockipc_get(args: dict[str, Any]) -> dict[str, Any]:
            client = cached if args["hit"] else uncached
            name = args["name"]
            return await timed(lambda: client.get(name), args)

        async def dict_get(args: dict[str, Any]) -> dict[str, Any]:
            async def get() -> bytes:
                value: bytes = shared["value"]  # a blocking round trip to the manager
                return value

            return await timed(get, args)

        async def redis_get(args: dict[str, Any]) -> dict[str, Any]:
            return await timed(lambda: redis_client.get("value"), args)

        async def get_big(args: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter_ns()
            got = await uncached.get("big")
            elapsed = time.perf_counter_ns() - t0
            if got.nbytes != BIG_SIZE:
                raise RuntimeError("the 64 MiB array came back short")
            return {"elapsed": elapsed}

        async def shm_read(args: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter_ns()
            shm = shared_memory.SharedMemory(name=args["name"])
            try:
                view = np.ndarray(tuple(args["shape"]), args["dtype"], buffer=shm.buf)
                got = view.copy()  # the reader's own array, as get() returns
                del view
            finally:
                shm.close()
            elapsed = time.perf_counter_ns() - t0
            if got.nbytes != BIG_SIZE:
                raise RuntimeError("the 64 MiB array came back short")
            return {"elapsed": elapsed}

        try:
            await serve_commands(
                conn,
                {
                    "blockipc_get": blockipc_get,
                    "dict_get": dict_get,
                    "redis_get": redis_get,
                    "get_big": get_big,
                    "shm_read": shm_read,
                },
            )
        finally:
            if redis_client is not None:
                await redis_client.aclose()


_ROLES: Final[dict[str, Role]] = {
    "coordinator": coordinator_role,
    "writer": _writer_role,
    "reader": _reader_role,
}


# =====================================================================================
# the parent
# =====================================================================================


def _party(ctx: Any, role: str, cpu: int | None, arg: dict[str, Any]) -> Party:
    """A party of this suite: the harness's process-and-pipe, running this module's roles."""
    return Party(ctx, role, cpu, arg, worker=_worker)


@contextlib.contextmanager
def _redis_server(tmp: str, cpu: int | None, notes: list[str]) -> Any:
    """``redis-server`` on a Unix socket in ``tmp`` (no TCP, no persistence), pinned
    to ``cpu``; yields its socket path, or ``None`` (with a note) if it cannot run."""
    exe = shutil.which("redis-server")
    if exe is None or not has("redis"):
        if exe is None:  # a system package: nothing in this project installs it
            missing, fix = "redis-server is not on PATH", "install Redis"
        else:
            missing, fix = "redis-py is not installed", "pip install redis hiredis"
        notes.append(f"{missing}: the Redis rows are skipped ({fix} to measure them)")
        yield None
        return
    path = os.path.join(tmp, "redis.sock")
    log = os.path.join(tmp, "redis.log")
    cmd = [exe, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
           "--save", "", "--appendonly", "no", "--dir", tmp, "--logfile", log]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(proc.pid, {cpu})
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                notes.append("redis-server did not start: the Redis rows are skipped")
                yield None
                return
            time.sleep(0.02)
        yield path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(plan: Plan, notes: list[str]) -> dict[str, list[dict[str, Any]]]:
    server_cpu, client_cpu, pin_note = pick_cpus()
    if pin_note:
        notes.append(pin_note)
    ctx = worker_context("blockipc.bench.cache", "uvloop", "zmq", "numpy")
    parties: dict[str, Party] = {}
    with (
        tempfile.TemporaryDirectory(prefix="blockipc-bench-cache-") as tmp,
        _redis_server(tmp, server_cpu, notes) as redis_path,
        ctx.Manager() as manager,
    ):
        manager_pid = manager._process.pid  # type: ignore[attr-defined]  # no public accessor
        if server_cpu is not None and manager_pid and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(manager_pid, {server_cpu})
        shared = manager.dict()
        try:
            parties["coordinator"] = _party(
                ctx, "coordinator", server_cpu, {"pool_size": POOL_SIZE}
            )
            address = parties["coordinator"].receive(START_TIMEOUT)["address"]
            common = {"address": address, "shared_dict": shared, "redis": redis_path}
            parties["writer"] = _party(ctx, "writer", client_cpu, common)
            parties["writer"].receive(START_TIMEOUT)  # the values are stored now
            parties["reader"] = _party(ctx, "reader", client_cpu, common)
            parties["reader"].receive(START_TIMEOUT)
            reader, writer = parties["reader"], parties["writer"]

            def gets(cmd: str, **args: Any) -> Callable[[], dict[str, Any]]:
                full = {"n": plan.gets, "warmup": plan.warmup, **args}
                return lambda: reader.ask(cmd, full)

            def big_blockipc() -> dict[str, Any]:
                samples = []
                for _ in range(plan.big):
                    put = writer.ask("put_big", {})["elapsed"]
                    get = reader.ask("get_big", {})["elapsed"]
                    writer.ask("delete_big", {})
                    samples.append(put + get)
                return {"samples": samples}

            def big_shm() -> dict[str, Any]:
                samples = []
                for _ in range(plan.big):
                    made = writer.ask("shm_create", {})
                    read = reader.ask("shm_read", made)["elapsed"]
                    writer.ask("shm_unlink", {"name": made["name"]})
                    samples.append(made["elapsed"] + read)
                return {"samples": samples}

            slices: dict[str, Callable[[], dict[str, Any]]] = {
                "numpy_hit": gets("blockipc_get", name="value-numpy", hit=True),
                "numpy_miss": gets("blockipc_get", name="value-numpy", hit=False),
                "bytes_hit": gets("blockipc_get", name="value-bytes", hit=True),
                "bytes_miss": gets("blockipc_get", name="value-bytes", hit=False),
                "dict": gets("dict_get"),
                "big_blockipc": big_blockipc,
                "big_shm": big_shm,
            }
            if redis_path is not None:
                slices["redis"] = gets("redis_get")
            for run in slices.values():  # one untimed pass warms every contender
                run()
            results: dict[str, list[dict[str, Any]]] = {key: [] for key in slices}
            order = collections.deque(slices)
            pids = [os.getpid(), manager_pid or 0] + [p.process.pid or 0 for p in parties.values()]
            before, started = cpu_snapshot(pids), time.perf_counter()
            with rounds_progress(plan.rounds) as done:
                for _ in range(plan.rounds):
                    for key in order:
                        results[key].append(slices[key]())
                    order.rotate(-1)
                    done()
            notes += load_notes(before, cpu_snapshot(pids), started)
            return results
        finally:
            for name in ("reader", "writer", "coordinator"):  # clients first
                if name in parties:
                    parties[name].stop()
                    parties[name].join()


def _analyse(results: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], list[list[str]]]:
    m = {key: summary(rounds) for key, rounds in results.items()}
    rows: list[list[str]] = []
    for kind, label in (("numpy", "1 MiB numpy array"), ("bytes", "1 MiB bytes")):
        hit, miss = m[f"{kind}_hit"], m[f"{kind}_miss"]
        sp = miss["median_us"] / hit["median_us"]
        rows.append(
            [
                f"get {label}: hit vs miss, median",
                f"hit: {fmt_us(hit['median_us'])} (p99 {fmt_us(hit['p99_us'])})",
                f"miss: {fmt_us(miss['median_us'])} (p99 {fmt_us(miss['p99_us'])})",
                f"{sp:,.0f}x faster",
                f"≥ {TARGET_HIT_VS_MISS:.0f}x",
                verdict(sp >= TARGET_HIT_VS_MISS),
            ]
        )
    hit, miss = m["bytes_hit"], m["bytes_miss"]
    for key, label in (
        ("dict", "multiprocessing.Manager().dict()"),
        ("redis", "Redis, Unix socket, redis-py asyncio"),
    ):
        base = m.get(key)
        if base is None:
            rows.append(
                [f"get 1 MiB bytes vs {label}", "—", "skipped (see the notes)", "—", "—", "skip"]
            )
            continue
        for which, side, target in (
            ("miss", miss, TARGET_MISS_VS_BASELINE),
            ("hit", hit, TARGET_HIT_VS_BASELINE),
        ):
            sp = base["median_us"] / side["median_us"]
            rows.append(
                [
                    f"get 1 MiB bytes from another process: {which} vs {label.split(',')[0]}",
                    f"{which}: {fmt_us(side['median_us'])}",
                    f"{label}: {fmt_us(base['median_us'])} (p99 {fmt_us(base['p99_us'])})",
                    f"{sp:,.1f}x faster",
                    f"≥ {target:.0f}x",
                    verdict(sp >= target),
                ]
            )
    big, shm = m["big_blockipc"], m["big_shm"]
    ratio = big["median_us"] / shm["median_us"]
    rows.append(
        [
            "put+get 64 MiB numpy array to another process, median",
            f"{fmt_us(big['median_us'])} ({BIG_SIZE / (big['median_us'] * 1e3):.2f} GB/s)",
            (
                f"shared_memory by hand: {fmt_us(shm['median_us'])} "
                f"({BIG_SIZE / (shm['median_us'] * 1e3):.2f} GB/s)"
            ),
            f"{ratio:.2f}x",
            f"≤ {TARGET_BIG_VS_SHM}x",
            verdict(ratio <= TARGET_BIG_VS_SHM),
        ]
    )
    return m, rows


def main(argv: list[str] | None = None) -> int:
    """The cache benchmark: print a Markdown table of named-object gets and puts
    against ``Manager().dict()``, Redis and ``multiprocessing.shared_memory``."""
    parser = argparse.ArgumentParser(
        prog="blockipc bench --suite cache",
        description=(
            "Benchmark blockipc's named objects and client cache: get of a 1 MiB numpy "
            "array and bytes value (cache hit and miss) from another process, against "
            "multiprocessing.Manager().dict() and Redis over its Unix socket, and put+get "
            "of a 64 MiB numpy array against multiprocessing.shared_memory by hand. Every "
            "party runs in its own pinned process; contenders are measured in interleaved "
            "rounds. Prints a Markdown table."
        ),
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"interleaved rounds (default {FULL.rounds}; {QUICK.rounds} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 20 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every result to PATH as JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    if not has("numpy"):
        print("blockipc bench --suite cache: needs numpy", file=sys.stderr)
        return 1

    machine = machine_info()
    notes: list[str] = []
    started = time.perf_counter()
    try:
        results = _measure(plan, notes)
    except (RuntimeError, OSError) as exc:
        print(f"blockipc bench --suite cache: {exc}", file=sys.stderr)
        return 1
    metrics, rows = _analyse(results)
    duration = time.perf_counter() - started
    v = machine["versions"]
    for mod in ("redis", "hiredis"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = "missing"
    print(
        f"blockipc bench --suite cache — {machine['date']}, {machine['cpu']}, "
        f"{machine['cpus']} CPUs, {machine['kernel']}, Python {v['python']}, "
        f"uvloop {v['uvloop']}, numpy {v['numpy']}, redis-py {v['redis']} "
        f"(hiredis {v['hiredis']})"
    )
    print(
        f"{plan.rounds} interleaved rounds, {duration:.0f} s; coordinator, Manager server "
        "and redis-server on one CPU, writer and reader on the other\n"
    )
    print(table(rows))
    for note in notes:
        print(f"\nNote: {note}")
    if args.json:
        doc = {
            "machine": machine,
            "plan": asdict(plan),
            "duration_s": duration,
            "notes": notes,
            "metrics": metrics,
            "rows": rows,
            "passed": all(r[-1] != "**FAIL**" for r in rows),
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
