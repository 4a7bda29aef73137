"""A Starlette app whose uvicorn workers share computed values through blockipc.

``GET /value/{key}`` computes an expensive value once (0.2 s and a numpy array), puts
it in the pool under ``value:{key}`` with ``cacheable=True``, and from then on every
worker serves it from shared memory: a worker that never computed it gets it from the
pool, and its own client cache answers the next requests without a round trip (the
generation table keeps that cache coherent). Under memory pressure the pool evicts the
least recently used values; the next request computes them again.

``GET /stats`` shows which worker answered and its cache counters.

Run it with ``python examples/web_cache/run.py`` (see README.md), or by hand::

    blockipc serve --socket /tmp/web-cache.sock --pool-size 256MiB
    BLOCKIPC_ADDRESS=/tmp/web-cache.sock uvicorn app:app --app-dir examples/web_cache --workers 2
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import blockipc
import blockipc.asgi

COMPUTE_SECONDS = float(os.environ.get("WEB_CACHE_COMPUTE_SECONDS", "0.2"))


async def compute(key: str) -> np.ndarray:
    """The expensive part: 0.2 s of 'work' and a 1 MiB array derived from the key."""
    await asyncio.sleep(COMPUTE_SECONDS)
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(128 * 1024)


async def value(request: Request) -> JSONResponse:
    key = request.path_params["key"]
    client = blockipc.asgi.client(request.app)
    name = f"value:{key}"
    try:
        arr = await client.get(name)  # read-only array; a hit costs no round trip
        source = "shared"
    except blockipc.BlockNotFound:  # never computed, or evicted under pressure
        arr = await compute(key)
        await client.put(arr, "numpy", name=name, cacheable=True)
        source = "computed"
    return JSONResponse(
        {
            "key": key,
            "pid": os.getpid(),
            "source": source,
            "shape": list(arr.shape),
            "checksum": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    )


async def stats(request: Request) -> JSONResponse:
    client = blockipc.asgi.client(request.app)
    mine = client.cache_statistics()
    pool = await client.stats()
    return JSONResponse(
        {
            "pid": os.getpid(),
            "worker": client.name,
            "cache_hits": mine.hits,
            "cache_misses": mine.misses,
            "cache_evictions": mine.evictions,
            "cached_bytes": mine.nbytes,
            "names": list(pool.names),
            "pool_used_bytes": pool.used_bytes,
        }
    )


app = Starlette(
    routes=[Route("/value/{key}", value), Route("/stats", stats)],
    lifespan=blockipc.asgi.lifespan(name="web-cache", cache_size="128MiB"),
)
