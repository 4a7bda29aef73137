"""Work-queue batches and large jobs on a live coordinator, clients in this process:
``enqueue_many`` (all or nothing: room, ``nowait``, limits), ``take_many`` (what there
is, dealt in turn, acks folded all or none) and a large job's ENQUEUE_COMMIT."""

from __future__ import annotations

import asyncio

import pytest

import blockipc
from _procs import wait_until
from blockipc import AccessDenied, BlockNotFound, InboxFull, InvalidRequest
from blockipc._core.limits import MAX_BATCH, MAX_BATCH_BYTES, MAX_INLINE_PAYLOAD
from blockipc._core.protocol import NO_BLOCK, Op
from blockipc.testing import unique_name


def queue_stats(coord: blockipc.Coordinator, name: str) -> blockipc.QueueStats:
    return next(q for q in coord.stats().queues if q.name == name)


async def test_a_batch_goes_in_whole_or_waits_whole(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=10)
    await client.enqueue_many(name, list(range(7)), codec="json")
    blocks = coord.stats().blocks
    # room for 3, a batch of 5: nowait refuses all of it, nothing enqueued
    with pytest.raises(InboxFull, match="room for 3 jobs, not the batch's 5"):
        await client.enqueue_many(name, list(range(7, 12)), codec="json", nowait=True)
    q = queue_stats(coord, name)
    assert (q.depth, q.enqueued) == (7, 7) and coord.stats().blocks == blocks
    # without nowait it waits, whole, and a later enqueue waits behind it (FIFO)
    batch = asyncio.create_task(client.enqueue_many(name, list(range(7, 12)), codec="json"))
    await wait_until(lambda: len(coord._state.queues.queues[name].putters) == 1)
    single = asyncio.create_task(client.enqueue(name, 12, codec="json"))
    await wait_until(lambda: len(coord._state.queues.queues[name].putters) == 2)
    first = await other.take_many(name, max_jobs=1)  # room for 4: not yet
    await asyncio.sleep(0.05)
    assert not batch.done() and not single.done()
    assert queue_stats(coord, name).depth == 6
    more = await other.take_many(name, max_jobs=2, ack=first)  # room for 6: the batch goes
    ids = await batch
    assert len(ids) == 5 and ids == sorted(ids)
    await single
    q = queue_stats(coord, name)
    assert (q.depth, q.enqueued) == (10, 13)
    rest = await other.take_many(name, max_jobs=20, ack=more)
    assert [job.value for job in rest] == list(range(3, 13))  # in order, nothing lost
    for job in rest:
        await job.ack()


async def test_a_cancelled_batch_enqueues_nothing(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=2)
    await client.enqueue_many(name, [b"a", b"b"], codec="raw")
    blocks = coord.stats().blocks
    block = await client.put(b"mine", codec="raw")
    task = asyncio.create_task(client.enqueue_many(name, [b"c", block], codec="raw"))
    await wait_until(lambda: len(coord._state.queues.queues[name].putters) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: not coord._state.queues.queues[name].putters)
    assert queue_stats(coord, name).enqueued == 2
    assert await client.get(block) == b"mine"  # still this process's
    await client.free(block)
    assert coord.stats().blocks == blocks
    jobs = await other.take_many(name, max_jobs=5)
    assert [job.value for job in jobs] == [b"a", b"b"]
    for job in jobs:
        await job.ack()


