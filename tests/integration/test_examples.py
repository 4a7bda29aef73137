"""Every example runs end to end, as a user would run it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _procs import ROOT

EXAMPLES = ROOT / "examples"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _serving(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def test_demo_exchanges_blocks_and_verifies_checksums() -> None:
    result = _run(str(EXAMPLES / "demo.py"), "--count", "6", "--sizes", "1,4096,1048576")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok") == 6
    assert "0 bad checksums" in result.stdout
    assert "pool after: 0 bytes used, 0 blocks" in result.stdout


def test_producer_consumer_against_blockipc_serve(tmp_path: Path) -> None:
    sock = tmp_path / "coord.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock), "--pool-size", "32MiB"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "coordinator did not start"
            time.sleep(0.05)
        consumer = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "consumer.py"), "--socket", str(sock), "--count", "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            producer = _run(
                str(EXAMPLES / "producer.py"),
                "--socket",
                str(sock),
                "--count",
                "4",
                "--sizes",
                "100,2000000",
            )
            assert producer.returncode == 0, producer.stderr
            out, _ = consumer.communicate(timeout=30)
        finally:
            consumer.kill()
            consumer.wait()
        assert consumer.returncode == 0, out
        assert out.count(" ok") == 4
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    assert "coordinator.stopped" in err
    assert not sock.exists(), "serve must remove its socket on SIGTERM"


@pytest.mark.parametrize("script", ["producer.py", "consumer.py", "demo.py"])
def test_example_help(script: str) -> None:
    result = _run(str(EXAMPLES / script), "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout


BENCHMARKS = sorted(
    p.name for p in (EXAMPLES.parent / "benchmarks").glob("*.py") if not p.name.startswith("_")
)


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_script_help(script: str) -> None:
    result = _run(str(EXAMPLES.parent / "benchmarks" / script), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.timeout(300)  # (its own runs' bound is 240 s: a busy machine is slow)
def test_remote_benchmark_runs_every_contender() -> None:
    # a tiny run (16 blocks of 64 KiB each way): every role starts, moves its bytes and
    # reports, and the tables come out; the rates themselves mean nothing here
    script = str(EXAMPLES.parent / "benchmarks" / "bench_remote.py")
    result = _run(script, "--rounds", "1", "--sizes", "64KiB", "--bytes", "1MiB", timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "| contender | 64 KiB GB/s |" in out
    rows = ("blockipc link, plain", "blockipc link, CURVE", "raw asyncio TCP stream")
    one_sided = ("link sending side alone", "link receiving side alone")
    bare = ("raw pyzmq PUSH/PULL + one copy", "raw pyzmq PUSH/PULL + a channel ring + consumer")
    for row in (*rows, *one_sided, *bare):
        assert f"| {row}" in out
    assert "| bound: raw PULL + a ring + consumer process / raw pyzmq plain (info) | " in out
    assert "| plain link / raw pyzmq plain | " in out and "| CURVE link / raw pyzmq CURVE | " in out


@pytest.mark.timeout(300)
def test_patterns_benchmark_runs_every_contender() -> None:
    # a tiny run: every process starts, moves its jobs and round trips, and the two tables
    # come out (Redis skipped here: no redis-server); the rates mean nothing here
    script = str(EXAMPLES.parent / "benchmarks" / "bench_patterns.py")
    args = ("--rounds", "1", "--jobs", "40", "--big-jobs", "8", "--round-trips", "20")
    result = _run(script, *args, timeout=240)
    assert result.returncode == 0, result.stderr
    for row in ("| 64 B blockipc |", "| 64 B mp.Queue |", "| 1 MiB blockipc |"):
        assert row in result.stdout
    for row in ("| blockipc |", "| pyzmq REQ/REP |", "| raw |"):
        assert row in result.stdout


@pytest.mark.timeout(300)
def test_inbox_benchmark_runs_every_contender() -> None:
    # a tiny run: the 4 producers and the consumer move their messages for every
    # contender (pyzmq included: the dev set has it) and the table and verdict come out;
    # the rates mean nothing here
    script = str(EXAMPLES.parent / "benchmarks" / "bench_inbox.py")
    args = ("--rounds", "1", "--messages", "400", "--single", "40", "--batch", "16")
    result = _run(script, *args, timeout=240)
    assert result.returncode == 0, result.stderr
    rows = ("| blockipc send_value/recv |", "| blockipc send_many/recv_many |", "| mp.Queue |")
    for row in (*rows, "| pyzmq PUSH/PULL |"):
        assert row in result.stdout
    assert "target: blockipc send_many/recv_many >= 100,000 msg/s at 64 B: " in result.stdout


@pytest.mark.timeout(120)
def test_growth_benchmark_draws_its_curves(tmp_path: Path) -> None:
    # a tiny count: every cost is measured (reclaim after a kill -9 included) and the
    # plot file is written; the figures mean nothing here
    script = str(EXAMPLES.parent / "benchmarks" / "bench_stats.py")
    png = tmp_path / "growth.png"
    args = ("--blocks", "64", "--calls", "5", "--disconnects", "3", "--plot", str(png))
    result = _run(script, *args, timeout=100)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  this")]
    assert [row[1] for row in rows] == ["64"]
    assert all(float(x) > 0 for row in rows for x in row[2:]), result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", [[], ["serve"], ["stats"], ["bench"]])
def test_cli_help(command: list[str]) -> None:
    result = _run("-m", "blockipc", *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_serve_refuses_a_live_socket_and_replaces_a_stale_one(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    cmd = [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock), "--pool-size", "4MiB"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1
        assert "already serving" in second.stderr
    finally:
        first.kill()  # like a crash: the socket file stays behind
        first.communicate()
    assert sock.exists()
    assert not _serving(sock)
    third = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not _serving(sock):
            assert third.poll() is None, third.communicate()
            assert time.monotonic() < deadline, "coordinator did not replace the stale socket"
            time.sleep(0.05)
    finally:
        third.send_signal(signal.SIGINT)
        _, err = third.communicate(timeout=15)
    assert "coordinator.stale_socket_removed" in err
    assert third.returncode == 0, err
    assert not sock.exists()


def test_pipeline_copies_transforms_and_verifies() -> None:
    result = _run(str(EXAMPLES / "pipeline.py"), "--count", "20", "--size", "300000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "consumer: 20 blocks ok, 0 bad" in result.stdout
    assert f"transformer: copied and transformed {20 * 300000:,} bytes" in result.stdout
    assert "pool after: 0 bytes used, 0 blocks" in result.stdout


def test_fanout_delivers_every_block_to_every_subscriber() -> None:
    result = _run(
        str(EXAMPLES / "fanout.py"), "--subscribers", "3", "--count", "10", "--size", "1000000"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for i in range(3):
        assert f"subscriber-{i}: 10 blocks ok, 0 bad" in result.stdout
    assert "pool after: 0 bytes used, 0 blocks" in result.stdout


@pytest.mark.parametrize(
    ("count", "size"),
    [(3000, 4096), (3000, 1), (40, 3 * 1024 * 1024 + 5)],  # send(), and reserve() in place
)
def test_stream_verifies_every_message_through_a_channel(count: int, size: int) -> None:
    result = _run(str(EXAMPLES / "stream.py"), "--count", str(count), "--size", str(size))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"consumer: {count:,} messages ok, 0 bad" in result.stdout
    assert "exit codes [0, 0]; pool after: 0 bytes used, 0 blocks" in result.stdout
    assert f"stream: {count:,} messages verified, " in result.stdout.splitlines()[-1]
    assert result.stdout.rstrip().endswith(" msg/s")


def test_stream_fails_when_a_message_does_not_fit_the_ring() -> None:
    result = _run(
        str(EXAMPLES / "stream.py"), "--count", "3", "--size", "100000", "--capacity", "64KiB"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not fit a ring" in result.stderr
    assert "stream: FAILED" in result.stdout


@pytest.mark.parametrize("script", ["pipeline.py", "fanout.py", "stream.py"])
def test_sharing_example_help(script: str) -> None:
    result = _run(str(EXAMPLES / script), "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout
    assert "--role" in result.stdout
