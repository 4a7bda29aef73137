"""Across nodes: ``publish`` reaching subscribers on linked nodes, ``get("b/name")``
fetching a named object from node ``b`` (issue 15, item 7).

Two real coordinators, each in a child process (``tests/_procs.py`` role ``node``),
linked on 127.0.0.1 with CURVE keys; the clients run in this process. The frames the
link adds (``SUBQ``/``SUBS``, publish entries and ``ACKP``, ``GETQ``/``GETR``) are
tested on values alone at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

import blockipc
from _helpers import free_port, node_keys
from _procs import Child, spawn
from blockipc import BlockNotFound, PeerUnreachable
from blockipc._core.linkwire import (
    ACKP,
    BLOCKS,
    GETR,
    SUBS,
    decode_acks,
    decode_blocks,
    decode_get_answer,
    decode_get_ask,
    decode_subq,
    decode_subs,
    encode_ackp,
    encode_blocks,
    encode_get_answer,
    encode_get_ask,
    encode_subq,
    encode_subs,
)
from blockipc._exceptions import ProtocolError

# every node is a child process (each with its own loop): one run of each test
pytestmark = pytest.mark.one_loop

LINK_TIMEOUT = 2  # seconds: how long a node waits for a peer that is down


@contextlib.asynccontextmanager
async def node(
    short_dir: Path, name: str, port: int, peers: dict[str, int], keys: Path
) -> AsyncIterator[tuple[Child, str]]:
    """Coordinator ``name`` in a child process, listening on ``port``, linked to
    ``peers`` (name -> port); yields the child and its Unix socket's address."""
    async with spawn(
        "node",
        short_dir / f"{name}.sock",
        "32MiB",
        name,
        f"tcp://127.0.0.1:{port}",
        json.dumps({peer: f"tcp://127.0.0.1:{p}" for peer, p in peers.items()}),
        str(keys),
        LINK_TIMEOUT,
    ) as child:
        ready = await child.expect("ready")
        yield child, ready["address"]


@contextlib.asynccontextmanager
async def two_nodes(short_dir: Path) -> AsyncIterator[tuple[Child, str, Child, str]]:
    """Nodes ``a`` and ``b``, each a peer of the other (links both ways, as a user
    who wants a loop would make them)."""
    keys = node_keys(short_dir / "keys", "a", "b")
    port_a, port_b = free_port(), free_port()
    async with (
        node(short_dir, "b", port_b, {"a": port_a}, keys["b"]) as (b, addr_b),
        node(short_dir, "a", port_a, {"b": port_b}, keys["a"]) as (a, addr_a),
    ):
        yield a, addr_a, b, addr_b


async def eventually(attempt: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Retry ``attempt`` until it returns True (a node learns its peer's subscriptions
    a link round trip after they change); fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await attempt():
            await asyncio.sleep(0.02)


async def publish_bytes(client: blockipc.Client, data: bytes, topic: str, **header: Any) -> int:
    block = await client.alloc(len(data))
    async with client.lease(block, "w") as view:
        view[:] = data
    return await client.publish(block, topic, header=header)


async def take(client: blockipc.Client) -> tuple[blockipc.Message, bytes]:
    """The next message, its bytes read and its block freed."""
    msg = await asyncio.wait_for(client.recv(), 10)
    assert msg.block is not None
    async with client.lease(msg.block, "r") as view:
        data = bytes(view)
    await client.free(msg.block)
    return msg, data


async def nothing_more(*clients: blockipc.Client) -> None:
    for client in clients:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.recv(), 0.3)


