"""Prometheus metrics over HTTP: embedded (MetricsServer) and ``blockipc serve --metrics``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import blockipc
from _procs import ROOT, wait_until
from blockipc.metrics import MetricsServer
from blockipc.testing import assert_pool_clean, unique_name

KiB = 1 << 10


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:  # the loop stays free to take the snapshot
        reply = await http.get(url, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return samples(reply.text)


async def test_a_scrape_shows_the_pool_and_who_holds_it() -> None:
    async with (
        blockipc.Coordinator(pool_size="8MiB") as coord,
        MetricsServer(coord, port=0) as metrics,
        blockipc.connect(coord.address, unique_name("worker")) as worker,
    ):
        assert metrics.port > 0 and metrics.url.endswith(f":{metrics.port}/metrics")
        blocks = [await worker.alloc(5000), await worker.alloc(100)]
        await worker.put(b"v", "raw", name="obj")
        await worker.get("obj")
        got = await scrape(metrics.url)
        me = (("process", worker.name),)
        assert got[("blockipc_blocks", ())] == 3
        assert got[("blockipc_pool_used_bytes", ())] == coord.stats().used_bytes == 16 * KiB
        assert got[("blockipc_pool_size_bytes", ())] == 8 << 20
        assert got[("blockipc_processes", ())] == 1
        assert got[("blockipc_named_objects", ())] == 1
        assert got[("blockipc_process_blocks", me)] == 2
        assert got[("blockipc_process_owned_bytes", me)] == 8 * KiB + 4 * KiB
        assert got[("blockipc_cache_hits_total", ())] == 1  # a get by name it answered
        assert not [key for key in got if key[0].startswith("blockipc_link_")]  # no link
        for block in blocks:
            await worker.free(block)
        await worker.delete("obj")
        got = await scrape(metrics.url)
        assert got[("blockipc_blocks", ())] == 0 and got[("blockipc_process_blocks", me)] == 0
        url = metrics.url
    with pytest.raises(httpx.ConnectError):  # closed with the context: the port is free
        httpx.get(url, timeout=5)


async def test_link_series_per_node() -> None:
    async with blockipc.Coordinator(pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0") as b:
        assert b.link_address is not None
        async with (
            blockipc.Coordinator(pool_size="8MiB", node="a", peers={"b": b.link_address}) as a,
            MetricsServer(a, port=0) as metrics,
            blockipc.connect(a.address, name="producer") as producer,
            blockipc.connect(b.address, name="consumer") as consumer,
        ):
            block = await producer.alloc(3000)
            await producer.send(block, to="b/consumer")
            got = await scrape(metrics.url)
            node = (("node", "b"),)
            assert got[("blockipc_link_up", node)] == 1
            assert got[("blockipc_link_sent_blocks_total", node)] == 1
            assert got[("blockipc_link_sent_bytes_total", node)] == 3000
            assert got[("blockipc_link_failed_sends_total", node)] == 0
            assert got[("blockipc_link_in_flight", node)] == 0
            await consumer.free((await consumer.recv()).block)
        await wait_until(lambda: not b.stats().processes)
        assert_pool_clean(b)


def test_without_prometheus_client_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # as if not installed
        "try:\n    import blockipc.metrics\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "pip install 'blockipc[metrics]'" in result.stdout


def test_metrics_port_is_checked() -> None:
    with pytest.raises(blockipc.InvalidRequest):
        MetricsServer(None, port=70000)  # type: ignore[arg-type]


async def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with blockipc.Coordinator(pool_size="4MiB") as coord:
            with pytest.raises(blockipc.BlockIPCError, match=f"127.0.0.1:{port}"):
                await MetricsServer(coord, port=port).start()


def test_serve_with_metrics(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port for the standalone server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    sock = tmp_path / "c.sock"
    cmd = [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock), "--pool-size", "4MiB"]
    bad = subprocess.run(
        [*cmd, "--metrics", "host:port"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "[HOST:]PORT" in bad.stderr
    server = subprocess.Popen([*cmd, "--metrics", str(port)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "no metrics server"
                time.sleep(0.05)
        assert samples(reply.text)[("blockipc_pool_size_bytes", ())] == 4 << 20
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert b"metrics.stopped" in err and not sock.exists()
