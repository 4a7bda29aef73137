"""The limits on names, in one place: client, coordinator, routing table and link check
names with these (pure: no I/O).

A process, a node, a topic and a named object each have a name of 1 to
:data:`MAX_NAME` characters. A process on another node is reached as ``"node/name"``,
so a remote target is up to ``2 * MAX_NAME + 1`` characters long: its two parts are
checked each against its own limit (``_linkwire.split_target``), never the whole.
"""

from __future__ import annotations

from typing import Any, Final

from ._exceptions import InvalidRequest

__all__ = ["MAX_NAME", "check_name", "is_process_name"]

MAX_NAME: Final = 255
"""Characters in a process, node, topic or object name, at most."""


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a str of 1 to :data:`MAX_NAME` characters; else raise
    :class:`TypeError` (not a str) or :class:`InvalidRequest` saying ``what`` it names.

    >>> check_name("weights", "object name")
    'weights'
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME:
        raise InvalidRequest(f"{what} {name!r:.80} must be 1 to {MAX_NAME} characters long")
    return name


def is_process_name(name: Any) -> bool:
    """Whether ``name`` can name a process or a node: 1 to :data:`MAX_NAME` printable
    characters, no ``/`` (which joins the two in ``"node/name"``)."""
    return (
        type(name) is str and 0 < len(name) <= MAX_NAME and "/" not in name and name.isprintable()
    )
