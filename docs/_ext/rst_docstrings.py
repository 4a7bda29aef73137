"""A griffe extension for the API reference: blockipc's docstrings use a few reST habits
that Markdown renders badly, and this turns them into Markdown before mkdocstrings
parses them (the docstrings themselves stay as they are for ``help()`` and editors).

* a paragraph ending in ``::`` followed by an indented block: a fenced Python block;
* a run of ``>>>`` lines (doctest, with their output): a fenced ``pycon`` block, with
  ``# doctest:`` directives dropped;
* inline roles (:class:`Block`, :meth:`Client.take`, :func:`connect`): code spans.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const):`~?([^`]+)`")
_DOCTEST_DIRECTIVE = re.compile(r"\s*# doctest:.*$")


def convert(text: str) -> str:
    """Return ``text`` (a docstring) with its reST literal blocks, doctests and roles as
    Markdown."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            block: list[str] = []
            while i < len(lines) and lines[i].strip():
                block.append(_DOCTEST_DIRECTIVE.sub("", lines[i].strip()))
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(":"):
            # "text::" -> "text:", a lone "::" disappears; then the indented block
            head = line.rstrip()[:-1]
            if head.strip() == ":":
                head = ""
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            indent = len(line) - len(line.lstrip())
            body: list[str] = []
            while j < len(lines) and (
                not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
            ):
                body.append(lines[j])
                j += 1
            while body and not body[-1].strip():
                body.pop()
            if body:
                out += [head, "", "```python", *textwrap.dedent("\n".join(body)).splitlines()]
                out += ["```", ""]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Convert every docstring of a package once it is loaded (see the module's
    docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def walk(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)  # type: ignore[arg-type]

        walk(pkg)
