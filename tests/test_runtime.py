"""``blockipc.run``: an async function (with its arguments) or a coroutine, like
``anyio.run`` and ``asyncio.run``; anything else is a ``TypeError`` naming both forms,
and a coroutine it refuses is closed, never left to warn that it was never awaited."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import blockipc
from blockipc.testing import isolated_coordinator, unique_name


@pytest.fixture
def no_warnings() -> Iterator[None]:
    """Whatever the test leaves to the garbage collector warns about nothing."""
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught] == []


async def roundtrip(greeting: bytes, times: int = 1) -> bytes:
    """A real workload: an embedded coordinator and a client in the loop run made."""
    async with (
        isolated_coordinator(pool_size="4MiB") as coord,
        blockipc.connect(coord.address, name=unique_name("run")) as client,
    ):
        block = await client.alloc(len(greeting) * times)
        await client.write(block, greeting * times)
        data = await client.read(block)
        await client.free(block)
        return data


def test_run_takes_an_async_function(no_warnings: None) -> None:
    async def main() -> bytes:
        return await roundtrip(b"hi")

    assert blockipc.run(main) == b"hi"


def test_run_passes_arguments_to_the_async_function(no_warnings: None) -> None:
    assert blockipc.run(roundtrip, b"ab", 3) == b"ababab"


def test_run_takes_a_coroutine_like_asyncio_run(no_warnings: None) -> None:
    assert blockipc.run(roundtrip(b"coro")) == b"coro"


def test_run_uses_uvloop_when_installed(no_warnings: None) -> None:
    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    expected = "uvloop" if blockipc._runtime.use_uvloop() else "asyncio"
    assert blockipc.run(loop_type).startswith(expected)


@pytest.mark.parametrize(
    "main",
    [42, None, "main", b"main"],
    ids=["int", "None", "str", "bytes"],
)
def test_run_refuses_what_is_neither_form(main: Any, no_warnings: None) -> None:
    with pytest.raises(TypeError, match="wants an async function") as info:
        blockipc.run(main)
    assert "blockipc.run(main)" in str(info.value)
    assert "a coroutine (blockipc.run(main()))" in str(info.value)


def test_run_refuses_a_sync_function(no_warnings: None) -> None:
    calls: list[int] = []

    def main() -> int:
        calls.append(1)
        return 1

    with pytest.raises(TypeError, match=r"main\(\) returned int, not a coroutine") as info:
        blockipc.run(main)  # type: ignore[arg-type]
    assert "async def" in str(info.value)
    assert "a coroutine (blockipc.run(main()))" in str(info.value)
    assert calls == [1]  # like asyncio.run(main()), it was called to see what it returns


def test_run_refuses_a_coroutine_with_arguments_and_closes_it(no_warnings: None) -> None:
    coro = roundtrip(b"never")
    with pytest.raises(TypeError, match="got a coroutine and 1 more argument"):
        blockipc.run(coro, b"extra")  # type: ignore[call-arg]
    assert coro.cr_frame is None  # closed: it can never warn that it was never awaited