async def test_publish_reaches_subscribers_on_a_linked_node(short_dir: Path) -> None:
    """A publish on node a reaches a's own subscriber and b's subscribers (a plain
    topic and a wildcard pattern), once each, counted in what publish returns; the
    block crosses the link once and is not sent back to a by b (the links go both
    ways). Once b's subscribers are gone, a publish on a counts a's subscriber only."""
    async with (
        two_nodes(short_dir) as (_a, addr_a, _b, addr_b),
        blockipc.connect(addr_a, name="pub") as pub,
        blockipc.connect(addr_a, name="local") as local,
        blockipc.connect(addr_b, name="exact") as exact,
        blockipc.connect(addr_b, name="wild") as wild,
    ):
        await local.subscribe("frames.left")
        await exact.subscribe("frames.left")
        await wild.subscribe("frames.*")
        sent = 0

        async def reaches_all() -> bool:
            nonlocal sent
            sent += 1
            return await publish_bytes(pub, b"frame-%d" % sent, "frames.left", i=sent) == 3

        await eventually(reaches_all)
        # the publishes before b's subscriptions were known reached a's subscriber only
        for i in range(1, sent):
            msg, data = await take(local)
            assert (msg.header, data) == ({"i": i}, b"frame-%d" % i)
        for client, sender in ((local, "pub"), (exact, "a/pub"), (wild, "a/pub")):
            msg, data = await take(client)
            assert (msg.sender, msg.topic, msg.header) == (sender, "frames.left", {"i": sent})
            assert data == b"frame-%d" % sent
        # a topic that only the pattern matches
        assert await publish_bytes(pub, b"right", "frames.right") == 1
        msg, data = await take(wild)
        assert (msg.sender, msg.topic, data) == ("a/pub", "frames.right", b"right")
        # a block published on b reaches a's subscriber (the other link), and only once
        # b's subscribers: b does not publish it again, nor a send it back
        from_b = 0

        async def reaches_a() -> bool:
            nonlocal from_b
            from_b += 1
            return await publish_bytes(exact, b"from-b", "frames.left", i=from_b) == 2

        await eventually(reaches_a)
        msg, data = await take(local)
        assert (msg.sender, msg.header, data) == ("b/exact", {"i": from_b}, b"from-b")
        for i in range(1, from_b + 1):
            msg, data = await take(wild)
            assert (msg.sender, msg.header, data) == ("exact", {"i": i}, b"from-b")
        await nothing_more(local, exact, wild)

        await wild.unsubscribe("frames.*")
        await exact.aclose()  # (a process gone: its subscriptions go with it)

        async def reaches_local_only() -> bool:
            n = await publish_bytes(pub, b"late", "frames.left")
            await take(local)
            return n == 1

        await eventually(reaches_local_only)
        await nothing_more(local, wild)
        # every copy on b and every block on a is gone with its last reader
        for client in (pub, wild):
            stats = await client.stats()
            assert (stats.blocks, stats.used_bytes) == (0, 0), stats


async def test_publish_waits_for_a_remote_subscribers_room(short_dir: Path) -> None:
    """A remote subscriber whose inbox is full holds the publish back (its node acks
    once the block is in): publish returns when it has been delivered, like a local
    one, and every block arrives in order."""
    async with (
        two_nodes(short_dir) as (_a, addr_a, _b, addr_b),
        blockipc.connect(addr_a, name="pub") as pub,
        blockipc.connect(addr_b, name="slow", inbox_messages=1) as slow,
    ):
        await slow.subscribe("jobs")
        await eventually(lambda: _first_reaches(pub))
        first, _ = await take(slow)
        assert first.header == {"probe": True}
        publishes = [
            asyncio.create_task(publish_bytes(pub, b"job-%d" % i, "jobs", i=i)) for i in range(5)
        ]
        got = [await take(slow) for _ in range(5)]
        assert await asyncio.gather(*publishes) == [1] * 5
        assert [data for _, data in got] == [b"job-%d" % i for i in range(5)]


async def _first_reaches(pub: blockipc.Client) -> bool:
    n = await publish_bytes(pub, b"probe", "jobs", probe=True)
    return n == 1


async def test_get_fetches_a_named_object_from_a_linked_node(short_dir: Path) -> None:
    """``get("b/name")`` on node a returns node b's object, decoded with the codec
    recorded on b; a new put on b is seen by the next get on a (a copy each time,
    never a stale one); an unknown name raises BlockNotFound; a's pool keeps nothing
    of the copies; with b gone, the get raises PeerUnreachable."""
    async with (
        two_nodes(short_dir) as (_a, addr_a, b, addr_b),
        blockipc.connect(addr_a, name="reader") as reader,
    ):
        async with blockipc.connect(addr_b, name="writer") as writer:
            await writer.put({"w": [1, 2, 3]}, codec="json", name="weights")
            await writer.put(b"\x00" * (3 << 20), codec="raw", name="big")
            assert await reader.get("b/weights") == {"w": [1, 2, 3]}
            assert await reader.get("b/weights") == {"w": [1, 2, 3]}
            await writer.put({"w": [4]}, codec="json", name="weights")
            assert await reader.get("b/weights") == {"w": [4]}
            assert bytes(await reader.get("b/big")) == b"\x00" * (3 << 20)
            with pytest.raises(BlockNotFound, match="nothing"):
                await reader.get("b/nothing")
            # a name with the prefix of no peer is a local name
            with pytest.raises(BlockNotFound, match="c/weights"):
                await reader.get("c/weights")
            stats = await reader.stats()
            assert stats.used_bytes == 0 and stats.blocks == 0
        b.kill()
        await b.wait()
        with pytest.raises(PeerUnreachable):
            await reader.get("b/weights")


