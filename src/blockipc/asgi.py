"""A lifespan for ASGI apps: one blockipc client per web worker process.

Each worker process of an ASGI server (``uvicorn --workers N``, gunicorn with uvicorn
workers) runs the app's lifespan once: this helper connects to a coordinator on
startup, under a name unique to the worker (``name-PID``, since two live connections
may not share a name), puts the client on ``app.state.blockipc`` and closes it on
shutdown. The workers then share named objects through the pool, and each keeps its
own coherent :meth:`~blockipc.Client.get` cache::

    from starlette.applications import Starlette
    import blockipc.asgi

    app = Starlette(routes=[...], lifespan=blockipc.asgi.lifespan("/run/blockipc.sock"))

    async def endpoint(request):
        client = blockipc.asgi.client(request.app)
        value = await client.get("weights")

An application with a lifespan of its own keeps it: pass it as ``wraps=`` and
blockipc's lifespan runs around it. The client is connected before the app's startup
and closed after its shutdown, so both can use it, and what the app's lifespan yields
(Starlette's lifespan state) is what the server gets::

    @contextlib.asynccontextmanager
    async def app_lifespan(app):
        await blockipc.asgi.client(app).put(load_model(), "pickle", name="model")
        yield {"started": time.time()}
        await blockipc.asgi.client(app).delete("model")

    app = Starlette(routes=[...], lifespan=blockipc.asgi.lifespan(wraps=app_lifespan))

The module imports no web framework: anything that calls ``lifespan(app)`` and enters
the context manager it returns works (Starlette, FastAPI, Litestar's ``lifespan=``
hooks), and ``app.state`` only has to accept attributes.

A worker outlives its coordinator's restarts: the client is made with ``retry=True``
(startup waits up to ``timeout`` seconds for a coordinator that is not up yet) and
``reconnect=True`` (after ``blockipc serve`` restarts, the requests in flight fail with
:class:`~blockipc.ConnectionClosed` and the next one reconnects; named objects of the
old pool are gone, so ``get`` raises :class:`~blockipc.BlockNotFound` until they are
put again). Pass ``retry=False`` or ``reconnect=False`` to opt out.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar, overload

from ._address import ADDRESS_ENV, coordinator_address
from ._client.client import Client, connect
from ._exceptions import BlockIPCError, InvalidRequest

__all__ = ["ADDRESS_ENV", "client", "lifespan"]

_STATE_ATTR = "blockipc"
DEFAULT_TIMEOUT = 10.0
"""Seconds a worker waits for its coordinator, at startup and on each reconnect."""


AppT = TypeVar("AppT")
StateT = TypeVar("StateT")
AppLifespan = Callable[[AppT], AbstractAsyncContextManager[StateT]]
"""An application's own lifespan: ``lifespan(app)`` is an async context manager (what
Starlette's and FastAPI's ``lifespan=`` take)."""


@overload
def lifespan(
    address: str | os.PathLike[str] | None = None,
    name: str | None = None,
    *,
    wraps: None = None,
    **connect_kwargs: Any,
) -> Callable[[Any], AbstractAsyncContextManager[None]]: ...


@overload
def lifespan(
    address: str | os.PathLike[str] | None = None,
    name: str | None = None,
    *,
    wraps: AppLifespan[AppT, StateT],
    **connect_kwargs: Any,
) -> AppLifespan[AppT, StateT]: ...


def lifespan(
    address: str | os.PathLike[str] | None = None,
    name: str | None = None,
    *,
    wraps: AppLifespan[Any, Any] | None = None,
    **connect_kwargs: Any,
) -> AppLifespan[Any, Any]:
    """A lifespan function that connects each worker process to the coordinator.

    ``address`` is the coordinator's socket (default: the ``BLOCKIPC_ADDRESS``
    environment variable, read at startup, as ``blockipc serve`` and ``blockipc stats``
    read it); the worker registers as ``f"{name}-{os.getpid()}"``
    (``name`` defaults to ``"web"``). ``connect_kwargs`` go to :func:`blockipc.connect`
    (``cache_size=``, ``inbox_messages=``, ``access="r"`` for workers that only read,
    ...); unless they say otherwise, the client waits for the coordinator and survives
    its restarts (``retry=True``, ``reconnect=True``, ``timeout=10``). While the app
    runs, the client is ``app.state.blockipc``; on shutdown it is closed and removed.
    With neither an address nor the variable, startup raises
    :class:`~blockipc.InvalidRequest`.

    ``wraps`` is the application's own lifespan (a function of the app returning an
    async context manager, or an async generator function, as Starlette accepts): it
    runs inside this one, the client connected for its startup and still open for its
    shutdown, and what it yields is yielded on (Starlette's lifespan state). An error
    in its startup closes the client and fails the server's startup.

    >>> life = blockipc.asgi.lifespan("/tmp/b.sock", cache_size="256MiB")  # doctest: +SKIP
    >>> app = Starlette(routes=routes, lifespan=life)  # doctest: +SKIP
    >>> app = Starlette(lifespan=blockipc.asgi.lifespan(wraps=app_lifespan))  # doctest: +SKIP
    """
    inner: AppLifespan[Any, Any] | None = wraps
    if inner is not None and inspect.isasyncgenfunction(inner):
        inner = contextlib.asynccontextmanager(inner)
    if inner is not None and not callable(inner):
        raise InvalidRequest(
            f"blockipc.asgi.lifespan(wraps=...) takes the app's lifespan function, not {inner!r}"
        )
    prefix = "web" if name is None else name
    connect_kwargs = {
        "timeout": DEFAULT_TIMEOUT,
        "retry": True,
        "reconnect": True,
        **connect_kwargs,
    }

    @contextlib.asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[Any]:
        where = coordinator_address(address, given_as="blockipc.asgi.lifespan(address)")
        async with connect(where, f"{prefix}-{os.getpid()}", **connect_kwargs) as c:
            setattr(app.state, _STATE_ATTR, c)
            try:
                if inner is None:
                    yield None
                else:
                    async with inner(app) as state:
                        yield state
            finally:
                with contextlib.suppress(AttributeError):
                    delattr(app.state, _STATE_ATTR)

    return _lifespan


def client(app: Any) -> Client:
    """The client :func:`lifespan` put on ``app.state`` (pass ``request.app``).

    Raises :class:`BlockIPCError` outside the app's lifespan.
    """
    c = getattr(app.state, _STATE_ATTR, None)
    if not isinstance(c, Client):
        raise BlockIPCError("no blockipc client on app.state: is blockipc.asgi.lifespan in use?")
    return c
