"""blockipc inside somebody else's process: silent unless asked, events through logging.

Every test runs a child process the way a user meets the library (a script that
imports and uses it) and looks at what that process printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import blockipc
from _procs import run_python, serving
from blockipc._log import get_logger

# A default workload: an embedded coordinator, clients, a send, a channel, named
# objects, and a client whose coordinator goes away under it (a warning event).
WORKLOAD = """
import asyncio
import blockipc

async def main():
    async with blockipc.Coordinator(pool_size="8MiB") as coord:
        async with blockipc.connect(coord.address, name="a") as a, \\
                blockipc.connect(coord.address, name="b") as b:
            block = await a.alloc(5000)
            await a.write(block, b"hello")
            await a.send(block, to="b", header={"n": 1})
            msg = await b.recv()
            assert await b.read(msg.block, 0, 5) == b"hello"
            await b.free(msg.block)
            await a.put({"x": [1, 2]}, codec="msgpack", name="obj")
            assert await b.get("obj") == {"x": [1, 2]}
            await b.delete("obj")
            tx = await a.open_channel("b", capacity="64KiB")
            rx = await b.accept_channel()
            await tx.send(b"frame")
            with await rx.recv() as m:
                assert bytes(m.data) == b"frame"
            await tx.aclose()
            await rx.aclose()
        orphan = await blockipc.connect(coord.address, name="orphan")
    # the coordinator closed under "orphan": it logs client.connection_lost (a warning)
    await asyncio.sleep(0.2)
    assert orphan.closed
    await orphan.close()

