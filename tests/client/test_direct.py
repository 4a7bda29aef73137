"""The direct request/reply socket's frames (``_client/direct.py``): every kind round
trips through a reader, whole or a byte at a time, several in one read; a frame over
the limit or with a malformed meta ends the socket; an ERROR frame raises its error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from blockipc import InboxFull, RemoteError
from blockipc._client.direct import (
    CANCEL,
    ERROR,
    HELLO,
    MAX_DIRECT_FRAME,
    REPLY,
    REQUEST,
    DirectLink,
    _Framer,
    error_frame,
    frame,
)
from blockipc._client.requests import decode_payload
from blockipc._exceptions import PeerUnreachable


class Recorder(_Framer):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[int, int, str, dict[str, Any], bytes]] = []
        self.aborted = False

    def on_frame(self, kind: int, rid: int, codec: str, meta: dict[str, Any], data: bytes) -> None:
        self.got.append((kind, rid, codec, meta, data))


class FakeTransport:
    def __init__(self, owner: Recorder) -> None:
        self.owner = owner

    def abort(self) -> None:
        self.owner.aborted = True


FRAMES = [
    (frame(HELLO, 0, data=b"asker"), (HELLO, 0, "", {}, b"asker")),
    (frame(REQUEST, 1, "raw", {}, b"x" * 64), (REQUEST, 1, "raw", {}, b"x" * 64)),
    (
        frame(REPLY, 2, "numpy", {"dtype": "<f8", "shape": [2]}, b"\0" * 16),
        (REPLY, 2, "numpy", {"dtype": "<f8", "shape": [2]}, b"\0" * 16),
    ),
    (frame(CANCEL, 3), (CANCEL, 3, "", {}, b"")),
]


@pytest.mark.parametrize("chunk", [1, 5, 10_000])
def test_frames_round_trip_in_any_chunks(chunk: int) -> None:
    stream = b"".join(f for f, _ in FRAMES)
    r = Recorder()
    for at in range(0, len(stream), chunk):
        r.data_received(stream[at : at + chunk])
    assert r.got == [want for _, want in FRAMES]
    assert not r._buf


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff\xff\xff\xff\x01\x00\x00\x00\x01\x00\x00\x00",  # data over MAX_DIRECT_FRAME
        b"\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x01\x00\x92",  # meta is not a map
    ],
)
def test_a_malformed_frame_ends_the_socket(bad: bytes) -> None:
    r = Recorder()
    r.transport = FakeTransport(r)  # type: ignore[assignment]
    r.data_received(bad + b"\0" * 16)
    assert r.aborted and not r.got
    assert MAX_DIRECT_FRAME >= 1 << 20


async def test_an_error_frame_raises_its_error_and_an_end_fails_the_rest() -> None:
    lost: list[DirectLink] = []
    link = DirectLink("svc", lost.append, decode_payload)
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(3)]
    link._pending = dict(enumerate(futs, 1))
    link.data_received(error_frame(1, RemoteError("'svc' failed the request: no")))
    link.data_received(error_frame(2, InboxFull("full")))
    with pytest.raises(RemoteError, match="failed the request: no"):
        await futs[0]
    with pytest.raises(InboxFull, match="full"):
        await futs[1]
    link.connection_lost(None)
    with pytest.raises(PeerUnreachable, match="disconnected before it answered"):
        await futs[2]
    assert lost == [link]
    link.data_received(frame(REPLY, 3, "raw"))  # a late answer: dropped
    assert ERROR == 4
