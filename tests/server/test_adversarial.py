"""The coordinator against hostile or buggy same-uid clients: requests sent in orders
the client library never sends (raw protocol frames), cancels and disconnects at every
wait, and what is left in the coordinator afterwards. Every test runs on asyncio's
loop and on uvloop; every scenario ends with a clean pool."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import UNIXSocketStream

import blockipc
from _helpers import raw_hello
from _procs import wait_until
from blockipc._core.protocol import CANCELLED, Connection, ErrorReply, Event, Op, Reply, Request
from blockipc._handshake import close_fds, receive_event
from blockipc.testing import assert_pool_clean, unique_name


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
@pytest.mark.parametrize("then", ["lease", "send"])
async def test_a_publisher_leasing_its_block_mid_publish_harms_no_subscriber(
    coord: blockipc.Coordinator, then: str
) -> None:
    """The publisher's hold ends when the last inbox takes the block; a publisher that
    leased the block meanwhile, or sent it to an inbox with no room, cannot have its
    hold dropped. That refusal came after the subscriber's RECV was answered, as a
    second answer to it, which is a protocol error: the coordinator cut the
    subscriber's connection, and the PUBLISH was never answered. Now the publisher
    keeps its hold (and frees the block itself)."""
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
            if then == "lease":
                lease = (await pub.call(Op.LEASE, {"block": block, "mode": "r"}))["lease"]
            else:  # a shared send, queued behind the publish
                send = await pub.send(Op.SEND, send_args(block, sub.name, move=False))
            first = await sub.recv()  # makes room: the publish completes
            second = await sub.recv()
            published = await pub.reply(publish)
            assert isinstance(published, Reply) and published.result == {"delivered": 1}
            assert second.block.id == block
            await sub.free(first.block)
            if then == "lease":
                await pub.call(Op.RELEASE, {"lease": lease})
            else:
                third = await sub.recv()
                assert third.block.id == block
                assert isinstance(await pub.reply(send), Reply)
            await sub.free(second.block)
            await pub.call(Op.FREE, {"block": block})  # still the publisher's
            assert await sub.peers()  # the subscriber is still served
    finally:
        await pub.aclose()
    await all_gone(coord)


async def test_a_cancelled_publish_to_full_inboxes_keeps_what_was_delivered(
    coord: blockipc.Coordinator,
) -> None:
    """CANCEL of a publish waiting for room: the subscriber that took it keeps it, the
    one whose inbox was full never gets it, the publisher keeps its block; one answer
    (CANCELLED), and a second CANCEL changes nothing."""
    topic = unique_name("t")
    pub = await Raw.connect(coord, "pub")
    try:
        async with (
            blockipc.connect(coord.address, name=unique_name("free"), inbox_messages=4) as roomy,
            blockipc.connect(coord.address, name=unique_name("full"), inbox_messages=1) as full,
        ):
            for sub in (roomy, full):
                await sub.subscribe(topic)
            filler = (await pub.call(Op.ALLOC, {"size": 64}))["block"]
            await pub.call(Op.SEND, send_args(filler, full.name))
            block = (await pub.call(Op.ALLOC, {"size": 64}))["block"]
            publish = await pub.send(
                Op.PUBLISH, {"block": block, "topic": topic, "header": {}, "nowait": False}
            )
            await pub.no_reply_yet(publish)
            await pub.call(Op.CANCEL, {"target": publish})
            answer = await pub.reply(publish)
            assert isinstance(answer, ErrorReply) and answer.code == CANCELLED
            await pub.call(Op.CANCEL, {"target": publish})
            got = await roomy.recv()
            assert got.block.id == block and got.topic == topic
            first = await full.recv()
            assert first.block.id == filler
            await full.free(first.block)
            await pub.no_reply_yet(publish + 10**6)  # (a round trip: nothing more came)
            assert len(coord.stats().usage) == 3
            assert [u.inbox for u in coord.stats().usage if u.name == full.name] == [0]
            await roomy.free(got.block)
            await pub.call(Op.FREE, {"block": block})  # the publisher's still
    finally:
        await pub.aclose()
    await all_gone(coord)


def send_args(block: int, to: str, *, move: bool = True, wait_ms: int = 0) -> dict[str, Any]:
    return {
        "block": block,
        "to": to,
        "header": {},
        "move": move,
        "nowait": False,
        "wait_ms": wait_ms,
    }


# -- named objects ---------------------------------------------------------------------
async def test_a_commit_replacing_an_object_a_reader_leases_frees_the_old_after_it(
    coord: blockipc.Coordinator,
) -> None:
    """The replaced object is doomed while a reader's GET lease lasts (its generation
    moves on at once); the reader's RELEASE frees it. DELETE of the new one frees it."""
    name = unique_name("obj")
    writer, reader = await Raw.connect(coord, "w"), await Raw.connect(coord, "r")
    try:

        async def put(data: bytes) -> dict[str, Any]:
            made = await writer.call(Op.PUT, {"size": len(data)})
            await writer.call(Op.WRITE, {"block": made["block"], "offset": 0}, data)
            done = await writer.call(
                Op.COMMIT,
                {
                    "lease": made["lease"],
                    "codec": "raw",
                    "meta": {},
                    "name": name,
                    "cacheable": False,
                    "if_absent": False,
                    "ttl_ms": 0,
                },
            )
            return {**made, **done}

        old = await put(b"old!")
        got = await reader.call(Op.GET, {"block": 0, "name": name})
        assert got["block"] == old["block"]
        new = await put(b"new!")
        assert coord.stats().blocks == 2
        doomed = state(coord).table.blocks[old["block"]]
        assert doomed.doomed and doomed.generation > got["generation"]
        read = await reader.reply(
            await reader.send(Op.READ, {"block": old["block"], "offset": 0, "size": 4})
        )
        assert isinstance(read, ErrorReply)  # not a named object now, nor the reader's
        await reader.call(Op.RELEASE, {"lease": got["lease"]})
        assert coord.stats().blocks == 1 and coord.stats().leases == 0
        again = await reader.call(Op.GET, {"block": 0, "name": name})
        assert again["block"] == new["block"]
        await reader.call(Op.RELEASE, {"lease": again["lease"]})
        await writer.call(Op.DELETE, {"name": name})
        assert coord.stats().blocks == 0
    finally:
        await writer.aclose()
        await reader.aclose()
    await all_gone(coord)


