"""What the chaos tools (``soak.py``, ``fuzz.py``) share: a ``blockipc serve`` of this
checkout in its own process, what /proc says about it, and self-checking payloads.

A payload carries its own checksum, so any process that reads it, whoever wrote it,
can tell whether the bytes are the ones written::

    u64 length | 32-byte BLAKE2b of the body | body
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MiB = 1 << 20

_HEAD = struct.Struct("<Q32s")
MIN_PAYLOAD = _HEAD.size  # 40 bytes: an empty body


def payload(rng: random.Random, size: int) -> bytes:
    """``size`` bytes (at least :data:`MIN_PAYLOAD`) that check themselves."""
    body = rng.randbytes(max(size, MIN_PAYLOAD) - MIN_PAYLOAD)
    return (
        _HEAD.pack(len(body) + MIN_PAYLOAD, hashlib.blake2b(body, digest_size=32).digest()) + body
    )


def check_payload(data: bytes | memoryview) -> str | None:
    """``None`` when ``data`` is an intact payload, else what is wrong with it."""
    if len(data) < MIN_PAYLOAD:
        return f"{len(data)} bytes, shorter than a payload's head"
    size, digest = _HEAD.unpack_from(data)
    if size != len(data):
        return f"length field says {size}, got {len(data)} bytes"
    if hashlib.blake2b(data[MIN_PAYLOAD:], digest_size=32).digest() != digest:
        return f"checksum mismatch over {size} bytes"
    return None


def child_env() -> dict[str, str]:
    """The environment for a child that imports blockipc from this checkout."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(SRC) + (os.pathsep + path if path else "")}


@contextlib.contextmanager
def serve(socket_path: Path, pool_size: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``blockipc serve`` on ``socket_path``, its stderr in ``log_path``; stopped (SIGTERM,
    then SIGKILL) on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blockipc",
                "serve",
                "--socket",
                str(socket_path),
                "--pool-size",
                pool_size,
            ],
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"blockipc serve exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("blockipc serve did not make its socket in 30 s")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident bytes of ``pid``: all of them (``VmRSS``, which counts the pool's pages
    the process touched) or its private memory alone (``RssAnon``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def wait_for(predicate: object, seconds: float) -> bool:
    """Poll ``predicate()`` (a callable) every 50 ms for up to ``seconds``."""
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def leak_count(leaks: dict[str, int]) -> int:
    """Things left behind: every block, lease, channel, process, name, fd and file
    counts one; bytes still in use (``used_bytes``) count one in all (accounting)."""
    return sum(abs(v) for k, v in leaks.items() if k != "used_bytes") + bool(
        leaks.get("used_bytes")
    )
