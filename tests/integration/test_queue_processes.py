"""Work queues between real processes: 3 producers x 300 jobs, 3 consumers, one of them
``kill -9``ed with jobs in hand: every job is processed, none is lost, and the ones the
killed consumer held are redelivered (and counted)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import blockipc
from _helpers import connected
from _procs import Child, spawn, wait_until
from blockipc.testing import unique_name

PRODUCERS = 3
JOBS = 300
HELD = 5  # jobs the victim takes and never acks


async def done_until(child: Child, last: str) -> list[dict[str, Any]]:
    """The ``done`` events ``child`` reports, until its ``last`` event (included)."""
    events = []
    while True:
        event = await child.event(timeout=30)
        events.append(event)
        if event["event"] == last:
            return events
        assert event["event"] == "done", event


async def test_no_job_is_lost_when_a_consumer_is_killed(coord: blockipc.Coordinator) -> None:
    queue = unique_name("jobs")
    async with connected(coord, "ctl") as ctl, contextlib.AsyncExitStack() as stack:
        await ctl.declare_queue(queue, maxsize=64)  # small: producers wait for room too
        blocks_before = coord.stats().blocks
        names = [unique_name(f"c{i}") for i in range(3)]
        consumers = [
            await stack.enter_async_context(
                spawn("queue_consumer", coord.address, name, queue, hold)
            )
            for name, hold in zip(names, ["-", "-", f"20:{HELD}"], strict=True)
        ]
        victim = consumers[2]
        for c in consumers:
            await c.expect("ready")
        readers = [asyncio.create_task(done_until(c, "stopped")) for c in consumers[:2]]
        producers = [
            await stack.enter_async_context(
                spawn("queue_producer", coord.address, unique_name(f"p{i}"), queue, JOBS)
            )
            for i in range(PRODUCERS)
        ]
        for p in producers:
            await p.expect("ready")
        victim_events = await done_until(victim, "holding")
        held = victim_events.pop()["jobs"]
        assert len(held) == HELD
        victim.kill()  # kill -9, with HELD jobs taken and not acked
        await victim.wait()
        for p in producers:
            assert (await p.expect("done", timeout=60))["count"] == JOBS
        # its reclaim gave the held jobs back (to the front of the queue) before this
        await wait_until(lambda: names[2] not in coord.stats().processes, timeout=20)
        for _ in readers:  # behind every job (those given back went to the front)
            await ctl.enqueue(queue, "stop", codec="json")
        survivors = await asyncio.gather(*readers)

    done = [e for events in [victim_events, *survivors] for e in events if e["event"] == "done"]
    processed = [tuple(e["job"]) for e in done]
    names = {e["producer"] for e in done}
    assert len(names) == PRODUCERS
    assert sorted(processed) == sorted((n, i) for n in names for i in range(JOBS)), "lost or twice"
    redelivered = [tuple(e["job"]) for e in done if e["attempts"]]
    assert sorted(redelivered) == sorted(tuple(j) for j in held)  # those, and only those
    assert all(e["attempts"] == 1 for e in done if e["attempts"])
    q = next(s for s in coord.stats().queues if s.name == queue)
    total = PRODUCERS * JOBS
    assert (q.depth, q.in_flight, q.dead_lettered) == (0, 0, 0)
    assert (q.enqueued, q.acked, q.redelivered) == (total + 2, total + 2, HELD)
    # the jobs were inline (small json): their bytes, held by the coordinator, all dropped
    assert coord.stats().blocks == blocks_before and coord.stats().queue_inline_bytes == 0