# -- blocks ----------------------------------------------------------------------------
async def test_free_many_frees_all_or_nothing(coord: blockipc.Coordinator) -> None:
    raw = await Raw.connect(coord, "raw")
    try:
        ids = [(await raw.call(Op.ALLOC, {"size": 100}))["block"] for _ in range(3)]
        lease = (await raw.call(Op.LEASE, {"block": ids[2], "mode": "r"}))["lease"]
        for bad in ([*ids, ids[0]], [*ids[:2], 10**9], ids):  # twice, unknown, leased
            await raw.error(Op.FREE_MANY, {"blocks": bad})
            assert coord.stats().blocks == 3
        await raw.call(Op.RELEASE, {"lease": lease})
        await raw.call(Op.FREE_MANY, {"blocks": ids})
        assert coord.stats().blocks == 0
    finally:
        await raw.aclose()
    await all_gone(coord)


async def test_a_lease_wait_on_a_block_gone_with_its_last_holder_is_answered(
    coord: blockipc.Coordinator,
) -> None:
    """A GET queued behind a grantee's write lease on a named object, the name
    deleted, the grantee gone: the block goes with it and the GET gets BlockNotFound
    (it does not hang), once."""
    name = unique_name("obj")
    owner, grantee, reader = [await Raw.connect(coord, p) for p in ("o", "g", "r")]
    try:
        made = await owner.call(Op.PUT, {"size": 64})
        await owner.call(Op.GRANT, {"block": made["block"], "to": grantee.name, "mode": "w"})
        await owner.call(
            Op.COMMIT,
            {
                "lease": made["lease"],
                "codec": "raw",
                "meta": {},
                "name": name,
                "cacheable": False,
                "if_absent": False,
                "ttl_ms": 0,
            },
        )
        await grantee.call(Op.LEASE, {"block": made["block"], "mode": "w"})
        get = await reader.send(Op.GET, {"block": 0, "name": name})
        await reader.no_reply_yet(get)
        await owner.call(Op.DELETE, {"name": name})
        await reader.no_reply_yet(get)  # the grantee still holds it
        await grantee.aclose()
        answer = await reader.reply(get)
        assert isinstance(answer, ErrorReply) and answer.code == blockipc.BlockNotFound.code
        await wait_until(lambda: coord.stats().blocks == 0)
    finally:
        await owner.aclose()
        await grantee.aclose()
        await reader.aclose()
    await all_gone(coord)


