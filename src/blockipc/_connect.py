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


connect.__doc__ = (_aclient.connect.__doc__ or "") + (
    """
    Under trio (awaited in a trio task) it connects the same client on an asyncio loop
    thread of its own and returns a :class:`blockipc.trio.Client`, with the same
    methods, awaited from trio (see :mod:`blockipc.trio`; :func:`blockipc.trio.connect`
    is the same with its precise type)::

        async with blockipc.connect(address, name="worker") as client:  # in trio.run
            await client.put([1, 2, 3], name="numbers")
    """
)
