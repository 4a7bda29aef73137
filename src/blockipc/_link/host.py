"""What the link needs from the coordinator it runs in, and nothing more.

The link (``link.py``) moves blocks between nodes; the coordinator owns the routing
table, the pool and the sessions. The link reaches them only through :class:`LinkHost`
(which the coordinator implements) and answers a sender through :class:`ReplyTo` (a
session), so it never imports the coordinator and never touches a record the routing
table owns: pinning, delivering and letting go are the table's rules, applied by the
host. Pure: no I/O, nothing imported at run time but typing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.protocol import Event
    from .._core.routing import BlockRecord, ProcessRecord
    from .._exceptions import BlockIPCError
    from .._shm.pool import Pool

__all__ = ["GetReplyTo", "LinkHost", "ReplyTo", "Requester"]


class ReplyTo(Protocol):
    """Where the answer to a remote send goes (a session of the coordinator)."""

    def reply(self, event: Event) -> None:
        """Answer a request (an error reply too)."""

    def hold(self) -> bool:
        """Collect replies until :meth:`release`, to write them at once (``False``:
        they are collected already)."""

    def release(self) -> None:
        """Write the replies collected since :meth:`hold`."""


class Requester(ReplyTo, Protocol):
    """A session that asks for a remote send: the process it speaks for, and where the
    reply goes."""

    @property
    def proc(self) -> ProcessRecord: ...


class GetReplyTo(Protocol):
    """Where the answer to a remote ``get`` goes (a parked GET of a session)."""

    def got(self, rec: BlockRecord, codec: str, meta: dict[str, Any]) -> None:
        """The object's copy is in ``rec`` (from :meth:`LinkHost.new_block`, which the
        link lets go of after this returns: lease it now to keep it)."""

    def failed(self, exc: BlockIPCError) -> None:
        """The object could not be fetched (the peer's error, or the link's)."""

    def hold(self) -> bool:
        """Collect the asker's replies until :meth:`release` (``False``: they are
        collected already)."""

    def release(self) -> None:
        """Write the replies collected since :meth:`hold`."""


class LinkHost(Protocol):
    """The coordinator, as the link sees it.

    Sending: :meth:`sendable` finds the block, :meth:`pin` holds it for the link while
    libzmq reads it, :meth:`unpin` lets go once the send is over. Receiving:
    :meth:`receiver` and :meth:`has_room` say whether a block can be delivered,
    :meth:`new_block` makes room for its bytes, :meth:`deliver` puts it into the inbox
    (or :meth:`discard` drops it), :meth:`wake` answers the receiver's waiting calls.
    """

    @property
    def pool(self) -> Pool:
        """The shared memory: ``view``, ``capacity_for``, ``max_request``, ``closed``."""

    # -- sending -----------------------------------------------------------------
    def sendable(self, proc: ProcessRecord, block_id: int, *, move: bool) -> BlockRecord:
        """``proc``'s block ``block_id``, if it may send it: it owns it for a move, or
        may read it (raises why not)."""

    def pin(self, proc: ProcessRecord, rec: BlockRecord, *, move: bool) -> None:
        """Hold ``rec`` for the link until :meth:`unpin` (``proc`` gives it up for a
        move): nobody may free, move or write it meanwhile (raises why not, and nothing
        changed)."""

    def unpin(self, rec: BlockRecord, sender: ProcessRecord, *, failed: bool) -> None:
        """A send begun by :meth:`pin` is over: the block goes back to ``sender`` (a move
        that ``failed``), stays with its other holders, or is freed."""

    # -- receiving ---------------------------------------------------------------
    def receiver(self, name: str) -> ProcessRecord | None:
        """The process named ``name`` on this node, or ``None``."""

    def has_room(self, proc: ProcessRecord, size: int) -> bool:
        """Whether a block of ``size`` bytes would get into ``proc``'s inbox now."""

    def new_block(self, size: int) -> BlockRecord | None:
        """A block of ``size`` bytes held by the link (cacheable objects may be evicted
        for it), or ``None`` when the pool has no room now."""

    def discard(self, rec: BlockRecord) -> None:
        """Drop a block from :meth:`new_block` that was not delivered (and free it)."""

    def deliver(
        self, rec: BlockRecord, sender: ProcessRecord, to: ProcessRecord, header: dict[str, Any]
    ) -> None:
        """Move a block from :meth:`new_block` into ``to``'s inbox, from ``sender`` (a
        record that names the remote sender); :meth:`has_room` said yes since the last
        await. ``to`` is not woken: see :meth:`wake`."""

    def wake(self, proc: ProcessRecord) -> None:
        """Answer ``proc``'s waiting receive calls from its inbox."""

    # -- across nodes: publish and named objects ------------------------------------
    def watch_topics(self, on_change: Callable[[str, bool], None]) -> None:
        """Call ``on_change(topic, present)`` whenever a topic or pattern gets its first
        local subscriber or loses its last (subscribe, unsubscribe, a process gone)."""

    def local_topics(self) -> list[str]:
        """Every topic and pattern this node's processes subscribe to now."""

    def fan_out(
        self,
        rec: BlockRecord,
        sender: ProcessRecord,
        topic: str,
        header: dict[str, Any],
        done: Callable[[int], None],
    ) -> None:
        """Give a block from :meth:`new_block` to every local subscriber of ``topic``
        with a read grant, as a local publish does (never to another node); the link's
        hold ends when every inbox took it, then ``done(delivered)``."""

    def named(self, name: str) -> BlockRecord:
        """The object bound to ``name`` here (raises ``BlockNotFound``)."""
