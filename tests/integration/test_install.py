"""What a `pip install blockipc` user gets: the base package works without any extra
(import, the demo), a codec whose library is missing says which extra to install at the
point of use, and the extras, the README's Install section and the Makefile agree.

A machine without numpy, orjson, ... is stood in for by a ``sitecustomize`` module on
the child processes' ``PYTHONPATH``: it makes importing those packages fail exactly as
when they are not installed (``ModuleNotFoundError``), in every process started below it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import blockipc
from _procs import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# The import name of every package an extra adds, by extra; the base install has none.
EXTRA_MODULES = {
    "numpy": ["numpy"],
    "json": ["orjson"],
    "metrics": ["prometheus_client"],
    "watch": ["rich"],
    "aiohttp": ["aiohttp"],
}
# ... and of what the dev set adds besides (the demo must not need any of it either)
DEV_MODULES = [
    *("pytest", "hypothesis", "mypy", "starlette", "uvicorn", "httpx", "redis"),
    *("mkdocs", "mkdocstrings", "material"),  # the docs extra
]

_SITECUSTOMIZE = """\
import importlib.abc
import os
import sys

_MISSING = frozenset(os.environ["BLOCKIPC_TEST_NOT_INSTALLED"].split(","))


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def without(tmp_path: Path, modules: list[str]) -> dict[str, str]:
    """The environment of a process (and its children) on which ``modules`` are not
    installed, running this checkout's blockipc."""
    site = tmp_path / "not-installed"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")]),
        "BLOCKIPC_TEST_NOT_INSTALLED": ",".join(modules),
    }


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def requirement_names(extra: str) -> set[str]:
    """The distribution names an extra lists (``blockipc[a,b]`` as ``blockipc[a,b]``)."""
    names = set()
    for req in PYPROJECT["optional-dependencies"][extra]:
        match = re.match(r"[A-Za-z0-9_.-]+(\[[a-z0-9_,-]+\])?", req)
        assert match, req
        names.add(match.group(0).lower())
    return names


# -- the base package --------------------------------------------------------------


def test_the_stand_in_really_hides_a_package(tmp_path: Path) -> None:
    result = run_python("import numpy", without(tmp_path, ["numpy"]))
    assert "ModuleNotFoundError: No module named 'numpy'" in result.stderr


def test_import_needs_no_extra(tmp_path: Path) -> None:
    optional = [m for mods in EXTRA_MODULES.values() for m in mods]
    code = (
        "import sys, blockipc, blockipc.testing, blockipc.asgi\n"
        "assert blockipc.CodecError and blockipc.Coordinator\n"
        f"loaded = sorted(m for m in {optional!r} if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "print('imported')\n"
    )
    result = run_python(code, without(tmp_path, optional))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported"


def test_demo_runs_on_the_base_package(tmp_path: Path) -> None:
    """`make demo` installs blockipc alone: the demo (three processes) needs nothing else."""
    optional = [m for mods in EXTRA_MODULES.values() for m in mods] + DEV_MODULES
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--count", "4"],
        env=without(tmp_path, optional),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok") == 4
    assert "0 bad checksums" in result.stdout


# -- a codec without its library ---------------------------------------------------

_WITHOUT_EXTRAS_CLIENT = """
import asyncio, json, sys
import blockipc

address, block, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
errors = {}


async def expect(what, call):
    try:
        await call()
    except blockipc.CodecError as exc:
        errors[what] = str(exc)
    else:
        errors[what] = "no error"


async def main():
    async with blockipc.connect(address, name="no-extras") as client:
        await expect("put numpy", lambda: client.put(bytes(8), "numpy"))
        await expect("put json", lambda: client.put({"a": 1}, "json"))
        await expect("get numpy", lambda: client.get("array"))
        await expect("get json", lambda: client.get("doc"))

        async def lease():
            async with client.lease(block, "r", codec="numpy"):
                pass

        await expect("lease numpy", lease)
        async with await client.accept_channel() as rx:
            with await rx.recv() as msg:
                async def decode():
                    msg.decode()

                async def view():
                    msg.view()

                await expect("channel decode numpy", decode)
                await expect("channel view numpy", view)
        async with await client.open_channel("owner") as tx:
            await expect("channel send numpy", lambda: tx.send(bytes(8), codec="numpy"))
            await expect("channel send json", lambda: tx.send({"a": 1}, codec="json"))
            # the connection and the channel are as they were: the other codecs work
            await client.put([1, "two"], name="after")
            assert await client.get("after") == [1, "two"]
            await client.delete("after")
            await tx.send(b"done")
    with open(out, "w") as f:
        json.dump(errors, f)


asyncio.run(main())
"""


