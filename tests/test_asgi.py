"""blockipc.asgi without a web server: the lifespan connects one client per process,
puts it on ``app.state`` and closes it (the uvicorn test is
tests/integration/test_web_cache.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest

import blockipc
import blockipc.asgi


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
