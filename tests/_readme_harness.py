"""Runs one README.md fragment for real, with the names around it supplied.

Run as ``python tests/_readme_harness.py HARNESS FILE FIRST_LINE``: FILE holds the
fragment (a fenced block of README.md that starts on line FIRST_LINE there). A
fragment is compiled as it is written, top-level ``await`` and ``async with``
included, with README.md line numbers in its tracebacks; the harness connects the
clients it names against an embedded coordinator, runs it, and checks what it did.
Exit status 0 means the fragment ran and did what the README says.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import CodeType
from typing import Any

import numpy as np

import blockipc
from blockipc.testing import assert_pool_clean, isolated_coordinator


class Fragment:
    """A README block's text and where it starts, cut into parts and compiled."""

    def __init__(self, text: str, first_line: int) -> None:
        self.text = text
        self.first_line = first_line

    def split(self, marker: str) -> tuple[Fragment, Fragment]:
        """The lines before the first line equal to ``marker`` (stripped), and from it on."""
        lines = self.text.splitlines(keepends=True)
        at = next((i for i, line in enumerate(lines) if line.strip() == marker), None)
        if at is None:
            raise AssertionError(f"the block has no line {marker!r}: its harness needs one")
        return (
            Fragment("".join(lines[:at]), self.first_line),
            Fragment("".join(lines[at:]), self.first_line + at),
        )

    def replace(self, old: str, new: str) -> Fragment:
        if old not in self.text:
            raise AssertionError(f"the block no longer contains {old!r}: update its harness")
        return Fragment(self.text.replace(old, new), self.first_line)

    def compile(self) -> CodeType:
        source = "\n" * (self.first_line - 1) + self.text  # README.md's line numbers
        return compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def run(self, names: dict[str, Any]) -> dict[str, Any]:
        """Run the fragment in ``names`` (which it updates, like a module's globals);
        ``blockipc`` is imported there, as the README assumes."""
        names.setdefault("blockipc", blockipc)
        result = eval(self.compile(), names)
        if inspect.iscoroutine(result):
            await result
        return names


async def channel(block: Fragment) -> None:
    """Channels: the ``# producer`` half and the ``# consumer`` half run at once, each
    with its own client, the producer's named ``frames``."""
    producer, consumer = block.split("# consumer")
    frames = [b"frame %d" % i for i in range(3)]
    got: list[tuple[bytes, dict[str, Any] | None]] = []

    def process(data: memoryview, header: dict[str, Any] | None) -> None:
        got.append((bytes(data), header))

    async with isolated_coordinator(pool_size="64MiB") as coord:
        async with (
            blockipc.connect(coord.address, name="consumer") as rx_client,
            blockipc.connect(coord.address, name="producer") as tx_client,
        ):
            tx_names = {"client": tx_client, "frames": frames, "np": np}
            rx_names = {"client": rx_client, "process": process}
            await asyncio.gather(producer.run(tx_names), consumer.run(rx_names))
        assert [data for data, _ in got] == [*frames, b"\x07" * (1 << 20)], got
        assert [header for _, header in got] == [{"seq": 0}, {"seq": 1}, {"seq": 2}, {}], got
        await _until_clean(coord)


async def objects(block: Fragment) -> None:
    """Objects: ``client`` puts, ``other_client`` gets; ``block`` holds a numpy array."""
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    async with isolated_coordinator(pool_size="64MiB") as coord:
        async with (
            blockipc.connect(coord.address, name="putter") as client,
            blockipc.connect(coord.address, name="getter") as other_client,
        ):
            array_block = await client.put(np.arange(10), codec="numpy")
            names = {"client": client, "other_client": other_client, "weights": weights}
            names["block"] = array_block
            await block.run(names)
            got = names["weights"]
            assert got is not weights and np.array_equal(got, weights), got
            assert got.dtype == weights.dtype and not got.flags.writeable
            assert names["total"] == 45, names["total"]
            await client.delete("weights")
            await client.free(array_block)
        await _until_clean(coord)


