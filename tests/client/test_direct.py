"""The direct request/reply socket's frames (``_client/direct.py``): every kind round
trips through a reader, whole or a byte at a time, several in one read; a frame over
the limit or with a malformed meta ends the socket; an ERROR frame raises its error."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from blockipc import CodecError, InboxFull, RemoteError
from blockipc._client import direct
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
from blockipc._client.requests import decode_payload, encode_inline
from blockipc._core.codecs import get_codec
from blockipc._core.limits import MAX_INLINE_PAYLOAD
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


async def test_a_reply_is_decoded_as_it_comes_and_a_bad_one_raises_in_its_requester() -> None:
    link = DirectLink("svc", lambda _link: None, decode_payload)
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(4)]
    link._pending = dict(enumerate(futs, 1))
    link.data_received(frame(REPLY, 1, "msgpack", None, msgpack.packb({"a": [1]})))
    link.data_received(frame(REPLY, 2, "raw", None, b"as it is"))
    link.data_received(frame(REPLY, 3, "msgpack", None, b"\xc1"))  # never valid msgpack
    link.data_received(frame(REPLY, 4, "json", None, b"[1, 2]"))
    assert await futs[0] == {"a": [1]}
    assert await futs[1] == b"as it is"
    with pytest.raises(CodecError, match="msgpack"):
        await futs[2]
    assert await futs[3] == [1, 2]
    assert not link._pending


def test_msgpack_and_raw_inline_payloads_are_the_codecs_own() -> None:
    for obj in ({"a": (1, b"\0")}, [1.5, None, "x"], 2**63):
        meta, data = encode_inline(obj, "msgpack") or ({"no": 1}, b"")
        enc = get_codec("msgpack").prepare(obj)
        assert (meta, data) == (enc.meta, enc.tobytes())
        assert decode_payload("msgpack", meta, data) == get_codec("msgpack").decode(data)
    assert encode_inline(b"x" * (MAX_INLINE_PAYLOAD + 1), "msgpack") is None
    with pytest.raises(CodecError):
        encode_inline(object(), "msgpack")
    with pytest.raises(CodecError):
        decode_payload("msgpack", {}, b"\x92\x01")  # a list of two with one item


def test_the_codec_name_caches_are_bounded() -> None:
    for i in range(2 * direct._MAX_NAMES):
        direct._codec(f"c{i}".encode())
        direct._name(f"c{i}")
    assert len(direct._CODECS) <= direct._MAX_NAMES
    assert len(direct._NAMES) <= direct._MAX_NAMES
    assert direct._codec(b"c999") == "c999" and direct._name("c999") == b"c999"
