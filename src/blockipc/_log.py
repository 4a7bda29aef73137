"""Logging: structured events through the standard library's ``logging``.

Theory of operation
-------------------
blockipc is a library inside somebody else's process, so it follows Python's
convention for libraries: every event goes to a stdlib logger under ``blockipc``
(``blockipc.client``, ``blockipc.coordinator``, ...), the ``blockipc`` logger has a
``NullHandler`` and nothing else, and nothing else global is touched on import: not
the root logger, not structlog's global configuration. An application that configures
``logging`` (``logging.basicConfig(level=logging.DEBUG)``) sees blockipc's events;
one that does not sees nothing, warnings included.

Events keep structlog's shape: a stable name (``client.connected``) and fields. The
loggers are structlog ``BoundLogger`` objects with their own processors (never the
global ones), which drop what the stdlib logger would not emit before any formatting,
then hand the stdlib one record per event: its message reads
``client.connected name='a' address='/tmp/x'`` under any formatter, and the record
carries ``event`` (the name) and ``fields`` (a dict) for handlers that want structure.

:func:`configure_logging` (the CLI calls it) attaches one handler of blockipc's own to
the ``blockipc`` logger: structlog's console or JSON renderer on stderr.

*Rate limits.* An event a client can cause at will (a failed allocation) must not turn
into a log flood: :class:`RateLimiter` lets the first few records of each event name
through per interval and counts the rest; the count is itself logged (``log.suppressed``,
at the same level, with ``of``: the event name) when it reaches 10, 100, 1,000, ... in an
interval and when the interval ends (with the next record of that name), so the log
says how often it happened without saying it each time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any, Final

import structlog

__all__ = ["ROOT", "RateLimiter", "capture_logs", "configure_logging", "get_logger"]

ROOT = "blockipc"
"""The stdlib logger every blockipc event goes through (and its children)."""

logging.getLogger(ROOT).addHandler(logging.NullHandler())  # no "last resort" output


def _to_stdlib(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: one stdlib record, readable as text, structured as extras."""
    event = str(event_dict.pop("event", ""))
    exc_info = event_dict.pop("exc_info", None)
    fields = dict(event_dict)
    text = " ".join([event, *(f"{key}={value!r}" for key, value in fields.items())])
    kwargs: dict[str, Any] = {
        "extra": {"event": event, "fields": fields},
        "stacklevel": 4,
    }  # the caller of log.info()
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (text,), kwargs


_PROCESSORS = (structlog.stdlib.filter_by_level, _to_stdlib)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The structured logger for one part of blockipc (``name`` under ``blockipc``)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"blockipc loggers live under {ROOT!r}, not {name!r}")
    return structlog.stdlib.BoundLogger(logging.getLogger(name), list(_PROCESSORS), {})


class RateLimiter:
    """At most ``burst`` records of each event name per ``interval`` seconds; the
    records over it are counted and the count is logged as ``log.suppressed``.

    >>> limit = RateLimiter(burst=2, interval=10.0, clock=lambda: 0.0)
    >>> log = get_logger("blockipc.example")
    >>> for _ in range(1000):
    ...     limit.warning(log, "pool.exhausted", requested=4096)  # 2, then 10 and 100 counted
    """

    def __init__(
        self,
        burst: int = 5,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # (records may come from several threads)
        # event name -> [start of its interval, records let through, records suppressed]
        self._state: dict[str, list[float]] = {}

    def warning(self, logger: structlog.stdlib.BoundLogger, event: str, **fields: Any) -> None:
        """``logger.warning(event, **fields)``, unless ``event`` is over its limit."""
        self.log(logger, "warning", event, **fields)

    def log(
        self, logger: structlog.stdlib.BoundLogger, level: str, event: str, **fields: Any
    ) -> None:
        """``event`` at ``level`` (``"info"``, ``"warning"``...), unless it is over its
        limit."""
        now = self._clock()
        summary = None
        with self._lock:
            st = self._state.get(event)
            if st is None:
                if len(self._state) >= _MAX_LIMITED:  # (names are ours, but bounded anyway)
                    self._state.clear()
                st = self._state[event] = [now, 0, 0]
            start, passed, suppressed = st
            if now - start >= self.interval:
                if suppressed and not _reported(suppressed):  # (else said already)
                    summary = (suppressed, now - start)
                start, passed, suppressed = now, 0, 0
            emit = passed < self.burst
            if emit:
                passed += 1
            else:
                suppressed += 1
                if _reported(suppressed):
                    summary = (suppressed, now - start)
            st[:] = [start, passed, suppressed]
        method = getattr(logger, level)
        if summary is not None:
            method(
                "log.suppressed",
                of=event,
                suppressed=int(summary[0]),
                seconds=round(summary[1], 3),
                burst=self.burst,
                interval=self.interval,
            )
        if emit:
            method(event, **fields)


_MAX_LIMITED: Final = 1024


def _reported(suppressed: float) -> bool:
    """Whether a count of suppressed records is logged at once: 10, 100, 1,000..."""
    n = int(suppressed)
    if n < 10:
        return False
    while n % 10 == 0:
        n //= 10
    return n == 1


class _EventFormatter(logging.Formatter):
    """Renders a blockipc record with structlog's console or JSON renderer."""

    def __init__(self, *, json: bool) -> None:
        super().__init__()
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
        self._render: Any = (
            structlog.processors.JSONRenderer()
            if json
            else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
        )

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        event_dict: MutableMapping[str, Any] = {
            "event": getattr(record, "event", record.getMessage())
        }
        event_dict.update(getattr(record, "fields", {}))
        event_dict = self._stamp(None, level, event_dict)
        event_dict["level"] = level
        event_dict["logger"] = record.name
        if record.exc_info:
            event_dict["exception"] = self.formatException(record.exc_info)
        rendered: str = self._render(None, level, event_dict)
        return rendered


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (found again by its class)."""


def configure_logging(
    level: str | int = "info", *, json: bool = False, stream: IO[str] | None = None
) -> None:
    """Print blockipc's events at ``level`` and above to ``stream`` (default stderr),
    one line each: readable text, or JSON lines with ``json=True``.

    Only the ``blockipc`` logger is touched (its level and one handler of its own,
    replaced by a second call): not the root logger, not structlog's global
    configuration. The ``blockipc`` command line calls it for ``--log-level`` and
    ``--log-json``; an application that configures ``logging`` itself needs no call.

    >>> blockipc.configure_logging("debug", json=True)  # doctest: +SKIP
    """
    logger = logging.getLogger(ROOT)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(_EventFormatter(json=json))
    logger.addHandler(handler)


class _Capture(logging.Handler):
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.entries = entries

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"event": getattr(record, "event", record.getMessage())}
        entry.update(getattr(record, "fields", {}))
        entry["log_level"] = record.levelname.lower()
        entry["logger"] = record.name
        self.entries.append(entry)


@contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Collect blockipc's events, debug included, as dicts while the block runs:
    ``{"event": "client.connected", "log_level": "debug", "logger": ..., **fields}``
    (the shape of ``structlog.testing.capture_logs``). For tests; events of other
    threads of this process are collected too.

    >>> with blockipc.testing.capture_logs() as logs:  # doctest: +SKIP
    ...     await client.close()
    >>> [e["event"] for e in logs]  # doctest: +SKIP
    ['client.closed']
    """
    entries: list[dict[str, Any]] = []
    logger = logging.getLogger(ROOT)
    handler = _Capture(entries)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