asyncio.run(main())
"""


def test_a_program_using_blockipc_prints_nothing() -> None:
    result = run_python(WORKLOAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


@pytest.mark.parametrize("json", [False, True])
def test_an_application_run_with_warnings_as_errors_can_use_blockipc(json: bool) -> None:
    # `python -W error`: nothing blockipc does may warn (configure_logging passed an
    # argument structlog 25.5 deprecates: the call raised DeprecationWarning)
    setup = f"import blockipc\nblockipc.configure_logging('debug', json={json})\n"
    result = run_python(setup + WORKLOAD, options=["-W", "error"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "coordinator.started" in result.stderr and "Warning" not in result.stderr


def test_an_application_that_configures_logging_sees_the_events() -> None:
    setup = "import logging, sys\nlogging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
    result = run_python(setup + WORKLOAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    err = result.stderr
    assert "INFO:blockipc.coordinator:coordinator.started address=" in err
    assert "DEBUG:blockipc.client:client.connected name='a' address=" in err
    assert "INFO:blockipc.coordinator:client.disconnect name='a'" in err
    assert "WARNING:blockipc.client:client.connection_lost name='orphan'" in err


def test_records_carry_the_event_and_its_fields() -> None:
    code = """
    import logging
    import blockipc._log

    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    logging.getLogger("blockipc").addHandler(Keep())
    logging.getLogger("blockipc").setLevel(logging.DEBUG)
    log = blockipc._log.get_logger("blockipc.client")
    def where():
        log.info("block.alloc", size=4096, name="p")
    where()
    (rec,) = records
    assert (rec.name, rec.levelname) == ("blockipc.client", "INFO"), rec
    assert rec.event == "block.alloc" and rec.fields == {"size": 4096, "name": "p"}, rec.__dict__
    assert rec.getMessage() == "block.alloc size=4096 name='p'", rec.getMessage()
    assert rec.funcName == "where", rec.funcName  # the caller, not structlog's frames
    logging.getLogger("blockipc").setLevel(logging.INFO)
    log.debug("hidden")
    assert len(records) == 1
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_import_configures_nothing() -> None:
    code = """
    import logging
    import structlog

    root = logging.getLogger()
    before = (list(root.handlers), root.level, structlog.get_config())
    import blockipc, blockipc.testing, blockipc.asgi, blockipc.cache, blockipc._cli

    assert (list(root.handlers), root.level, structlog.get_config()) == before
    assert not structlog.is_configured()
    lib = logging.getLogger("blockipc")
    assert [type(h) for h in lib.handlers] == [logging.NullHandler], lib.handlers
    assert lib.level == logging.NOTSET and lib.propagate
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_configure_logging_leaves_the_applications_structlog_alone() -> None:
    code = """
    import logging, sys
    import structlog

    structlog.configure(
        processors=[lambda _l, _m, ev: "APP " + ev["event"]],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    config = structlog.get_config()
    import blockipc
    import blockipc._log

    blockipc.configure_logging("debug")
    blockipc.configure_logging("debug", json=True)  # a second call replaces the first
    assert structlog.get_config() == config
    assert logging.getLogger().handlers == []
    structlog.get_logger().info("mine")
    blockipc._log.get_logger("blockipc.client").debug("client.connected", name="x")
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "APP mine\n"
    (line,) = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "client.connected" and event["name"] == "x"
    assert event["level"] == "debug" and event["logger"] == "blockipc.client"
    assert "timestamp" in event


def test_capture_logs_collects_debug_events_and_restores_the_level() -> None:
    log = get_logger("blockipc.test")
    with blockipc.testing.capture_logs() as logs:
        log.debug("test.event", n=1)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("test.failed")
    assert logs == [
        {"event": "test.event", "n": 1, "log_level": "debug", "logger": "blockipc.test"},
        {"event": "test.failed", "log_level": "error", "logger": "blockipc.test"},
    ]
    log.debug("test.after")
    assert len(logs) == 2


def _serve(tmp_path: Path, *options: str) -> tuple[str, str]:
    """``blockipc [options] serve`` until it is up, then SIGTERM: (stdout, stderr)."""
    sock = tmp_path / "c.sock"
    with serving(sock, "--socket", str(sock), options=options) as served:
        pass
    return served.stdout, served.stderr


def test_cli_prints_its_events_to_stderr(tmp_path: Path) -> None:
    out, err = _serve(tmp_path)
    assert out == ""
    assert "coordinator.started" in err and "coordinator.stopped" in err
    assert "[info" in err


def test_cli_log_json_prints_json_lines(tmp_path: Path) -> None:
    out, err = _serve(tmp_path, "--log-json")
    assert out == ""
    events = [json.loads(line) for line in err.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "coordinator.started" and "coordinator.stopped" in names
    assert events[0]["level"] == "info" and events[0]["pool_size"] == 32 << 20


def test_cli_log_level_hides_lower_levels(tmp_path: Path) -> None:
    out, err = _serve(tmp_path, "--log-level", "warning")
    assert out == err == ""


def test_rate_limiter_lets_a_burst_through_then_counts() -> None:
    """Per event name: ``burst`` records per interval; the rest is counted, the count
    logged at 10, 100, 1,000... and when the interval ends (with the next record)."""
    from blockipc._log import RateLimiter
    from blockipc.testing import capture_logs

    now = [0.0]
    limit = RateLimiter(burst=3, interval=10.0, clock=lambda: now[0])
    log = get_logger("blockipc.test")
    with capture_logs() as logs:
        for i in range(10_000):
            limit.warning(log, "pool.exhausted", i=i)
        limit.log(log, "info", "other.event")  # another name has its own budget
        now[0] = 10.0
        limit.warning(log, "pool.exhausted", i=-1)
    seen = [(e["event"], e.get("i", e.get("suppressed")), e["log_level"]) for e in logs]
    assert seen == [
        ("pool.exhausted", 0, "warning"),
        ("pool.exhausted", 1, "warning"),
        ("pool.exhausted", 2, "warning"),
        ("log.suppressed", 10, "warning"),
        ("log.suppressed", 100, "warning"),
        ("log.suppressed", 1000, "warning"),
        ("other.event", None, "info"),
        ("log.suppressed", 9997, "warning"),  # the interval's total, then a new budget
        ("pool.exhausted", -1, "warning"),
    ]
    assert all(e["of"] == "pool.exhausted" for e in logs if e["event"] == "log.suppressed")
