"""The cache benchmark's analysis and report on made-up results, its Redis-less path,
and one real quick round (the whole benchmark takes about a minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _procs import ROOT
from blockipc.bench import cache as bench_cache
from blockipc.bench.cache import _analyse, _redis_server
from blockipc.bench.harness import has, table

NO_REDIS_SERVER = (
    "redis-server is not on PATH: the Redis rows are skipped (install Redis to measure them)"
)
NO_REDIS_PY = (
    "redis-py is not installed: the Redis rows are skipped "
    "(pip install redis hiredis to measure them)"
)

MEDIANS_US = {
    "numpy_hit": 1.0,
    "numpy_miss": 200.0,
    "bytes_hit": 1.0,
    "bytes_miss": 180.0,
    "dict": 600.0,
    "redis": 400.0,
    "big_blockipc": 40_000.0,
    "big_shm": 50_000.0,
}


def results(medians: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    return {k: [{"samples": [int(v * 1e3)] * 5} for _ in range(2)] for k, v in medians.items()}


def test_every_target_passes() -> None:
    metrics, rows = _analyse(results(MEDIANS_US))
    assert [r[-1] for r in rows] == ["pass"] * 7
    assert metrics["bytes_miss"]["median_us"] == 180.0
    assert "200x faster" in rows[0][3]  # numpy: 200 / 1
    assert "2.2x faster" in rows[4][3]  # Redis 400 / miss 180
    text = table(rows)
    assert len({line.count("|") for line in text.splitlines()}) == 1


def test_targets_fail_and_say_so() -> None:
    slow = {**MEDIANS_US, "bytes_hit": 40.0, "bytes_miss": 350.0, "big_blockipc": 80_000.0}
    _metrics, rows = _analyse(results(slow))
    verdicts = [r[-1] for r in rows]
    # numpy passes; bytes hit vs miss 8.75x < 10x; miss vs dict 1.7x < 2x; hit vs dict
    # 15x < 20x; miss vs Redis 1.1x; hit vs Redis 10x; 64 MiB 1.6x > 1.5x
    assert verdicts == ["pass"] + ["**FAIL**"] * 6


def test_without_redis_the_rows_say_skip() -> None:
    no_redis = {k: v for k, v in MEDIANS_US.items() if k != "redis"}
    _metrics, rows = _analyse(results(no_redis))
    skipped = [r for r in rows if r[-1] == "skip"]
    assert len(skipped) == 1 and "Redis" in skipped[0][0]


def test_redis_server_missing_gives_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    notes: list[str] = []
    with _redis_server(str(tmp_path), None, notes) as path:
        assert path is None
    assert notes == [NO_REDIS_SERVER]


def test_redis_py_missing_gives_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/redis-server")
    monkeypatch.setattr(bench_cache, "has", lambda module: module != "redis")
    notes: list[str] = []
    with _redis_server(str(tmp_path), None, notes) as path:
        assert path is None
    assert notes == [NO_REDIS_PY]


@pytest.mark.slow
def test_one_quick_round_runs(tmp_path: Path) -> None:
    """A real round on this machine's PATH. redis-server is a system package the project
    does not install: without it (a fresh machine, CI) the Redis comparison is one
    "skip" row and the run says why; every other row is there either way."""
    path = os.environ.get("PATH", os.defpath)
    if shutil.which("redis-server", path=path) is None:
        skip_note: str | None = NO_REDIS_SERVER
    else:
        skip_note = None if has("redis") else NO_REDIS_PY
    with_redis = skip_note is None
    out = tmp_path / "cache.json"
    cmd = [sys.executable, "-m", "blockipc.bench.cache", "--quick", "--rounds", "1"]
    result = subprocess.run(
        [*cmd, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": path},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "| get 1 MiB numpy array: hit vs miss, median |" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["plan"]["rounds"] == 1
    # the rows the analysis makes of a full set of contenders, or of one without Redis
    medians = MEDIANS_US if with_redis else {k: v for k, v in MEDIANS_US.items() if k != "redis"}
    want = [row[0] for row in _analyse(results(medians))[1]]
    assert [row[0] for row in doc["rows"]] == want, doc["notes"]
    for row in doc["rows"]:
        if "Redis" in row[0] and not with_redis:
            assert row[1:] == ["—", "skipped (see the notes)", "—", "—", "skip"]
        else:  # measured: a verdict either way (speed is the benchmark's business)
            assert row[-1] in ("pass", "**FAIL**"), row
    if skip_note is not None:
        assert skip_note in doc["notes"]
        assert f"Note: {skip_note}" in result.stdout
    else:
        assert not [note for note in doc["notes"] if "Redis rows are skipped" in note]
