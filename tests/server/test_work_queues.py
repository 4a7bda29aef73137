"""Work queues on a live coordinator (``_server/ops/queues.py``), clients in this process:
nack and dead letters, bounds (waiting, ``nowait``, cancelling), a consumer that closes
with jobs in hand, waiting takes, and what a consumer may do with a job's block."""

from __future__ import annotations

import asyncio

import pytest

import blockipc
from _helpers import connected
from _procs import wait_until
from blockipc import AccessDenied, InboxFull, InvalidRequest, PoolExhausted
from blockipc._core.limits import MAX_INLINE_PAYLOAD, MAX_REFILL
from blockipc._core.protocol import Op
from blockipc.testing import unique_name


def queue_stats(stats: blockipc.Stats, name: str) -> blockipc.QueueStats:
    return next(q for q in stats.queues if q.name == name)


async def test_nack_then_dead_letter(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, max_attempts=2)
    job_id = await client.enqueue(name, {"n": 1}, codec="json", header={"h": "x"})
    first = await other.take(name)
    assert (first.id, first.value, first.header) == (job_id, {"n": 1}, {"h": "x"})
    assert first.attempts == 0
    assert (first.producer, first.queue, first.codec) == (client.name, name, "json")
    await first.nack()
    second = await other.take(name)
    assert (second.id, second.value, second.attempts) == (job_id, {"n": 1}, 1)
    await second.nack()  # its second failure: to the dead-letter queue
    q = queue_stats(await client.stats(), name)
    assert (q.depth, q.in_flight, q.redelivered, q.dead_lettered) == (0, 0, 1, 1)
    assert (q.max_attempts, q.dead_letter) == (2, name + ".dead")
    dead = await client.take(name + ".dead")
    assert (dead.id, dead.value, dead.attempts, dead.queue) == (job_id, {"n": 1}, 0, name + ".dead")
    assert dead.block is None  # an inline job: its bytes held by the coordinator
    assert coord.stats().queue_inline_bytes == len(b'{"n":1}') and coord.stats().blocks == 0
    await dead.ack()
    assert coord.stats().queue_inline_bytes == 0  # acked: its bytes dropped
    assert queue_stats(coord.stats(), name + ".dead").acked == 1
    with pytest.raises(InvalidRequest, match="acked already"):
        await dead.ack()


