"""A client talks only to a coordinator of its own uid (or root's): one of another user
that listens on the socket path first gets nothing, not even the name in ``HELLO``.

The same rule guards the coordinator's side (a client of another uid is refused before
its ``HELLO`` is read): one function, :func:`blockipc._handshake.trusted_peer`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import blockipc
from _foreign import NOBODY, needs_root, say_as_nobody, squatter
from _procs import payload, wait_until
from blockipc import AccessDenied
from blockipc._core.protocol import PROTOCOL_VERSION, Connection, Op, Request, Role
from blockipc.testing import assert_pool_clean, capture_logs, unique_name

MiB = 1 << 20

pytestmark = needs_root


async def test_connect_refuses_a_server_of_another_uid_before_sending_anything(
    short_dir: Path,
) -> None:
    short_dir.chmod(0o777)  # a shared directory, as /tmp is: nobody may listen there first
    path = short_dir / "coordinator.sock"
    async with squatter(path) as nobody:
        with pytest.raises(AccessDenied) as refused:
            await blockipc.connect(str(path), name=unique_name("secret-name"))
        connections, received = await nobody.report()
    assert connections == 1  # the client reached it, then refused to speak
    assert received == b""  # no HELLO: not even the client's name
    message = str(refused.value)
    assert f"uid {NOBODY}" in message and f"uid {os.getuid()}" in message and "root" in message


async def test_an_attach_side_connection_refuses_a_server_of_another_uid(
    short_dir: Path,
) -> None:
    # The client opens a side connection (ATTACH, with its session token) whenever it
    # needs a segment added after its HELLO. If another user's process is listening on
    # the path by then, that connection is refused like the first one.
    path = short_dir / "coordinator.sock"
    async with blockipc.Coordinator(path, pool_size="4MiB", max_pool_size="8MiB") as coord:
        async with blockipc.connect(coord.address, name=unique_name("client")) as client:
            first = await client.alloc(4 * MiB)  # fills segment 0
            second = await client.alloc(MiB)  # a new segment this client has not mapped
            path.rename(short_dir / "moved.sock")  # the coordinator keeps serving there
            short_dir.chmod(0o777)
            async with squatter(path) as nobody:
                with pytest.raises(AccessDenied):
                    await client.write(second, payload(MiB, 1))  # a lease: maps the segment
                connections, received = await nobody.report()
            assert (connections, received) == (1, b"")  # the token never left the process
            assert len(client._segments) == 1
            await client.write(first, b"still connected")  # the main connection is intact
            await client.free_many([first, second])
        await wait_until(lambda: not coord.stats().processes)
        assert_pool_clean(coord)


async def test_the_coordinator_refuses_a_client_of_another_uid(short_dir: Path) -> None:
    # The other half of the rule, checked before HELLO is read: the socket (and its
    # directory) opened to everyone, so only SO_PEERCRED stands in the way.
    path = short_dir / "coordinator.sock"
    hello = Connection(Role.CLIENT).send(
        Request(
            1,
            Op.HELLO,
            {
                "version": PROTOCOL_VERSION,
                "name": "intruder",
                "pid": 1,
                "inbox_messages": 8,
                "inbox_bytes": MiB,
            },
        )
    )
    async with blockipc.Coordinator(path, pool_size="4MiB") as coord:
        short_dir.chmod(0o777)
        path.chmod(0o777)
        with capture_logs() as logs:
            answer = await say_as_nobody(path, hello)
        assert answer == b""  # hung up on, with no reply
        assert any(e["event"] == "client.refused" and e["uid"] == NOBODY for e in logs), logs
        assert "intruder" not in coord.stats().processes
