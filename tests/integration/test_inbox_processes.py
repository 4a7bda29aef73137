"""Inline messages between real processes (issue 17, item 3): producer processes send
small objects with ``send_value`` and ``send_many`` into one consumer's inbox; every
message arrives, in order per producer, within the inbox's bounds; a consumer
``kill -9``ed with a full inbox and batches waiting for it leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import blockipc
from _helpers import connected
from _inbox_procs import spawn
from _procs import wait_until
from blockipc import PeerUnreachable
from blockipc.testing import unique_name

PER_PRODUCER = 300


async def test_inline_messages_of_four_producer_processes_all_arrive_in_order(
    coord: blockipc.Coordinator,
) -> None:
    # the inbox (64 messages) is far smaller than what comes: producers wait for room
    async with (
        connected(coord, "sink", inbox_messages=64) as consumer,
        contextlib.AsyncExitStack() as stack,
    ):
        batches = {"one": 0, "two": 0, "b7": 7, "b50": 50}  # 0: send_value per message
        names = {}
        for tag, batch in batches.items():
            name = unique_name(f"prod-{tag}")
            child = await stack.enter_async_context(
                spawn("inline_producer", coord.address, name, consumer.name, PER_PRODUCER, batch)
            )
            await child.expect("ready")
            names[name] = child
        seqs: dict[str, list[int]] = {name: [] for name in names}
        total, calls = len(names) * PER_PRODUCER, 0
        while sum(map(len, seqs.values())) < total:
            calls += 1  # both ways of receiving, in turn
            got = [await consumer.recv()] if calls % 3 == 0 else await consumer.recv_many(40)
            for msg in got:
                assert msg.block is None and msg.codec == "msgpack"
                value = msg.value
                assert value["p"] == msg.sender
                seqs[msg.sender].append(value["seq"])
        for name, child in names.items():
            assert seqs[name] == list(range(PER_PRODUCER)), name  # all, in order
            await child.expect("done")
        with pytest.raises(TimeoutError):  # and nothing more
            await consumer.recv_many(8, timeout=0.2)
        usage = {u.name: u for u in coord.stats().usage}
        assert (usage[consumer.name].inbox, usage[consumer.name].inbox_bytes) == (0, 0)


async def test_a_killed_consumer_frees_its_inbox_and_fails_the_waiting_batches(
    coord: blockipc.Coordinator,
) -> None:
    name = unique_name("victim")
    before = coord.stats()
    async with connected(coord, "prod") as producer:
        async with spawn("inline_consumer", coord.address, name, 16, 4) as victim:
            await victim.expect("ready")
            await producer.send_many(name, [{"seq": i} for i in range(4)])
            assert (await victim.expect("got"))["seqs"] == [0, 1, 2, 3]
            await producer.send_many(name, [{"seq": i} for i in range(16)])  # full now
            waiting = [
                asyncio.create_task(producer.send_many(name, [{"seq": 99}] * 10)) for _ in range(3)
            ]
            await wait_until(lambda: len(coord._state.table.processes[name].pending) == 3)
            usage = {u.name: u for u in coord.stats().usage}
            assert usage[name].inbox == 16 and usage[name].inbox_bytes > 0
            victim.kill()
            for task in waiting:  # at once, not when a timeout runs out
                with pytest.raises(PeerUnreachable):
                    await asyncio.wait_for(task, 20)
        await wait_until(lambda: name not in coord.stats().processes)
        after = coord.stats()
        assert (after.blocks, after.used_bytes) == (before.blocks, before.used_bytes)
        # the name is free again, and its new inbox starts empty
        async with blockipc.connect(coord.address, name=name) as again:
            with pytest.raises(TimeoutError):
                await again.recv_many(4, timeout=0.2)
            await producer.send_value(name, "fresh")
            [msg] = await again.recv_many(4)
            assert msg.value == "fresh"
