"""Zero-copy views that can tell whether anything made from them outlived them.

Theory of operation
-------------------
A lease's view and a channel message's ``data`` are windows into a pool segment that
this process maps once. ``memoryview.release()`` refuses (``BufferError``) only while
something holds a buffer of *that* memoryview object; a slice of it, a ``memoryview``
of it or a numpy array made from it (``np.frombuffer``, ``np.asarray``) instead
registers with the managed buffer the view itself shares with the segment's mapping,
so the view releases without a word while they go on reading and writing the block's
bytes (numpy 2.x wraps a memoryview source in a memoryview of the same managed buffer).

:func:`lend` puts an exporter of our own between the source and the view the user
gets: a :class:`pickle.PickleBuffer` over the source, whose ``memoryview`` takes a
fresh buffer *of the source*. Every slice, cast, memoryview or numpy array made from
the lent view then shares that fresh managed buffer, and the source stays exported for
as long as any of them lives. :func:`reclaim` releases the lent view, then the source:
a ``BufferError`` from the source is the one reliable sign of a live export. It costs
about 0.2 us per view more than a plain slice, where a private ``mmap`` per lease costs
9-90 us (``benchmarks/export_views.py``).

What a live export means is the caller's to decide: a lease tells the coordinator to
keep the block's memory out of the pool, a channel receiver keeps the message's room in
its ring. Both learn when the export is gone the same way, through :func:`watch`: once
the last thing made from the lent view is collected, nothing holds the source any more,
and a weak reference to it calls back (the lease then tells the coordinator, which may
give the memory back; the receiver gives the room back).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from pickle import PickleBuffer

__all__ = ["lend", "reclaim", "watch"]


def lend(src: memoryview) -> memoryview:
    """A view of ``src``'s bytes (read-only if ``src`` is) whose every export keeps
    ``src`` exported; the caller keeps ``src`` for :func:`reclaim`."""
    return memoryview(PickleBuffer(src))


def reclaim(view: memoryview, src: memoryview) -> bool:
    """Release ``view`` (from :func:`lend`) and its ``src``; True if something made from
    ``view`` still lives. ``src`` then stays exported, and is released (and collected)
    by itself once the last such export is gone."""
    # (held directly by a consumer, the view stays: it still keeps the source exported)
    with contextlib.suppress(BufferError):
        view.release()
    try:
        src.release()
    except BufferError:
        return True
    return False


def watch(
    src: memoryview, loop: asyncio.AbstractEventLoop, gone: Callable[[], object]
) -> weakref.ref[memoryview]:
    """Call ``gone()`` on ``loop`` once ``src`` (a source :func:`reclaim` found still
    exported, no longer referenced by the caller) is collected: the last export made
    from its lent view is gone then. Keep the returned reference for as long as the
    call is wanted (dropped, it never comes). The weak reference's callback runs in
    whatever thread dropped the last export, or inside the garbage collector, so it
    only schedules ``gone``; a closed loop gets nothing (what the call would have given
    back went with it)."""

    def fire(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has ended
            loop.call_soon_threadsafe(gone)

    return weakref.ref(src, fire)
