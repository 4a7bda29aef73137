"""Remote sends through coordinator-to-coordinator links (pyzmq, loopback only).

The sans-IO part (``_linkwire``: configuration checks, frames, the send state machine)
is tested on values alone. The rest runs real links on 127.0.0.1: embedded
coordinators where the test must see inside them (pool accounting, structlog events),
child processes (``tests/_procs.py``) where one must die by ``kill -9`` or have its
memory measured. No test ever points a socket at an address off this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import event, given, settings
from hypothesis import strategies as st

import blockipc
from _foreign import NOBODY, needs_root, run_intruder
from _helpers import free_port, node_keys
from _procs import ROOT, Child, spawn, wait_until
from blockipc import AccessDenied, BlockNotFound, InvalidRequest, LinkStats, PeerUnreachable
from blockipc._core.limits import split_target
from blockipc._core.linkwire import (
    ACK,
    ACKS,
    BLOCKS,
    FRAME_SLACK,
    MAX_BLOCKS,
    OutboundState,
    decode_ack,
    decode_acks,
    decode_blocks,
    encode_ack,
    encode_blocks,
    make_config,
    max_frame,
    parse_endpoint,
    peek_seqs,
)
from blockipc._exceptions import ProtocolError
from blockipc._link.keys import KEYS_ENV, default_key_dir, ensure_keys, keygen, load_keys
from blockipc.testing import assert_pool_clean, capture_logs

KiB, MiB = 1 << 10, 1 << 20


def encode_block(
    seq: int, node: str, sender: str, to: str, size: int, header: dict[str, object]
) -> list[bytes]:
    """The frames before the data frame of a one-block link message."""
    return [BLOCKS, encode_blocks(node, [[seq, sender, to, size, header]])]


def decode_block(head: list[bytes], size: int) -> object:
    (frame,) = decode_blocks(head, [size])
    return frame


@contextlib.asynccontextmanager
async def raw_dealer(endpoint: str, keys: Any = None) -> AsyncIterator[zmq.asyncio.Socket]:
    """A DEALER on node ``b``'s link port, to write link frames by hand (with ``keys``,
    a node's CURVE keys, as that node; without, plain: the node must be ``insecure``)."""
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        if keys is not None:
            dealer.curve_publickey, dealer.curve_secretkey = keys.public, keys.secret
            dealer.curve_serverkey = keys.trusted["b"]
        dealer.connect(endpoint)
        yield dealer
    finally:
        dealer.close(linger=0)
        ctx.destroy(linger=0)


@contextlib.asynccontextmanager
async def pair(
    keys: dict[str, Path] | None = None, timeout: float = 2.0, pool: str = "64MiB"
) -> AsyncIterator[tuple[blockipc.Coordinator, blockipc.Coordinator]]:
    """Coordinators ``a`` -> ``b`` embedded in this process; both pools clean at the end."""
    async with blockipc.Coordinator(
        pool_size=pool,
        node="b",
        listen="tcp://127.0.0.1:0",
        keys=None if keys is None else keys["b"],
        link_timeout=timeout,
    ) as b:
        assert b.link_address is not None
        async with blockipc.Coordinator(
            pool_size=pool,
            node="a",
            peers={"b": b.link_address},
            keys=None if keys is None else keys["a"],
            link_timeout=timeout,
        ) as a:
            yield a, b
            await wait_until(lambda: not a.stats().processes and not b.stats().processes)
            assert_pool_clean(a)
            assert_pool_clean(b)


# -- sans-IO: configuration, frames, send state ----------------------------------------
@pytest.mark.parametrize(
    ("listen", "peers", "insecure", "keys", "plain"),
    [
        ("tcp://127.0.0.1:0", {}, False, None, False),
        ("tcp://[::1]:7100", {"b": "tcp://localhost:7100"}, False, None, False),
        ("tcp://0.0.0.0:0", {"b": "tcp://10.1.2.3:7100"}, False, None, False),
        ("tcp://127.0.0.1:0", {}, True, None, True),
        ("tcp://0.0.0.0:0", {"b": "tcp://10.1.2.3:7100"}, True, None, True),
        ("tcp://0.0.0.0:0", {"b": "tcp://10.1.2.3:7100"}, True, "keys", False),
    ],
)
def test_plain_link_only_with_insecure(
    listen: str | None, peers: dict[str, str], insecure: bool, keys: str | None, plain: bool
) -> None:
    # CURVE on every address (the default key directory without keys); plain, on
    # loopback too, only with insecure and no keys
    cfg = make_config("a", listen, peers, keys, 5.0, insecure)
    assert cfg is not None and cfg.node == "a" and cfg.plain is plain


def test_coordinator_checks_link_config_before_binding() -> None:
    # a configuration check: the constructor raises, nothing is created or bound
    with pytest.raises(InvalidRequest, match="node name"):
        blockipc.Coordinator(listen="tcp://127.0.0.1:0")
    for bad in ("tcp://127.0.0.1", "udp://127.0.0.1:1", "tcp://127.0.0.1:99999"):
        with pytest.raises(InvalidRequest):
            blockipc.Coordinator(node="a", listen=bad)
    with pytest.raises(InvalidRequest):
        blockipc.Coordinator(node="a/b")
    with pytest.raises(InvalidRequest):
        blockipc.Coordinator(node="a", link_timeout=0)


def test_endpoints_and_targets() -> None:
    assert parse_endpoint("tcp://127.0.0.1:0", listen=True).zmq(bind=True) == "tcp://127.0.0.1:*"
    assert parse_endpoint("tcp://[::1]:5").zmq(bind=False) == "tcp://[::1]:5"
    assert parse_endpoint("tcp://127.0.0.2:5").loopback
    assert not parse_endpoint("tcp://192.168.1.1:5").loopback
    with pytest.raises(InvalidRequest):
        parse_endpoint("tcp://127.0.0.1:0")  # port 0 only to listen
    assert split_target("b/consumer") == ("b", "consumer")
    for bad in ("b/", "/x", "b/x/y"):
        with pytest.raises(InvalidRequest):
            split_target(bad)


def test_link_frames_round_trip_and_are_validated() -> None:
    head = encode_block(7, "a", "producer", "consumer", 5, {"k": [1, 2]})
    (frame,) = decode_blocks(head, [5])
    assert (frame.seq, frame.node, frame.sender, frame.to, frame.header) == (
        7,
        "a",
        "producer",
        "consumer",
        {"k": [1, 2]},
    )
    with pytest.raises(ProtocolError, match="size"):
        decode_blocks(head, [4])  # the data frame must be exactly as long as announced
    with pytest.raises(ProtocolError, match="entries"):
        decode_blocks(head, [5, 5])  # one entry per data frame
    with pytest.raises(ProtocolError, match="empty"):  # no block is empty: none to deliver
        decode_blocks(encode_block(8, "a", "producer", "consumer", 0, {}), [0])
    entries = [[i, "p", "c", i + 1, {"i": i}] for i in range(MAX_BLOCKS)]
    sizes = [i + 1 for i in range(MAX_BLOCKS)]
    frames = decode_blocks([BLOCKS, encode_blocks("a", entries)], sizes)
    assert [(f.seq, f.size, f.header) for f in frames] == [(i, i + 1, {"i": i}) for i in range(64)]
    too_many = [*entries, [MAX_BLOCKS, "p", "c", 1, {}]]
    with pytest.raises(ProtocolError, match="data frames"):
        decode_blocks([BLOCKS, encode_blocks("a", too_many)], [1] * (MAX_BLOCKS + 1))

    def meta(node: object, *entries: object) -> bytes:
        raw: bytes = msgpack.packb({"node": node, "blocks": list(entries)})
        return raw

    bad_metas: list[bytes] = [
        b"\xc1",  # not msgpack
        msgpack.packb({"node": "a", "blocks": [[1, "p", "c", 1, {}]], "x": 1}),  # unknown field
        msgpack.packb({"blocks": [[1, "p", "c", 1, {}]]}),  # no node
        meta("a", [1, "p", "c", 1]),  # missing header
        meta("a", [-1, "p", "c", 1, {}]),
        meta("a", [True, "p", "c", 1, {}]),
        meta("a/x", [1, "p", "c", 1, {}]),
        meta("a", [1, "p/q", "c", 1, {}]),
        meta("a", [1, "p", "", 1, {}]),
        meta("a", [1, "p", "c", 1, {1: 2}]),
        meta("a", [1, "p", "c", 1, []]),
        meta("a", "not a list"),
        meta("a", [1, "p", "c", 1, {"big": "x" * (70 << 10)}]),  # header over MAX_HEADER
    ]
    for bad in bad_metas:
        with pytest.raises(ProtocolError):
            decode_blocks([BLOCKS, bad], [1])
    with pytest.raises(ProtocolError):
        decode_blocks([b"ALLOC", head[1]], [5])  # a client request is not a link frame
    ack = decode_ack(encode_ack(3, 8, "no such process"))
    assert (ack.seq, ack.code) == (3, 8)
    assert isinstance(ack.error(), PeerUnreachable)
    assert decode_ack(encode_ack(4)).error() is None
    with pytest.raises(ProtocolError):
        decode_ack([ACK, b"\x90"])