async def remote(block: Fragment) -> None:
    """Remote send: node b is made as the block's comment says, listening on loopback
    (where ``host-b`` would be), with CURVE keys in ``keys/`` (the current directory is a
    scratch one); the first part makes node a, the second sends to ``b/consumer``."""
    from blockipc._link.keys import keygen

    make_a, send = block.split("")  # the blank line between the two
    comment = "# on host b: "
    node_b = next(line for line in make_a.text.splitlines() if line.startswith(comment))
    node_b = node_b.removeprefix(comment).replace("tcp://*:7100", "tcp://127.0.0.1:0")
    assert "tcp://127.0.0.1:0" in node_b, node_b
    for node in ("a", "b"):
        keygen(node, "keys/")
    async with eval(node_b, {"blockipc": blockipc}) as b:
        assert b.link_address is not None
        names = await make_a.replace("tcp://host-b:7100", b.link_address).run({})
        async with names["coord"] as a:
            async with (
                blockipc.connect(a.address, name="producer") as client,
                blockipc.connect(b.address, name="consumer") as consumer,
            ):
                sent = await client.alloc(1 << 20)
                await client.write(sent, b"remote bytes", 1000)
                names = {"client": client, "consumer": consumer, "block": sent}
                msg = (await send.run(names))["msg"]
                assert msg.sender == "a/producer", msg
                assert msg.header == {"seq": 1}, msg
                assert await consumer.read(msg.block, 1000, 12) == b"remote bytes"
                await consumer.free(msg.block)
            await _until_clean(a)
        await _until_clean(b)


async def across_nodes(block: Fragment) -> None:
    """Publish and get across nodes: node b listens on loopback, node a links to it
    (plain: the fragment is about the calls, the keys are the remote fragment's); the
    first part subscribes on b, the second publishes on a once a knows of it (a link
    round trip later), the third puts on b and gets from a."""
    subscribe, rest = block.split("")
    publish, get = Fragment(rest.text[1:], rest.first_line + 1).split("")  # (its blank line)
    async with blockipc.Coordinator(
        pool_size="32MiB", node="b", listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        assert b.link_address is not None
        async with (
            blockipc.Coordinator(
                pool_size="32MiB", node="a", peers={"b": b.link_address}, insecure=True
            ) as a,
            blockipc.connect(a.address, name="producer") as producer,
            blockipc.connect(a.address, name="reader") as reader,
            blockipc.connect(b.address, name="consumer") as consumer,
            blockipc.connect(b.address, name="writer") as writer,
        ):
            names: dict[str, Any] = {"consumer": consumer, "producer": producer}
            await subscribe.run(names)
            link = a._link
            assert link is not None
            for _ in range(500):  # a learns of b's subscription a round trip later
                if link.subscribed_nodes("frames.cam1"):
                    break
                await asyncio.sleep(0.01)
            names["block"] = await producer.alloc(100)
            await producer.write(names["block"], b"frame", 0)
            names = await publish.run(names)
            assert names["n"] == 1, names["n"]
            msg = names["msg"]
            assert (msg.sender, msg.topic) == ("a/producer", "frames.cam1"), msg
            assert await consumer.read(msg.block, 0, 5) == b"frame"
            await consumer.free(msg.block)
            weights = np.arange(6, dtype=np.float32).reshape(2, 3)
            names = await get.run({"writer": writer, "reader": reader, "weights": weights})
            assert np.array_equal(names["w"], weights), names["w"]
            await writer.delete("weights")
        await _until_clean(a)
        await _until_clean(b)


async def inline(block: Fragment) -> None:
    """Inline messages: ``producer`` sends ``readings`` to the process ``consumer``,
    which receives them and calls ``handle(value, sender)`` for each."""
    readings = [20.5, 21.0, 21.5]
    got: list[tuple[Any, str]] = []
    async with isolated_coordinator(pool_size="64MiB") as coord:
        async with (
            blockipc.connect(coord.address, name="consumer") as consumer,
            blockipc.connect(coord.address, name="sensor") as producer,
        ):
            names = {"producer": producer, "consumer": consumer, "readings": readings}
            names["handle"] = lambda value, sender: got.append((value, sender))
            await block.run(names)
        assert got == [({"reading": r}, "sensor") for r in readings], got
        await _until_clean(coord)


async def _until_clean(coord: blockipc.Coordinator) -> None:
    """Once the fragment's clients are gone, the pool is as it began."""
    for _ in range(200):
        if not coord.stats().processes:
            break
        await asyncio.sleep(0.01)
    assert_pool_clean(coord)


HARNESSES: dict[str, Callable[[Fragment], Awaitable[None]]] = {
    "channel": channel,
    "objects": objects,
    "remote": remote,
    "across_nodes": across_nodes,
    "inline": inline,
}


def main() -> None:
    name, path, first_line = sys.argv[1:]
    fragment = Fragment(Path(path).read_text(), int(first_line))
    blockipc.run(HARNESSES[name], fragment)


if __name__ == "__main__":
    main()
