"""Every request op has exactly one handler in the coordinator, and the handshake's
ops (which arrive before a session exists) have none there."""

from __future__ import annotations

from blockipc._core.protocol import _SCHEMAS, Kind, Op
from blockipc._server.coordinator import Coordinator

HANDSHAKE = {Op.HELLO, Op.ATTACH}  # answered by the listener, before the session


def test_every_request_op_has_one_handler() -> None:
    handled = set(Coordinator._handlers)
    assert handled == set(Op) - HANDSHAKE, sorted(set(Op) ^ handled ^ HANDSHAKE)
    # and every op a client may send has a request schema the handler can rely on
    requests = {op for kind, op in _SCHEMAS if kind is Kind.REQUEST}
    assert handled <= requests, sorted(handled - requests)
