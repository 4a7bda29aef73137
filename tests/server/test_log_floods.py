"""What a client can make the coordinator log at will stays small: failed allocations
are rate-limited (a count says how many were not logged), a client that hangs up during
its handshake is a debug line, not an error with a traceback."""

from __future__ import annotations

import os
import socket

import pytest

import blockipc
from _procs import wait_until
from blockipc import PoolExhausted
from blockipc._core.protocol import PROTOCOL_VERSION, Connection, Op, Request, Role
from blockipc.testing import capture_logs, unique_name

MiB = 1 << 20


async def test_10000_failed_allocs_log_a_handful_of_warnings_and_a_count(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    with capture_logs() as logs:
        for _ in range(5_000):  # larger than any block the pool can hold
            with pytest.raises(PoolExhausted):
                await client.alloc(coord.pool.max_request() + 1)
        held = await client.alloc(coord.pool.max_request())  # the whole pool
        for _ in range(5_000):  # the pool is full
            with pytest.raises(PoolExhausted):
                await client.alloc(4096)
        await client.free(held)
    warnings = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    counts = {(e["of"], e["suppressed"]) for e in warnings if e["event"] == "log.suppressed"}
    records = [e for e in warnings if e["event"] != "log.suppressed"]
    # 20,000 events (each failure is a pool.exhausted and a block.alloc_failed)
    assert len(records) <= 10, [e["event"] for e in records]
    assert {e["event"] for e in records} == {"pool.exhausted", "block.alloc_failed"}
    assert len(warnings) <= 20
    # the count: powers of ten in the interval (unless the 10 s interval ended meanwhile)
    for event in ("pool.exhausted", "block.alloc_failed"):
        assert max(n for of, n in counts if of == event) >= 1000, counts


def _hello(name: str) -> bytes:
    args = {"version": PROTOCOL_VERSION, "name": name, "pid": os.getpid()}
    args |= {"inbox_messages": 8, "inbox_bytes": 1 << 20}
    return Connection(Role.CLIENT).send(Request(1, Op.HELLO, args))


async def test_a_client_hanging_up_right_after_hello_logs_no_error(
    coord: blockipc.Coordinator,
) -> None:
    names = {unique_name("hangup") for _ in range(20)}
    with capture_logs() as logs:
        for name in names:  # HELLO, then gone before the welcome (and its fds) is sent
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.connect(str(coord.address))
                raw.sendall(_hello(name))

        def reclaimed() -> set[str]:  # (its task logs its last word in the same step)
            return {e["name"] for e in logs if e["event"] == "client.disconnect"}

        await wait_until(lambda: reclaimed() >= names, timeout=10)
        async with blockipc.connect(coord.address, name=unique_name("good")) as good:
            block = await good.alloc(4096)  # the coordinator still serves
            await good.free(block)
    errors = [e for e in logs if e["log_level"] in ("error", "critical")]
    assert errors == []
    assert any(e["event"] == "client.closed_during_handshake" for e in logs)
