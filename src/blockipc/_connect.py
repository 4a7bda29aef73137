""":func:`blockipc.connect`: the async client, under asyncio or trio.

Under asyncio (and uvloop) it is :func:`blockipc._client.client.connect`. Awaited in a
trio task, the same call connects the asyncio client on a loop thread of its own and
gives a :class:`blockipc.trio.Client`, which has the same methods (see
:mod:`blockipc.trio`): the choice is made when it is awaited, by the library running.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING, Literal, cast

from ._client import client as _aclient
from ._client.client import DEFAULT_CACHE_SIZE, DEFAULT_INBOX_MESSAGES, Client
from ._loopthread import under_trio

if TYPE_CHECKING:
    from . import trio as _trio

__all__ = ["connect"]


class _Connect(_aclient._Connect):
    """:class:`blockipc._client.client._Connect`, which under trio opens a bridged
    client instead (typed as :class:`Client`: it has its methods)."""

    _bridged: _trio.Client | None = None

    async def _open(self) -> Client:
        if not under_trio():
            return await super()._open()
        from .trio import open_client  # (trio is installed: a trio program runs)

        self._bridged = await open_client(self._client)
        return cast(Client, self._bridged)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bridged is not None:
            await self._bridged.aclose()
        else:
            await super().__aexit__(exc_type, exc, tb)


def connect(
    address: str | os.PathLike[str],
    name: str,
    *,
    inbox_messages: int = DEFAULT_INBOX_MESSAGES,
    inbox_bytes: int | str | None = None,
    cache_size: int | str = DEFAULT_CACHE_SIZE,
    timeout: float | None = None,
    retry: bool = False,
    reconnect: bool = False,
    access: Literal["r", "rw"] = "rw",
) -> _aclient._Connect:
    """Connect to the coordinator at ``address`` and register as ``name``.

    ``inbox_messages`` and ``inbox_bytes`` bound this process's inbox: a sender to a
    full inbox waits for room (see :meth:`Client.send`). ``inbox_bytes`` defaults to no
    byte limit. ``cache_size`` bounds the cache of :meth:`Client.get` results (0 turns it
    off).

    >>> async with blockipc.connect(coord.address, name="producer") as client:  # doctest: +SKIP
    ...     block = await client.alloc(4096)
    >>> client = await blockipc.connect(coord.address, name="consumer")  # doctest: +SKIP
    >>> await client.close()  # doctest: +SKIP

    A name held by a live connection raises :class:`NameTaken`; an address that is not
    a coordinator's socket raises :class:`ConnectionClosed` saying why (a ``tcp://``
    address raises :class:`InvalidRequest`: those are for links between coordinators).

    ``timeout`` (seconds, default none) bounds the whole connect, handshake included.
    ``retry=True`` waits for a coordinator that is not listening yet (no socket, or a
    refused connect) instead of failing at once: it tries again with backoff until
    ``timeout`` (with none, until cancelled), then raises :class:`ConnectionClosed`
    ("no coordinator at PATH within T s").

    ``reconnect=True`` keeps the client usable across a coordinator restart: calls in
    flight when the connection is lost raise :class:`ConnectionClosed`, and the next
    call connects again under the same name (retrying for up to ``timeout``, or
    :data:`RECONNECT_TIMEOUT` seconds) and maps the new pool. Everything the old
    coordinator held is gone: blocks, leases, messages and channel ends of the old
    connection raise (:class:`BlockNotFound`, :class:`ConnectionClosed`), named
    objects must be put again and topics subscribed again. ``client.closed`` stays
    False until :meth:`Client.close`.

    >>> client = await blockipc.connect(  # doctest: +SKIP
    ...     path, "web", timeout=30, retry=True, reconnect=True
    ... )

    ``access="r"`` connects read-only, for a process that only reads (``"rw"``, the
    default, reads and writes). The coordinator passes it the pool's segments as
    read-only fds, mapped ``PROT_READ``: through them it can neither write a byte, nor
    truncate a segment, nor punch a hole in one (bugs that would corrupt other
    processes' blocks). It may read, take read leases, ``get``, ``recv``,
    ``subscribe``, free the blocks it received and ask for ``stats``; what writes a
    block or hands data on (``alloc``, ``write``, write leases, ``copy``, ``put``,
    ``delete``, ``send``, ``publish``, ``grant``, opening or accepting a channel)
    raises :class:`AccessDenied`, refused by the coordinator. This guards against a
    reader's bugs, not a hostile process of the same user (see ``docs/reliability.md``).
    Any other value raises :class:`ValueError`.

    >>> reader = await blockipc.connect(path, "dashboard", access="r")  # doctest: +SKIP

    Under trio (awaited in a trio task) it connects the same client on an asyncio loop
    thread of its own and returns a :class:`blockipc.trio.Client`, with the same
    methods, awaited from trio (see :mod:`blockipc.trio`; :func:`blockipc.trio.connect`
    is the same with its precise type)::

        async with blockipc.connect(address, name="worker") as client:  # in trio.run
            await client.put([1, 2, 3], name="numbers")
    """
    made = _aclient.connect(
        address,
        name,
        inbox_messages=inbox_messages,
        inbox_bytes=inbox_bytes,
        cache_size=cache_size,
        timeout=timeout,
        retry=retry,
        reconnect=reconnect,
        access=access,
    )
    return _Connect(made._client)
