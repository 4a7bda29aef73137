"""The coordinator against hostile or buggy same-uid clients: requests sent in orders
the client library never sends (raw protocol frames), cancels and disconnects at every
wait, and what is left in the coordinator afterwards. Every test runs on asyncio's
loop and on uvloop; every scenario ends with a clean pool."""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import raw_hello
from _procs import wait_until
from blockipc._core.protocol import Connection, ErrorReply, Event, Op, Reply, Request
from blockipc._handshake import close_fds, receive_event
from blockipc.testing import assert_pool_clean, unique_name

CANCELLED = 499


class Raw:
    """A registered connection speaking the protocol by hand: requests the client
    library would refuse to send, in any order, and every reply as it comes."""

    def __init__(self, stream: UNIXSocketStream, conn: Connection, name: str) -> None:
        self.stream, self.conn, self.name = stream, conn, name
        self._next = 100
        self._early: dict[int, Event] = {}

    @classmethod
    async def connect(cls, coord: blockipc.Coordinator, prefix: str) -> Raw:
        name = unique_name(prefix)
        stream, conn = await raw_hello(coord.address, name)
        return cls(stream, conn, name)

    async def send(self, op: Op, args: dict[str, Any], data: bytes = b"") -> int:
        self._next += 1
        await self.stream.send(self.conn.send(Request(self._next, op, args, data)))
        return self._next

    async def reply(self, req_id: int) -> Event:
        """The answer to ``req_id`` (others that come first are kept for later)."""
        with anyio.fail_after(5):
            while req_id not in self._early:
                event, fds = await receive_event(self.stream, self.conn, with_fds=True)
                close_fds(fds)
                assert isinstance(event, Reply | ErrorReply), event
                assert event.req_id not in self._early, f"answered twice: {event}"
                self._early[event.req_id] = event
        return self._early.pop(req_id)

    async def call(self, op: Op, args: dict[str, Any], data: bytes = b"") -> dict[str, Any]:
        event = await self.reply(await self.send(op, args, data))
        assert isinstance(event, Reply), event
        return event.result

    async def error(self, op: Op, args: dict[str, Any]) -> ErrorReply:
        event = await self.reply(await self.send(op, args))
        assert isinstance(event, ErrorReply), event
        return event

    async def no_reply_yet(self, req_id: int) -> None:
        """``req_id`` is still unanswered (a round trip answered after it was sent)."""
        await self.call(Op.PEERS, {})
        assert req_id not in self._early, self._early[req_id]

    async def aclose(self) -> None:
        await self.stream.aclose()


def state(coord: blockipc.Coordinator) -> Any:
    return coord._state


async def all_gone(coord: blockipc.Coordinator) -> None:
    await wait_until(lambda: not coord.stats().processes)
    s = state(coord)
    assert not s.sessions and not s.tokens and not s.bells and not s.peer_waits
    assert_pool_clean(coord)


# -- publish ---------------------------------------------------------------------------
async def test_a_publisher_leasing_its_block_mid_publish_harms_no_subscriber(
    coord: blockipc.Coordinator,
) -> None:
    """The publisher's hold ends when the last inbox takes the block; a publisher that
    leased the block meanwhile cannot have its hold dropped. That refusal came after the
    subscriber's RECV was answered, as a second answer to it, which is a protocol
    error: the coordinator cut the subscriber's connection, and the PUBLISH was never
    answered. Now the publisher keeps its hold (and frees the block itself)."""
    topic = unique_name("t")
    pub = await Raw.connect(coord, "pub")
    try:
        async with blockipc.connect(
            coord.address, name=unique_name("sub"), inbox_messages=1
        ) as sub:
            await sub.subscribe(topic)
            filler = await pub.call(Op.ALLOC, {"size": 64})
            await pub.call(
                Op.SEND,
                {
                    "block": filler["block"],
                    "to": sub.name,
                    "header": {},
                    "move": True,
                    "nowait": False,
                    "wait_ms": 0,
                },
            )
            block = (await pub.call(Op.ALLOC, {"size": 64}))["block"]
            publish = await pub.send(
                Op.PUBLISH, {"block": block, "topic": topic, "header": {}, "nowait": False}
            )
            await pub.no_reply_yet(publish)  # the subscriber's inbox is full
            lease = (await pub.call(Op.LEASE, {"block": block, "mode": "r"}))["lease"]
            first = await sub.recv()  # makes room: the publish completes
            second = await sub.recv()
            published = await pub.reply(publish)
            assert isinstance(published, Reply) and published.result == {"delivered": 1}
            assert second.block.id == block
            await sub.free(first.block)
            await sub.free(second.block)
            await pub.call(Op.RELEASE, {"lease": lease})
            await pub.call(Op.FREE, {"block": block})  # still the publisher's
            assert await sub.peers()  # the subscriber is still served
    finally:
        await pub.aclose()
    await all_gone(coord)
