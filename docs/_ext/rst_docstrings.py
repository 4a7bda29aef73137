"""A griffe extension for the API reference: blockipc's docstrings use a few reST habits
that Markdown renders badly, and this turns them into Markdown before mkdocstrings
parses them (the docstrings themselves stay as they are for ``help()`` and editors).

* a paragraph ending in ``::`` followed by an indented block: a fenced Python block;
* a run of ``>>>`` lines (doctest, with their output): a fenced ``pycon`` block, with
  ``# doctest:`` directives dropped;
* inline roles (:class:`Block`, :meth:`Client.take`, :func:`connect`): code spans,
  linked to the API page when they name a public name of the package or one of its
  members (``blockipc.Client.take``); other roles (relative ones such as :meth:`ack`,
  private names) stay plain code, so no link can break the strict build.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const):`~?([^`]+)`")
_DOCTEST_DIRECTIVE = re.compile(r"\s*# doctest:.*$")


def convert(text: str, known: frozenset[str] = frozenset()) -> str:
    """Return ``text`` (a docstring) with its reST literal blocks, doctests and roles as
    Markdown; a role naming one of ``known`` (``blockipc.Client.take``) becomes a link."""

    def role(m: re.Match[str]) -> str:
        target = m.group(1)
        full = target if target.startswith("blockipc.") else f"blockipc.{target}"
        return f"[`{target}`][{full}]" if full in known else f"`{target}`"

    text = _ROLE.sub(role, text)
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
        if stripped.endswith("::") and (stripped == "::" or not stripped.startswith(":")):
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
        known = _public_paths(pkg)
        seen: set[int] = set()

        def walk(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, known)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)  # type: ignore[arg-type]

        walk(pkg)


def _public_paths(pkg: griffe.Module) -> frozenset[str]:
    """``pkg.NAME`` for each name in its ``__all__``, and ``pkg.NAME.MEMBER`` for each
    public member of those: the identifiers the API page renders."""
    paths: set[str] = set()
    for name in pkg.exports or ():
        if not isinstance(name, str) or name not in pkg.members:
            continue
        paths.add(f"{pkg.path}.{name}")
        try:
            members = pkg.members[name].members
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):  # no member links
            continue
        paths.update(
            f"{pkg.path}.{name}.{m}"
            for m, member in members.items()
            # what the page renders: public members with a docstring of their own
            if not m.startswith("_") and not member.is_alias and member.docstring is not None
        )
    return frozenset(paths)
