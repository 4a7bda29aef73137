"""The throughput table of ``blockipc bench``: analysis and report, on made-up results
(running the benchmark itself takes minutes; ``tests/integration/test_examples.py``
checks its ``--help``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blockipc.bench.core import (
    _TP_COLUMNS,
    FANOUT,
    TP_MAX,
    TP_SIZES,
    _analyse_throughput,
    _tp_key,
    _tp_table,
)


def _results(rates: dict[str, float], *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Two rounds per stream at ``rates[contender]`` bytes per second, every size."""
    out: dict[str, Any] = {}
    for contender, rate in rates.items():
        if contender in skip:
            continue
        for size in TP_SIZES:
            out[_tp_key(contender, size)] = [
                {"n": 10, "size": size, "elapsed": 10 * size / rate * 1e9} for _ in range(2)
            ]
    return out


def _rows(results: dict[str, Any]) -> list[list[str]]:
    _metrics, rows = _analyse_throughput(results)
    table = _tp_table(rows, list(_TP_COLUMNS))
    assert len({line.count("|") for line in table.splitlines()}) == 1  # a regular table
    return rows


RATES = {"queue": 1e8, "pipe": 2e8, "socket": 4e8, "zmq": 2.5e8, "memcpy": 1e9}


def test_every_target_passes_when_far_ahead() -> None:
    rows = _rows(_results({"blockipc": 2e9, "fanout": 2e9, **RATES}))
    assert [r[-1] for r in rows] == ["pass", "info", "pass", "pass", "info"]
    assert "5.00x (uvloop Unix socket)" in rows[2]  # 2e9 / 4e8
    fan = rows[-1]
    assert fan[0] == f"1-to-{FANOUT} fan-out, 64 MiB"
    assert f"{FANOUT * 2e9 / 4e8:.1f}x faster" in " ".join(fan)


@pytest.mark.parametrize(
    ("blockipc", "memcpy"),
    [(1e9, 1e9), (2e9, 3e9)],  # under 4x the best alternative / under 0.8x memcpy
)
def test_targets_fail_and_say_so(blockipc: float, memcpy: float) -> None:
    rows = _rows(_results({"blockipc": blockipc, **RATES, "memcpy": memcpy}))
    assert rows[2][-1] == rows[3][-1] == "**FAIL**"
    assert len(rows) == len(TP_SIZES)  # no fan-out measured: no fan-out row


def test_a_missing_contender_keeps_the_columns() -> None:
    rows = _rows(_results({"blockipc": 2e9, **RATES}, skip=("zmq", "memcpy")))
    zmq_column = 1 + _TP_COLUMNS.index("zmq")
    assert all(r[zmq_column] == "—" for r in rows)
    assert "pyzmq" not in rows[0][-2]  # the 64 B target names only what was measured
    assert TP_SIZES[-1] == TP_MAX


def test_plots_draw_what_the_tables_measured(tmp_path: Path) -> None:
    # in a child process: matplotlib keeps its fonts open for the life of the process
    metrics, _rows = _analyse_throughput(_results({"blockipc": 2e9, **RATES}, skip=("zmq",)))
    lat = {"median_us": 80.0, "p99_us": 200.0}
    (tmp_path / "all.json").write_text(
        json.dumps({"read_blockipc": lat, "ping_raw": lat, "throughput": metrics})
    )
    (tmp_path / "core.json").write_text(json.dumps({"ping_raw": lat}))
    script = (
        "import json, sys\n"
        "from blockipc.bench.core import _TP_LABELS, TP_SIZES\n"
        "from blockipc.bench.plots import write_plots\n"
        "for name in sys.argv[1:]:\n"
        "    m = json.load(open(name + '.json'))\n"
        "    files = write_plots(m, name, sizes=TP_SIZES, labels=_TP_LABELS)\n"
        "    print(name, *sorted(f.name for f in files))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "all", "core"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.splitlines() == ["all latency.png throughput.png", "core latency.png"]
    assert out.stderr == ""
    for png in ("all/latency.png", "all/throughput.png", "core/latency.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal])
def test_rounds_progress_reports_every_round(stream: type[io.StringIO]) -> None:
    from blockipc.bench.harness import rounds_progress

    out = stream()
    with rounds_progress(3, "throughput round", stream=out) as done:
        for _ in range(3):
            done()
    text = out.getvalue()
    if stream is _Terminal:  # a terminal: rich's bar, last drawn at 3 of 3
        assert "throughput rounds" in text and "3/3" in text
        assert "done in" not in text
    else:  # a log or a pipe: one line per round
        lines = text.splitlines()
        assert [line.split(" done in ")[0] for line in lines] == [
            f"throughput round {k}/3" for k in (1, 2, 3)
        ]
