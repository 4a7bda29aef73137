"""Wildcard topics (issue 15, item 5): the matching table, a property against a plain
recursive reference, the trie pruned to nothing, and the bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockipc import InvalidRequest, QuotaExceeded
from blockipc._core.limits import MAX_SUBSCRIPTIONS
from blockipc._core.routing import RoutingTable
from blockipc._core.topics import Subscriptions, check_topic, matches

TABLE = [
    ("frames.*", "frames.cam1", True),
    ("frames.*", "frames", False),
    ("frames.*", "frames.cam1.left", False),
    ("frames.#", "frames", True),
    ("frames.#", "frames.cam1", True),
    ("frames.#", "frames.cam1.left", True),
    ("frames.#", "framesx.cam1", False),
    ("*.left", "cam1.left", True),
    ("*.left", "left", False),
    ("*.left", "a.cam1.left", False),
    ("#.left", "left", True),
    ("#.left", "a.cam1.left", True),
    ("#.left", "a.cam1.right", False),
    ("#", "anything.at.all", True),
    ("#", "x", True),
    ("*", "x", True),
    ("*", "x.y", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("#.#", "a", True),
    ("c#", "c#", True),  # wildcards only as whole words
    ("c#", "cx", False),
    ("a*b", "a*b", True),
    ("a*b", "axb", False),
    ("frames", "frames", True),
    ("frames", "frames.cam1", False),
    ("a..b", "a..b", True),  # empty words are words
    ("a.*.b", "a..b", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), TABLE)
def test_matching_table(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


def reference(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    if pattern[0] == "#":
        return any(reference(pattern[1:], topic[j:]) for j in range(len(topic) + 1))
    if not topic:
        return False
    return pattern[0] in ("*", topic[0]) and reference(pattern[1:], topic[1:])


patterns = st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=6).map(".".join)
topics = st.lists(st.sampled_from(["a", "b", ""]), min_size=1, max_size=6).map(".".join)


@given(st.lists(patterns, min_size=1, max_size=8), st.lists(topics, min_size=1, max_size=8))
def test_subscriptions_agree_with_the_reference(pats: list[str], tops: list[str]) -> None:
    subs: Subscriptions[int] = Subscriptions()
    for i, pattern in enumerate(pats):
        subs.add(pattern, i)
    grouped: dict[str, set[int]] = {}
    for i, pattern in enumerate(pats):
        grouped.setdefault(pattern, set()).add(i)
    assert dict(subs.items()) == grouped
    for topic in tops:
        expected = {i for i, p in enumerate(pats) if reference(p.split("."), topic.split("."))}
        assert subs.match(topic) == expected
    for i, pattern in enumerate(pats):
        subs.discard(pattern, i)
    assert len(subs) == 0
    assert subs._root.children == {}  # every node pruned again
    assert subs._exact == {}


def test_many_hashes_stay_cheap() -> None:
    """128 '#' words against a 128-word topic: the walk remembers its states (an
    exhaustive search would not finish)."""
    subs: Subscriptions[int] = Subscriptions()
    subs.add(".".join(["#"] * 126 + ["z"]), 1)
    assert subs.match(".".join(["a"] * 127)) == set()
    assert subs.match(".".join(["a"] * 126 + ["z"])) == {1}


def test_published_topics_have_no_wildcard_word() -> None:
    for topic in ("frames.*", "#", "a.#.b", "*"):
        with pytest.raises(InvalidRequest, match="wildcard"):
            check_topic(topic)
    assert check_topic("c#.a*b") == "c#.a*b"


def test_a_process_matching_twice_is_one_subscriber() -> None:
    table = RoutingTable()
    a = table.register("a", pid=1, uid=0)
    b = table.register("b", pid=2, uid=0)
    for topic in ("frames.cam1", "frames.*", "frames.#", "#"):
        table.subscribe(a, topic)
    table.subscribe(b, "*.cam1")
    assert table.subscribers("frames.cam1") == [a, b]
    assert table.subscribers("frames.cam2") == [a]
    assert table.subscribers("other") == [a]
    table.unregister(a)
    assert table.subscribers("frames.cam1") == [b]
    assert len(table.topics) == 1


def test_subscriptions_are_bounded_per_process() -> None:
    table = RoutingTable()
    a = table.register("a", pid=1, uid=0)
    for i in range(MAX_SUBSCRIPTIONS):
        table.subscribe(a, f"t.{i}.#")
    table.subscribe(a, "t.0.#")  # already subscribed: no new one
    with pytest.raises(QuotaExceeded, match="unsubscribe some"):
        table.subscribe(a, "one.more")
    table.unsubscribe(a, "t.0.#")
    table.subscribe(a, "one.more")
    assert len(table.topics) == MAX_SUBSCRIPTIONS


def test_topic_changes_are_reported_once_per_topic() -> None:
    subs: Subscriptions[int] = Subscriptions()
    changes: list[tuple[str, bool]] = []
    subs.on_change = lambda topic, present: changes.append((topic, present))
    for topic, sub in (("a.*", 1), ("a.*", 2), ("b", 1), ("b", 2), ("c.#", 1)):
        subs.add(topic, sub)
    assert sorted(subs.patterns()) == ["a.*", "b", "c.#"]
    for topic, sub in (("a.*", 1), ("b", 1), ("b", 2), ("a.*", 2), ("c.#", 9)):
        subs.discard(topic, sub)
    assert changes == [
        ("a.*", True),
        ("b", True),
        ("c.#", True),
        ("b", False),
        ("a.*", False),
    ]
    assert list(subs.patterns()) == ["c.#"]