async def test_batch_limits_are_refused_with_nothing_enqueued(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=4)
    blocks = coord.stats().blocks
    with pytest.raises(InvalidRequest, match="must be 1 to"):
        await client.enqueue_many(name, [], codec="raw")
    with pytest.raises(InvalidRequest, match="must be 1 to"):
        await client.enqueue_many(name, [b"x"] * (MAX_BATCH + 1), codec="raw")
    with pytest.raises(InvalidRequest, match=f"the limit is {MAX_BATCH_BYTES}"):
        await client.enqueue_many(name, [bytes(MAX_INLINE_PAYLOAD)] * 17, codec="raw")
    with pytest.raises(InvalidRequest, match=r"can never fit .* \(maxsize 4\)"):
        await client.enqueue_many(name, [b"x"] * 5, codec="raw")
    with pytest.raises(InvalidRequest, match="must be 1 to"):
        await client.take_many(name, max_jobs=0)
    with pytest.raises(InvalidRequest, match="must be 1 to"):
        await client.take_many(name, max_jobs=MAX_BATCH + 1)
    # what the coordinator checks itself (a client that skipped its own checks)
    args = {
        "queue": name,
        "blocks": [NO_BLOCK, NO_BLOCK],
        "sizes": [3, 3],
        "codec": "raw",
        "metas": [{}, {}],
        "header": {},
        "nowait": False,
    }
    with pytest.raises(InvalidRequest, match="add up to 6 bytes, its data is 5"):
        await client._call(Op.ENQUEUE_MANY, args, b"abcde")
    with pytest.raises(InvalidRequest, match="one block, size and meta per job"):
        await client._call(Op.ENQUEUE_MANY, {**args, "metas": [{}]}, b"abcdef")
    with pytest.raises(InvalidRequest, match="must be 1 to"):
        await client._call(Op.ENQUEUE_MANY, {**args, "blocks": [], "sizes": [], "metas": []})
    block = await client.put(b"mine", codec="raw")
    twice = {**args, "blocks": [block.id, block.id], "sizes": [0, 0]}
    with pytest.raises(InvalidRequest, match="same block twice"):
        await client._call(Op.ENQUEUE_MANY, twice)
    await client.free(block)
    q = queue_stats(coord, name)
    assert (q.depth, q.enqueued) == (0, 0) and coord.stats().blocks == blocks


async def test_a_batch_with_a_block_it_may_not_move_enqueues_nothing(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name)
    shared = await client.put(b"shared", codec="raw")
    await client.grant(shared, other.name, "r")
    blocks = coord.stats().blocks
    with pytest.raises(AccessDenied, match="shared with other processes"):
        await client.enqueue_many(name, [b"a", shared, b"b"], codec="raw")
    assert queue_stats(coord, name).enqueued == 0
    assert coord.stats().blocks == blocks  # the inline ones were never made
    await client.free(shared)


