"""blockipc: asyncio-native inter-process communication over shared memory.

>>> async with blockipc.Coordinator(pool_size="64MiB") as coord:       # doctest: +SKIP
...     async with blockipc.connect(coord.address, name="producer") as client:
...         block = await client.alloc(1_000_000)
...         await client.write(block, b"hello")
"""

from __future__ import annotations

from . import sync as sync
from . import testing as testing
from ._client.channel import ChannelMessage as ChannelMessage
from ._client.channel import ChannelReceiver as ChannelReceiver
from ._client.channel import ChannelSender as ChannelSender
from ._client.client import Client as Client
from ._client.client import Lease as Lease
from ._client.jobs import Job as Job
from ._client.requests import IncomingRequest as IncomingRequest
from ._connect import connect as connect
from ._core.sizes import parse_size as parse_size
from ._exceptions import AccessDenied as AccessDenied
from ._exceptions import BlockIPCError as BlockIPCError
from ._exceptions import BlockNotFound as BlockNotFound
from ._exceptions import ChannelClosed as ChannelClosed
from ._exceptions import CodecError as CodecError
from ._exceptions import ConnectionClosed as ConnectionClosed
from ._exceptions import InboxFull as InboxFull
from ._exceptions import InvalidRequest as InvalidRequest
from ._exceptions import NameTaken as NameTaken
from ._exceptions import OutOfBounds as OutOfBounds
from ._exceptions import PeerUnreachable as PeerUnreachable
from ._exceptions import PoolExhausted as PoolExhausted
from ._exceptions import ProtocolError as ProtocolError
from ._exceptions import QuotaExceeded as QuotaExceeded
from ._exceptions import RemoteError as RemoteError
from ._exceptions import UsedAfterFork as UsedAfterFork
from ._exceptions import WrongEventLoop as WrongEventLoop
from ._log import configure_logging as configure_logging
from ._runtime import run as run
from ._server.coordinator import Coordinator as Coordinator
from ._types import Block as Block
from ._types import BlockLike as BlockLike
from ._types import LinkStats as LinkStats
from ._types import Message as Message
from ._types import ProcessStats as ProcessStats
from ._types import QueueStats as QueueStats
from ._types import Stats as Stats
from ._version import __version__ as __version__

__all__ = (
    # coordinator and client
    "Coordinator",
    "connect",
    "Client",
    "Lease",
    "Job",
    "IncomingRequest",
    "ChannelSender",
    "ChannelReceiver",
    "ChannelMessage",
    "run",
    "configure_logging",
    # values
    "Block",
    "BlockLike",
    "Message",
    "LinkStats",
    "ProcessStats",
    "QueueStats",
    "Stats",
    "parse_size",
    # errors
    "BlockIPCError",
    "PoolExhausted",
    "BlockNotFound",
    "AccessDenied",
    "OutOfBounds",
    "ConnectionClosed",
    "ChannelClosed",
    "ProtocolError",
    "PeerUnreachable",
    "InvalidRequest",
    "CodecError",
    "InboxFull",
    "UsedAfterFork",
    "WrongEventLoop",
    "NameTaken",
    "QuotaExceeded",
    "RemoteError",
)
