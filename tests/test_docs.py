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
    assert not missing, f"add `::: blockipc.NAME` to docs/api.md for: {', '.join(missing)}"
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