# -- disconnect ------------------------------------------------------------------------
async def test_clients_gone_with_every_kind_of_wait_leave_nothing_behind(
    coord: blockipc.Coordinator,
) -> None:
    """Many connections that end with a wait of every kind parked (a RECV, an accept,
    a send and a channel waiting for a peer, a lease wait, a send waiting for room, a
    large copy waiting for a lease): the server's indexes do not grow, the process
    that stays is served and its block's lease queue is empty again."""
    stay = await Raw.connect(coord, "stay")
    try:
        held = (await stay.call(Op.ALLOC, {"size": 2 << 20}))["block"]
        for _ in range(8):  # fill its inbox (8 messages): later sends wait for room
            mine = (await stay.call(Op.ALLOC, {"size": 64}))["block"]
            await stay.call(Op.SEND, send_args(mine, stay.name))
        missing = unique_name("nobody")
        for _ in range(20):
            w = await Raw.connect(coord, "w")
            await stay.call(Op.GRANT, {"block": held, "to": w.name, "mode": "w"})
            lease = await stay.call(Op.LEASE, {"block": held, "mode": "w"})
            big = (await w.call(Op.ALLOC, {"size": 2 << 20}))["block"]
            small = (await w.call(Op.ALLOC, {"size": 64}))["block"]
            waits = [
                await w.send(Op.RECV, {}),
                await w.send(Op.CHANNEL_ACCEPT, {}),
                await w.send(Op.SEND, send_args(small, missing, move=False, wait_ms=60_000)),
                await w.send(
                    Op.CHANNEL_OPEN, {"to": missing, "capacity": 1 << 16, "wait_ms": 60_000}
                ),
                await w.send(Op.LEASE, {"block": held, "mode": "r"}),
                await w.send(Op.SEND, send_args(small, stay.name, move=False)),
                await w.send(
                    Op.COPY,
                    {
                        "src": big,
                        "dst": held,
                        "src_offset": 0,
                        "dst_offset": 0,
                        "size": 2 << 20,
                        "to_end": False,
                    },
                ),
            ]
            await w.no_reply_yet(waits[-1])
            assert all(req_id not in w._early for req_id in waits)
            await w.aclose()
            await wait_until(lambda: len(coord.stats().processes) == 1)
            await stay.call(Op.RELEASE, {"lease": lease["lease"]})
            s = state(coord)
            assert not s.peer_waits and set(s.sessions) == {s.table.processes[stay.name].key}
            assert len(s.tokens) == 1 and not s.bells
            rec = s.table.blocks[held]
            assert not rec.waiters and not rec.leases and not rec.grants
            assert not s.table.processes[stay.name].pending
        assert not state(coord).sessions[state(coord).table.processes[stay.name].key].parked
        assert coord.stats().blocks == 9
        got = await stay.call(Op.RECV_MANY, {"max": 64})
        await stay.call(Op.FREE_MANY, {"blocks": [m[0] for m in got["messages"]] + [held]})
    finally:
        await stay.aclose()
    await all_gone(coord)


async def test_senders_waiting_for_room_are_answered_when_the_receiver_goes(
    coord: blockipc.Coordinator,
) -> None:
    """A SEND queued for a full inbox, and a PUBLISH part queued there, fail with
    PeerUnreachable when the receiver disconnects; the blocks are the senders' again."""
    topic = unique_name("t")
    to, sender = await Raw.connect(coord, "to"), await Raw.connect(coord, "from")
    try:
        await to.call(Op.SUBSCRIBE, {"topic": topic})
        for _ in range(8):
            filler = (await sender.call(Op.ALLOC, {"size": 64}))["block"]
            await sender.call(Op.SEND, send_args(filler, to.name))
        queued = (await sender.call(Op.ALLOC, {"size": 64}))["block"]
        published = (await sender.call(Op.ALLOC, {"size": 64}))["block"]
        send = await sender.send(Op.SEND, send_args(queued, to.name))
        publish = await sender.send(
            Op.PUBLISH, {"block": published, "topic": topic, "header": {}, "nowait": False}
        )
        await sender.no_reply_yet(publish)
        await to.aclose()
        answer = await sender.reply(send)
        assert isinstance(answer, ErrorReply) and answer.code == blockipc.PeerUnreachable.code
        done = await sender.reply(publish)
        assert isinstance(done, Reply) and done.result == {"delivered": 0}
        await sender.call(Op.FREE, {"block": queued})  # back with its sender
        assert coord.stats().blocks == 0  # the published one went with the publish
    finally:
        await to.aclose()
        await sender.aclose()
    await all_gone(coord)