async def test_a_codec_without_its_library_names_the_extra(
    coord: blockipc.Coordinator, tmp_path: Path
) -> None:
    """Every use of codec "numpy" without numpy, and of "json" without orjson, raises
    CodecError naming the extra, and leaves the client, its channel and the pool as
    they were (the coord fixture checks the pool is clean at the end)."""
    out = tmp_path / "errors.json"
    log = tmp_path / "client.log"
    async with blockipc.connect(coord.address, name="owner") as owner:
        array = await owner.put(np.arange(4.0), "numpy", name="array")
        await owner.put({"a": 1}, "json", name="doc")
        with log.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-c", _WITHOUT_EXTRAS_CLIENT),
                *(coord.address, str(array.id), str(out)),
                env=without(tmp_path, ["numpy", "orjson"]),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            async with await owner.open_channel("no-extras", wait_for_peer=30) as tx:
                await tx.send(np.arange(3), codec="numpy")
                async with await asyncio.wait_for(owner.accept_channel(), 30) as rx:
                    with await asyncio.wait_for(rx.recv(), 30) as msg:
                        assert msg.decode() == b"done"
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await owner.delete("array")
        await owner.delete("doc")

    errors = json.loads(out.read_text())
    numpy_error = "codec 'numpy' needs numpy: pip install 'blockipc[numpy]'"
    json_error = "codec 'json' needs orjson: pip install 'blockipc[json]'"
    assert errors == {
        "put numpy": numpy_error,
        "put json": json_error,
        "get numpy": numpy_error,
        "get json": json_error,
        "lease numpy": numpy_error,
        "channel decode numpy": numpy_error,
        "channel view numpy": numpy_error,
        "channel send numpy": numpy_error,
        "channel send json": json_error,
    }


# -- the extras, the README and the Makefile agree ---------------------------------


def test_each_extra_installs_what_its_feature_imports() -> None:
    assert requirement_names("numpy") == {"numpy"}
    assert requirement_names("json") == {"orjson"}
    assert requirement_names("metrics") == {"prometheus-client"}
    assert requirement_names("watch") == {"rich"}
    assert requirement_names("aiohttp") == {"aiohttp"}
    assert requirement_names("all") == {"blockipc[numpy,json,metrics,watch]"}
    assert "blockipc[all]" in requirement_names("dev")
    base = {re.split(r"[<>=;\[ ]", req)[0].lower() for req in PYPROJECT["dependencies"]}
    for extra in EXTRA_MODULES:
        assert not requirement_names(extra) & base, f"{extra} repeats a base dependency"


def test_every_extra_named_anywhere_exists() -> None:
    """The extras named in error messages (src) and in the README are pyproject's."""
    texts = [p.read_text() for p in (ROOT / "src" / "blockipc").rglob("*.py")]
    texts.append((ROOT / "README.md").read_text())
    named = {m for text in texts for m in re.findall(r"blockipc\[([a-z0-9_,-]+)\]", text)}
    assert {"numpy", "json", "metrics", "all"} <= named
    extras = set(PYPROJECT["optional-dependencies"])
    for group in named:
        assert set(group.split(",")) <= extras, group


def test_readme_install_section() -> None:
    readme = (ROOT / "README.md").read_text()
    sections = re.split(r"^## ", readme, flags=re.MULTILINE)
    titles = [s.partition("\n")[0] for s in sections]
    assert titles.index("Install") == titles.index("Quick start") + 1
    install = sections[titles.index("Install")]
    block = re.search(r"```sh\n(.*?)```", install, flags=re.DOTALL)
    assert block, "the Install section has a sh block"
    lines = {line.split("#")[0].strip(): line for line in block.group(1).splitlines()}
    assert "pip install blockipc" in lines
    for req in PYPROJECT["dependencies"]:  # the comment names what the base installs
        assert re.split(r"[<>=;\[ ]", req)[0] in lines["pip install blockipc"], req
    commands = list(lines)
    for extra in ("numpy", "json", "metrics", "watch", "aiohttp", "all"):
        assert f"pip install 'blockipc[{extra}]'" in commands


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_make_demo_installs_the_base_and_make_test_the_dev_set(tmp_path: Path) -> None:
    """`make -n` (print, do not run) with a venv of its own: the demo installs blockipc
    alone, the tests the dev set on top; once installed, neither installs again."""
    venv = tmp_path / "venv"

    def plan(target: str) -> list[str]:
        result = subprocess.run(
            ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [line for line in result.stdout.splitlines() if not line.startswith("make")]

    demo, test = plan("demo"), plan("test")
    assert any(line.endswith("pip install --quiet -e .") for line in demo), demo
    assert not any("dev" in line for line in demo), demo
    assert any(line.endswith("pip install --quiet -e '.[dev]'") for line in test), test
    assert any("-m venv" in line for line in demo) and any("-m venv" in line for line in test)

    (venv / "bin").mkdir(parents=True)
    for stamp in (".created", ".installed-base", ".installed-dev"):
        (venv / stamp).touch()  # newer than pyproject.toml: installed
    assert plan("demo") == [f"{venv}/bin/python examples/demo.py"]
    assert plan("test") == [f"{venv}/bin/python -m pytest -q -p no:cacheprovider -n 2"]
