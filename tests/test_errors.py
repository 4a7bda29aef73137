"""Errors that say what to do: each mistake a new user makes, against a real embedded
coordinator, raises an error whose message names the fix."""

from __future__ import annotations

import gc
import socket
import warnings
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import blockipc
from _procs import ROOT
from blockipc import (
    AccessDenied,
    BlockIPCError,
    CodecError,
    ConnectionClosed,
    InvalidRequest,
    NameTaken,
)
from blockipc.testing import unique_name

README = ROOT / "README.md"


def _collect_warnings() -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return caught


# -- connect() not awaited ---------------------------------------------------------------
async def test_connect_not_awaited_says_to_await(coord: blockipc.Coordinator) -> None:
    pending = blockipc.connect(coord.address, name=unique_name("lazy"))
    with pytest.raises(AttributeError, match=r"await blockipc\.connect") as info:
        await pending.alloc(10)  # type: ignore[attr-defined]
    assert "async with blockipc.connect(...) as client" in str(info.value)
    assert info.value.name == "alloc"
    with pytest.raises(AttributeError, match=r"not a Client \(asked for \.name\)"):
        pending.name  # type: ignore[attr-defined]  # noqa: B018
    # probing stays sane: hasattr answers, dunders and unknown names are plain misses
    assert not hasattr(pending, "alloc")
    assert not hasattr(pending, "__array__")
    assert not hasattr(pending, "no_such_thing")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        pending.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    # never connected: nothing registered, and dropping it warns about nothing
    assert coord.stats().processes == ()
    del pending
    assert _collect_warnings() == []
    # awaited, the same call works
    async with blockipc.connect(coord.address, name=unique_name("eager")) as client:
        await client.free(await client.alloc(10))


# -- with instead of async with ----------------------------------------------------------
def _with(manager: Any) -> None:
    with manager:
        raise AssertionError("with on an asynchronous context manager entered it")