async def test_take_many_returns_what_there_is_dealt_in_turn(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    first = asyncio.create_task(other.take_many(name, max_jobs=10))
    await wait_until(lambda: name in coord._state.queues.queues)
    second = asyncio.create_task(client.take_many(name, max_jobs=10))
    await wait_until(lambda: len(coord._state.queues.queues[name].takers) == 2)
    await client.enqueue_many(name, [0, 1, 2, 3, 4], codec="json")
    a, b = await first, await second
    assert [j.value for j in a] == [0, 2, 4] and [j.value for j in b] == [1, 3]
    assert not coord._state.queues.queues[name].takers
    # with jobs waiting it returns at once, at most max_jobs
    await client.enqueue_many(name, [5, 6, 7], codec="json")
    c = await other.take_many(name, max_jobs=2, ack=a)
    assert [j.value for j in c] == [5, 6] and all(j.done for j in a)
    d = await other.take_many(name, max_jobs=2, timeout=5, ack=c)
    assert [j.value for j in d] == [7]
    with pytest.raises(TimeoutError):
        await other.take_many(name, max_jobs=2, timeout=0.05, ack=d)
    assert all(j.done for j in d)  # the acks went, the take timed out
    for job in b:
        await job.ack()
    q = queue_stats(coord, name)
    assert (q.acked, q.in_flight, q.depth) == (8, 0, 0)


async def test_a_refused_ack_of_a_batch_acks_none_of_it(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    blocks = []
    for data in (b"one", b"two", b"three"):  # blocks: a consumer can lease one of its own
        blocks.append(await client.alloc(len(data)))
        await client.write(blocks[-1], data)
    await client.enqueue_many(name, blocks)
    jobs = await other.take_many(name, max_jobs=2)
    assert jobs[1].block is not None
    async with other.lease(jobs[1].block, "r"):  # a lease of its own: its ack is refused
        with pytest.raises(AccessDenied, match="end them before ack"):
            await other.take_many(name, max_jobs=5, ack=jobs)
        assert not any(job.done for job in jobs)
        q = queue_stats(coord, name)
        assert (q.acked, q.in_flight, q.depth) == (0, 2, 1)  # and nothing was taken
    assert [job.value for job in jobs] == [b"one", b"two"]
    with pytest.raises(InvalidRequest, match="same job twice"):
        await other.take_many(name, ack=[jobs[0], jobs[0]])
    nxt = await other.take_many(name, max_jobs=5, ack=jobs)
    assert all(job.done for job in jobs) and [j.value for j in nxt] == [b"three"]
    with pytest.raises(InvalidRequest, match="acked already"):
        await other.take_many(name, ack=jobs)
    await nxt[0].ack()


async def test_a_consumer_that_closes_gives_its_batch_back(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.enqueue_many(name, list(range(6)), codec="json")
    async with blockipc.connect(coord.address, name=unique_name("c")) as consumer:
        jobs = await consumer.take_many(name, max_jobs=4)
        assert [j.value for j in jobs] == [0, 1, 2, 3]
    await wait_until(lambda: queue_stats(coord, name).in_flight == 0)
    again = await client.take_many(name, max_jobs=10)
    assert [(j.value, j.attempts) for j in again] == [(i, int(i < 4)) for i in range(6)]
    for job in again:
        await job.ack()


async def test_a_large_job_is_committed_and_enqueued_in_one_request(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=1)
    big = bytes(range(256)) * 4096  # 1 MiB: over the inline limit
    blocks = coord.stats().blocks
    job_id = await client.enqueue(name, big, codec="raw", header={"n": 1})
    with pytest.raises(InboxFull):  # full: refused after its commit, the block is freed
        await client.enqueue(name, big, codec="raw", nowait=True)
    assert coord.stats().blocks == blocks + 1
    waiting = asyncio.create_task(client.enqueue(name, {"x": list(range(20000))}, codec="json"))
    await wait_until(lambda: len(coord._state.queues.queues[name].putters) == 1)
    waiting.cancel()  # cancelled while it waits: its block is freed
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await wait_until(lambda: coord.stats().blocks == blocks + 1)
    job = await other.take(name)
    assert (job.id, job.codec, job.header, job.block.size) == (job_id, "raw", {"n": 1}, len(big))
    assert job.value == big
    await job.ack()
    assert coord.stats().blocks == blocks
    # the coordinator's checks of the lease, before anything is committed
    r = (await client._call(Op.PUT, {"size": 4096})).result
    args = {"lease": r["lease"], "codec": "raw", "meta": {}, "queue": name, "header": {}}
    with pytest.raises(InvalidRequest, match="unknown codec"):
        await client._call(Op.ENQUEUE_COMMIT, {**args, "codec": "nope", "nowait": False})
    with pytest.raises(BlockNotFound, match="not held by this process"):
        await other._call(Op.ENQUEUE_COMMIT, {**args, "nowait": False})
    await client._call(Op.RELEASE, {"lease": r["lease"]})
    await client._call(Op.FREE, {"block": r["block"]})
    assert queue_stats(coord, name).enqueued == 1


async def test_inline_jobs_past_the_coordinators_inline_bytes_go_into_blocks(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    """Inline jobs keep their bytes in the coordinator up to its inline limit; past it
    an inline job goes into a block (never refused), and the consumer gets the same
    values, acks and counts either way."""
    name = unique_name("jobs")
    coord._state.queues.inline_limit = 100  # (a fresh coordinator per test)
    payloads = [bytes([i]) * 40 for i in range(3)]
    await client.enqueue_many(name, payloads, codec="raw")  # 40 + 40 kept, the third: a block
    assert (coord.stats().queue_inline_bytes, coord.stats().blocks) == (80, 1)
    await client.enqueue(name, b"y" * 30, codec="raw")  # 110 would pass it: a block
    await client.enqueue(name, b"z" * 20, codec="raw")  # 100: kept
    assert (coord.stats().queue_inline_bytes, coord.stats().blocks) == (100, 2)
    jobs = await other.take_many(name, max_jobs=5)
    assert [job.block is None for job in jobs] == [True, True, False, False, True]
    assert [job.value for job in jobs] == [*payloads, b"y" * 30, b"z" * 20]
    q = queue_stats(coord, name)
    assert (q.enqueued, q.depth, q.in_flight) == (5, 0, 5)
    await jobs[0].nack()  # inline, back to the front; then taken again, with its ack
    again = await other.take(name, ack=jobs[1])
    assert (again.id, again.attempts, again.block) == (jobs[0].id, 1, None)
    assert again.value == payloads[0]
    with pytest.raises(TimeoutError):  # (the acks go; nothing is left to take)
        await other.take_many(name, max_jobs=1, timeout=0.01, ack=[again, *jobs[2:]])
    q = queue_stats(coord, name)
    assert (q.acked, q.redelivered, q.depth, q.in_flight) == (5, 1, 0, 0)
    assert (coord.stats().queue_inline_bytes, coord.stats().blocks) == (0, 0)
