"""mkdocs hooks: the API page documents every name in ``blockipc.__all__``, the
benchmarks page quotes the README's tables as they are now and shows the plots ``make
bench`` wrote.

``docs/api.md`` groups the public names by topic with one ``::: blockipc.NAME`` each. A
name added to ``__all__`` and not yet placed there is appended to the page under "Not
yet grouped", so the site never lacks one; ``tests/test_docs.py`` still fails until it
is placed in its group. ``__all__`` is read from the source (``ast``), not imported.

``make bench`` draws its plots into ``docs/img/`` (``blockipc bench --plot``,
``benchmarks/bench_stats.py --plot``, ``benchmarks/bench_scale.py --plot``); those that
exist when the site is built are shown at the end of the benchmarks page, and none is
linked before it exists (a link to a missing file would fail ``--strict``).

A line ``<!-- README: "START" .. "END" -->`` in a page is replaced by the README's text
from START (in the first line that has it) up to (not including) the next line that
starts with END, with links into the repository turned into plain paths: the figures have one home,
the README. A START or END the README no longer has is a warning, which fails
``--strict``.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
_README = _ROOT / "README.md"
_QUOTE = re.compile(r'^<!-- README: "(.+?)" \.\. "(.+?)" -->$', re.MULTILINE)
_REPO_LINK = re.compile(r"\[([^\]]+)\]\(((?:benchmarks|docs|examples|src|tests)/[^)]*)\)")
_README_ANCHOR = re.compile(r"\[([^\]]+)\]\(#[^)]*\)")
log = logging.getLogger("mkdocs.hooks.blockipc")
_INIT = _ROOT / "src" / "blockipc" / "__init__.py"
PLOTS = {
    "latency.png": "Latency against the alternatives (`blockipc bench --plot`)",
    "throughput.png": "Throughput against the alternatives (`blockipc bench --plot`)",
    "growth.png": "Costs against the number of live blocks (`benchmarks/bench_stats.py --plot`)",
    "scale.png": "Requests/s against client processes (`benchmarks/bench_scale.py --plot`)",
}


def public_names() -> list[str]:
    """The names in ``blockipc.__all__``, in order, less ``__version__``."""
    for node in ast.parse(_INIT.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            return [n for n in names if n != "__version__"]
    return []


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    markdown = _QUOTE.sub(_quote_readme, markdown)
    if page.file.src_uri == "benchmarks.md":
        return _with_plots(markdown)
    if page.file.src_uri != "api.md":
        return markdown
    placed = set(re.findall(r"^::: blockipc\.(\w+)\s*$", markdown, re.MULTILINE))
    missing = [n for n in public_names() if n not in placed]
    if not missing:
        return markdown
    extra = "\n\n".join(f"::: blockipc.{n}" for n in missing)
    return f"{markdown}\n\n## Not yet grouped\n\n{extra}\n"


def _with_plots(markdown: str) -> str:
    shown = [(f, title) for f, title in PLOTS.items() if (_ROOT / "docs" / "img" / f).is_file()]
    if not shown:
        return markdown
    figures = "\n\n".join(f"### {title}\n\n![{title}](img/{f})" for f, title in shown)
    return f"{markdown}\n\n## Plots\n\nFrom the last `make bench` on this checkout.\n\n{figures}\n"


def _quote_readme(m: re.Match[str]) -> str:
    start, end = m.group(1), m.group(2)
    lines = _README.read_text().splitlines()
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        log.warning("README.md has no line with %r (quoted in the docs)", start)
        return ""
    lines[first] = lines[first][lines[first].index(start) :]
    last = next((i for i in range(first + 1, len(lines)) if lines[i].startswith(end)), None)
    if last is None:
        log.warning("README.md has no line starting with %r after %r", end, start)
        return ""
    text = "\n".join(lines[first:last]).strip()
    text = _REPO_LINK.sub(r"`\2`", text)
    return _README_ANCHOR.sub(r"\1", text)  # a README section: named, not linked