async def test_with_instead_of_async_with(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    pending = blockipc.connect(coord.address, name=unique_name("sync"))
    with pytest.raises(TypeError, match=r"use `async with blockipc\.connect\(\.\.\.\) as client"):
        _with(pending)
    assert coord.stats().processes == (client.name,)  # nothing connected
    with pytest.raises(TypeError, match=r"use `async with client: \.\.\.`, not `with`"):
        _with(client)
    block = await client.alloc(10)
    with pytest.raises(TypeError, match=r"use `async with client\.lease\(block\) as view"):
        _with(client.lease(block, "w"))
    assert coord.stats().leases == 0
    with pytest.raises(TypeError, match=r"use `async with blockipc\.Coordinator\(\.\.\.\) as"):
        _with(blockipc.Coordinator(pool_size="4MiB"))
    # the client is untouched by all of it
    await client.write(block, b"still here")
    assert await client.read(block, 0, 10) == b"still here"
    await client.free(block)
    assert _collect_warnings() == []


# -- a taken process name ----------------------------------------------------------------
async def test_taken_name_raises_name_taken(coord: blockipc.Coordinator) -> None:
    name = unique_name("dup")
    async with blockipc.connect(coord.address, name=name):
        with pytest.raises(NameTaken, match=f"{name!r} is already taken") as info:
            await blockipc.connect(coord.address, name=name)
        assert isinstance(info.value, BlockIPCError)
        assert "another name" in str(info.value)
    async with blockipc.connect(coord.address, name=name):  # free again once closed
        pass


def test_name_taken_is_public_and_documented() -> None:
    assert "NameTaken" in blockipc.__all__
    assert blockipc.NameTaken.__doc__ and blockipc.NameTaken.__doc__.startswith("Raised when")
    assert "`NameTaken`" in README.read_text()


# -- free() of a named object ------------------------------------------------------------
async def test_free_of_a_named_object_says_delete(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.put(b"payload", codec="raw", name="shared-thing")
    for who in (client, other):  # the putter and everyone else: the name holds it
        with pytest.raises(AccessDenied, match=r"bound to the name 'shared-thing'") as info:
            await who.free(block)
        assert "delete('shared-thing') frees it" in str(info.value)
        assert "another process" not in str(info.value)
    assert await other.get("shared-thing") == b"payload"  # the refused free changed nothing
    await client.delete("shared-thing")


async def test_free_of_another_process_block_names_it(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.alloc(10)
    with pytest.raises(AccessDenied, match=f"belongs to another process \\({client.name!r}\\)"):
        await other.free(block.id)
    await client.free(block)


# -- read(block_id) by a reader that did not allocate it ----------------------------------
async def test_read_by_id_without_size_from_a_grantee(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.alloc(5000)
    await client.write(block, b"x" * 5000)
    await client.write(block, b"hello", 100)
    await client.grant(block, to=other.name, mode="r")
    # the grantee knows only the id: the size is looked up where the right is checked
    assert await other.read(block.id) == b"x" * 100 + b"hello" + b"x" * 4895
    assert await other.read(block.id, 100) == b"hello" + b"x" * 4895
    assert await other.read(block.id, 5000) == b""
    with pytest.raises(blockipc.OutOfBounds, match="offset 5001 is outside block"):
        await other.read(block.id, 5001)
    await client.revoke(block, to=other.name)
    with pytest.raises(AccessDenied, match="belongs to another process"):
        await other.read(block.id)  # no right: the coordinator says so, not "pass size="
    await client.free(block)


async def test_read_by_id_under_an_own_lease_does_not_wait_for_itself(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.alloc(100)
    await client.grant(block, to=other.name, mode="w")
    async with other.lease(block.id, "w") as view:
        view[:3] = b"abc"
        with anyio.fail_after(10):  # a second lease would queue behind this one forever
            assert (await other.read(block.id))[:3] == b"abc"
    await client.free(block)
    await other.free(block.id)


async def test_read_by_id_of_a_named_object(
    client: blockipc.Client, other: blockipc.Client
) -> None:
    block = await client.put(b"named bytes", codec="raw", name="by-id")
    assert await other.read(block.id) == b"named bytes"  # any local process may read it
    await client.delete("by-id")


# -- a lease with codec="numpy" on raw bytes ---------------------------------------------
async def test_numpy_lease_of_raw_bytes_says_what_to_do(client: blockipc.Client) -> None:
    block = await client.alloc(64)
    await client.write(block, bytes(64))
    with pytest.raises(CodecError) as info:
        async with client.lease(block, "r", codec="numpy"):
            pass
    message = str(info.value)
    assert f"block {block.id} holds raw bytes" in message
    assert "no dtype or shape is recorded" in message
    assert "codec='numpy'" in message and "numpy.frombuffer" in message
    assert "is not a dtype" not in message
    with pytest.raises(CodecError, match="no dtype or shape is recorded"):
        await client.get(block, codec="numpy")
    # nothing stays leased: the block frees, and the raw way works
    async with client.lease(block, "r") as view:
        assert np.frombuffer(view, np.uint8).sum() == 0
    await client.free(block)


async def test_numpy_lease_of_a_msgpack_object_names_its_codec(client: blockipc.Client) -> None:
    block = await client.put({"a": 1}, codec="msgpack")
    with pytest.raises(CodecError, match="holds an object put with codec='msgpack'"):
        async with client.lease(block, "r", codec="numpy"):
            pass
    await client.free(block)


# -- addresses that are not a coordinator's socket ---------------------------------------
async def test_connect_to_a_tcp_address(coord: blockipc.Coordinator) -> None:
    with pytest.raises(InvalidRequest, match="Unix socket path") as info:
        await blockipc.connect("tcp://127.0.0.1:7100", name=unique_name("tcp"))
    assert "links between coordinators" in str(info.value)
    assert "node/name" in str(info.value)


async def test_connect_to_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConnectionClosed, match="is a directory, not a coordinator's socket"):
        await blockipc.connect(tmp_path, name=unique_name("dir"))


async def test_connect_to_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"
    with pytest.raises(ConnectionClosed, match="no coordinator is listening at") as info:
        await blockipc.connect(path, name=unique_name("none"))
    assert f"blockipc serve --socket {path}" in str(info.value)
    assert "blockipc.Coordinator" in str(info.value)


async def test_connect_to_a_socket_nobody_serves(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(path))  # bound, never listening: what a crashed server leaves
    with pytest.raises(ConnectionClosed, match="a socket left by one that ended"):
        await blockipc.connect(path, name=unique_name("stale"))


async def test_connect_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a socket")
    with pytest.raises(ConnectionClosed, match="is not a socket"):
        await blockipc.connect(path, name=unique_name("file"))
