"""The ``blockipc`` command as a user runs it: ``python -m blockipc`` in a subprocess,
against a real ``blockipc serve`` (or an embedded coordinator)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import blockipc
from _procs import ROOT, serving
from blockipc._address import ADDRESS_ENV
from blockipc._core.sizes import format_size

BLOCKIPC = [sys.executable, "-m", "blockipc"]
REQUIRED = "--socket or BLOCKIPC_ADDRESS is required"


def cli_env(address: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """This environment with this source tree first, and ``BLOCKIPC_ADDRESS`` set to
    ``address`` (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != ADDRESS_ENV}
    env["PYTHONPATH"] = str(ROOT / "src")
    if address is not None:
        env[ADDRESS_ENV] = os.fspath(address)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BLOCKIPC, *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


# -- --version and --help -----------------------------------------------------------
def test_version_is_the_package_version() -> None:
    result = run_cli("--version", env=cli_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"blockipc {blockipc.__version__}\n"
    assert blockipc.__version__ == importlib.metadata.version("blockipc")


@pytest.mark.parametrize("command", [[], ["serve"], ["stats"], ["keygen"], ["bench"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help", env=cli_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: blockipc")
    if command in ([], ["serve"], ["stats"]):  # where the address comes from
        assert ADDRESS_ENV in result.stdout
    if not command:
        assert "--version" in result.stdout


def test_the_log_options_come_before_any_command_bench_included(tmp_path: Path) -> None:
    result = run_cli("--log-level", "warning", "--log-json", "bench", "--help", env=cli_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: blockipc bench")
    unknown = run_cli("stats", "--socket", str(tmp_path / "s"), "--bogus", env=cli_env())
    assert unknown.returncode == 2
    assert "unrecognized arguments: --bogus" in unknown.stderr


# -- the address: --socket, else BLOCKIPC_ADDRESS -------------------------------------
@pytest.mark.parametrize("command", ["serve", "stats"])
def test_no_address_is_a_usage_error(command: str) -> None:
    for env in (cli_env(), cli_env("")):  # unset, or set to nothing
        result = run_cli(command, env=env)
        assert result.returncode == 2, result.stderr
        assert f"usage: blockipc {command}" in result.stderr
        assert REQUIRED in result.stderr


def test_serve_and_stats_take_the_address_from_the_environment(tmp_path: Path) -> None:
    sock = tmp_path / "env.sock"
    with serving(sock, env=cli_env(sock)):
        result = run_cli("stats", "--json", env=cli_env(sock))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pool_size"] == 32 << 20


def test_socket_wins_over_the_environment(tmp_path: Path) -> None:
    sock, elsewhere = tmp_path / "given.sock", tmp_path / "env.sock"
    with serving(sock, "--socket", str(sock), env=cli_env(elsewhere)):
        assert not elsewhere.exists()
        result = run_cli("stats", "--socket", str(sock), "--json", env=cli_env(elsewhere))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pool_size"] == 32 << 20


# -- stats: for people and for scripts ----------------------------------------------
async def test_stats_in_human_units_without_its_own_connection(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with serving(sock, env=cli_env(sock)):
        async with (
            blockipc.connect(sock, name="producer") as producer,
            blockipc.connect(sock, name="consumer"),
        ):
            await producer.alloc(5000)  # an 8 KiB block
            human = await anyio.run_process(
                [*BLOCKIPC, "stats", "--name", "the-stats"], env=cli_env(sock), check=False
            )
            raw = await anyio.run_process(
                [*BLOCKIPC, "stats", "--name", "the-stats", "--json"],
                env=cli_env(sock),
                check=False,
            )
    assert human.returncode == 0, human.stderr
    lines = human.stdout.decode().splitlines()
    names = {f.name for f in dataclasses.fields(blockipc.Stats)}
    field = dict(line.split(None, 1) for line in lines if line.split(None, 1)[0] in names)
    assert set(field) == names - {"links", "usage", "queues"}  # one line each, then a line per item
    assert field["pool_size"] == "32.0 MiB"
    assert field["max_pool_size"] == "32.0 MiB"
    assert field["used_bytes"] == "8.0 KiB"
    assert field["blocks"] == "1"
    assert sorted(field["processes"].split(", ")) == ["consumer", "producer"]
    assert field["names"] == "(none)"
    per_process = [line for line in lines if line.startswith("process ")]
    assert len(per_process) == 2
    assert any(
        line.startswith("process producer ") and "1 blocks held, 8.0 KiB owned" in line
        for line in per_process
    )
    text = human.stdout.decode()
    assert "the-stats" not in text
    assert "('" not in text and "()" not in text  # no Python tuples

    assert raw.returncode == 0, raw.stderr
    stats = json.loads(raw.stdout)
    assert stats["pool_size"] == 32 << 20 and stats["used_bytes"] == 8 << 10  # raw ints
    assert sorted(stats["processes"]) == ["consumer", "producer"]
    assert sorted(u["name"] for u in stats["usage"]) == ["consumer", "producer"]


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (8 << 10, "8.0 KiB"),
        (256 << 20, "256.0 MiB"),
        (3 << 29, "1.5 GiB"),
        (2 << 40, "2.0 TiB"),
        (5 << 50, "5.0 PiB"),
    ],
)
def test_format_size(nbytes: int, text: str) -> None:
    assert format_size(nbytes) == text


def test_format_size_round_trips_through_parse_size() -> None:
    for shift in range(60):
        for n in (1 << shift, 3 << shift):  # a power of two, one and a half of one
            assert blockipc.parse_size(format_size(n)) == n


# -- serve --metrics without its extra ----------------------------------------------
def test_serve_metrics_without_prometheus_client_fails_before_the_pool(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "  # as if not installed
        "from blockipc._cli import main; "
        f"sys.exit(main(['--log-level', 'debug', 'serve', '--socket', {str(sock)!r}, "
        "'--metrics', '0']))"
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
    assert "pip install 'blockipc[metrics]'" in result.stderr
    assert "coordinator." not in result.stderr  # never started (nor stopped)
    assert not sock.exists()
    assert not list(tmp_path.iterdir())
