"""blockipc.aiohttp in process, on a real socket: the cleanup context connects one
client per process, the app's own context after it uses it at startup and cleanup,
requests reach it through httpx (the example as a user runs it:
tests/integration/test_web_lifespan.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

import blockipc
from _helpers import free_port

web = pytest.importorskip("aiohttp.web")
httpx = pytest.importorskip("httpx")

import blockipc.aiohttp  # noqa: E402 -- needs aiohttp, skipped above


async def test_cleanup_ctx_composes_with_the_apps_own(coord: blockipc.Coordinator) -> None:
    seen: list[str] = []

    async def own(app: web.Application) -> AsyncIterator[None]:
        client = blockipc.aiohttp.client(app)  # connected: its context came first
        await client.put(b"up", "raw", name="own")
        seen.append("startup")
        yield
        assert not client.closed
        await client.delete("own")
        seen.append("cleanup")

    async def hello(request: web.Request) -> web.Response:
        client = blockipc.aiohttp.client(request.app)
        return web.json_response({"own": (await client.get("own")).decode(), "name": client.name})

    app = web.Application()
    with pytest.raises(blockipc.BlockIPCError, match="cleanup_ctx"):
        blockipc.aiohttp.client(app)
    app.cleanup_ctx.append(blockipc.aiohttp.cleanup_ctx(coord.address, name="aio"))
    app.cleanup_ctx.append(own)
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        assert seen == ["startup"]
        client = app[blockipc.aiohttp.CLIENT]
        assert client.name in coord.stats().processes
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{port}/hello")
        assert reply.json() == {"own": "up", "name": f"aio-{os.getpid()}"}
    finally:
        await runner.cleanup()
    assert seen == ["startup", "cleanup"]
    assert client.closed
    assert "own" not in coord.stats().names


async def test_cleanup_ctx_reads_the_address_from_the_environment(
    coord: blockipc.Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(blockipc.aiohttp.ADDRESS_ENV, coord.address)
    app = web.Application()
    ctx = blockipc.aiohttp.cleanup_ctx()(app)
    await ctx.__anext__()
    assert blockipc.aiohttp.client(app).name == f"web-{os.getpid()}"
    with pytest.raises(StopAsyncIteration):
        await ctx.__anext__()
    assert blockipc.aiohttp.client(app).closed
    monkeypatch.delenv(blockipc.aiohttp.ADDRESS_ENV)
    with pytest.raises(blockipc.InvalidRequest, match="BLOCKIPC_ADDRESS is required"):
        await blockipc.aiohttp.cleanup_ctx()(web.Application()).__anext__()


def test_without_aiohttp_the_error_names_the_extra() -> None:
    code = "import sys; sys.modules['aiohttp'] = None; import blockipc.aiohttp"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": "src"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'blockipc[aiohttp]'" in result.stderr


def test_documented() -> None:
    for obj in (blockipc.aiohttp, blockipc.aiohttp.cleanup_ctx, blockipc.aiohttp.client):
        assert obj.__doc__
