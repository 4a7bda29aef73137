"""The request handlers, one module per group of operations.

Each module has a ``HANDLERS`` table (op -> ``handler(state, session, request)``);
:data:`HANDLERS` merges them, refusing an op that two modules claim
(``tests/server/test_dispatch.py`` checks that every request op has exactly one).
A handler decides through the routing table, has :meth:`ServerState.settle` act on the
outcome, and answers through ``session.reply``; it raises a ``BlockIPCError`` to answer
with that error. None of them awaits: a request that must wait parks (``..parking``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from ..._core.protocol import Op
from ..state import Handler
from . import blocks, channels, control, copy, messages, objects, pubsub, queues, requests

__all__ = ["GROUPS", "HANDLERS", "merge"]

GROUPS: tuple[ModuleType, ...] = (
    blocks,
    copy,
    messages,
    pubsub,
    objects,
    channels,
    control,
    queues,
    requests,
)


def merge(groups: tuple[ModuleType, ...]) -> dict[Op, Handler]:
    """One table from the groups' tables; an op in two of them is a bug."""
    merged: dict[Op, Handler] = {}
    for group in groups:
        table: Mapping[Op, Handler] = group.HANDLERS
        for op, handler in table.items():
            if op in merged:
                raise RuntimeError(f"{op.name} has two handlers ({group.__name__} is the second)")
            merged[op] = handler
    return merged


HANDLERS: dict[Op, Handler] = merge(GROUPS)
