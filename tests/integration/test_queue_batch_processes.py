"""Work-queue batches between real processes: ``enqueue_many`` in one process,
``take_many`` (acks folded) in another; a consumer ``kill -9``ed holding a batch gives
every job of it back."""

from __future__ import annotations

import blockipc
from _helpers import connected
from _procs import spawn, wait_until
from blockipc.testing import unique_name

JOBS = 96
BATCH = 32


def queue_stats(coord: blockipc.Coordinator, name: str) -> blockipc.QueueStats:
    return next(q for q in coord.stats().queues if q.name == name)


async def test_a_batch_enqueued_in_one_process_is_taken_in_another(
    coord: blockipc.Coordinator,
) -> None:
    queue = unique_name("jobs")
    async with connected(coord, "ctl") as ctl:
        blocks_before = coord.stats().blocks
        name = unique_name("p")
        async with spawn("queue_batch_producer", coord.address, name, queue, JOBS, BATCH) as p:
            await p.expect("ready")
            ids = (await p.expect("done", timeout=60))["ids"]
        assert len(ids) == JOBS and ids == sorted(ids)
        got: list[blockipc.Job] = []
        values = []
        jobs = await ctl.take_many(queue, max_jobs=50)
        while True:
            assert 1 <= len(jobs) <= 50
            got += jobs
            values += [job.value for job in jobs]  # (read before the ack)
            if len(got) == JOBS:
                break
            jobs = await ctl.take_many(queue, max_jobs=50, ack=jobs)
        assert values == [[name, i] for i in range(JOBS)]  # FIFO
        assert all(job.done for job in got[: JOBS - len(jobs)])  # acked by the take_many
        assert [job.id for job in got] == ids
        assert [job.header for job in got] == [{"first": i - i % BATCH} for i in range(JOBS)]
        assert {(job.producer, job.attempts, job.queue) for job in got} == {(name, 0, queue)}
        q = queue_stats(coord, queue)
        assert (q.enqueued, q.in_flight, q.depth) == (JOBS, len(jobs), 0)
        for job in jobs:
            await job.ack()
        q = queue_stats(coord, queue)
        assert (q.acked, q.in_flight, q.redelivered) == (JOBS, 0, 0)
        assert coord.stats().blocks == blocks_before  # every job's block freed


async def test_a_consumer_killed_holding_a_batch_gives_all_of_it_back(
    coord: blockipc.Coordinator,
) -> None:
    queue = unique_name("jobs")
    async with connected(coord, "ctl") as ctl:
        blocks_before = coord.stats().blocks
        ids = await ctl.enqueue_many(queue, [{"n": i} for i in range(20)], codec="json")
        name = unique_name("victim")
        async with spawn("queue_batch_holder", coord.address, name, queue, 16) as victim:
            await victim.expect("ready")
            held = await victim.expect("holding", timeout=30)
            assert held["ids"] == ids[:16]
            assert held["values"] == [{"n": i} for i in range(16)]
            assert queue_stats(coord, queue).in_flight == 16
            victim.kill()  # kill -9, the whole batch taken and not acked
            await victim.wait()
        await wait_until(lambda: name not in coord.stats().processes, timeout=20)
        q = queue_stats(coord, queue)
        assert (q.depth, q.in_flight, q.redelivered) == (20, 0, 16)
        again = await ctl.take_many(queue, max_jobs=20)
        assert [job.id for job in again] == ids  # given back to the front, in order
        assert [job.attempts for job in again] == [1] * 16 + [0] * 4
        assert [job.value for job in again] == [{"n": i} for i in range(20)]
        for job in again:
            await job.ack()
        assert queue_stats(coord, queue).acked == 20
        assert coord.stats().blocks == blocks_before
