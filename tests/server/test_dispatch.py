"""Every request op has exactly one handler in the coordinator, and the handshake's
ops (which arrive before a session exists) have none there."""

from __future__ import annotations

import types
from collections import Counter

import pytest

from _procs import ROOT
from blockipc._core.protocol import _SCHEMAS, Kind, Op
from blockipc._server import ops

HANDSHAKE = {Op.HELLO, Op.ATTACH}  # answered by the listener, before the session


def test_every_request_op_has_one_handler() -> None:
    handled = set(ops.HANDLERS)
    assert handled == set(Op) - HANDSHAKE, sorted(set(Op) ^ handled ^ HANDSHAKE)
    # and every op a client may send has a request schema the handler can rely on
    requests = {op for kind, op in _SCHEMAS if kind is Kind.REQUEST}
    assert handled <= requests, sorted(handled - requests)


def test_no_op_is_claimed_by_two_groups() -> None:
    claims = Counter(op for group in ops.GROUPS for op in group.HANDLERS)
    assert [op for op, n in claims.items() if n > 1] == []
    # and each handler is its group's own function
    for group in ops.GROUPS:
        for handler in group.HANDLERS.values():
            assert handler.__module__ == group.__name__, (group.__name__, handler)


def test_the_merge_refuses_an_op_handled_twice() -> None:
    twice = types.ModuleType("twice")
    twice.HANDLERS = {Op.ALLOC: ops.blocks.alloc}  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="ALLOC has two handlers"):
        ops.merge((ops.blocks, twice))


def test_the_architecture_doc_names_each_op_with_its_group() -> None:
    """docs/architecture.md's handlers row lists every group's ops under that group:
    an op added without the map being updated fails here."""
    row = next(
        line
        for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("| handlers |")
    )
    for group in ops.GROUPS:
        short = group.__name__.rsplit(".", 1)[1]
        start = row.index(f"`{short}` (")
        listed = set(row[start : row.index(")", start)].split("(", 1)[1].split(",")[0].split())
        assert {op.name for op in group.HANDLERS} <= listed, (short, sorted(listed))
