"""aiohttp: one blockipc client per web worker process, through ``app.cleanup_ctx``.

:func:`cleanup_ctx` is the aiohttp counterpart of :func:`blockipc.asgi.lifespan`: append
it to the application's cleanup contexts and each worker process connects on startup,
under a name unique to the worker (``name-PID``), finds the client at
``app[blockipc.aiohttp.CLIENT]`` (or :func:`client`), and closes it on cleanup. It
composes with the app's own startup and cleanup, as aiohttp's contexts do: the ones
appended after it start after the client is connected and clean up before it is
closed, so they can use it::

    from aiohttp import web
    import blockipc.aiohttp

    app = web.Application()
    app.cleanup_ctx.append(blockipc.aiohttp.cleanup_ctx("/run/blockipc.sock"))
    app.cleanup_ctx.append(my_own_ctx)  # may use blockipc.aiohttp.client(app)

    async def handler(request):
        value = await blockipc.aiohttp.client(request.app).get("weights")

As with the ASGI helper, the client waits for its coordinator at startup and survives
its restarts (``retry=True``, ``reconnect=True``, ``timeout=10``) unless told otherwise,
and ``address`` defaults to the ``BLOCKIPC_ADDRESS`` environment variable.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

try:
    from aiohttp import web
except ImportError as exc:  # the extra is not installed: say which one
    raise ImportError("blockipc.aiohttp needs aiohttp: pip install 'blockipc[aiohttp]'") from exc

from ._address import ADDRESS_ENV, coordinator_address
from ._client.client import Client, connect
from ._exceptions import BlockIPCError
from .asgi import DEFAULT_TIMEOUT

__all__ = ["ADDRESS_ENV", "CLIENT", "cleanup_ctx", "client"]

CLIENT: web.AppKey[Client] = web.AppKey("blockipc", Client)
"""The key of the client in the application while it runs: ``app[CLIENT]``."""


def cleanup_ctx(
    address: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **connect_kwargs: Any,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context (``app.cleanup_ctx.append(...)``) that connects each worker
    process to the coordinator, as ``f"{name}-{os.getpid()}"`` (``name`` defaults to
    ``"web"``); ``connect_kwargs`` go to :func:`blockipc.connect`. While the app runs
    the client is ``app[CLIENT]``; at cleanup it is closed. With neither an
    address nor ``BLOCKIPC_ADDRESS``, startup raises :class:`~blockipc.InvalidRequest`.

    >>> app.cleanup_ctx.append(blockipc.aiohttp.cleanup_ctx(cache_size="64MiB"))  # doctest: +SKIP
    """
    prefix = "web" if name is None else name
    connect_kwargs = {
        "timeout": DEFAULT_TIMEOUT,
        "retry": True,
        "reconnect": True,
        **connect_kwargs,
    }

    async def _ctx(app: web.Application) -> AsyncIterator[None]:
        where = coordinator_address(address, given_as="blockipc.aiohttp.cleanup_ctx(address)")
        async with connect(where, f"{prefix}-{os.getpid()}", **connect_kwargs) as c:
            # set during startup, before aiohttp freezes the app; left there at cleanup
            # (a frozen app's items do not change): closed, the client refuses calls
            app[CLIENT] = c
            yield

    return _ctx


def client(app: web.Application) -> Client:
    """The client :func:`cleanup_ctx` put in the app (pass ``request.app``).

    Raises :class:`BlockIPCError` outside the app's run.

    >>> await blockipc.aiohttp.client(request.app).get("weights")  # doctest: +SKIP
    """
    c = app.get(CLIENT)
    if not isinstance(c, Client):
        raise BlockIPCError(
            "no blockipc client in the app: is blockipc.aiohttp.cleanup_ctx in app.cleanup_ctx?"
        )
    return c
