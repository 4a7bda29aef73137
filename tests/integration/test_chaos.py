"""The chaos tools of ``make soak`` and ``make fuzz``, in short runs: a soak of worker
processes that are ``kill -9``ed while they work, and frames fuzzed at a live
``blockipc serve``; each must find no mismatch and leave nothing behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _procs import ROOT

BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _chaos import MIN_PAYLOAD, check_payload, payload  # noqa: E402


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_payload_checks_itself() -> None:
    import random

    rng = random.Random(7)
    for size in (MIN_PAYLOAD, 41, 4096, 100_000):
        good = payload(rng, size)
        assert len(good) == size and check_payload(good) is None
        flipped = bytearray(good)
        flipped[rng.randrange(len(good))] ^= 0x10
        assert check_payload(bytes(flipped)) is not None, size
        assert check_payload(good[:-1]) is not None
        assert check_payload(good + b"\0") is not None
    assert check_payload(b"short") is not None


def test_soak_survives_kills_with_no_mismatch_and_no_leak() -> None:
    # 9 s of 4 workers, a kill -9 about every 0.75 s: the driver's own checks (every
    # payload's checksum, then stats, fds and /dev/shm back to their baseline) decide
    result = _run(
        "soak.py",
        "--seconds",
        "9",
        "--workers",
        "4",
        "--kill-every",
        "0.75",
        "--seed",
        "14",
        timeout=55,
    )
    out = result.stdout
    assert result.returncode == 0, out[-8000:] + result.stderr[-4000:]
    assert "result: PASS" in out
    assert "mismatches: 0" in out
    assert "leaks: 0 (" in out
    kills = int(out.split("kills survived: ")[1].split()[0])
    assert kills >= 3, out


def test_fuzzed_frames_neither_crash_the_coordinator_nor_disturb_a_good_client() -> None:
    result = _run("fuzz.py", "--frames", "5000", "--seed", "14", timeout=55)
    out = result.stdout
    assert result.returncode == 0, out[-8000:] + result.stderr[-4000:]
    assert "result: PASS" in out
    assert "coordinator: alive" in out
    verified = out.split("good ops verified: ")[1].split()[0]
    done, attempted = (int(n.replace(",", "")) for n in verified.split("/"))
    assert done == attempted > 0


@pytest.mark.parametrize("script", ["soak.py", "fuzz.py"])
def test_help(script: str) -> None:
    result = _run(script, "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
