"""examples/web_lifespan for real: each app's own startup and shutdown run inside
blockipc's (the Starlette app under uvicorn, the aiohttp app under aiohttp's runner),
against ``blockipc serve``, driven with httpx, then stopped with SIGINT."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_web_cache import stop, wait_for

import blockipc
from _helpers import free_port
from _procs import ROOT

httpx = pytest.importorskip("httpx")

APP_DIR = ROOT / "examples" / "web_lifespan"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """``blockipc serve`` on a socket of its own, and the environment apps run in."""
    sock = tmp_path / "coordinator.sock"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["BLOCKIPC_ADDRESS"] = str(sock)
    serve = subprocess.Popen(
        [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(sock.exists, "blockipc serve", [serve])
        yield sock, env
    finally:
        stop(serve)


def names(sock: Path) -> set[str]:
    async def main() -> set[str]:
        async with blockipc.connect(sock, f"check-{os.getpid()}") as c:
            return set((await c.stats()).names)

    return blockipc.run(main)


def run_app(cmd: list[str], env: dict[str, str], log: Path) -> tuple[str, int]:
    """Start ``cmd`` (a web server on a free port), wait for ``/hello``, ask it once,
    stop it with SIGINT: the answer and the server's exit code."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hello"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [part.format(port=port) for part in cmd],
            env=env,
            cwd=APP_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:

            def up() -> httpx.Response | None:
                try:
                    return httpx.get(url, timeout=2)
                except httpx.HTTPError:
                    return None

            reply = wait_for(up, f"{cmd[0:3]} answering", [proc], timeout=30)
            assert reply.status_code == 200, reply.text
            body = reply.json()
        except BaseException:
            stop(proc)
            sys.stderr.write(log.read_text())
            raise
        stop(proc)
    return body, proc.returncode


def test_starlette_app_keeps_its_own_lifespan(
    coordinator: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    sock, env = coordinator
    cmd = [
        sys.executable, "-m", "uvicorn", "starlette_app:app", "--app-dir", str(APP_DIR),
        "--host", "127.0.0.1", "--port", "{port}",
    ]  # fmt: skip
    body, code = run_app(cmd, env, tmp_path / "uvicorn.log")
    assert code == 0, (tmp_path / "uvicorn.log").read_text()
    # the app's own startup ran with the client connected: its objects are in the pool
    assert body["greeting"] == "hello from the pool"
    assert body["worker"] == f"starlette-{body['pid']}"
    assert isinstance(body["started_at"], float)  # the app's lifespan state reached requests
    # its shutdown ran, the client still open: its record is gone, the greeting stays
    assert names(sock) == {"greeting"}
    log = (tmp_path / "uvicorn.log").read_text()
    assert "Application startup complete" in log and "Application shutdown complete" in log


def test_aiohttp_app_keeps_its_own_cleanup_ctx(
    coordinator: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    pytest.importorskip("aiohttp")
    sock, env = coordinator
    body, code = run_app(
        [sys.executable, str(APP_DIR / "aiohttp_app.py"), "{port}"], env, tmp_path / "web.log"
    )
    assert code == 0, (tmp_path / "web.log").read_text()
    assert body["greeting"] == "hello from the pool"
    assert body["worker"] == f"aiohttp-{body['pid']}"
    assert names(sock) == {"greeting"}  # its cleanup deleted its record through the client
