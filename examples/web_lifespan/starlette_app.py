"""A Starlette app with a lifespan of its own, wrapped by blockipc's.

The app's own lifespan runs with the worker's blockipc client already connected: at
startup it puts a greeting in the pool (once for all workers) and this worker's
``worker:PID`` record, and yields its lifespan state; at shutdown, the client still
open, it deletes its record. ``GET /hello`` answers from the pool and the lifespan state.

    blockipc serve --socket /tmp/web.sock
    BLOCKIPC_ADDRESS=/tmp/web.sock uvicorn starlette_app:app --app-dir examples/web_lifespan
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import blockipc
import blockipc.asgi


@contextlib.asynccontextmanager
async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    client = blockipc.asgi.client(app)  # connected before this runs
    with contextlib.suppress(blockipc.NameTaken):  # another worker was first
        greeting = {"greeting": "hello from the pool"}
        await client.put(greeting, "msgpack", name="greeting", if_absent=True)
    record = f"worker:{os.getpid()}"
    await client.put({"pid": os.getpid()}, "msgpack", name=record)
    yield {"started_at": time.time(), "record": record}  # Starlette's lifespan state
    await client.delete(record)  # still connected during the app's shutdown


async def hello(request: Request) -> JSONResponse:
    client = blockipc.asgi.client(request.app)
    greeting = await client.get("greeting")
    mine = await client.get(request.state.record)
    return JSONResponse(
        {
            "greeting": greeting["greeting"],
            "pid": mine["pid"],
            "worker": client.name,
            "started_at": request.state.started_at,
        }
    )


app = Starlette(
    routes=[Route("/hello", hello)],
    lifespan=blockipc.asgi.lifespan(name="starlette", wraps=app_lifespan),
)
