"""Topic subscriptions with wildcards, as AMQP topic exchanges match them (pure).

A topic is a name of dot-separated words (``"frames.cam1.left"``). A subscription is a
topic or a *pattern*, in which a whole word ``*`` stands for exactly one word and a whole
word ``#`` for any number of words, none included:

=====================  ==========================================
pattern                matches
=====================  ==========================================
``frames.*``           ``frames.cam1``; not ``frames``, ``frames.cam1.left``
``frames.#``           ``frames``, ``frames.cam1``, ``frames.cam1.left``
``*.left``             ``cam1.left``; not ``left``, ``a.cam1.left``
``#``                  every topic
=====================  ==========================================

``*`` and ``#`` are wildcards only as whole words (``"c#"`` and ``"a*b"`` are plain
words); a published topic may not contain either as a whole word (:func:`check_topic`),
so that what a subscription means never depends on what is published.

Subscriptions without a wildcard, the common case, live in a dict (one lookup per
publish); patterns live in a trie of words that a publish walks once, remembering each
(node, word) state it has reached, so that a pattern full of ``#`` costs at most the
trie's nodes times the topic's words, never an exponential search.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .._exceptions import InvalidRequest
from .limits import check_name

__all__ = ["ANY_WORDS", "ONE_WORD", "Subscriptions", "check_pattern", "check_topic", "matches"]

ONE_WORD = "*"
"""A pattern word that stands for exactly one word."""
ANY_WORDS = "#"
"""A pattern word that stands for any number of words (none included)."""

_WILDCARDS = (ONE_WORD, ANY_WORDS)

T = TypeVar("T", bound=Hashable)


def is_pattern(topic: str) -> bool:
    """Whether ``topic`` has a wildcard word."""
    return any(word in _WILDCARDS for word in topic.split("."))


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it can be subscribed to: a topic name (1 to ``MAX_NAME``
    characters), wildcards allowed."""
    return check_name(pattern, "topic")


def check_topic(topic: str) -> str:
    """Return ``topic`` if it can be published to: a topic name with no wildcard word."""
    check_name(topic, "topic")
    if is_pattern(topic):
        raise InvalidRequest(
            f"topic {topic!r:.80} has a wildcard word ({ONE_WORD!r} or {ANY_WORDS!r}): "
            "wildcards are for subscribing; a published topic names one topic"
        )
    return topic


def matches(pattern: str, topic: str) -> bool:
    """Whether a subscription to ``pattern`` receives what is published to ``topic``
    (the reference rule; :class:`Subscriptions` gives the same answers, faster)."""
    subs: Subscriptions[int] = Subscriptions()
    subs.add(pattern, 0)
    return bool(subs.match(topic))


@dataclass(eq=False, slots=True)
class _Node(Generic[T]):
    children: dict[str, _Node[T]] = field(default_factory=dict)
    subs: set[T] = field(default_factory=set)


class Subscriptions(Generic[T]):
    """Who subscribed to what: ``add``/``discard`` a subscriber under a topic or a
    pattern, ``match`` a published topic to everyone whose subscription matches it.

    ``on_change(pattern, present)``, when set, is called when ``pattern`` gets its first
    subscriber (``present`` True) or loses its last (False): what a node tells its
    linked peers it subscribes to (``_link/link.py``), whichever way the change came
    (subscribe, unsubscribe, a process gone). :meth:`patterns` lists them all.
    """

    __slots__ = ("_exact", "_patterns", "_root", "on_change")

    def __init__(self) -> None:
        self._exact: dict[str, set[T]] = {}
        self._root: _Node[T] = _Node()
        self._patterns: dict[str, set[T]] = {}  # (also in the trie, for match)
        self.on_change: Callable[[str, bool], None] | None = None

    def add(self, pattern: str, sub: T) -> None:
        if not is_pattern(pattern):
            subs = self._exact.get(pattern)
            if subs is None:
                subs = self._exact[pattern] = set()
                if self.on_change is not None:
                    self.on_change(pattern, True)
            subs.add(sub)
            return
        node = self._root
        for word in pattern.split("."):
            node = node.children.setdefault(word, _Node())
        if sub not in node.subs:
            first = not node.subs
            node.subs.add(sub)
            self._patterns.setdefault(pattern, set()).add(sub)
            if first and self.on_change is not None:
                self.on_change(pattern, True)

    def discard(self, pattern: str, sub: T) -> None:
        if not is_pattern(pattern):
            subs = self._exact.get(pattern)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._exact[pattern]
                    if self.on_change is not None:
                        self.on_change(pattern, False)
            return
        path = [self._root]
        for word in pattern.split("."):
            child = path[-1].children.get(word)
            if child is None:
                return
            path.append(child)
        if sub not in path[-1].subs:
            return
        path[-1].subs.discard(sub)
        subs = self._patterns[pattern]
        subs.discard(sub)
        if not subs:
            del self._patterns[pattern]
        if not path[-1].subs and self.on_change is not None:
            self.on_change(pattern, False)
        words = pattern.split(".")
        for depth in range(len(words), 0, -1):  # prune the nodes nobody needs any more
            node = path[depth]
            if node.subs or node.children:
                break
            del path[depth - 1].children[words[depth - 1]]

    def patterns(self) -> Iterator[str]:
        """Every topic and pattern that has a subscriber now, once each."""
        yield from self._exact
        yield from self._patterns

    def match(self, topic: str) -> set[T]:
        """Everyone subscribed to ``topic`` or to a pattern that matches it."""
        found = set(self._exact.get(topic, ()))
        if self._patterns:
            self._walk(topic.split("."), found)
        return found

    def _walk(self, words: list[str], found: set[T]) -> None:
        n = len(words)
        seen: set[tuple[int, int]] = set()
        todo: list[tuple[_Node[T], int]] = [(self._root, 0)]
        while todo:
            node, i = todo.pop()
            key = (id(node), i)
            if key in seen:
                continue
            seen.add(key)
            if i == n:
                found |= node.subs
            else:
                for word in (words[i], ONE_WORD):
                    child = node.children.get(word)
                    if child is not None:
                        todo.append((child, i + 1))
            rest = node.children.get(ANY_WORDS)
            if rest is not None:  # '#' takes 0, 1, ... n - i words
                todo.extend((rest, j) for j in range(i, n + 1))

    def items(self) -> Iterator[tuple[str, set[T]]]:
        """Every topic and pattern subscribed to, with its subscribers."""
        yield from self._exact.items()
        yield from self._patterns.items()

    def __len__(self) -> int:
        return sum(map(len, self._exact.values())) + sum(map(len, self._patterns.values()))
