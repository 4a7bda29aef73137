"""``blockipc stats --watch``: the view rendered to a recorded console from a real
coordinator and real client processes, and the command run in a terminal (a pty) until
SIGINT."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import blockipc
from _helpers import free_port
from _procs import serving
from _watch_procs import spawn
from blockipc._cli import _without_process
from blockipc._core.sizes import format_size
from test_cli import BLOCKIPC, cli_env, run_cli

rich_console = pytest.importorskip("rich.console")

from blockipc._watch import Sample, render  # noqa: E402 -- needs rich, skipped above

MiB = 1 << 20
BURST = 50  # requests alpha makes between the two samples


def rendered(view: object, width: int = 160) -> str:
    console = rich_console.Console(record=True, width=width, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(view)
    text = console.export_text()
    console.file.close()
    return text


def rows(text: str, title: str) -> dict[str, list[str]]:
    """The rows of a table of the view, by first cell: the lines after ``title`` that
    are drawn with column separators."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    table: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.strip() and line.strip()[0] not in "┏┃┡│└":
            break
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            table[cells[0]] = cells[1:]
    return table


def field(text: str, name: str) -> str:
    (line,) = [line for line in text.splitlines() if line.split()[:1] == [name]]
    return line.split(None, 1)[1].strip()


async def test_the_view_of_a_real_pool(short_dir: Path) -> None:
    there = f"tcp://127.0.0.1:{free_port()}"  # nobody listens: the link stays down
    async with (
        blockipc.Coordinator(
            short_dir / "c.sock", "32MiB", node="here", peers={"there": there}, insecure=True
        ) as coord,
        blockipc.connect(coord.address, "watcher") as watcher,
        spawn("busy", coord.address, "alpha", MiB, BURST) as alpha,
        spawn("busy", coord.address, "beta", 5000, BURST) as beta,
    ):
        await alpha.expect("ready")
        await beta.expect("ready")
        await watcher.declare_queue("jobs", maxsize=8)
        for job in ("a", "b"):
            await watcher.enqueue("jobs", job)
        await watcher.send(await watcher.alloc(100), to="beta")  # in beta's inbox
        await watcher.put(b"v", "raw", name="k")
        with pytest.raises(blockipc.BlockNotFound):
            await watcher.get("absent")  # a miss the coordinator counts

        async def sample(at: float) -> Sample:  # as the command samples: itself left out
            return Sample(_without_process(await watcher.stats(), "watcher"), at)

        first = await sample(10.0)
        os.kill(alpha.pid, signal.SIGUSR1)
        await alpha.expect("burst")
        second = await sample(12.0)  # two seconds later, as far as the rates go

    s = second.stats
    text = rendered(render(second, first, title="blockipc stats test"))
    assert text.splitlines()[0] == "blockipc stats test"
    # the pool: segments, used, fragmentation as the largest free block against free bytes
    assert field(text, "segments") == "1, 32.0 MiB"
    assert field(text, "used").startswith(f"{format_size(s.used_bytes)} of 32.0 MiB")
    assert f"{s.blocks} blocks" in field(text, "used")
    assert 0 < s.largest_free < s.free_bytes  # a buddy pool with blocks in it is split
    frag = 100 * (s.free_bytes - s.largest_free) / s.free_bytes
    assert field(text, "fragmentation") == (
        f"{frag:.1f}% (largest free block {format_size(s.largest_free)} "
        f"of {format_size(s.free_bytes)} free)"
    )
    assert field(text, "objects") == "1 named, 0 channels, 2 processes"
    # the cache: the coordinator's counters (the miss above), and over the interval
    assert s.cache_misses >= 1
    hit = 100 * s.cache_hits / (s.cache_hits + s.cache_misses)
    assert field(text, "hit") == (
        f"rate   {hit:.1f}% ({s.cache_hits} hits, {s.cache_misses} misses), last interval -"
    )
    # each process, the watcher left out; the rate from the two samples' counters
    procs = rows(text, "processes")
    assert set(procs) == {"alpha", "beta"}
    assert procs["alpha"] == [str(alpha.pid), "1", "1.0 MiB", "0", "0 (0 B)", "0", "25.0/s"]
    assert procs["beta"] == [str(beta.pid), "2", "12.0 KiB", "0", "1 (100 B)", "0", "0.0/s"]
    # the link's other node, and the queue
    (link,) = s.links
    assert rows(text, "links")["there"][:2] == [link.state, "0"]
    assert rows(text, "queues")["jobs"][:4] == ["2/8", "0", "2", "0.0/s"]

    # a first sample alone: no rates yet
    alone = rendered(render(first))
    assert rows(alone, "processes")["alpha"][-1] == "-"
    assert "sample" not in alone


def test_stats_help_documents_the_live_view() -> None:
    result = run_cli("stats", "--help", env=cli_env())
    assert result.returncode == 0, result.stderr
    for option in ("--watch", "--interval SECONDS", "--once", "pip install 'blockipc[watch]'"):
        assert option in " ".join(result.stdout.split()), option


def test_watch_usage_errors(tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    for args, error in (
        (["--once"], "--once goes with --watch"),
        (["--watch", "--json"], "--watch and --json exclude each other"),
        (["--watch", "--interval", "0"], "expected seconds from 0.05 to 3600"),
    ):
        result = run_cli("stats", "--socket", sock, *args, env=cli_env())
        assert result.returncode == 2, (args, result.stderr)
        assert error in result.stderr


def test_watch_without_rich_names_the_extra(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"  # nothing listens: a connection attempt would say so
    code = (
        "import sys; sys.modules['rich'] = None; "  # as if not installed
        "from blockipc._cli import main; "
        f"sys.exit(main(['stats', '--socket', {str(sock)!r}, '--watch']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "blockipc stats: blockipc stats --watch needs rich: pip install 'blockipc[watch]'\n"
    )


def test_watch_once_prints_one_view(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with serving(sock, env=cli_env(sock)):
        result = run_cli("stats", "--watch", "--once", "--interval", "0.1", env=cli_env(sock))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert field(result.stdout, "segments") == "1, 32.0 MiB"
    assert rows(result.stdout, "processes") == {}  # its own connection left out


def test_watch_in_a_terminal_until_sigint(tmp_path: Path) -> None:
    """``blockipc stats --watch`` in a pty redraws (sample 1, 2, 3...) until SIGINT, then
    exits 0 with nothing on stderr."""
    sock = tmp_path / "c.sock"
    env = {**cli_env(sock), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}
    with serving(sock, env=cli_env(sock)):
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*BLOCKIPC, "stats", "--watch", "--interval", "0.1"],
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        shown = b""
        try:
            deadline = time.monotonic() + 30
            while not re.search(rb"sample 3\b", shown):
                assert proc.poll() is None, (shown, proc.stderr and proc.stderr.read())
                assert time.monotonic() < deadline, shown
                if select.select([master], [], [], 0.1)[0]:
                    shown += os.read(master, 65536)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
            while select.select([master], [], [], 0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
            assert proc.stderr is not None
            stderr = proc.stderr.read()
            proc.stderr.close()
    assert code == 0, stderr
    assert stderr == b""
    assert b"\x1b[" in shown  # drawn as a terminal view, redrawn in place
    assert b"fragmentation" in shown and b"processes" in shown
