"""Running blockipc programs: uvloop when it is installed."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple, cast

__all__ = ["run", "use_uvloop"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_FORMS = (
    "an async function (blockipc.run(main), blockipc.run(main, arg)) "
    "or a coroutine (blockipc.run(main()))"
)


def use_uvloop() -> bool:
    """True when uvloop is importable (and will be used by :func:`run`)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(
    main: Callable[[*Ts], Coroutine[Any, Any, T]] | Coroutine[Any, Any, T],
    *args: *Ts,
    debug: bool | None = None,
) -> T:
    """Run ``main`` to completion on uvloop when installed, else on asyncio's loop.

    ``main`` is an async function, called with ``args`` (like :func:`anyio.run`), or a
    coroutine (like :func:`asyncio.run`); returns what it returns::

        async def main(address: str) -> int:
            return 42

        blockipc.run(main, "/tmp/blockipc.sock")   # 42
        blockipc.run(main("/tmp/blockipc.sock"))   # 42 too

    The async function form also fits ``multiprocessing.Process(target=blockipc.run,
    args=(main, address))``.

    :raises TypeError: for anything else, naming both forms.
    """
    coro: Coroutine[Any, Any, T]
    if inspect.iscoroutine(main):
        if args:
            main.close()  # it will never run: close it, or Python warns it was never awaited
            raise TypeError(
                f"blockipc.run() got a coroutine and {len(args)} more argument(s): pass the "
                "arguments to the async function instead (blockipc.run(main, arg) or "
                "blockipc.run(main(arg)))"
            )
        coro = cast("Coroutine[Any, Any, T]", main)
    elif callable(main):
        made: object = main(*args)
        if not inspect.iscoroutine(made):
            what = getattr(main, "__qualname__", type(main).__name__)
            raise TypeError(
                f"blockipc.run() wants {_FORMS}; {what}() returned "
                f"{type(made).__name__}, not a coroutine: is it defined with 'async def'?"
            )
        coro = cast("Coroutine[Any, Any, T]", made)
    else:
        raise TypeError(f"blockipc.run() wants {_FORMS}, not {type(main).__name__}")
    if use_uvloop():
        import uvloop

        result: T = uvloop.run(coro, debug=debug)
        return result
    return asyncio.run(coro, debug=debug)
