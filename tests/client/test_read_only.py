"""Read-only connections: ``connect(..., access="r")`` (issue 14, item 5).

What such a client may do (read, read leases, get, recv, subscribe, free what it
received, stats) and what it may not (anything that writes a block or hands data on:
AccessDenied), and, in a process of its own, that nothing it holds lets it write the
pool: its segment fds are O_RDONLY (no ftruncate, no hole punching, no write, no
writable mapping) and its mappings PROT_READ (a store faults, mprotect is refused).
The coordinator's own check, without the client library's, is in
tests/server/test_access_check.py.
"""

from __future__ import annotations

import re
import types
from typing import Any

import pytest

import blockipc
import blockipc.asgi
from _helpers import connected
from _procs import payload, sha256
from _read_only_procs import spawn
from blockipc.testing import unique_name

READ_ONLY = "this connection is read-only (access='r')"


@pytest.mark.parametrize("access", ["w", "", "RW", "read", None, 1, ("r",)])
def test_connect_refuses_an_unknown_access(access: Any) -> None:
    with pytest.raises(ValueError, match=re.escape("access must be one of 'rw', 'r'")):
        blockipc.connect("/nowhere", "x", access=access)


async def test_access_is_read_write_by_default(coord: blockipc.Coordinator) -> None:
    async with connected(coord, "rw") as rw, connected(coord, "ro", access="r") as ro:
        assert (rw.access, ro.access) == ("rw", "r")
        assert all(not seg.buffer.readonly for seg in rw._segments.values())
        assert all(seg.buffer.readonly for seg in ro._segments.values())


async def test_a_read_only_client_reads_receives_and_frees(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "ro", access="r") as ro:
        small, large = payload(100, 1), payload(300_000, 2)  # inline, and through a lease
        granted = await client.alloc(len(large))
        await client.write(granted, large)
        await client.grant(granted, ro.name, "r")
        assert await ro.read(granted, 0, 100) == large[:100]
        assert await ro.read(granted) == large
        async with ro.lease(granted, "r") as view:
            assert view.readonly and bytes(view[:100]) == large[:100]
        obj = unique_name("obj")
        await client.put(small, name=obj)
        assert await ro.get(obj) == small
        sent = await client.alloc(len(small))
        await client.write(sent, small)
        await client.send(sent, to=ro.name)
        msg = await ro.recv()
        assert (msg.sender, await ro.read(msg.block)) == (client.name, small)
        await ro.free(msg.block)  # it is the receiver's now: it may free it
        topic = unique_name("topic")
        await ro.subscribe(topic)
        published = await client.alloc(len(small))
        await client.write(published, small)
        assert await client.publish(published, topic) == 1
        [pub] = await ro.recv_many()
        assert pub.topic == topic and await ro.read(pub.block) == small
        await ro.free_many([pub.block])
        stats = await ro.stats()
        assert ro.name in stats.processes and ro.name in await ro.peers()
        await client.free(granted)
        await client.delete(obj)


async def test_a_read_only_client_is_refused_every_write(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    async with connected(coord, "ro", access="r") as ro:
        secret = payload(200_000, 3)
        block = await client.alloc(len(secret))
        await client.write(block, secret)
        await client.grant(block, ro.name, "w")  # a write grant does not make it writable
        obj = unique_name("obj")
        await client.put(b"kept", name=obj)
        before = coord.stats()
        refused = {
            "ALLOC": ro.alloc(4096),
            "WRITE": ro.write(block, b"x"),
            "a write LEASE": ro.write(block, b"x" * 100_000),  # a large write leases
            "COPY": ro.copy(block, block, dst_offset=1, size=1),
            "PUT": ro.put(b"value", name=unique_name("mine")),
            "DELETE": ro.delete(obj),
            "SEND": ro.send(block, to=client.name),
            "REMOTE_SEND": ro.send(block, to="node/other"),
            "PUBLISH": ro.publish(block, "topic"),
            "GRANT": ro.grant(block, client.name),
            "CHANNEL_OPEN": ro.open_channel(client.name),
            "CHANNEL_ACCEPT": ro.accept_channel(),
        }
        for what, call in refused.items():
            with pytest.raises(blockipc.AccessDenied) as info:
                await call
            assert str(info.value).startswith(f"{READ_ONLY}: {what} refused"), info.value
        with pytest.raises(blockipc.AccessDenied, match=re.escape(READ_ONLY)):
            async with ro.lease(block, "w"):
                pytest.fail("a read-only client was granted a write lease")
        after = coord.stats()
        assert (after.blocks, after.used_bytes, after.names) == (
            before.blocks,
            before.used_bytes,
            before.names,
        )
        assert await client.read(block) == secret
        assert await client.get(obj) == b"kept"
        await client.free(block)
        await client.delete(obj)


async def test_the_asgi_lifespan_passes_access_on(coord: blockipc.Coordinator) -> None:
    app = types.SimpleNamespace(state=types.SimpleNamespace())
    async with blockipc.asgi.lifespan(coord.address, name=unique_name("web"), access="r")(app):
        c = blockipc.asgi.client(app)
        assert c.access == "r"
        with pytest.raises(blockipc.AccessDenied):
            await c.alloc(1)


async def test_a_read_only_process_cannot_write_the_pool_with_real_system_calls(
    coord: blockipc.Coordinator, client: blockipc.Client
) -> None:
    # another client's block, which every segment fd and mapping reaches
    victim = payload(1 << 20, 4)
    block = await client.alloc(len(victim))
    await client.write(block, victim)
    obj, value = unique_name("obj"), payload(5000, 5)
    await client.put(value, name=obj)
    sent = payload(70_000, 6)
    name = unique_name("ro")
    async with spawn("ro_prober", coord.address, name, obj) as child:
        assert (await child.expect("ready"))["access"] == "r"
        gift = await client.alloc(len(sent))
        await client.write(gift, sent)
        await client.send(gift, to=name)
        probed = await child.expect("probed")
        # it read what it was given and what it asked for
        assert (probed["received"], probed["got"]) == (sha256(sent), sha256(value))
        # and nothing it holds writes the pool (errnos of the kernel's own checks)
        assert probed["fds"] >= 1
        assert probed["access_modes"] == [0]  # O_RDONLY
        assert probed["file_modes"] == [0o400]
        assert probed["ftruncate"] == ["EINVAL"]  # not open for writing
        assert probed["punch_hole"] == ["EBADF"]  # fallocate(PUNCH_HOLE | KEEP_SIZE)
        assert probed["write"] == ["EBADF"]
        assert probed["map_writable"] == ["EACCES"]
        assert probed["mappings"] == ["r--s"]
        assert probed["mprotect"] == ["EACCES"]
        assert probed["view_write"] == "TypeError"
        assert probed["store"] == ["SIGSEGV"]
    assert await client.read(block) == victim
    assert await client.get(obj) == value
    await client.free(block)
    await client.delete(obj)
