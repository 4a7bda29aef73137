"""examples/web_cache for real: ``blockipc serve`` and ``uvicorn --workers 2``, driven
with httpx. A value computed and put through one worker is read through the other, and
the workers' cache counters move; the workers survive `blockipc serve` being killed and
started again."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _helpers import free_port
from _procs import ROOT

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

APP_DIR = ROOT / "examples" / "web_cache"


def wait_for(
    check: Any, what: str, procs: list[subprocess.Popen[bytes]], timeout: float = 20
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args!r} exited with {proc.returncode}"
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclasses.dataclass
class WebCache:
    url: str
    restart_coordinator: Callable[[], None]
    """Kill ``blockipc serve`` (SIGKILL) and start it again on the same socket."""


@pytest.fixture
def web_cache(tmp_path: Path) -> Iterator[WebCache]:
    """The example running: its base URL, and a way to restart its coordinator."""
    sock = tmp_path / "coordinator.sock"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["BLOCKIPC_ADDRESS"] = str(sock)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs = [open(tmp_path / name, "wb") for name in ("serve.log", "uvicorn.log")]  # noqa: SIM115
    try:
        serve_cmd = [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock)]
        procs.append(subprocess.Popen(serve_cmd, env=env, stdout=logs[0], stderr=subprocess.STDOUT))
        wait_for(sock.exists, "blockipc serve", procs)
        web_cmd = [
            sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(APP_DIR),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        ]  # fmt: skip
        procs.append(subprocess.Popen(web_cmd, env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return bool(httpx.get(f"{url}/stats", timeout=2).status_code == 200)
            except httpx.HTTPError:
                return False

        wait_for(up, "uvicorn answering", procs, timeout=30)

        def restart_coordinator() -> None:
            procs[0].kill()  # leaves its socket behind: the new one replaces it
            procs[0].wait()
            procs[0] = subprocess.Popen(
                serve_cmd, env=env, stdout=logs[0], stderr=subprocess.STDOUT
            )

        yield WebCache(url, restart_coordinator)
    except BaseException:
        for log in logs:
            log.flush()
        sys.stderr.write(
            (tmp_path / "serve.log").read_text() + (tmp_path / "uvicorn.log").read_text()
        )
        raise
    finally:
        for proc in reversed(procs):  # uvicorn first: its workers close their clients
            stop(proc)
        for log in logs:
            log.close()


def by_worker(url: str, path: str, want: int, tries: int = 400) -> dict[int, list[dict[str, Any]]]:
    """Ask ``path`` on fresh connections until ``want`` distinct workers answered."""
    seen: dict[int, list[dict[str, Any]]] = {}
    for _ in range(tries):
        reply = httpx.get(f"{url}{path}", headers={"Connection": "close"}, timeout=10)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        seen.setdefault(body["pid"], []).append(body)
        if len(seen) >= want:
            return seen
    raise AssertionError(f"only {len(seen)} of {want} workers answered {path} in {tries} tries")


def test_value_put_by_one_worker_is_read_by_the_other(web_cache: WebCache) -> None:
    url = web_cache.url
    workers = by_worker(url, "/stats", 2)
    assert all(s[0]["cache_hits"] == 0 and s[0]["cache_misses"] == 0 for s in workers.values())

    first = httpx.get(f"{url}/value/answer", timeout=10).json()
    assert first["source"] == "computed"
    maker = first["pid"]
    # ask until the other worker answers: it must read the value, not compute it
    for _ in range(400):
        body = httpx.get(f"{url}/value/answer", headers={"Connection": "close"}, timeout=10).json()
        assert body["checksum"] == first["checksum"]
        if body["pid"] != maker:
            assert body["source"] == "shared"
            break
        assert body["source"] == "shared"  # the maker's own cache
    else:
        pytest.fail("the second worker never answered")
    reader = body["pid"]

    # a few more requests on each worker: their caches answer now
    for _ in range(20):
        httpx.get(f"{url}/value/answer", headers={"Connection": "close"}, timeout=10)
    stats = {pid: s[-1] for pid, s in by_worker(url, "/stats", 2).items()}
    assert set(stats) == {maker, reader}
    # the maker: one miss (the name did not exist); the reader: one miss (fetched from
    # the pool), then hits; both see the one shared name
    assert stats[maker]["cache_misses"] >= 1
    assert stats[reader]["cache_misses"] >= 1
    assert stats[maker]["cache_hits"] + stats[reader]["cache_hits"] >= 1
    assert all("value:answer" in s["names"] for s in stats.values())
    assert stats[reader]["cached_bytes"] >= 1 << 20


def test_workers_survive_a_coordinator_restart(web_cache: WebCache) -> None:
    url = web_cache.url
    by_worker(url, "/stats", 2)  # both workers are connected
    assert httpx.get(f"{url}/value/answer", timeout=10).json()["source"] == "computed"
    web_cache.restart_coordinator()
    # every request succeeds: each worker reconnects on its next call (waiting for the
    # new coordinator to listen); the value died with the old pool and is computed again
    workers = by_worker(url, "/value/answer", 2)
    bodies = [body for answers in workers.values() for body in answers]
    assert bodies[0]["source"] == "computed"
    assert {body["checksum"] for body in bodies} == {bodies[0]["checksum"]}
    stats = {pid: s[-1] for pid, s in by_worker(url, "/stats", 2).items()}
    assert all(s["names"] == ["value:answer"] for s in stats.values())
