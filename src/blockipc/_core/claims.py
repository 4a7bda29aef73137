"""Claims on object names: who computes a missing named object (pure).

``get_or_put(name, factory)`` must run ``factory`` once across all processes. The first
caller that finds ``name`` unbound *claims* it and runs the factory; later callers wait
behind the claim, in order. The claim ends when:

* the name is bound (by the claimant's ``put``, or anyone's): every waiter is told, and
  reads the object (:meth:`Claims.resolve`);
* the claimant gives it up (its factory raised, or it was cancelled) or its process
  ends: the next waiter holds the claim now and runs its own factory
  (:meth:`Claims.release`, :meth:`Claims.drop_holder`).

The coordinator keeps one :class:`Claims`; the waiters are its parked requests
(``_server/ops/objects.py``), whose cancel and abandon take them out again
(:meth:`Claims.withdraw`). A process takes at most ``MAX_CLAIMS`` claims by asking
(:meth:`Claims.claim` refuses the next with ``QuotaExceeded``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .limits import check_claims

__all__ = ["Claims"]

H = TypeVar("H", bound=Hashable)  # a holder (a process record)
W = TypeVar("W")  # a waiter's token (its parked request)


@dataclass(eq=False, slots=True)
class _Claim(Generic[H, W]):
    holder: H
    waiters: deque[tuple[H, W]] = field(default_factory=deque)


class Claims(Generic[H, W]):
    """The claims on names, each with its holder and its waiters in arrival order."""

    __slots__ = ("_by_holder", "_claims")

    def __init__(self) -> None:
        self._claims: dict[str, _Claim[H, W]] = {}
        self._by_holder: dict[H, set[str]] = {}

    def claim(self, name: str, who: H) -> bool:
        """``who`` asks for ``name`` (unbound): True if it holds the claim now, False
        if a claim on it is held already, by another process or by another request of
        ``who`` (then the asker may :meth:`wait`)."""
        if name in self._claims:
            return False
        check_claims(len(self._by_holder.get(who, ())))
        self._hold(name, who)
        return True

    def wait(self, name: str, who: H, token: W) -> None:
        """``token`` (of ``who``) waits, in order, behind the claim on ``name``."""
        self._claims[name].waiters.append((who, token))

    def holder(self, name: str) -> H | None:
        current = self._claims.get(name)
        return None if current is None else current.holder

    def held(self, who: H) -> set[str]:
        """The names ``who`` holds claims on."""
        return set(self._by_holder.get(who, ()))

    def release(self, name: str, who: H) -> W | None:
        """``who`` gives up its claim on ``name`` (if it holds it): the next waiter
        holds it now, and its token is returned (None: nobody waited)."""
        current = self._claims.get(name)
        if current is None or current.holder != who:
            return None
        self._unhold(name, who)
        if not current.waiters:
            return None
        # (a waiter checked its room when it asked; one handed a claim may go past
        # MAX_CLAIMS by its waits, which MAX_PARKED bounds)
        current.holder, token = current.waiters.popleft()
        self._claims[name] = current
        self._by_holder.setdefault(current.holder, set()).add(name)
        return token

    def drop_holder(self, who: H) -> list[W]:
        """``who``'s process ended: each claim it held passes to its next waiter; the
        tokens of those new holders (and the waits of ``who`` elsewhere are its parked
        requests' to withdraw)."""
        handed = []
        for name in sorted(self._by_holder.get(who, ())):
            token = self.release(name, who)
            if token is not None:
                handed.append(token)
        return handed

    def resolve(self, name: str) -> list[W]:
        """``name`` was bound: the claim on it ends, and every waiter's token is
        returned (they read the object now)."""
        current = self._claims.pop(name, None)
        if current is None:
            return []
        names = self._by_holder.get(current.holder)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_holder[current.holder]
        return [token for _, token in current.waiters]

    def withdraw(self, name: str, token: W) -> None:
        """A waiter left (cancelled, or its process ended)."""
        current = self._claims.get(name)
        if current is not None:
            current.waiters = deque(w for w in current.waiters if w[1] is not token)

    def __len__(self) -> int:
        return len(self._claims)

    def _hold(self, name: str, who: H) -> None:
        self._claims[name] = _Claim(who)
        self._by_holder.setdefault(who, set()).add(name)

    def _unhold(self, name: str, who: H) -> None:
        names = self._by_holder[who]
        names.discard(name)
        if not names:
            del self._by_holder[who]
        del self._claims[name]
