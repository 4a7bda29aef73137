"""A mkdocs hook: the API page documents every name in ``blockipc.__all__``.

``docs/api.md`` groups the public names by topic with one ``::: blockipc.NAME`` each. A
name added to ``__all__`` and not yet placed there is appended to the page under "Not
yet grouped", so the site never lacks one; ``tests/test_docs.py`` still fails until it
is placed in its group. ``__all__`` is read from the source (``ast``), not imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

_INIT = Path(__file__).resolve().parents[2] / "src" / "blockipc" / "__init__.py"


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
    if page.file.src_uri != "api.md":
        return markdown
    placed = set(re.findall(r"^::: blockipc\.(\w+)\s*$", markdown, re.MULTILINE))
    missing = [n for n in public_names() if n not in placed]
    if not missing:
        return markdown
    extra = "\n\n".join(f"::: blockipc.{n}" for n in missing)
    return f"{markdown}\n\n## Not yet grouped\n\n{extra}\n"
