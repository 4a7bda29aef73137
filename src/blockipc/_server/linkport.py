"""The server as the link's host: the link's only door into the routing table, the
pool and the sessions (it implements :class:`~.._link.host.LinkHost`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.routing import BlockRecord, Delivery, ProcessRecord
from .._exceptions import PoolExhausted
from .ops.pubsub import fan_out_remote

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["LinkPort"]


class LinkPort:
    """What the link may do to the server (see :class:`~.._link.host.LinkHost`).

    ``holder`` is the link's record: it holds the blocks of sends in transit and of
    received blocks not yet delivered (key 0 is no connection's, so nothing a process
    does or suffers can free them meanwhile).
    """

    def __init__(self, state: ServerState, node: str) -> None:
        self._state = state
        self._table = state.table
        self.pool = state.pool
        self.holder = ProcessRecord(0, f"(link {node})", os.getpid(), os.getuid())

    def sendable(self, proc: ProcessRecord, block_id: int, *, move: bool) -> BlockRecord:
        return self._table.lookup(proc, block_id, "own" if move else "r")

    def pin(self, proc: ProcessRecord, rec: BlockRecord, *, move: bool) -> None:
        self._table.start_transfer(proc, rec, self.holder, move=move)

    def unpin(self, rec: BlockRecord, sender: ProcessRecord, *, failed: bool) -> None:
        if self.pool.closed:  # (the coordinator is gone: nothing left to give back)
            return
        self._state.settle(self._table.end_transfer(rec, self.holder, sender, failed=failed))

    def receiver(self, name: str) -> ProcessRecord | None:
        return self._table.processes.get(name)

    def has_room(self, proc: ProcessRecord, size: int) -> bool:
        return self._table.has_room(proc, size)

    def new_block(self, size: int) -> BlockRecord | None:
        try:  # (evicts cacheable objects before it gives up; the link retries)
            return self._state.new_block(self.holder, size, quiet=True)
        except PoolExhausted:
            return None

    def discard(self, rec: BlockRecord) -> None:
        if self._table.blocks.get(rec.id) is not rec or self.pool.closed:
            return
        self._state.settle(self._table.release_hold(self.holder, rec))  # (nobody waits on it)

    def deliver(
        self, rec: BlockRecord, sender: ProcessRecord, to: ProcessRecord, header: dict[str, Any]
    ) -> None:
        delivered = self._table.offer(Delivery(rec, sender, to, header, True, None))
        assert delivered, "the link asked has_room, and nothing ran since"

    def wake(self, proc: ProcessRecord) -> None:
        self._state.wake_receiver(proc)

    def watch_topics(self, on_change: Callable[[str, bool], None]) -> None:
        self._table.topics.on_change = on_change

    def local_topics(self) -> list[str]:
        return list(self._table.topics.patterns())

    def fan_out(
        self,
        rec: BlockRecord,
        sender: ProcessRecord,
        topic: str,
        header: dict[str, Any],
        done: Callable[[int], None],
    ) -> None:
        fan_out_remote(self._state, self.holder, rec, sender, topic, header, done)

    def named(self, name: str) -> BlockRecord:
        return self._table.find_name(name)