async def test_a_full_queue_makes_enqueue_wait(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=1)
    await client.enqueue(name, b"one", codec="raw")
    blocks = coord.stats().blocks
    big = bytes(MAX_INLINE_PAYLOAD + 1)  # not inline: put in a block of its own first
    for obj in (b"two", big):
        with pytest.raises(InboxFull, match="is full"):
            await client.enqueue(name, obj, codec="raw", nowait=True)
        assert coord.stats().blocks == blocks  # (the block made for the big one: freed)
    # waiting, then cancelled: withdrawn, and the block made for it freed
    waiting = asyncio.create_task(client.enqueue(name, big, codec="raw"))
    await wait_until(lambda: coord.stats().blocks == blocks + 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await wait_until(lambda: coord.stats().blocks == blocks)
    # an inline one waits as its frame: no block until it goes in; cancelled, nothing left
    waiting = asyncio.create_task(client.enqueue(name, b"two", codec="raw"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and coord.stats().blocks == blocks
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue_stats(await client.stats(), name).enqueued == 1
    # a Block of this process's waits too; a take makes room and it goes in
    block = await client.alloc(100)
    await client.write(block, b"three")
    waiting = asyncio.create_task(client.enqueue(name, block))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    job = await other.take(name)
    assert job.value == b"one"
    await job.ack()
    await asyncio.wait_for(waiting, 5)
    job = await other.take(name)
    assert job.value[:5] == b"three" and len(job.value) == 100  # raw: the whole block
    await job.ack()
    q = queue_stats(coord.stats(), name)
    assert (q.enqueued, q.acked, q.depth, q.maxsize) == (2, 2, 0, 1)


async def test_a_cancelled_enqueue_of_a_block_leaves_it_here(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=1)
    await client.enqueue(name, b"one")
    block = await client.alloc(10)
    waiting = asyncio.create_task(client.enqueue(name, block))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await client.write(block, b"still mine")
    await client.free(block)
    job = await client.take(name)
    await job.ack()


async def test_a_consumer_that_closes_gives_its_jobs_back(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("jobs")
    for i in range(3):
        await client.enqueue(name, i)
    async with connected(coord, "worker") as worker:
        held = [await worker.take(name) for _ in range(2)]
        assert [j.value for j in held] == [0, 1]
        waiting = asyncio.create_task(client.take(name))
        third = await asyncio.wait_for(waiting, 5)
        assert third.value == 2
        waiting = asyncio.create_task(client.take(name))  # nothing left: it waits
        await asyncio.sleep(0.05)
        assert not waiting.done()
    # closed with two jobs in hand: the waiting take gets the oldest at once
    job = await asyncio.wait_for(waiting, 5)
    assert (job.value, job.attempts) == (0, 1)
    again = await client.take(name)
    assert (again.value, again.attempts) == (1, 1)
    q = queue_stats(await client.stats(), name)
    assert (q.redelivered, q.in_flight, q.depth) == (2, 3, 0)
    for j in (job, again, third):
        await j.ack()


async def test_take_timeout_and_cancel_leave_the_queue_as_it_was(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    with pytest.raises(TimeoutError):
        await other.take(name, timeout=0.05)
    task = asyncio.create_task(other.take(name))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.enqueue(name, "x")
    q = queue_stats(coord.stats(), name)
    assert (q.depth, q.in_flight) == (1, 0)  # no withdrawn take got it
    job = await other.take(name, timeout=5)
    assert (job.value, job.attempts) == ("x", 0)
    await job.ack()


async def test_what_a_consumer_may_do_with_a_jobs_block(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    block = await client.alloc(5)
    await client.write(block, b"hello")
    await client.enqueue(name, block)
    with pytest.raises(AccessDenied, match="a job in a work queue"):
        await client.read(block)  # moved into the queue: no longer the producer's
    job = await other.take(name)
    async with other.lease(job.block, "r") as view:  # zero-copy, read-only
        assert bytes(view) == b"hello"
        with pytest.raises(AccessDenied, match="end them before ack"):
            await job.ack()
    assert await other.read(job.block) == b"hello"
    with pytest.raises(AccessDenied):
        await other.write(job.block, b"x")
    with pytest.raises(AccessDenied):
        await other.free(job.block)  # (its lease is the job's: ack frees it)
    await job.ack()
    with pytest.raises(InvalidRequest, match="before its value was read"):
        _ = job.value


async def test_only_a_block_of_this_process_alone_is_enqueued(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    block = await client.alloc(5)
    await client.grant(block, other.name)
    with pytest.raises(AccessDenied, match="shared with other processes"):
        await client.enqueue(name, block)
    assert queue_stats(coord.stats(), name).enqueued == 0
    await client.revoke(block, other.name)
    await client.enqueue(name, block)
    job = await other.take(name)
    await job.ack()


async def test_competing_consumers_share_a_queue_in_order(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    name = unique_name("jobs")
    async with connected(coord, "a") as a, connected(coord, "b") as b:
        queues = coord._state.queues.queues
        takes = []
        for n, c in enumerate((a, b, a, b), 1):  # one after another: in a known order
            takes.append(asyncio.create_task(c.take(name)))
            await wait_until(lambda n=n: name in queues and len(queues[name].takers) == n)
        for i in range(4):
            await client.enqueue(name, i)
        jobs = [await t for t in takes]
        assert [j.value for j in jobs] == [0, 1, 2, 3]  # the takes in the order they came
        for j in jobs:
            await j.ack()


@pytest.mark.parametrize(
    ("size", "inline"), [(MAX_INLINE_PAYLOAD, True), (MAX_INLINE_PAYLOAD + 1, False)]
)
async def test_a_job_up_to_the_inline_limit_travels_in_the_enqueue(
    coord: blockipc.Coordinator,
    client: blockipc.Client,
    other: blockipc.Client,
    size: int,
    inline: bool,
) -> None:
    """Up to MAX_INLINE_PAYLOAD bytes encoded, a job rides in its ENQUEUE's frame and
    stays bytes in the coordinator (no block, waiting or in the queue); one byte more,
    and it is put in a block first. Either way the consumer gets the bytes, with the
    producer's codec."""
    name = unique_name("jobs")
    await client.declare_queue(name, maxsize=1)
    await client.enqueue(name, b"first", codec="raw")
    blocks = coord.stats().blocks
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    waiting = asyncio.create_task(client.enqueue(name, payload, codec="raw", header={"n": 2}))
    if inline:
        await asyncio.sleep(0.05)
        assert not waiting.done() and coord.stats().blocks == blocks
    else:
        await wait_until(lambda: coord.stats().blocks == blocks + 1)
    first = await other.take(name)
    await first.ack()  # room: the waiting enqueue goes in
    job_id = await asyncio.wait_for(waiting, 5)
    job = await other.take(name)
    assert (job.id, job.codec, job.header) == (job_id, "raw", {"n": 2})
    assert (job._segment is None) == inline  # inline: its bytes came with the take's reply
    assert coord.stats().queue_inline_bytes == (size if inline else 0)
    assert job.value == payload
    if inline:
        assert job.block is None and coord.stats().blocks == blocks
    else:
        assert job.block is not None and job.block.size == size
        assert await other.read(job.block, size=16) == payload[:16]  # a block like any other
    await job.ack()
    assert coord.stats().blocks == blocks and coord.stats().queue_inline_bytes == 0
    q = queue_stats(coord.stats(), name)
    assert (q.enqueued, q.acked, q.depth, q.in_flight) == (2, 2, 0, 0)


async def test_an_inline_job_keeps_the_codec_and_its_meta(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    np = pytest.importorskip("numpy")
    name = unique_name("jobs")
    arr = np.arange(12, dtype="<u2").reshape(3, 4)
    await client.enqueue(name, arr, codec="numpy")
    await client.enqueue(name, b"", codec="raw")  # empty: no bytes at all
    job = await other.take(name)
    assert job.codec == "numpy"
    assert job.value.shape == (3, 4) and (job.value == arr).all()
    await job.ack()
    empty = await other.take(name)
    assert (empty.value, empty.block) == (b"", None)
    await empty.ack()


async def test_an_inline_enqueue_with_an_unknown_codec_is_refused(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    from blockipc._core.protocol import NO_BLOCK, Op

    name = unique_name("jobs")
    args = {"block": NO_BLOCK, "codec": "nope", "meta": {}, "queue": name}
    with pytest.raises(blockipc.CodecError, match="nope"):
        await client._call(Op.ENQUEUE, {**args, "header": {}, "nowait": False}, b"x")
    with pytest.raises(InvalidRequest, match="over the limit"):
        big = bytes(MAX_INLINE_PAYLOAD + 1)
        await client._call(Op.ENQUEUE, {**args, "codec": "raw", "header": {}, "nowait": False}, big)
    assert all(q.name != name for q in coord.stats().queues)  # not even its queue was made


async def test_a_take_carries_the_previous_jobs_ack(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    for i in range(3):
        await client.enqueue(name, i)
    held = coord.stats().queue_inline_bytes
    first = await other.take(name)
    assert first.value == 0
    second = await other.take(name, ack=first)  # one request: ack first, then take
    assert first.done and not second.done and second.value == 1
    assert coord.stats().queue_inline_bytes == held - 1  # the acked job's byte dropped
    q = queue_stats(coord.stats(), name)
    assert (q.acked, q.in_flight, q.depth, q.redelivered) == (1, 1, 1, 0)
    with pytest.raises(InvalidRequest, match="acked already"):
        await first.ack()
    with pytest.raises(InvalidRequest, match="acked already"):
        await other.take(name, ack=first)
    with pytest.raises(InvalidRequest, match="a job this client took"):
        await client.take(name, ack=second)  # not client's job
    assert queue_stats(coord.stats(), name).depth == 1  # neither took anything
    third = await other.take(name, ack=second)
    await third.ack()
    q = queue_stats(coord.stats(), name)
    assert (q.acked, q.in_flight, q.depth) == (3, 0, 0)
    assert coord.stats().queue_inline_bytes == 0


async def test_a_refused_folded_ack_takes_nothing_and_the_job_stays_unanswered(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    for data in (b"one", b"two"):  # as blocks: a consumer can hold a lease of its own
        block = await client.alloc(3)
        await client.write(block, data)
        await client.enqueue(name, block)
    job = await other.take(name)
    assert job.block is not None
    async with other.lease(job.block, "r"):  # a lease of its own: the ack is refused
        with pytest.raises(AccessDenied, match="end them before ack"):
            await other.take(name, ack=job)
        assert not job.done
        q = queue_stats(coord.stats(), name)
        assert (q.acked, q.in_flight, q.depth) == (0, 1, 1)  # and nothing was taken
    assert job.value == b"one"
    nxt = await other.take(name, ack=job)  # the lease ended: now it goes
    assert job.done and nxt.value == b"two"
    await nxt.ack()
    q = queue_stats(coord.stats(), name)
    assert (q.acked, q.in_flight, q.depth) == (2, 0, 0)


async def test_a_folded_ack_is_done_when_the_take_then_times_out_or_is_cancelled(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    for i in range(2):
        await client.enqueue(name, i)
    job = await other.take(name)
    with pytest.raises(TimeoutError):
        await other.take(name + "-empty", timeout=0.05, ack=job)
    assert job.done  # acked before the take waited (known when the TimeoutError comes)
    job = await other.take(name)
    task = asyncio.create_task(other.take(name + "-empty", ack=job))
    await wait_until(lambda: queue_stats(coord.stats(), name).acked == 2)
    with pytest.raises(InvalidRequest, match="being acked"):
        await job.ack()
    with pytest.raises(InvalidRequest, match="acked before its value was read"):
        _ = job.value
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.done
    q = queue_stats(coord.stats(), name)
    assert (q.acked, q.in_flight, q.depth, q.redelivered) == (2, 0, 0, 0)


async def test_a_consumer_that_closes_after_a_folded_ack_gives_back_only_its_job(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    """Inline jobs (each at most MAX_INLINE_PAYLOAD) are redelivered as any job: the one
    acked by the take that got the next is done; the next goes back, attempts + 1."""
    name = unique_name("jobs")
    for i in range(3):
        await client.enqueue(name, {"n": i}, codec="json")
    async with connected(coord, "worker") as worker:
        first = await worker.take(name)
        second = await worker.take(name, ack=first)
        assert (first.done, second.value) == (True, {"n": 1})
    # closed with the second in hand
    again = await client.take(name)
    assert (again.id, again.value, again.attempts) == (second.id, {"n": 1}, 1)
    last = await client.take(name, ack=again)
    assert (last.value, last.attempts) == ({"n": 2}, 0)
    await last.ack()
    q = queue_stats(coord.stats(), name)
    assert (q.enqueued, q.acked, q.redelivered, q.in_flight, q.depth) == (3, 3, 1, 0, 0)


async def test_a_run_of_large_jobs_of_one_size_costs_one_request_each(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    """From the second large job of a size on, its ENQUEUE_COMMIT brings the next one's
    block (refill): the client keeps one spare block and PUTs no more; an enqueue of
    another size gives the spare back."""
    name = unique_name("jobs")
    big = bytes(range(256)) * 400  # 100 KiB: a block of its own
    proc = coord._state.table.processes[client.name]
    before = proc.requests
    for _ in range(4):
        await client.enqueue(name, big, codec="raw")
    assert proc.requests - before == 2 + 2 + 1 + 1  # PUT + ENQUEUE_COMMIT twice, then one
    assert coord.stats().blocks == 4 + 1 and len(proc.blocks) == 1  # the spare is the client's
    await client.enqueue(name, big + b"x", codec="raw")  # another size: the spare goes back
    await wait_until(lambda: coord.stats().blocks == 5)
    jobs = await other.take_many(name, max_jobs=5)
    assert [job.value for job in jobs] == [big] * 4 + [big + b"x"]
    for job in jobs:
        await job.ack()
    assert coord.stats().blocks == 0


async def test_a_refill_the_pool_has_no_room_for_never_fails_the_enqueue(
    coord: blockipc.Coordinator, client: blockipc.Client, other: blockipc.Client
) -> None:
    name = unique_name("jobs")
    r = (await client._call(Op.PUT, {"size": 1})).result
    args = {"lease": r["lease"], "codec": "raw", "meta": {}, "queue": name, "header": {}}
    with pytest.raises(InvalidRequest, match="refill must be 0 to"):
        await client._call(Op.ENQUEUE_COMMIT, {**args, "nowait": True, "refill": MAX_REFILL + 1})
    await client._call(Op.RELEASE, {"lease": r["lease"]})  # (refused: still the caller's)
    await client._call(Op.FREE, {"block": r["block"]})
    big = bytes(MAX_REFILL)  # the largest refilled size: the 64 MiB pool holds 8
    for _ in range(8):  # the 8th uses the spare, and its refill finds no room
        await client.enqueue(name, big, codec="raw")
    assert coord.stats().free_bytes == 0 and client._spare is None
    with pytest.raises(PoolExhausted):
        await client.enqueue(name, big, codec="raw")  # (a PUT: as without refills)
    assert queue_stats(coord.stats(), name).depth == 8
    for job in await other.take_many(name, max_jobs=8):
        await job.ack()