# What a peer may put in a field: the right type or any other, near the limits.
_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)
_NAME = st.sampled_from(["p", "consumer", "", "a/b", "x" * 256, "tab\there", "é"]) | _ANY
_INT = st.integers(-2, 2**64 - 1) | _ANY
_ENTRY = st.one_of(
    st.tuples(_INT, _NAME, _NAME, _INT, st.dictionaries(st.text(max_size=4), _ANY) | _ANY).map(
        list
    ),
    st.lists(_ANY, max_size=6),
    _ANY,
)
_META = st.one_of(
    st.fixed_dictionaries({"node": _NAME, "blocks": st.lists(_ENTRY, max_size=4) | _ANY}),
    st.dictionaries(st.sampled_from(["node", "blocks", "seq", "x"]), _ANY, max_size=3),
    _ANY,
).map(lambda meta: msgpack.packb(meta, use_bin_type=True))


@st.composite
def _link_messages(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    """A well-formed message of blocks, then perhaps one thing in it broken: a field of
    one entry, the node, the kind, or the data frames' sizes."""
    sizes = draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=4))
    entries: list[Any] = [
        [
            draw(st.integers(0, 2**63 - 1)),
            draw(st.sampled_from(["p", "producer", "é" * 255])),
            draw(st.sampled_from(["c", "consumer"])),
            size,
            draw(st.dictionaries(st.text(max_size=4), _ANY, max_size=2)),
        ]
        for size in sizes
    ]
    meta: Any = {"node": "a", "blocks": entries}
    kind = BLOCKS
    broken = draw(st.sampled_from(["nothing", "field", "entry", "node", "kind", "sizes"]))
    if broken == "field":
        entry = draw(st.sampled_from(entries))
        entry[draw(st.integers(0, 4))] = draw(_NAME | _INT)
    elif broken == "entry":
        entries[draw(st.integers(0, len(entries) - 1))] = draw(_ENTRY)
    elif broken == "node":
        meta["node"] = draw(_NAME)
    elif broken == "kind":
        kind = draw(st.sampled_from([ACK, ACKS, b"", b"BLK"]))
    elif broken == "sizes":
        sizes = draw(st.lists(st.integers(0, 2**20), max_size=MAX_BLOCKS + 2))
    return kind, msgpack.packb(meta, use_bin_type=True), sizes


_ARBITRARY = st.tuples(
    st.sampled_from([BLOCKS, ACK, ACKS, b"", b"junk"]),
    _META | st.binary(max_size=80),
    st.lists(st.integers(0, 2**20), max_size=MAX_BLOCKS + 2),
)


@settings(max_examples=500, deadline=None)
@given(message=_link_messages() | _ARBITRARY)
def test_link_decoders_refuse_anything_malformed_cleanly(
    message: tuple[bytes, bytes, list[int]],
) -> None:
    """Whatever arrives on the TCP port: a ProtocolError or well-formed frames, never
    another exception; what is accepted holds what the receiving side relies on."""
    kind, raw, sizes = message
    try:
        frames = decode_blocks([kind, raw], sizes)
    except ProtocolError:
        event("blocks refused")
    else:
        event("blocks accepted")
        assert kind == BLOCKS and [f.size for f in frames] == sizes and len(sizes) >= 1
        for f in frames:
            assert type(f.seq) is int and 0 <= f.seq < 2**63
            for name in (f.node, f.sender, f.to):
                assert type(name) is str and 0 < len(name) <= 255 and "/" not in name
            assert type(f.header) is dict and all(type(k) is str for k in f.header)
    seqs = peek_seqs(raw)
    assert len(seqs) <= MAX_BLOCKS and all(type(q) is int and 0 <= q < 2**63 for q in seqs)
    try:
        acks = decode_acks([kind, raw])
    except ProtocolError:
        event("acks refused")
    else:
        event("acks accepted")
        assert all(type(a.seq) is int and type(a.code) is int for a in acks)
        for a in acks:
            with contextlib.suppress(Exception):
                a.error()  # any code maps to an error (or None), never a crash
            assert a.code == 0 or isinstance(a.error(), blockipc.BlockIPCError)


def test_outbound_state_window_and_failures() -> None:
    s = OutboundState("b", timeout=5.0, max_blocks=2, max_bytes=100, small_blocks=0)
    p1, p2, p3 = (s.submit(i, 40, now=0.0) for i in range(3))
    assert s.next_to_write() is None  # not up
    s.up(now=1.0)
    assert s.next_to_write() is p1 and s.next_to_write() is p2
    assert s.next_to_write() is None  # window: 2 blocks
    assert s.ack(p1.seq) is p1 and s.ack(p1.seq) is None  # a second ack is ignored
    assert s.next_to_write() is p3
    failed = s.down(now=2.0)  # in flight when the link drops: failed, never resent
    assert {p for p, _ in failed} == {p2, p3}
    assert all(isinstance(e, PeerUnreachable) for _, e in failed)
    big = s.submit("big", 1000, now=2.0)  # larger than the window: alone, once up
    assert s.expire(now=6.9) == []
    (expired,) = s.expire(now=7.0)  # down for the whole timeout of its life
    assert expired[0] is big and "link_timeout" in str(expired[1])
    s.up(now=8.0)
    s.submit("x", 10, now=8.0)
    refused = s.refuse(now=8.5, reason="node 'b' refused this node's key")
    assert [type(e) for _, e in refused] == [AccessDenied]
    late = s.submit("late", 10, now=9.0)  # refused peer: fails at once, not after timeout
    ((p, exc),) = s.expire(now=9.0)
    assert p is late and isinstance(exc, AccessDenied)
    s.up(now=10.0)  # a later handshake succeeded (the peer now trusts our key)
    assert s.refused is None and s.submit("ok", 10, now=10.0) is s.next_to_write()


@pytest.mark.parametrize(
    ("size", "in_flight", "batch"),
    [
        (4 * KiB, 64, 32),  # small blocks: up to 64 while they add up to 512 KiB
        (16 * KiB, 32, 16),
        (64 * KiB, 8, 4),  # from here on: 8 blocks, 64 MiB
        (MiB, 8, 4),
        (16 * MiB, 4, 2),
        (100 * MiB, 1, 1),  # larger than the window: one at a time
    ],
)
def test_window_lets_small_blocks_fly_by_the_dozen(size: int, in_flight: int, batch: int) -> None:
    s = OutboundState("b", timeout=5.0)
    s.up(now=0.0)
    pending = [s.submit(i, size, now=0.0) for i in range(100)]
    assert s.window(size) == in_flight and s.batch_size() == batch
    written = []
    while (p := s.next_to_write()) is not None:
        written.append(p)
    assert written == pending[:in_flight]
    s.ack(written[0].seq)  # one acknowledged: one more goes
    assert s.next_to_write() is pending[in_flight] and s.next_to_write() is None


