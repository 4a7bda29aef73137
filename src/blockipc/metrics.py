"""A coordinator's statistics as Prometheus metrics, over HTTP (``prometheus-client``).

Theory of operation
-------------------
:class:`MetricsServer` starts prometheus-client's HTTP server in its own threads: the
event loop never serves HTTP, and a scrape waits for the loop only to take one
snapshot. On each scrape, the collector asks the event loop for :meth:`Coordinator.stats`
(``run_coroutine_threadsafe``): the admin space is only ever read on the loop's
thread, and every scrape sees one consistent snapshot. Nothing is sampled between
scrapes. Metric names follow Prometheus' conventions (``_bytes``, ``_total``); the
per-process and per-node series carry ``process`` and ``node`` labels::

    async with blockipc.Coordinator() as coord, MetricsServer(coord, port=9464) as m:
        print(m.url)   # http://127.0.0.1:9464/metrics

``blockipc serve --metrics [HOST:]PORT`` does the same for a standalone coordinator.
The server listens on loopback unless told otherwise: the metrics name processes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # an optional dependency
    raise ImportError(
        "blockipc.metrics needs prometheus-client: pip install 'blockipc[metrics]'"
    ) from exc

from ._exceptions import BlockIPCError, InvalidRequest
from ._log import get_logger
from ._types import Stats

if TYPE_CHECKING:
    from ._server.coordinator import Coordinator

__all__ = ["DEFAULT_PORT", "MetricsServer"]

log = get_logger("blockipc.metrics")

DEFAULT_PORT: Final = 9464
SCRAPE_TIMEOUT: Final = 5.0
"""Seconds a scrape waits for the event loop to take the snapshot."""


class _Collector(Collector):
    """Turns one :class:`Stats` snapshot into metric families (prometheus-client's
    custom-collector protocol: ``collect()`` yields them)."""

    def __init__(self, coord: Coordinator, loop: asyncio.AbstractEventLoop) -> None:
        self._coord = coord
        self._loop = loop

    async def _snapshot(self) -> Stats:
        return self._coord.stats()

    def collect(self) -> Iterator[Metric]:
        # (an HTTP server thread: the snapshot is taken on the loop's thread)
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        s = future.result(timeout=SCRAPE_TIMEOUT)
        for name, doc, value in (
            ("pool_size_bytes", "Bytes in the pool's segments now", s.pool_size),
            ("pool_max_size_bytes", "Bytes the pool may grow to", s.max_pool_size),
            ("pool_used_bytes", "Bytes of the pool in blocks (by capacity)", s.used_bytes),
            ("pool_free_bytes", "Bytes of the pool not in any block", s.free_bytes),
            ("segments", "Shared-memory segments of the pool", s.segments),
            ("blocks", "Live blocks in the routing table", s.blocks),
            ("leases", "Leases held now", s.leases),
            ("processes", "Connected processes", len(s.processes)),
            ("named_objects", "Named objects (put with a name)", len(s.names)),
            ("channels", "Open channels", s.channels),
        ):
            yield GaugeMetricFamily(f"blockipc_{name}", doc, value=value)
        for name, doc, value in (
            ("cache_hits", "Gets by name the coordinator answered", s.cache_hits),
            ("cache_misses", "Gets of names the coordinator did not find", s.cache_misses),
            (
                "cache_evictions",
                "Cacheable objects evicted under memory pressure",
                s.cache_evictions,
            ),
        ):
            yield CounterMetricFamily(f"blockipc_{name}", doc, value=value)

        for name, doc, attr in _PROCESS_GAUGES:
            rows = [(usage.name, getattr(usage, attr)) for usage in s.usage]
            yield _labelled(GaugeMetricFamily, name, doc, "process", rows)
        rows = [(link.node, int(link.state == "up")) for link in s.links]
        yield _labelled(GaugeMetricFamily, "link_up", _LINK_UP, "node", rows)
        for family, name, doc, attr in _LINK_SERIES:
            rows = [(link.node, getattr(link, attr)) for link in s.links]
            yield _labelled(family, name, doc, "node", rows)


_PROCESS_GAUGES: Final = (
    ("process_blocks", "Blocks a process holds (owner or grantee)", "blocks"),
    ("process_owned_bytes", "Capacity of the blocks a process owns", "owned_bytes"),
    ("process_leases", "Leases a process holds", "leases"),
    ("process_inbox_messages", "Messages waiting in a process's inbox", "inbox"),
    ("process_inbox_bytes", "Bytes of the blocks in a process's inbox", "inbox_bytes"),
    ("process_channels", "Channel ends a process has open", "channels"),
)
_LINK_UP: Final = "1 if the link to this peer is connected, else 0"
_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]
_LINK_SERIES: Final[tuple[tuple[_Family, str, str, str], ...]] = (
    (GaugeMetricFamily, "link_queued", "Sends to this node waiting for the link", "queued"),
    (
        GaugeMetricFamily,
        "link_in_flight",
        "Blocks sent to this node, not acknowledged",
        "in_flight",
    ),
    (CounterMetricFamily, "link_sent_blocks", "Blocks this node accepted", "sent"),
    (CounterMetricFamily, "link_sent_bytes", "Bytes of the blocks it accepted", "sent_bytes"),
    (CounterMetricFamily, "link_failed_sends", "Sends to this node that failed", "failed"),
    (CounterMetricFamily, "link_received_blocks", "Blocks from it delivered here", "received"),
    (CounterMetricFamily, "link_received_bytes", "Bytes delivered from it", "received_bytes"),
    (CounterMetricFamily, "link_refused_blocks", "Blocks from it refused here", "refused"),
)


def _labelled(
    family: _Family, name: str, doc: str, label: str, rows: list[tuple[str, int]]
) -> Metric:
    """A metric family with one sample per ``(label value, value)`` row."""
    metric = family(f"blockipc_{name}", doc, labels=[label])
    for key, value in rows:
        metric.add_metric([key], value)
    return metric


class MetricsServer:
    """Serves ``coord``'s :class:`Stats` at ``http://HOST:PORT/metrics`` while open
    (``async with``, or :meth:`start` and :meth:`aclose`). Port 0 picks a free one:
    :attr:`port` and :attr:`url` tell which."""

    def __init__(
        self, coord: Coordinator, host: str = "127.0.0.1", port: int = DEFAULT_PORT
    ) -> None:
        if type(port) is not int or not 0 <= port <= 65535:
            raise InvalidRequest(f"metrics port must be an int from 0 to 65535, not {port!r}")
        self.coord = coord
        self.host = host
        self.port = port
        self._httpd: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.coord, asyncio.get_running_loop()))
        try:
            self._httpd, self._thread = start_http_server(self.port, self.host, registry)
        except OSError as exc:
            raise BlockIPCError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from exc
        self.port = int(self._httpd.server_address[1])
        log.info("metrics.started", url=self.url)

    async def aclose(self) -> None:
        """Stop serving (idempotent); a scrape in progress may fail."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        await asyncio.to_thread(httpd.shutdown)  # waits for serve_forever's next poll
        httpd.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        log.info("metrics.stopped", url=self.url)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