# -- copy ------------------------------------------------------------------------------
async def test_a_large_copy_cancelled_or_abandoned_ends_its_leases(
    coord: blockipc.Coordinator,
) -> None:
    size = 3 << 20  # a task, a chunk at a time
    raw = await Raw.connect(coord, "raw")
    try:
        src = (await raw.call(Op.ALLOC, {"size": size}))["block"]
        dst = (await raw.call(Op.ALLOC, {"size": size}))["block"]
        args = {"src": src, "dst": dst, "src_offset": 0, "dst_offset": 0, "size": size}
        copy = await raw.send(Op.COPY, {**args, "to_end": False})
        await raw.call(Op.CANCEL, {"target": copy})
        answer = await raw.reply(copy)
        assert isinstance(answer, ErrorReply) and answer.code == CANCELLED
        assert coord.stats().leases == 0
        # contended: waits for the write lease on dst, then cancelled there
        lease = await raw.call(Op.LEASE, {"block": dst, "mode": "r"})
        other = await Raw.connect(coord, "other")
        await raw.call(Op.GRANT, {"block": src, "to": other.name, "mode": "r"})
        await raw.call(Op.GRANT, {"block": dst, "to": other.name, "mode": "w"})
        copy = await other.send(Op.COPY, {**args, "to_end": False})
        await other.no_reply_yet(copy)
        await other.call(Op.CANCEL, {"target": copy})
        answer = await other.reply(copy)
        assert isinstance(answer, ErrorReply) and answer.code == CANCELLED
        assert coord.stats().leases == 1  # raw's own
        # abandoned: the copier goes while it waits
        copy = await other.send(Op.COPY, {**args, "to_end": False})
        await other.no_reply_yet(copy)
        await other.aclose()
        await wait_until(lambda: len(coord.stats().processes) == 1)
        await wait_until(lambda: coord.stats().leases == 1)
        await raw.call(Op.RELEASE, {"lease": lease["lease"]})
        done = await raw.call(Op.COPY, {**args, "to_end": True})
        assert done == {"copied": size}
        assert coord.stats().leases == 0 and not state(coord).table.blocks[dst].waiters
        await raw.call(Op.FREE_MANY, {"blocks": [src, dst]})
    finally:
        await raw.aclose()
    await all_gone(coord)


# -- channels --------------------------------------------------------------------------
async def test_channels_opened_accepted_cancelled_and_abandoned_free_their_rings(
    coord: blockipc.Coordinator,
) -> None:
    opener = await Raw.connect(coord, "open")
    name = unique_name("late")
    accepter: Raw | None = None
    try:
        cap = {"capacity": 1 << 16, "wait_ms": 60_000}
        early = await opener.send(Op.CHANNEL_OPEN, {"to": name, **cap})
        await opener.no_reply_yet(early)
        stream, conn = await raw_hello(coord.address, name)  # registers: the open goes on
        accepter = Raw(stream, conn, name)
        first = await opener.reply(early)
        assert isinstance(first, Reply)
        got = await accepter.call(Op.CHANNEL_ACCEPT, {})  # offered when it registered
        assert got["channel"] == first.result["channel"]
        cancelled = await accepter.send(Op.CHANNEL_ACCEPT, {})
        await accepter.call(Op.CANCEL, {"target": cancelled})
        answer = await accepter.reply(cancelled)
        assert isinstance(answer, ErrorReply) and answer.code == CANCELLED
        second = await opener.call(Op.CHANNEL_OPEN, {"to": name, **cap})  # never accepted
        assert len(state(coord).bells) == 2
        await accepter.aclose()
        await wait_until(lambda: len(coord.stats().processes) == 1)
        assert len(state(coord).bells) == 2  # the opener's ends are open
        await opener.call(Op.CHANNEL_CLOSE, {"channel": first.result["channel"]})
        await opener.call(Op.CHANNEL_CLOSE, {"channel": second["channel"]})
        assert not state(coord).bells and coord.stats().channels == 0
        assert coord.stats().blocks == 0
    finally:
        await opener.aclose()
        if accepter is not None:
            await accepter.aclose()
    await all_gone(coord)