async def test_a_remote_get_is_never_served_from_the_cache(short_dir: Path) -> None:
    """Each ``get("b/name")`` fetches a copy: its reply reaches the asker only once
    the copy's generation has moved on, so the next get of the name never finds it in
    the asker's cache (however soon it comes, and however b's object changed since)."""
    async with (
        two_nodes(short_dir) as (_a, addr_a, _b, addr_b),
        blockipc.connect(addr_a, name="reader") as reader,
        blockipc.connect(addr_b, name="writer") as writer,
    ):
        await writer.put({"w": 1}, codec="json", name="weights")
        for _ in range(100):  # (the gets follow each other as closely as they can)
            assert await reader.get("b/weights") == {"w": 1}
        stats = await reader.stats()
        assert (stats.cache_hits, stats.cache_misses) == (0, 100)


async def test_get_cancelled_while_the_peer_is_down(short_dir: Path) -> None:
    """A remote get waits for a peer that is down (up to link_timeout); cancelled
    meanwhile, it is withdrawn, and the connection goes on."""
    keys = node_keys(short_dir / "keys", "a", "b")
    async with (
        node(short_dir, "a", free_port(), {"b": free_port()}, keys["a"]) as (_a, addr_a),
        blockipc.connect(addr_a, name="reader") as reader,
    ):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.get("b/weights"), 0.2)
        with pytest.raises(PeerUnreachable, match="link_timeout"):
            await reader.get("b/weights")
        assert (await reader.stats()).blocks == 0


# -- the frames, on values alone ----------------------------------------------------------
def test_subscription_frames_round_trip_and_split() -> None:
    assert decode_subq(encode_subq("a")) == "a"
    many = [f"topic.{i:05}.#" for i in range(4000)]
    messages = encode_subs(True, many, ["gone"])
    assert len(messages) > 1
    updates = [decode_subs(m) for m in messages]
    assert [u.reset for u in updates] == [True] + [False] * (len(updates) - 1)
    assert [t for u in updates for t in u.add] == many
    assert [t for u in updates for t in u.remove] == ["gone"]


@pytest.mark.parametrize(
    "meta",
    [
        {"reset": True, "add": [""], "remove": []},  # not a topic
        {"reset": True, "add": ["x" * 256], "remove": []},  # too long
        {"reset": 1, "add": [], "remove": []},  # not a bool
        {"reset": True, "add": [1], "remove": []},
        {"reset": True, "add": []},  # a field missing
    ],
)
def test_a_bad_subscription_update_is_refused(meta: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_subs([SUBS, msgpack.packb(meta)])


def test_a_publish_entry_names_a_topic_and_no_receiver() -> None:
    meta = encode_blocks("a", [[1, "p", "", 3, {}, "frames.x"]])
    (frame,) = decode_blocks([BLOCKS, meta], [3])
    assert (frame.to, frame.topic) == ("", "frames.x")
    for to, topic in (("c", "frames.x"), ("", "frames.*"), ("", "frames.#"), ("", ""), ("", 3)):
        bad = encode_blocks("a", [[1, "p", to, 3, {}, topic]])
        with pytest.raises(ProtocolError):
            decode_blocks([BLOCKS, bad], [3])
    assert decode_acks(encode_ackp(7, 2))[0].delivered == 2
    with pytest.raises(ProtocolError):
        decode_acks([ACKP, msgpack.packb({"seq": 7})])


def test_get_frames_round_trip_and_check_sizes() -> None:
    ask = decode_get_ask(encode_get_ask("a", 3, "weights", 1 << 20))
    assert (ask.node, ask.seq, ask.name, ask.max_size) == ("a", 3, "weights", 1 << 20)
    found = encode_get_answer(3, codec="json", meta={"k": 1}, size=5)
    answer = decode_get_answer(found, 5)
    assert (answer.codec, answer.meta, answer.size, answer.error()) == ("json", {"k": 1}, 5, None)
    missing = decode_get_answer(encode_get_answer(3, code=BlockNotFound.code, message="no"), None)
    assert isinstance(missing.error(), BlockNotFound)
    for parts, data in ((found, 4), (found, None), (encode_get_answer(3, code=5), 1)):
        with pytest.raises(ProtocolError):
            decode_get_answer(parts, data)
    with pytest.raises(ProtocolError):
        decode_get_answer([GETR, b"\xc1"], None)
    with pytest.raises(ProtocolError):
        decode_get_ask(encode_get_ask("a/b", 3, "weights", 1))