def test_keygen_writes_pyzmq_certificates(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "blockipc", "keygen", "a", "--dir", str(keydir)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((keydir / "a.key_secret").stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(keydir / "a.key_secret")
    assert secret is not None and zmq.auth.load_certificate(keydir / "a.key")[0] == public
    keys = load_keys(keydir, "a")
    assert keys.trusted == {"a": public} and keys.node_of(public) == "a"
    with pytest.raises(blockipc.BlockIPCError, match="already exist"):
        keygen("a", keydir)
    os.chmod(keydir / "a.key_secret", 0o644)
    with pytest.raises(blockipc.BlockIPCError, match="chmod 600"):
        load_keys(keydir, "a")
    with pytest.raises(blockipc.BlockIPCError, match="keygen b"):
        load_keys(keydir, "b")


def test_serve_cli_link_flags(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    help_text = subprocess.run(
        [sys.executable, "-m", "blockipc", "serve", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flags = ("--node", "--listen", "--peer", "--keys", "--link-timeout", "--link-io-nice")
    for flag in (*flags, "--insecure"):
        assert flag in help_text
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "blockipc", "serve", "--socket", str(tmp_path / "s")),
            *("--node", "a", "--listen", "tcp://127.0.0.1:0", "--keys", str(tmp_path / "no")),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert refused.returncode == 1
    assert "key directory" in refused.stderr and "does not exist" in refused.stderr
    assert not (tmp_path / "s").exists()


def _io_thread_nices() -> dict[int, int]:
    """This process's libzmq I/O threads and their nice values."""
    nices = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("ZMQbg/IO/"):
                nices[int(tid)] = os.getpriority(os.PRIO_PROCESS, int(tid))
    return nices


async def test_a_listening_node_lowers_its_io_thread_priority() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for io_nice, expected in ((None, min(19, base + 10)), (3, min(19, base + 3)), (0, base)):
        before = set(_io_thread_nices())
        extra = {} if io_nice is None else {"link_io_nice": io_nice}
        async with blockipc.Coordinator(
            pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0", **extra
        ):
            # the thread names itself once it runs: with nothing to renice (io_nice 0),
            # the coordinator may be up before that
            await wait_until(lambda before=before: bool(set(_io_thread_nices()) - before))
            mine = {t: n for t, n in _io_thread_nices().items() if t not in before}
            assert list(mine.values()) == [expected]
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the loop's own thread: unchanged
    for bad in (-1, 20, 1.5, True, "5"):
        with pytest.raises(InvalidRequest, match="link_io_nice"):
            blockipc.Coordinator(node="b", listen="tcp://127.0.0.1:0", link_io_nice=bad)  # type: ignore[arg-type]


# -- real links, embedded coordinators -------------------------------------------------
async def test_remote_send_moves_block_and_keeps_order() -> None:
    async with (
        pair() as (a, b),
        blockipc.connect(a.address, name="producer") as producer,
        blockipc.connect(b.address, name="consumer") as consumer,
    ):
        datas = [os.urandom(size) for size in (1, 4 * KiB, 3 * MiB, 100, 2 * MiB + 5)]
        blocks = []
        for data in datas:
            block = await producer.alloc(len(data))
            await producer.write(block, data)
            blocks.append(block)
        # all in flight at once: per-sender order is kept anyway
        await asyncio.gather(
            *(
                producer.send(block, to="b/consumer", header={"i": i})
                for i, block in enumerate(blocks)
            )
        )
        assert a.stats().blocks == 0  # moved: freed here before the send returned
        with pytest.raises(BlockNotFound):
            await producer.read(blocks[0], 0, 1)
        for i, data in enumerate(datas):
            msg = await consumer.recv()
            assert (msg.sender, msg.header, msg.block.owner) == (
                "a/producer",
                {"i": i},
                "consumer",
            )
            assert await consumer.read(msg.block) == data
            await consumer.free(msg.block)

        # move=False keeps the block (and its bytes) with the sender
        block = await producer.alloc(10)
        await producer.write(block, b"0123456789")
        await producer.send(block, to="b/consumer", move=False)
        assert await producer.read(block) == b"0123456789"
        msg = await consumer.recv()
        assert await consumer.read(msg.block) == b"0123456789"
        await consumer.free(msg.block)
        # the same block twice at once: it stays pinned until the last transfer is over
        await asyncio.gather(
            *(producer.send(block, to="b/consumer", move=False, header={"n": n}) for n in (1, 2))
        )
        for n in (1, 2):
            msg = await consumer.recv()
            assert msg.header == {"n": n} and await consumer.read(msg.block) == b"0123456789"
            await consumer.free(msg.block)
        assert a.stats().blocks == 1 and a._link is not None and not a._link.host.holder.blocks

        # unknown remote process, unknown node, own node: errors, block intact
        for to, exc in (
            ("b/nobody", PeerUnreachable),
            ("c/consumer", PeerUnreachable),
            ("a/producer", InvalidRequest),
        ):
            with pytest.raises(exc):
                await producer.send(block, to=to)
            assert await producer.read(block) == b"0123456789"
        await producer.free(block)


async def test_stats_count_each_nodes_sends_and_receipts() -> None:
    async with (
        pair() as (a, b),
        blockipc.connect(a.address, name="producer") as producer,
        blockipc.connect(b.address, name="consumer") as consumer,
    ):
        assert b.stats().links == ()  # no peers, nothing received yet
        block = await producer.alloc(3000)
        for _ in range(3):
            await producer.send(block, to="b/consumer", move=False)
        with pytest.raises(PeerUnreachable):
            await producer.send(block, to="b/nobody")
        (link,) = (await producer.stats()).links  # over the wire
        assert link == LinkStats("b", "up", sent=3, sent_bytes=9000, failed=1)
        assert b.stats().links == (
            LinkStats("a", "inbound", received=3, received_bytes=9000, refused=1),
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "blockipc", "stats", "--socket", a.address),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0
        text = out.decode()
        assert "up: queued 0, in flight 0, sent 3 (8.8 KiB), failed 1, received 0" in text
        assert "process producer (pid " in text and "1 blocks held, 4.0 KiB owned" in text
        cli = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "blockipc", "stats", "--socket", a.address, "--json"),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        out, _ = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0
        got = json.loads(out)
        assert got["links"] == [dataclasses.asdict(link)]
        assert {u["name"]: u["owned_bytes"] for u in got["usage"]}["producer"] == 4096
        assert got["pool_size"] == a.stats().pool_size
        for _ in range(3):
            await consumer.free((await consumer.recv()).block)
        await producer.free(block)


async def test_curve_link_delivers_and_refuses_unknown_keys(tmp_path: Path) -> None:
    keys = node_keys(tmp_path, "a", "b")
    async with (
        pair(keys) as (a, b),
        blockipc.connect(a.address, name="producer") as producer,
        blockipc.connect(b.address, name="consumer") as consumer,
    ):
        block = await producer.alloc(MiB)
        await producer.write(block, b"x" * MiB)
        await producer.send(block, to="b/consumer", header={"curve": True})
        msg = await consumer.recv()
        assert (msg.sender, msg.header) == ("a/producer", {"curve": True})
        assert await consumer.read(msg.block) == b"x" * MiB
        await consumer.free(msg.block)

    # b trusts a key named "a", but not the one this "a" holds: refused before any data
    impostor = node_keys(tmp_path / "other", "a", "b")
    keys["b"] = impostor["b"]
    shutil.copy(keys["a"] / "a.key_secret", tmp_path / "a-secret")
    shutil.copy(impostor["b"] / "b.key", keys["a"] / "b.key")  # a trusts this b
    with blockipc.testing.capture_logs() as logs:
        async with (
            pair(keys, timeout=1.0) as (a, b),
            blockipc.connect(a.address, name="producer") as producer,
            blockipc.connect(b.address, name="consumer") as consumer,
        ):
            block = await producer.alloc(4096)
            await producer.write(block, b"secret")
            started = time.monotonic()
            with pytest.raises(AccessDenied, match="refused this node's key"):
                await producer.send(block, to="b/consumer")
            assert time.monotonic() - started < 1.5
            assert await producer.read(block, 0, 6) == b"secret"  # still the sender's
            assert a.stats().links == (LinkStats("b", "refused", failed=1),)
            assert b.stats().links == ()  # no block got through to be counted
            with anyio.move_on_after(0.2) as scope:
                await consumer.recv()
            assert scope.cancelled_caught  # nothing was delivered
            await producer.free(block)
    refusals = [e for e in logs if e["event"] == "link.refused"]
    assert any(e["node"] == "b" and "unknown CURVE public key" in e["reason"] for e in refusals)
    assert any(e["node"] == "a" and e.get("peer") == "b" for e in refusals)


async def test_a_block_must_come_from_the_node_its_key_belongs_to(tmp_path: Path) -> None:
    keys = node_keys(tmp_path, "a", "b", "c")
    async with (
        pair(keys) as (_a, b),
        blockipc.connect(b.address, name="consumer") as consumer,
    ):
        assert b.link_address is not None
        async with raw_dealer(b.link_address, load_keys(keys["c"], "c")) as dealer:
            with blockipc.testing.capture_logs() as logs:
                # c is trusted by b, but claims to be a: refused, nothing delivered
                await dealer.send_multipart([*encode_block(1, "a", "x", "consumer", 2, {}), b"hi"])
                await dealer.send_multipart([*encode_block(2, "c", "x", "consumer", 2, {}), b"ok"])
                with anyio.fail_after(5):
                    acks = [decode_ack(await dealer.recv_multipart()) for _ in range(2)]
            assert [(x.seq, type(x.error())) for x in acks] == [(1, AccessDenied), (2, type(None))]
            assert any(e["event"] == "link.refused" for e in logs)
            msg = await consumer.recv()
            assert (msg.sender, await consumer.read(msg.block)) == ("c/x", b"ok")
            await consumer.free(msg.block)


async def test_a_batch_the_socket_refuses_is_queued_again_in_order() -> None:
    # The monitor can report a handshake before libzmq has attached the pipe; a send
    # then gets EAGAIN. Forced here: the state is told the link is up while nothing
    # listens (IMMEDIATE: no pipe). The whole batch must go back to the queue, in order,
    # and leave in that order once the node really comes up.
    port = free_port()
    ensure_keys(default_key_dir(), "b")  # (else a waits for b's key: no socket to refuse)
    async with blockipc.Coordinator(
        pool_size="8MiB", node="a", peers={"b": f"tcp://127.0.0.1:{port}"}, link_timeout=20
    ) as a:
        assert a._link is not None
        peer = a._link._peers["b"]
        async with blockipc.connect(a.address, name="producer") as producer:
            blocks = []
            for i in range(3):
                blocks.append(block := await producer.alloc(10))
                await producer.write(block, bytes([i]) * 10)
            peer.state.up(time.monotonic())
            sends = [
                asyncio.create_task(producer.send(blk, to="b/consumer", header={"i": i}))
                for i, blk in enumerate(blocks)
            ]
            await wait_until(lambda: peer._blocked and len(peer.state.queue) == 3)
            assert not peer.state.in_flight
            assert [p.token.header["i"] for p in peer.state.queue] == [0, 1, 2]
            async with (
                blockipc.Coordinator(
                    pool_size="8MiB", node="b", listen=f"tcp://127.0.0.1:{port}"
                ) as b,
                blockipc.connect(b.address, name="consumer") as consumer,
            ):
                with anyio.fail_after(15):
                    await asyncio.gather(*sends)
                got = [await consumer.recv() for _ in range(3)]
                assert [m.header["i"] for m in got] == [0, 1, 2]
                assert [await consumer.read(m.block) for m in got] == [
                    bytes([i]) * 10 for i in range(3)
                ]
                await consumer.free_many(m.block for m in got)
            assert a.stats().blocks == 0  # moved: freed once acknowledged


async def test_a_cancelled_send_the_socket_had_refused_lets_go_of_the_pool() -> None:
    # queued again after EAGAIN (as above), it holds a view of the pool; taken back by a
    # cancel, it must let go of it, or the segment cannot be unmapped at close
    port = free_port()
    ensure_keys(default_key_dir(), "b")  # (else a waits for b's key: no socket to refuse)
    with blockipc.testing.capture_logs() as logs:
        async with blockipc.Coordinator(
            pool_size="8MiB", node="a", peers={"b": f"tcp://127.0.0.1:{port}"}, link_timeout=20
        ) as a:
            assert a._link is not None
            peer = a._link._peers["b"]
            async with blockipc.connect(a.address, name="producer") as producer:
                block = await producer.alloc(10)
                peer.state.up(time.monotonic())
                task = asyncio.create_task(producer.send(block, to="b/consumer"))
                await wait_until(lambda: peer._blocked and len(peer.state.queue) == 1)
                out = peer.state.queue[0].token
                assert out.view is not None
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await wait_until(lambda: not peer.state.queue)
                assert out.view is None
                await producer.free(block)
    assert not [e for e in logs if e["event"] == "pool.segment_close_deferred"]


async def test_send_to_a_node_that_is_down_times_out(short_dir: Path) -> None:
    port = free_port()  # nobody listens there
    async with blockipc.Coordinator(
        pool_size="8MiB", node="a", peers={"b": f"tcp://127.0.0.1:{port}"}, link_timeout=0.5
    ) as a:
        async with blockipc.connect(a.address, name="producer") as producer:
            block = await producer.alloc(4096)
            await producer.write(block, b"kept")
            with blockipc.testing.capture_logs() as logs:
                started = time.monotonic()
                with pytest.raises(PeerUnreachable, match="link_timeout"):
                    await producer.send(block, to="b/consumer")
                elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 10, elapsed  # it waited link_timeout, not for ever
            assert [e["event"] for e in logs if e["event"] == "link.send_failed"]
            assert a.stats().links == (LinkStats("b", "down", failed=1),)
            assert await producer.read(block, 0, 4) == b"kept"
            await producer.free(block)
        await wait_until(lambda: not a.stats().processes)
        assert_pool_clean(a)


async def test_a_cancelled_remote_send_still_queued_gives_the_block_back() -> None:
    port = free_port()  # a node that is down: the send stays queued (link_timeout 60 s)
    async with blockipc.Coordinator(
        pool_size="8MiB", node="a", peers={"b": f"tcp://127.0.0.1:{port}"}, link_timeout=60
    ) as a:
        async with blockipc.connect(a.address, name="producer") as producer:
            block = await producer.alloc(4096)
            await producer.write(block, b"kept")
            task = asyncio.create_task(producer.send(block, to="b/consumer"))
            await wait_until(lambda: a.stats().links[0].queued == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # taken back from the link's queue: the producer owns it again, at once
            await wait_until(lambda: a.stats().links[0].queued == 0)
            assert await producer.read(block, 0, 4) == b"kept"
            await producer.free(block)
            assert a.stats().blocks == 0
        await wait_until(lambda: not a.stats().processes)
        assert_pool_clean(a)


async def test_a_sender_gone_with_remote_sends_queued_frees_their_blocks_at_once() -> None:
    port = free_port()  # a node that is down: without the withdraw they wait 60 s
    async with blockipc.Coordinator(
        pool_size="8MiB", node="a", peers={"b": f"tcp://127.0.0.1:{port}"}, link_timeout=60
    ) as a:
        producer = await blockipc.connect(a.address, name="producer")
        try:
            sends = []
            for _ in range(3):
                block = await producer.alloc(MiB)
                sends.append(asyncio.create_task(producer.send(block, to="b/consumer")))
            await wait_until(lambda: a.stats().links[0].queued == 3)
        finally:
            await producer.close()
        for send in sends:
            with pytest.raises(blockipc.ConnectionClosed):
                await send
        await wait_until(lambda: not a.stats().processes and a.stats().blocks == 0)
        assert a.stats().links[0].queued == 0
        assert_pool_clean(a)


async def test_sender_gone_or_cancelled_mid_send_leaks_nothing() -> None:
    port = free_port()  # a node that is down: sends stay pinned until link_timeout
    async with blockipc.Coordinator(
        pool_size="8MiB", node="a", peers={"b": f"tcp://127.0.0.1:{port}"}, link_timeout=0.3
    ) as a:
        producer = await blockipc.connect(a.address, name="producer")
        try:
            block = await producer.alloc(MiB)
            task = asyncio.create_task(producer.send(block, to="b/consumer"))
            await wait_until(lambda: a.stats().blocks == 1 and a._link is not None)
            task.cancel()  # taken back from the link's queue
            with pytest.raises(asyncio.CancelledError):
                await task
            other = await producer.alloc(MiB)
            pending = asyncio.create_task(producer.send(other, to="b/consumer"))
            await asyncio.sleep(0.05)
        finally:
            await producer.close()  # gone while its block is pinned by the link
        with pytest.raises(blockipc.ConnectionClosed):
            await pending
        await wait_until(lambda: not a.stats().processes and a.stats().blocks == 0)
        assert_pool_clean(a)


async def test_block_larger_than_the_receiving_pool_is_refused() -> None:
    async with (
        blockipc.Coordinator(pool_size="1MiB", node="b", listen="tcp://127.0.0.1:0") as b,
        blockipc.Coordinator(pool_size="8MiB", node="a", peers={"b": str(b.link_address)}) as a,
    ):
        async with (
            blockipc.connect(a.address, name="producer") as producer,
            blockipc.connect(b.address, name="consumer"),
        ):
            block = await producer.alloc(2 * MiB)
            await producer.write(block, b"big")
            # B's ROUTER takes no frame over max_frame(1 MiB): libzmq drops the link
            # before it reads the block, and the send fails as one in transit
            with pytest.raises(PeerUnreachable, match="larger than its pool can ever hold"):
                await producer.send(block, to="b/consumer")
            assert await producer.read(block, 0, 3) == b"big"
            await producer.free(block)
        await wait_until(lambda: not a.stats().processes and not b.stats().processes)
        assert_pool_clean(a)
        assert_pool_clean(b)


async def test_received_blocks_get_their_generation_slot_and_evict_cacheables() -> None:
    """A block that arrives over the link is allocated like any other: it gets its own
    generation slot (a shared slot could make another block's cached value look fresh)
    and may evict cacheable objects when B's pool is full."""
    async with (
        pair(pool="4MiB") as (a, b),
        blockipc.connect(a.address, name="producer") as producer,
        blockipc.connect(b.address, name="consumer") as consumer,
    ):
        # B's pool: a small block at offset 0 (so the remote block lands elsewhere,
        # off slot 0) and a cacheable object nobody holds in the only 2 MiB left
        small = await consumer.alloc(4096)
        await consumer.put(b"x" * (3 * MiB // 2), codec="raw", name="cached", cacheable=True)
        block = await producer.alloc(2 * MiB)
        await producer.write(block, b"remote")
        with anyio.fail_after(10):  # without eviction it would wait for room forever
            await producer.send(block, to="b/consumer")
        msg = await consumer.recv()
        assert await consumer.read(msg.block, 0, 6) == b"remote"
        rec = b._state.table.blocks[msg.block.id]
        base = sum(s.size for i, s in b.pool.segments.items() if i < rec.segment)
        assert rec.slot == (base + rec.offset) // b.pool.min_block != 0
        assert b._state.gens.get(rec.slot) == rec.generation
        stats = await consumer.stats()
        assert "cached" not in stats.names and stats.cache_evictions >= 1
        with pytest.raises(blockipc.BlockNotFound):
            await consumer.get("cached")
        await consumer.free(msg.block)
        await consumer.free(small)


async def test_tcp_listener_serves_link_frames_only() -> None:
    # (a plain link, insecure: what is tested is what its frames may do)
    async with blockipc.Coordinator(
        pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        assert b.link_address is not None
        host, port = b.link_address.removeprefix("tcp://").rsplit(":", 1)
        async with blockipc.connect(b.address, name="consumer"):
            before = b.stats()
            # a local client's HELLO on the TCP port: no ZMTP greeting, nothing happens
            with socket.create_connection((host, int(port)), timeout=2) as raw:
                from blockipc._core.protocol import PROTOCOL_VERSION, Connection, Op, Request, Role

                args = {"version": PROTOCOL_VERSION, "name": "x", "pid": 1}
                args |= {"inbox_messages": 8, "inbox_bytes": 1 << 20}  # a HELLO send() accepts
                hello = Request(1, Op.HELLO, args)
                raw.sendall(Connection(Role.CLIENT).send(hello))
                raw.settimeout(0.3)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    reply = raw.recv(4096)
                    assert not reply.startswith(b"\x00\x00")  # no blockipc frame comes back
            async with raw_dealer(b.link_address) as dealer:
                # a client request over the link: dropped (no seq to answer)
                await dealer.send_multipart([b"ALLOC", msgpack.packb({"size": 4096}), b""])
                # a link block with a bad size: a ProtocolError ack
                head = encode_block(1, "x", "p", "consumer", 10, {})
                await dealer.send_multipart([*head, b"short"])
                # a well-formed block for a process that does not exist
                head = encode_block(2, "x", "p", "nobody", 3, {})
                await dealer.send_multipart([*head, b"abc"])
                with anyio.fail_after(5):
                    acks = [decode_ack(await dealer.recv_multipart()) for _ in range(2)]
                assert [(x.seq, type(x.error())) for x in acks] == [
                    (1, ProtocolError),
                    (2, PeerUnreachable),
                ]
            # counted: the well-formed block refused (the malformed one names no node)
            after = b.stats()
            assert after.links == (LinkStats("x", "inbound", refused=1),)
            assert dataclasses.replace(after, links=()) == before
        await wait_until(lambda: not b.stats().processes)
        assert_pool_clean(b)


async def test_garbage_on_the_link_port_leaves_the_node_serving() -> None:
    """300 corrupted link messages (bytes flipped, frames cut short, dropped, repeated
    or replaced): the node refuses or delivers each one whole, keeps serving, and a
    well-formed block after them arrives; nothing stays allocated."""
    rng = random.Random(20261125)
    # (a plain link, insecure: what is tested is what its frames may do)
    async with blockipc.Coordinator(
        pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        assert b.link_address is not None
        async with blockipc.connect(b.address, name="consumer") as consumer:
            async with raw_dealer(b.link_address) as dealer:
                for i in range(300):
                    head = encode_block(1000 + i, "a", "p", "consumer", 3, {"i": i})
                    frames = [bytearray(f) for f in (*head, b"abc")]
                    how = rng.randrange(4)
                    k = rng.randrange(len(frames))
                    if how == 0 and frames[k]:  # flip some bytes
                        for _ in range(rng.randint(1, 3)):
                            frames[k][rng.randrange(len(frames[k]))] ^= 1 << rng.randrange(8)
                    elif how == 1:  # cut a frame short
                        del frames[k][rng.randrange(len(frames[k]) + 1) :]
                    elif how == 2:  # drop or repeat a frame
                        if rng.random() < 0.5:
                            del frames[k]
                        else:
                            frames.insert(k, frames[k])
                    else:  # something else entirely
                        frames = [bytearray(rng.randbytes(rng.randrange(40))) for _ in range(3)]
                    if frames:
                        await dealer.send_multipart([bytes(f) for f in frames])
                last = encode_block(99_999, "a", "p", "consumer", 4, {"last": True})
                await dealer.send_multipart([*last, b"last"])
                with anyio.fail_after(20):
                    acked: dict[int, int] = {}
                    while 99_999 not in acked:
                        acked.update(
                            (a.seq, a.code) for a in decode_acks(await dealer.recv_multipart())
                        )
                assert acked[99_999] == 0
            delivered = []
            with anyio.fail_after(10):
                while not delivered or delivered[-1].header != {"last": True}:
                    delivered += await consumer.recv_many(1024)
            delivered_seqs = {m.header.get("i") for m in delivered[:-1]}
            assert len(delivered) - 1 == sum(1 for q, c in acked.items() if c == 0 and q != 99_999)
            assert await consumer.read(delivered[-1].block) == b"last"
            assert delivered_seqs  # some corruptions leave a well-formed block (data bytes)
            await consumer.free_many(m.block for m in delivered)
        await wait_until(lambda: not b.stats().processes)
        assert_pool_clean(b)


async def test_one_message_of_several_blocks_is_delivered_block_by_block() -> None:
    # (a plain link, insecure: what is tested is what its frames may do)
    async with blockipc.Coordinator(
        pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        assert b.link_address is not None
        async with (
            blockipc.connect(b.address, name="consumer") as consumer,
            raw_dealer(b.link_address) as dealer,
        ):
            entries = [
                [1, "p", "consumer", 3, {"i": 1}],
                [2, "p", "nobody", 3, {"i": 2}],
                [3, "q", "consumer", 5, {"i": 3}],
            ]
            meta = encode_blocks("x", entries)
            await dealer.send_multipart([BLOCKS, meta, b"one", b"two", b"three"])
            acks = []
            with anyio.fail_after(5):
                while len(acks) < 3:
                    acks += decode_acks(await dealer.recv_multipart())
            assert sorted((x.seq, type(x.error())) for x in acks) == [
                (1, type(None)),
                (2, PeerUnreachable),
                (3, type(None)),
            ]
            got = [await consumer.recv() for _ in range(2)]
            assert [(m.sender, m.header) for m in got] == [("x/p", {"i": 1}), ("x/q", {"i": 3})]
            assert [await consumer.read(m.block) for m in got] == [b"one", b"three"]
            await consumer.free_many(m.block for m in got)
            # one bad entry spoils the whole message: nothing of it is delivered
            entries[1][3] = 4  # announced 4 bytes, 3 sent
            await dealer.send_multipart([BLOCKS, encode_blocks("x", entries), b"a", b"b", b"c"])
            with anyio.fail_after(5):
                bad = [decode_ack(await dealer.recv_multipart()) for _ in range(3)]
            assert sorted((x.seq, type(x.error())) for x in bad) == [
                (1, ProtocolError),
                (2, ProtocolError),
                (3, ProtocolError),
            ]
            assert b.stats().blocks == 0
        await wait_until(lambda: not b.stats().processes)
        assert_pool_clean(b)


# -- real processes ------------------------------------------------------------------
@contextlib.asynccontextmanager
async def start_node(
    short_dir: Path, name: str, port: int, peers: dict[str, str], keys: Path | str | None, pool: str
) -> AsyncIterator[Child]:
    """A node in a child process: ``keys`` a key directory, ``None`` the default one,
    ``"plain"`` none (insecure)."""
    async with spawn(
        "node",
        short_dir / f"{name}.sock",
        pool,
        name,
        f"tcp://127.0.0.1:{port}" if port else "-",
        json.dumps(peers),
        keys or "-",
        "2",
    ) as child:
        await child.expect("ready")
        yield child


def hwm_kib(pid: int) -> int:
    """The peak RSS of process ``pid`` (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssShmem"):
            fields[key] = int(value.split()[0])
    return fields


async def test_a_frame_over_the_routers_bound_is_refused_unread(short_dir: Path) -> None:
    """A raw DEALER sends one 256 MiB frame to a node with a 16 MiB pool: libzmq
    disconnects it before allocating the frame (the node's peak RSS grows by far less
    than 256 MiB), the node keeps serving, and a good peer's block arrives after it."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    async with (
        start_node(short_dir, "b", port, {}, "plain", "16MiB") as b,
        spawn("remote_consumer", short_dir / "b.sock", "consumer", 1, 0) as consumer,
    ):
        await consumer.expect("ready")
        before = hwm_kib(b.pid)
        big = bytes(256 * MiB)  # (in this process: the sender)
        async with raw_dealer(endpoint) as dealer:
            monitor = dealer.get_monitor_socket(zmq.Event.DISCONNECTED)
            try:
                head = encode_block(1, "x", "p", "consumer", len(big), {"i": 0, "crc": 0})
                await dealer.send_multipart([*head, big], copy=False)
                # before the fix an ack comes back (a PoolExhausted, once B has read all of
                # the frame); with it, B's libzmq drops the connection
                recv = asyncio.ensure_future(dealer.recv_multipart())
                dropped = asyncio.ensure_future(monitor.recv_multipart())
                done, pending = await asyncio.wait(
                    {recv, dropped}, timeout=40, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in pending:
                    fut.cancel()
                assert done, "neither an ack nor a disconnect"
            finally:
                dealer.disable_monitor()
                monitor.close(linger=0)
        del big
        grown = hwm_kib(b.pid) - before
        print(f"peak RSS of the node grew by {grown} KiB for a 256 MiB frame")
        assert grown < 64 * 1024, f"peak RSS of the node grew by {grown} KiB"
        assert dropped in done
        data = os.urandom(MiB)
        async with raw_dealer(endpoint) as good:
            header = {"i": 1, "crc": zlib.crc32(data)}
            await good.send_multipart([*encode_block(2, "x", "p", "consumer", MiB, header), data])
            with anyio.fail_after(10):
                ack = decode_ack(await good.recv_multipart())
            assert (ack.seq, ack.code) == (2, 0)
        event = await consumer.expect("got")
        assert (event["i"], event["ok"], event["sender"]) == (1, True, "x/p")


async def test_frame_bounds_are_set_and_a_dropped_peer_is_logged() -> None:
    # a plain node for the plain DEALER: on a CURVE node (the default) the handshake
    # fails instead, the DEALER queues nothing, and its send waited forever at times
    async with blockipc.Coordinator(
        pool_size="4MiB", node="b", listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        assert b.link_address is not None
        link = b._link
        assert link is not None and link._router is not None
        bound = max_frame(b.pool.max_request())
        assert link._router.maxmsgsize == bound == b.pool.max_request() + FRAME_SLACK
        with capture_logs() as logs:
            async with raw_dealer(b.link_address) as dealer:
                head = encode_block(1, "x", "p", "consumer", bound, {})
                await dealer.send_multipart([*head, bytes(bound + 1)])
                await wait_until(
                    lambda: any(e["event"] == "link.peer_disconnected" for e in logs), timeout=10
                )
        (event,) = [e for e in logs if e["event"] == "link.peer_disconnected"]
        assert event["max_frame"] == bound and event["log_level"] == "info"
    async with pair(pool="4MiB") as (a, _b):
        (peer,) = a._link._peers.values()  # type: ignore[union-attr]
        await wait_until(lambda: peer._sock is not None)
        # acks, and the answers to gets: objects up to the sender's own largest block
        assert peer._sock is not None and peer._sock.maxmsgsize == max_frame(a.pool.max_request())


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
async def test_a_block_of_the_largest_size_still_crosses_the_link(
    tmp_path: Path, curve: bool
) -> None:
    keys = node_keys(tmp_path, "a", "b") if curve else None
    async with (
        pair(keys, pool="4MiB") as (a, b),
        blockipc.connect(a.address, name="producer") as producer,
        blockipc.connect(b.address, name="consumer") as consumer,
    ):
        size = b.pool.max_request()
        data = os.urandom(size)
        block = await producer.alloc(size)
        await producer.write(block, data)
        with anyio.fail_after(10):
            await producer.send(block, to="b/consumer")
        msg = await consumer.recv()
        assert await consumer.read(msg.block) == data
        await consumer.free(msg.block)


def test_200_random_blocks_arrive_intact_and_in_order(short_dir: Path) -> None:
    """Four processes: A and B (CURVE), a producer on A, a consumer on B."""
    keys = node_keys(short_dir / "keys", "a", "b")
    port = free_port()

    async def main() -> None:
        async with (
            start_node(short_dir, "b", port, {}, keys["b"], "64MiB"),
            start_node(short_dir, "a", 0, {"b": f"tcp://127.0.0.1:{port}"}, keys["a"], "64MiB"),
            spawn("remote_consumer", short_dir / "b.sock", "consumer", 200, 0) as consumer,
        ):
            await consumer.expect("ready")
            async with spawn(
                "remote_producer",
                short_dir / "a.sock",
                "producer",
                "b/consumer",
                200,
                8 * MiB,
                1,
                4,
            ) as producer:
                await producer.expect("ready")
                got = [await consumer.expect("got", timeout=30) for _ in range(200)]
                sent = [await producer.event(timeout=30) for _ in range(200)]
                assert await producer.expect("done")
        assert [e["i"] for e in got] == list(range(200))
        assert all(e["ok"] and e["sender"] == "a/producer" for e in got)
        assert sorted(e["i"] for e in sent if e["event"] == "sent") == list(range(200))
        assert max(e["size"] for e in got) > 6 * MiB

    asyncio.run(main())


async def test_kill_9_of_receiving_node_mid_stream(short_dir: Path) -> None:
    port = free_port()
    b_peer = f"tcp://127.0.0.1:{port}"
    node_b = start_node
    async with blockipc.Coordinator(
        pool_size="64MiB", node="a", peers={"b": b_peer}, link_timeout=2.0
    ) as a:
        async with blockipc.connect(a.address, name="producer") as producer:
            keep = await producer.alloc(MiB)  # so "back where it was" is not just "empty"
            start = dataclasses.replace(a.stats(), links=())  # the pool's accounting
            outcomes: list[tuple[int, BaseException | None, float]] = []
            crcs: dict[int, int] = {}

            async def send(i: int, block: blockipc.Block) -> None:
                try:
                    await producer.send(block, to="b/consumer", header={"i": i, "crc": crcs[i]})
                    outcomes.append((i, None, time.monotonic()))
                except blockipc.BlockIPCError as exc:
                    outcomes.append((i, exc, time.monotonic()))
                    async with producer.lease(block, "r") as view:  # intact, and ours again
                        assert zlib.crc32(view) == crcs[i]
                    await producer.free(block)

            async with (
                node_b(short_dir, "b", port, {}, None, "64MiB") as b,
                spawn(
                    "remote_consumer", short_dir / "b.sock", "consumer", 10_000, 0.01
                ) as consumer,
            ):
                await consumer.expect("ready")
                async with anyio.create_task_group() as tg:
                    for i in range(28):  # 28 x 2 MiB: all fit in A's pool at once
                        data = os.urandom(64) * (2 * MiB // 64)
                        crcs[i] = zlib.crc32(data)
                        block = await producer.alloc(len(data))
                        await producer.write(block, data)
                        tg.start_soon(send, i, block)
                        if i == 8:
                            await consumer.expect("got", timeout=20)
                            b.kill()
                            killed = time.monotonic()
                        await asyncio.sleep(0.01)
                got = []
                with contextlib.suppress(AssertionError, ValueError):
                    while True:
                        event = await consumer.event(timeout=5)
                        if event["event"] == "got":
                            got.append(event["i"])
            failures = [(i, exc, t) for i, exc, t in outcomes if exc is not None]
            assert failures, "the kill must have cut sends short"
            assert all(isinstance(exc, PeerUnreachable) for _, exc, _ in failures), failures
            assert max(t for _, _, t in failures) - killed < 2.0 + 1.0
            assert len(got) == len(set(got))  # nothing delivered twice
            assert {i for i, exc, _ in outcomes if exc is None} <= set(got) | set(range(28))
            # pinned blocks freed or given back, every send counted once
            await wait_until(lambda: dataclasses.replace(a.stats(), links=()) == start)
            (link,) = a.stats().links
            assert (link.sent, link.failed) == (len(outcomes) - len(failures), len(failures))

            # B comes back on the same address: the link reconnects by itself
            async with (
                node_b(short_dir, "b", port, {}, None, "64MiB"),
                spawn("remote_consumer", short_dir / "b.sock", "consumer", 1, 0) as consumer,
            ):
                await consumer.expect("ready")
                block = await producer.alloc(MiB)
                crcs[99] = zlib.crc32(bytes(MiB))
                await producer.write(block, bytes(MiB))
                with anyio.fail_after(10):
                    await producer.send(block, to="b/consumer", header={"i": 99, "crc": crcs[99]})
                event = await consumer.expect("got")
                assert (event["i"], event["ok"]) == (99, True)
            await producer.free(keep)
        await wait_until(lambda: not a.stats().processes)
        assert_pool_clean(a)


def test_slow_consumer_bounds_both_coordinators_memory(short_dir: Path) -> None:
    """A 768 MiB backlog (48 x 16 MiB) to a consumer slower than the producer: the
    producer waits; neither coordinator's private memory grows with the backlog (the
    bound below is a fifth of it)."""
    port = free_port()
    count, size = 48, 16 * MiB

    async def main() -> dict[str, Any]:
        node = start_node
        async with (
            node(short_dir, "b", port, {}, None, "128MiB") as b,
            node(short_dir, "a", 0, {"b": f"tcp://127.0.0.1:{port}"}, None, "128MiB") as a,
            spawn("remote_consumer", short_dir / "b.sock", "consumer", count, 0.015) as consumer,
        ):
            await consumer.expect("ready")
            base = {"a": rss_kib(a.pid), "b": rss_kib(b.pid)}
            async with spawn(
                "remote_producer",
                short_dir / "a.sock",
                "producer",
                "b/consumer",
                count,
                size,
                2,
                8,
                1,
            ) as producer:
                await producer.expect("ready")
                peak = {"a": dict(base["a"]), "b": dict(base["b"])}
                got = 0
                while got < count:
                    event = await consumer.event(timeout=30)
                    assert event["event"] == "got" and event["ok"], event
                    got += 1
                    for name, child in (("a", a), ("b", b)):
                        for key, value in rss_kib(child.pid).items():
                            peak[name][key] = max(peak[name][key], value)
        return {"base": base, "peak": peak}

    result = asyncio.run(main())
    print("RSS KiB before / peak during the backlog:", result)
    for name in ("a", "b"):
        grown = result["peak"][name]["RssAnon"] - result["base"][name]["RssAnon"]
        # bounded by the window (64 MiB of blocks not yet acknowledged) plus libzmq's
        # buffers, whatever the backlog (768 MiB here)
        assert grown < 160 * 1024, (name, result)
        assert result["peak"][name]["RssShmem"] <= 128 * 1024 + 1024  # the pool itself


@pytest.mark.parametrize("flags", [[], ["--curve"]], ids=["plain", "curve"])
def test_remote_example_runs_end_to_end(flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "remote" / "run.py"), "--count", "6", *flags],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok") == 6, result.stdout
    assert "0 bad" in result.stdout


# -- issue 13 ----------------------------------------------------------------------------
async def test_a_named_object_survives_a_grantees_remote_send_and_free() -> None:
    """A grantee of a named object sends it to another node with ``move=False`` and
    frees its grant while the send is in flight: the name still holds the block, so
    the end of the transfer must not free it (issue 13, defect 1: the link freed it,
    the next alloc reused its memory and ``get(name)`` returned that block's bytes)."""
    data = os.urandom(5000)
    async with (
        pair() as (a, b),
        blockipc.connect(a.address, name="owner") as owner,
        blockipc.connect(a.address, name="grantee") as grantee,
        blockipc.connect(a.address, name="reader") as reader,
        blockipc.connect(b.address, name="filler") as filler,
        blockipc.connect(b.address, name="consumer", inbox_messages=1) as consumer,
    ):
        # a grantee of a named object: the grant is made while PUT's block is still the
        # owner's (requests on one connection are handled in order, PUT before GRANT
        # before COMMIT); the grant survives the binding
        probe = await owner.alloc(1)
        await owner.free(probe)
        put = asyncio.create_task(owner.put(data, codec="raw", name="obj"))
        await asyncio.sleep(0)  # PUT is written
        await owner.grant(probe.id + 1, "grantee", "r")
        named = await put
        assert named.id == probe.id + 1
        assert await grantee.read(named.id) == data

        # the consumer's inbox is full: the remote send waits at b for room, unacked
        first = await filler.alloc(10)
        await filler.send(first, to="consumer")
        send = asyncio.create_task(grantee.send(named.id, to="b/consumer", move=False))
        await wait_until(lambda: a.stats().links[0].in_flight == 1)
        await grantee.free(named.id)  # the grantee lets go mid-send; the name holds it
        assert not send.done()

        await consumer.free((await consumer.recv()).block)  # room: delivered, acked
        await send
        copy = (await consumer.recv()).block
        assert await consumer.read(copy) == data
        await consumer.free(copy)

        # an allocation of the same size must not get the named object's memory
        other = await owner.alloc(len(data))
        await owner.write(other, b"\xff" * len(data))
        assert await reader.get("obj") == data
        stats = await reader.stats()  # (after the get's RELEASE, sent without a reply)
        assert (stats.blocks, stats.names, stats.leases) == (2, ("obj",), 0)
        assert stats.used_bytes == 2 * 8192
        await owner.free(other)
        await owner.delete("obj")
        assert a.stats().blocks == 0


async def test_a_255_character_name_is_reachable_from_another_node() -> None:
    """A remote target is a node name and a process name, each up to 255 characters:
    ``"node/name"`` may be 511 long (issue 13, defect 5: the client applied the limit to
    the whole target). One character more in either part is refused by the client,
    before any request."""
    node_a, node_b, sender, name = "a" * 255, "b" * 255, "p" * 255, "c" * 255
    assert split_target(f"{node_b}/{name}") == (node_b, name)
    for bad in (f"{node_b}b/{name}", f"{node_b}/{name}c"):
        with pytest.raises(InvalidRequest):
            split_target(bad)
    # (insecure: a 255-character node name is too long for its key file's name)
    async with blockipc.Coordinator(
        pool_size="8MiB", node=node_b, listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        async with blockipc.Coordinator(
            pool_size="8MiB", node=node_a, peers={node_b: str(b.link_address)}, insecure=True
        ) as a:
            async with (
                blockipc.connect(a.address, name=sender) as producer,
                blockipc.connect(b.address, name=name) as consumer,
            ):
                block = await producer.alloc(100)
                await producer.write(block, b"far")
                await producer.send(block, to=f"{node_b}/{name}", header={"k": 1})
                msg = await consumer.recv()
                assert (msg.sender, msg.header) == (f"{node_a}/{sender}", {"k": 1})
                assert await consumer.read(msg.block, 0, 3) == b"far"
                await consumer.free(msg.block)

                block = await producer.alloc(10)
                before = (a.stats().links, b.stats().links)
                for to, part in (
                    (f"{node_b}/{name}c", "process name"),
                    (f"{node_b}b/{name}", "node name"),
                ):
                    with pytest.raises(InvalidRequest, match=part):
                        await producer.send(block, to=to)
                    with pytest.raises(InvalidRequest, match=part):
                        await producer.send(block, to=to, move=False)
                assert (a.stats().links, b.stats().links) == before  # nothing was sent
                await producer.free(block)
            await wait_until(lambda: not a.stats().processes and not b.stats().processes)
            assert_pool_clean(a)
            assert_pool_clean(b)
        # refused before any request: a client that is closed says so all the same
        with pytest.raises(InvalidRequest, match="process name"):
            await producer.send(1, to=f"{node_b}/{name}c")


# -- keys by default (issue 14, item 6) ----------------------------------------------------
# A TCP port on loopback is open to every local user: a node without keys uses this
# user's default key directory (CURVE), and a plain link needs insecure=True.

# Everything is imported before setuid: the venv may not be readable by nobody.
_LINK_INTRUDER = """
import json, os, sys, zmq
endpoint, server_key = sys.argv[1], sys.argv[2].encode()
messages = [[bytes.fromhex(f) for f in m.split(",")] for m in sys.argv[3].split(";")]
try:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
except OSError as exc:
    print(json.dumps({"event": "cannot_setuid", "error": str(exc)}), flush=True)
    sys.exit(0)
acks = {}
for how in ("plain", "curve"):  # curve: a key of its own, and the node's public key
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    if how == "curve":
        dealer.curve_publickey, dealer.curve_secretkey = zmq.curve_keypair()
        dealer.curve_serverkey = server_key
    dealer.connect(endpoint)
    for message in messages:
        dealer.send_multipart(message)
    acks[how] = 0
    while dealer.poll(1500):
        dealer.recv_multipart()
        acks[how] += 1
    dealer.close(linger=0)
    ctx.term()
print(json.dumps({"event": "acks", "uid": os.getuid(), "acks": acks}), flush=True)
"""


async def forge_as_nobody(endpoint: str, server_key: bytes, count: int) -> dict[str, int]:
    """As uid nobody, send ``count`` blocks forged as ``a/producer`` to ``b/consumer``,
    once over a plain DEALER and once over CURVE with a key of its own: the acks each
    got back. Skips the test if this process cannot switch uid."""
    messages = [
        [*encode_block(i, "a", "producer", "consumer", 6, {"forged": i}), b"forged"]
        for i in range(count)
    ]
    arg = ";".join(",".join(f.hex() for f in m) for m in messages)
    result = await run_intruder(_LINK_INTRUDER, endpoint, server_key.decode(), arg)
    assert result["uid"] == NOBODY
    acks: dict[str, int] = result["acks"]
    return acks


@needs_root
async def test_another_uid_gets_no_block_into_a_default_node() -> None:
    """A node started with defaults: uid nobody forges 20 blocks as ``a/producer``, over
    a plain DEALER and over CURVE with a key of its own (it knows the node's public key):
    not one is acknowledged or delivered, both are refused and logged; a node of this
    user, also with defaults, delivers right after."""
    ensure_keys(default_key_dir(), "b")  # (what b does at its start)
    b_public = load_keys(default_key_dir(), "b").public
    with capture_logs() as logs:
        async with blockipc.Coordinator(
            pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0"
        ) as b:
            assert b.link_address is not None
            async with blockipc.connect(b.address, name="consumer") as consumer:
                acks = await forge_as_nobody(b.link_address, b_public, 20)
                assert acks == {"plain": 0, "curve": 0}
                assert b.stats().links == ()  # not one block was even counted as refused
                async with (
                    blockipc.Coordinator(
                        pool_size="8MiB", node="a", peers={"b": b.link_address}
                    ) as a,
                    blockipc.connect(a.address, name="producer") as producer,
                ):
                    block = await producer.alloc(4)
                    await producer.write(block, b"real")
                    await producer.send(block, to="b/consumer", header={"real": True})
                    msg = await consumer.recv()  # the first and only block: the real one
                    assert (msg.sender, msg.header) == ("a/producer", {"real": True})
                    assert await consumer.read(msg.block) == b"real"
                    await consumer.free(msg.block)
                    assert b.stats().links == (
                        LinkStats("a", "inbound", received=1, received_bytes=4),
                    )
            await wait_until(lambda: not b.stats().processes)
            assert_pool_clean(b)
    refusals = [e for e in logs if e["event"] == "link.refused" and e["node"] == "b"]
    assert any("unknown CURVE public key" in e["reason"] for e in refusals)
    assert any("without CURVE" in e["reason"] for e in refusals)


async def test_two_default_nodes_of_one_user_trust_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys given: the first node to start makes the user's key directory (0700) and
    its pair; it waits for the other's key, which appears when that one starts; then
    both send to each other over CURVE."""
    home = tmp_path / "keys"
    monkeypatch.setenv(KEYS_ENV, str(home))
    port_a, port_b = free_port(), free_port()
    with capture_logs() as logs:
        async with blockipc.Coordinator(
            pool_size="8MiB",
            node="a",
            listen=f"tcp://127.0.0.1:{port_a}",
            peers={"b": f"tcp://127.0.0.1:{port_b}"},
            link_timeout=20,
        ) as a:
            assert stat.S_IMODE(home.stat().st_mode) == 0o700
            assert sorted(p.name for p in home.iterdir()) == ["a.key", "a.key_secret"]
            assert stat.S_IMODE((home / "a.key_secret").stat().st_mode) == 0o600
            async with (
                blockipc.connect(a.address, name="pa") as pa,
                blockipc.Coordinator(
                    pool_size="8MiB",
                    node="b",
                    listen=f"tcp://127.0.0.1:{port_b}",
                    peers={"a": f"tcp://127.0.0.1:{port_a}"},
                    link_timeout=20,
                ) as b,
                blockipc.connect(b.address, name="pb") as pb,
            ):
                for src, dst, to in ((pa, pb, "b/pb"), (pb, pa, "a/pa")):
                    block = await src.alloc(5)
                    await src.write(block, b"hello")
                    await src.send(block, to=to)
                    msg = await dst.recv()
                    assert msg.sender == f"{'a' if to.startswith('b/') else 'b'}/{src.name}"
                    assert await dst.read(msg.block) == b"hello"
                    await dst.free(msg.block)
            await wait_until(lambda: not a.stats().processes)
            assert_pool_clean(a)
    assert sorted(p.name for p in home.iterdir()) == [
        "a.key",
        "a.key_secret",
        "b.key",
        "b.key_secret",
    ]
    started = [e for e in logs if e["event"] == "link.started"]
    assert [(e["node"], e["curve"], e["keys"]) for e in started] == [
        ("a", True, str(home)),
        ("b", True, str(home)),
    ]
    assert any(e["event"] == "link.waiting_key" and e["peer"] == "b" for e in logs)


async def test_a_plain_link_needs_insecure() -> None:
    """A plain DEALER of this very user: refused by a node started with defaults,
    delivered by one started ``insecure=True`` (as before, on loopback)."""
    with capture_logs() as logs:
        async with (
            blockipc.Coordinator(pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0") as b,
            blockipc.connect(b.address, name="consumer") as consumer,
        ):
            assert b.link_address is not None
            async with raw_dealer(b.link_address) as dealer:
                with anyio.move_on_after(1.0) as scope:
                    # (the send itself may wait forever: a DEALER whose handshake
                    # failed before it has no pipe to queue the frame on)
                    await dealer.send_multipart(
                        [*encode_block(1, "x", "p", "consumer", 2, {}), b"hi"]
                    )
                    await dealer.recv_multipart()
                assert scope.cancelled_caught  # no ack: the handshake never completed
                with anyio.move_on_after(0.2) as scope:
                    await consumer.recv()
                assert scope.cancelled_caught  # nothing was delivered
    assert any(e["event"] == "link.refused" and "without CURVE" in e["reason"] for e in logs)
    async with blockipc.Coordinator(
        pool_size="8MiB", node="b", listen="tcp://127.0.0.1:0", insecure=True
    ) as b:
        assert b.link_address is not None
        async with (
            blockipc.connect(b.address, name="consumer") as consumer,
            raw_dealer(b.link_address) as dealer,
        ):
            await dealer.send_multipart([*encode_block(1, "x", "p", "consumer", 2, {}), b"hi"])
            with anyio.fail_after(5):
                ack = decode_ack(await dealer.recv_multipart())
            assert (ack.seq, ack.error()) == (1, None)
            msg = await consumer.recv()
            assert (msg.sender, await consumer.read(msg.block)) == ("x/p", b"hi")
            await consumer.free(msg.block)
        await wait_until(lambda: not b.stats().processes)
        assert_pool_clean(b)


def test_default_key_dir_and_its_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEYS_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_key_dir() == tmp_path / "cfg" / "blockipc" / "keys"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")  # not absolute: ignored (XDG spec)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_key_dir() == tmp_path / "home" / ".config" / "blockipc" / "keys"
    monkeypatch.setenv(KEYS_ENV, str(tmp_path / "k"))
    assert default_key_dir() == tmp_path / "k"
    # made once: a second start keeps the pair
    ensure_keys(tmp_path / "k", "a")
    first = load_keys(tmp_path / "k", "a")
    ensure_keys(tmp_path / "k", "a")
    assert load_keys(tmp_path / "k", "a") == first
    assert list((tmp_path / "k").iterdir()) != [] and not list((tmp_path / "k").glob(".keygen-*"))
    # a directory another user could write a trusted key into is refused
    os.chmod(tmp_path / "k", 0o770)
    with pytest.raises(blockipc.BlockIPCError, match="not private"):
        ensure_keys(tmp_path / "k", "b")
    with pytest.raises(blockipc.BlockIPCError, match="too long"):
        ensure_keys(tmp_path / "other", "n" * 250)
