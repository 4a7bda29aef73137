"""An aiohttp app whose own cleanup context runs inside blockipc's.

``blockipc.aiohttp.cleanup_ctx`` comes first in ``app.cleanup_ctx``: the app's own
context, appended after it, starts with the worker's client connected (it puts a
greeting in the pool, once for all workers, and this worker's ``worker:PID`` record)
and cleans up before the client is closed (it deletes its record). ``GET /hello``
answers from the pool.

    blockipc serve --socket /tmp/web.sock
    BLOCKIPC_ADDRESS=/tmp/web.sock python examples/web_lifespan/aiohttp_app.py 8080
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator

from aiohttp import web

import blockipc
import blockipc.aiohttp

RECORD = web.AppKey("record", str)


async def app_ctx(app: web.Application) -> AsyncIterator[None]:
    client = blockipc.aiohttp.client(app)  # connected: its context came first
    with contextlib.suppress(blockipc.NameTaken):  # another worker was first
        greeting = {"greeting": "hello from the pool"}
        await client.put(greeting, "msgpack", name="greeting", if_absent=True)
    app[RECORD] = f"worker:{os.getpid()}"
    await client.put({"pid": os.getpid()}, "msgpack", name=app[RECORD])
    yield
    await client.delete(app[RECORD])  # the client is still open during cleanup


async def hello(request: web.Request) -> web.Response:
    client = blockipc.aiohttp.client(request.app)
    greeting = await client.get("greeting")
    mine = await client.get(request.app[RECORD])
    return web.json_response(
        {"greeting": greeting["greeting"], "pid": mine["pid"], "worker": client.name}
    )


def init_app(argv: list[str] | None = None) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(blockipc.aiohttp.cleanup_ctx(name="aiohttp"))
    app.cleanup_ctx.append(app_ctx)
    app.router.add_get("/hello", hello)
    return app


if __name__ == "__main__":
    web.run_app(init_app(), host="127.0.0.1", port=int(sys.argv[1]) if sys.argv[1:] else 8080)
