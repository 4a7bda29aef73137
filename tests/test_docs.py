"""The documentation site: it builds with ``mkdocs build --strict`` (a broken link, a
missing page or a reference mkdocstrings cannot resolve fails), and its API page has
every public name."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import blockipc

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"

_DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_tools() -> list[str]:
    missing = []
    for mod in _DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(mod)
    return missing


def test_api_page_documents_every_public_name() -> None:
    documented = set(re.findall(r"^::: blockipc\.(\w+)\s*$", API_PAGE.read_text(), re.MULTILINE))
    public = set(blockipc.__all__) - {"__version__"}
    missing = sorted(public - documented)
    assert not missing, (
        f"place `::: blockipc.NAME` in its group in docs/api.md for: {', '.join(missing)} "
        "(until then docs/_ext/api_hook.py lists them under 'Not yet grouped')"
    )
    stale = sorted(
        n
        for n in documented - public
        if not hasattr(blockipc, n) and importlib.util.find_spec(f"blockipc.{n}") is None
    )
    assert not stale, f"docs/api.md documents names blockipc no longer has: {stale}"


@pytest.mark.skipif(
    bool(_missing_docs_tools()),
    reason=f"the docs extra is not installed (missing {_missing_docs_tools()}): "
    "pip install -e '.[docs]'",
)
def test_site_builds_strict_with_no_warning(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner, not a warning
    proc = subprocess.run(
        [
            sys.executable,
            *("-m", "mkdocs", "build", "--strict"),
            *("--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNING" not in output, output
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("Client", "Coordinator", "connect", "RemoteError"):
        assert f'id="blockipc.{name}"' in api, f"blockipc.{name} missing from the API page"


# -- the guides' complete examples run as written ---------------------------------------

DOCS = ROOT / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.DOTALL)


def _run(script: Path, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(cwd)])}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_front_page_example_runs(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(_python_blocks("index.md")[0])
    assert _run(tmp_path / "example.py", tmp_path) == "producer {'kind': 'greeting'} b'hello'\n"


@pytest.mark.parametrize("block", [1, 2], ids=["blockipc.sync", "loop-thread"])
def test_the_process_pool_example_runs(tmp_path: Path, block: int) -> None:
    # four spawned workers, each connecting once in the pool's initializer to the
    # coordinator embedded in the parent (whose loop must never block meanwhile)
    pytest.importorskip("numpy")
    code = _python_blocks("guides/multiprocessing.md")[block]
    (tmp_path / "pool_example.py").write_text(code)
    out = _run(tmp_path / "pool_example.py", tmp_path).splitlines()
    assert out[-1] == "True", out


_WEB_DRIVER = """
import asyncio, os
import blockipc, httpx

async def main():
    async with blockipc.Coordinator(pool_size="32MiB") as coord:
        os.environ["BLOCKIPC_ADDRESS"] = coord.address
        APP
blockipc.run(main)
"""

_AIOHTTP = """
        from aiohttp import web
        import guide_app
        runner = web.AppRunner(guide_app.make_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with blockipc.connect(coord.address, name="putter") as c:
                await c.put(b"hi there", codec="raw", name="greeting")
                async with httpx.AsyncClient() as h:
                    for name in ("greeting", "nope"):
                        r = await h.get(f"http://127.0.0.1:{port}/value/{name}")
                        print(r.status_code, r.content)
        finally:
            await runner.cleanup()
"""

_STARLETTE = """
        def drive():
            from starlette.testclient import TestClient
            import guide_app
            with TestClient(guide_app.app) as tc:
                print(tc.get("/report/a").json())
                print(tc.get("/report/a").json())
        await asyncio.to_thread(drive)   # its own loop, in a thread: ours serves on
"""


def test_the_aiohttp_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="aiohttp is not installed")
    app = _python_blocks("guides/aiohttp.md")[0].replace('if __name__ == "__main__":', "if 0:")
    (tmp_path / "guide_app.py").write_text(app)
    (tmp_path / "drive.py").write_text(_WEB_DRIVER.replace("        APP", _AIOHTTP))
    assert _run(tmp_path / "drive.py", tmp_path).splitlines() == [
        "200 b'hi there'",
        "404 b'404: Not Found'",
    ]


_WSGI = """
        async with blockipc.connect(coord.address, name="putter") as c:
            await c.put(b"hi", codec="raw", name="greeting")

            def call():
                import guide_app
                statuses = []
                body = guide_app.app({}, lambda status, headers: statuses.append(status))
                guide_app.blockipc_client().close()
                return statuses, body

            print(await asyncio.to_thread(call))   # a blocking caller: our loop serves on
"""


def test_the_gunicorn_wsgi_example_runs(tmp_path: Path) -> None:
    (tmp_path / "guide_app.py").write_text(_python_blocks("guides/gunicorn.md")[0])
    (tmp_path / "drive.py").write_text(_WEB_DRIVER.replace("        APP", _WSGI))
    assert _run(tmp_path / "drive.py", tmp_path) == "(['200 OK'], [b'hi'])\n"


def test_the_starlette_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    stub = "def build_report(key):\n    return {'key': key, 'rows': [1, 2, 3]}\n\n\n"
    (tmp_path / "guide_app.py").write_text(stub + _python_blocks("guides/starlette.md")[0])
    (tmp_path / "drive.py").write_text(_WEB_DRIVER.replace("        APP", _STARLETTE))
    report = "{'key': 'a', 'rows': [1, 2, 3]}"
    assert _run(tmp_path / "drive.py", tmp_path).splitlines() == [report, report]


@pytest.mark.skipif(
    importlib.util.find_spec("griffe") is None, reason="the docs extra is not installed"
)
def test_every_literal_block_of_a_docstring_is_indented() -> None:
    # a reST "text::" must be followed by an indented block, or the API page shows the
    # example as prose (docs/_ext/rst_docstrings.py turns the indented block into code)
    import griffe

    bad: list[str] = []
    seen: set[int] = set()

    def walk(obj: griffe.Object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        lines = obj.docstring.value.splitlines() if obj.docstring else []
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped.endswith("::") or (stripped != "::" and stripped.startswith(":")):
                continue
            nxt = next((n for n in lines[i + 1 :] if n.strip()), "")
            if len(nxt) - len(nxt.lstrip()) <= len(line) - len(line.lstrip()):
                bad.append(f"{obj.path}: {stripped[:50]!r}")
        for member in obj.members.values():
            if not member.is_alias:
                walk(member)  # type: ignore[arg-type]

    walk(griffe.load("blockipc", search_paths=[str(ROOT / "src")]))
    assert not bad, bad
