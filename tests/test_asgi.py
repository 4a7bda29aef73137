"""blockipc.asgi without a web server: the lifespan connects one client per process,
puts it on ``app.state`` and closes it (the uvicorn test is
tests/integration/test_web_cache.py)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import blockipc
import blockipc.asgi
from _procs import wait_until


def fake_app() -> types.SimpleNamespace:
    return types.SimpleNamespace(state=types.SimpleNamespace())


async def test_lifespan_connects_and_closes(coord: blockipc.Coordinator) -> None:
    app = fake_app()
    with pytest.raises(blockipc.BlockIPCError, match="lifespan"):
        blockipc.asgi.client(app)
    async with blockipc.asgi.lifespan(coord.address, name="web", cache_size="1MiB")(app):
        client = blockipc.asgi.client(app)
        assert client is app.state.blockipc
        assert client.name == f"web-{os.getpid()}"
        assert client.name in coord.stats().processes
        await client.put(b"shared", "raw", name="k")
        assert await client.get("k") == b"shared"
        await client.delete("k")
    assert client.closed
    assert not hasattr(app.state, "blockipc")


async def test_lifespan_reads_the_address_from_the_environment(
    coord: blockipc.Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = fake_app()
    monkeypatch.setenv(blockipc.asgi.ADDRESS_ENV, coord.address)
    async with blockipc.asgi.lifespan()(app):
        assert blockipc.asgi.client(app).name == f"web-{os.getpid()}"
    monkeypatch.setenv(blockipc.asgi.ADDRESS_ENV, "/nowhere")  # an address given wins
    async with blockipc.asgi.lifespan(coord.address)(app):
        assert blockipc.asgi.client(app).name == f"web-{os.getpid()}"
    for unset in (monkeypatch.delenv, lambda name: monkeypatch.setenv(name, "")):
        unset(blockipc.asgi.ADDRESS_ENV)
        with pytest.raises(
            blockipc.InvalidRequest,
            match=re.escape("blockipc.asgi.lifespan(address) or BLOCKIPC_ADDRESS is required"),
        ):
            async with blockipc.asgi.lifespan()(app):
                pass


def test_asgi_imports_no_web_framework() -> None:
    code = (
        "import sys, blockipc.asgi; "
        "bad = [m for m in ('starlette', 'uvicorn', 'fastapi') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": "src"}
    )


def test_documented() -> None:
    for obj in (blockipc.asgi, blockipc.asgi.lifespan, blockipc.asgi.client):
        assert obj.__doc__


async def test_a_worker_survives_a_coordinator_restart(short_dir: Path) -> None:
    sock = str(short_dir / "c.sock")
    app = fake_app()
    first = blockipc.Coordinator(path=sock, pool_size="16MiB")
    await first.start()
    try:
        async with blockipc.asgi.lifespan(sock, name="web")(app):
            client = blockipc.asgi.client(app)
            await client.put(b"v1", "raw", name="k")
            await first.aclose()  # `blockipc serve` restarted: the next request reconnects
            async with blockipc.Coordinator(path=sock, pool_size="16MiB") as second:
                assert blockipc.asgi.client(app) is client
                assert not client.closed
                with pytest.raises(blockipc.BlockNotFound):  # the old pool's objects are gone
                    await client.get("k")
                await client.put(b"v2", "raw", name="k")
                assert await client.get("k") == b"v2"
                assert client.name in second.stats().processes
                await client.delete("k")
    finally:
        await first.aclose()
    assert client.closed


async def test_lifespan_can_opt_out_of_reconnecting(short_dir: Path) -> None:
    sock = str(short_dir / "c.sock")
    app = fake_app()
    with pytest.raises(blockipc.ConnectionClosed, match="no coordinator is listening"):
        async with blockipc.asgi.lifespan(sock, retry=False)(app):
            pass
    coord = blockipc.Coordinator(path=sock, pool_size="16MiB")
    await coord.start()
    try:
        async with blockipc.asgi.lifespan(sock, reconnect=False)(app):
            client = blockipc.asgi.client(app)
            await coord.aclose()
            await wait_until(lambda: client.closed)  # the old behaviour: closed for good
    finally:
        await coord.aclose()


# -- wrapping the app's own lifespan (uvicorn for real: tests/integration/test_web_lifespan.py)
async def test_lifespan_wraps_the_apps_own(coord: blockipc.Coordinator) -> None:
    app = fake_app()
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: types.SimpleNamespace) -> AsyncIterator[dict[str, int]]:
        client = blockipc.asgi.client(app)  # connected before the app's startup
        await client.put(b"up", "raw", name="own")
        seen.append("startup")
        yield {"answer": 42}
        assert not client.closed  # and still open for its shutdown
        await client.delete("own")
        seen.append("shutdown")

    async with blockipc.asgi.lifespan(coord.address, wraps=own)(app) as state:
        assert state == {"answer": 42}  # the app's lifespan state, passed on
        assert seen == ["startup"]
        client = blockipc.asgi.client(app)
        assert await client.get("own") == b"up"
    assert seen == ["startup", "shutdown"]
    assert client.closed
    assert not hasattr(app.state, "blockipc")
    assert "own" not in coord.stats().names

    async def generator(app: types.SimpleNamespace) -> AsyncIterator[None]:  # Starlette's
        seen.append(blockipc.asgi.client(app).name)  # older form, an async generator
        yield

    async with blockipc.asgi.lifespan(coord.address, name="gen", wraps=generator)(app) as state:
        assert state is None
    assert seen[-1] == f"gen-{os.getpid()}"


async def test_a_failing_app_startup_closes_the_client(coord: blockipc.Coordinator) -> None:
    app = fake_app()
    clients: list[blockipc.Client] = []

    @contextlib.asynccontextmanager
    async def broken(app: types.SimpleNamespace) -> AsyncIterator[None]:
        clients.append(blockipc.asgi.client(app))
        raise RuntimeError("the app's own startup failed")
        yield  # pragma: no cover

    with pytest.raises(RuntimeError, match="own startup failed"):
        async with blockipc.asgi.lifespan(coord.address, wraps=broken)(app):
            pass
    assert clients[0].closed
    assert not hasattr(app.state, "blockipc")
    with pytest.raises(blockipc.InvalidRequest, match="lifespan function"):
        blockipc.asgi.lifespan(coord.address, wraps="not a lifespan")  # type: ignore[call-overload]
