"""``blockipc stats --watch``: a coordinator's numbers as a live terminal view (rich).

Theory of operation: the view is a pure function of two samples (:func:`render`), a
:class:`~blockipc.Stats` and the monotonic time it was taken, so a test renders it to a
recorded console and reads the text. Rates (requests per second of each process, the
cache's hit rate over the last interval, sends and enqueues per second) are the
difference of two samples' counters over the time between them; a process that
reconnected under the same name (another pid) has no rate until its next sample.
:func:`watch` takes a sample every ``interval`` seconds and redraws; SIGINT or SIGTERM
end it, the last view left on the terminal.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Awaitable, Callable

import anyio

try:
    from rich.console import Console, Group, RenderableType
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # the extra is not installed: say which one
    raise ImportError("blockipc stats --watch needs rich: pip install 'blockipc[watch]'") from exc

from ._core.sizes import format_size
from ._types import ProcessStats, Stats

__all__ = ["Sample", "render", "watch"]


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One :class:`Stats` and when it was taken (``time.monotonic()``)."""

    stats: Stats
    at: float


def _rate(now: int, before: int | None, seconds: float) -> str:
    if before is None or seconds <= 0:
        return "-"
    return f"{(now - before) / seconds:.1f}/s"


def _percent(part: int, whole: int) -> str:
    return "-" if whole <= 0 else f"{100 * part / whole:.1f}%"


def _pool(s: Stats) -> Table:
    table = Table(title="pool", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    grows = "" if s.max_pool_size == s.pool_size else f" (grows to {format_size(s.max_pool_size)})"
    table.add_row("segments", f"{s.segments}, {format_size(s.pool_size)}{grows}")
    table.add_row(
        "used",
        f"{format_size(s.used_bytes)} of {format_size(s.pool_size)} "
        f"({_percent(s.used_bytes, s.pool_size)}), {s.blocks} blocks, {s.leases} leases",
    )
    # fragmentation: free bytes that are not in the largest free block
    frag = _percent(s.free_bytes - s.largest_free, s.free_bytes)
    table.add_row(
        "fragmentation",
        f"{frag} (largest free block {format_size(s.largest_free)} "
        f"of {format_size(s.free_bytes)} free)",
    )
    table.add_row(
        "objects",
        f"{s.names_total} named, {s.channels} channels, {s.processes_total} processes",
    )
    return table


def _cache(s: Stats, before: Stats | None) -> Table:
    table = Table(title="cache", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    lookups = s.cache_hits + s.cache_misses
    line = f"{_percent(s.cache_hits, lookups)} ({s.cache_hits} hits, {s.cache_misses} misses)"
    if before is not None:
        hits = s.cache_hits - before.cache_hits
        misses = s.cache_misses - before.cache_misses
        line += f", last interval {_percent(hits, hits + misses)}"
    table.add_row("hit rate", line)
    table.add_row("evictions", str(s.cache_evictions))
    return table


def _processes(s: Stats, before: Stats | None, seconds: float) -> Table:
    table = Table(title="processes", title_justify="left")
    for name in ("name", "pid", "blocks", "bytes", "leases", "inbox", "channels", "requests"):
        table.add_column(name, justify="left" if name == "name" else "right")
    earlier: dict[tuple[str, int], ProcessStats] = (
        {} if before is None else {(p.name, p.pid): p for p in before.usage}
    )
    for p in s.usage:
        was = earlier.get((p.name, p.pid))
        table.add_row(
            p.name,
            str(p.pid),
            str(p.blocks),
            format_size(p.owned_bytes),
            str(p.leases),
            f"{p.inbox} ({format_size(p.inbox_bytes)})",
            str(p.channels),
            _rate(p.requests, None if was is None else was.requests, seconds),
        )
    return table


def _links(s: Stats, before: Stats | None, seconds: float) -> Table:
    table = Table(title="links", title_justify="left")
    columns = ("node", "state", "queued", "in flight", "sent", "sent/s", "failed", "received")
    for name in (*columns, "refused"):
        table.add_column(name, justify="left" if name in ("node", "state") else "right")
    earlier = {} if before is None else {link.node: link for link in before.links}
    for link in s.links:
        was = earlier.get(link.node)
        table.add_row(
            link.node,
            link.state,
            str(link.queued),
            str(link.in_flight),
            f"{link.sent} ({format_size(link.sent_bytes)})",
            _rate(link.sent, None if was is None else was.sent, seconds),
            str(link.failed),
            f"{link.received} ({format_size(link.received_bytes)})",
            str(link.refused),
        )
    return table


def _queues(s: Stats, before: Stats | None, seconds: float) -> Table:
    table = Table(title="queues", title_justify="left")
    columns = ("queue", "depth", "in flight", "enqueued", "enqueued/s", "acked", "acked/s")
    for name in (*columns, "redelivered", "dead-lettered"):
        table.add_column(name, justify="left" if name == "queue" else "right")
    earlier = {} if before is None else {q.name: q for q in before.queues}
    for q in s.queues:
        was = earlier.get(q.name)
        table.add_row(
            q.name,
            f"{q.depth}/{q.maxsize}",
            str(q.in_flight),
            str(q.enqueued),
            _rate(q.enqueued, None if was is None else was.enqueued, seconds),
            str(q.acked),
            _rate(q.acked, None if was is None else was.acked, seconds),
            str(q.redelivered),
            str(q.dead_lettered),
        )
    return table


def render(now: Sample, before: Sample | None = None, title: str = "") -> RenderableType:
    """The view of ``now``, with the rates since ``before`` (none without it).

    >>> Console(record=True).print(render(Sample(stats, 1.0)))  # doctest: +SKIP
    """
    s, prev = now.stats, None if before is None else before.stats
    seconds = 0.0 if before is None else now.at - before.at
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))
    parts += [_pool(s), _cache(s, prev), _processes(s, prev, seconds)]
    if s.links:
        parts.append(_links(s, prev, seconds))
    if s.queues:
        parts.append(_queues(s, prev, seconds))
    return Group(*parts)


async def watch(
    sample: Callable[[], Awaitable[Stats]],
    *,
    interval: float = 1.0,
    once: bool = False,
    heading: str = "blockipc stats",
    console: Console | None = None,
) -> None:
    """Redraw the view of ``await sample()`` every ``interval`` seconds until SIGINT or
    SIGTERM; ``once``: print one view (two samples ``interval`` apart, for the rates)
    and return."""
    console = Console() if console is None else console

    async def take() -> Sample:
        return Sample(await sample(), time.monotonic())

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            before = await take()
            if once:
                await anyio.sleep(interval)
                console.print(render(await take(), before, heading))
                tg.cancel_scope.cancel()
                return
            count = 1
            title = f"{heading} · every {interval:g} s · sample {{}} · Ctrl-C ends"
            with Live(
                render(before, None, title.format(count)),
                console=console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live:
                while True:
                    await anyio.sleep(interval)
                    now = await take()
                    count += 1
                    live.update(render(now, before, title.format(count)), refresh=True)
                    before = now
