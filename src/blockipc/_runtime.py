"""Running blockipc programs: uvloop when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run", "use_uvloop"]

T = TypeVar("T")


def use_uvloop() -> bool:
    """True when uvloop is importable (and will be used by :func:`run`)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main: Callable[[], Coroutine[Any, Any, T]], *, debug: bool | None = None) -> T:
    """Run ``main()`` to completion on uvloop when installed, else on asyncio's loop.

    >>> async def main() -> int:
    ...     return 42
    >>> blockipc.run(main)  # doctest: +SKIP
    42
    """
    if use_uvloop():
        import uvloop

        return uvloop.run(main(), debug=debug)
    return asyncio.run(main(), debug=debug)
