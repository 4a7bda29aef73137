"""The limits' one home, ``_core/limits.py``: its checks, table-driven and synchronous, and a
scan of ``src/`` that fails when a limit it holds is restated somewhere else."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path
from typing import Any

import msgpack
import pytest

from _procs import ROOT
from blockipc import InvalidRequest, OutOfBounds, QuotaExceeded
from blockipc._core.limits import (
    MAX_ATTEMPTS,
    MAX_BATCH,
    MAX_HEADER,
    MAX_INT,
    MAX_NAME,
    MAX_OFFERS,
    MAX_QUEUE_SIZE,
    MODES,
    check_batch,
    check_header_size,
    check_mode,
    check_name,
    check_node_name,
    check_offers,
    check_process_name,
    check_queue_settings,
    check_range,
    is_process_name,
    pack_header,
    split_target,
)

SRC = ROOT / "src" / "blockipc"
LONGEST = "n" * MAX_NAME


# -- the checks ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", LONGEST, "with/slash", "with space", "é"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name, "topic") is name


@pytest.mark.parametrize(
    ("name", "error"),
    [("", InvalidRequest), (LONGEST + "n", InvalidRequest), (7, TypeError), (None, TypeError)],
)
def test_check_name_refuses(name: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="topic"):
        check_name(name, "topic")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        (LONGEST, True),
        (LONGEST + "n", False),
        ("", False),
        ("a/b", False),
        ("tab\there", False),
        (b"bytes", False),
        (None, False),
    ],
)
def test_process_names(name: Any, ok: bool) -> None:
    assert is_process_name(name) is ok
    if ok:
        assert check_process_name(name) is name
    else:
        with pytest.raises(InvalidRequest, match=f"1-{MAX_NAME} printable"):
            check_process_name(name)


@pytest.mark.parametrize(
    ("name", "ok"), [("b", True), (LONGEST, True), (" b", False), ("b ", False), ("a/b", False)]
)
def test_node_names(name: str, ok: bool) -> None:
    if ok:
        assert check_node_name(name) is name
    else:
        with pytest.raises(InvalidRequest, match="node name"):
            check_node_name(name)


@pytest.mark.parametrize(
    ("to", "parts"),
    [("b/c", ("b", "c")), (f"{LONGEST}/{LONGEST}", (LONGEST, LONGEST))],  # each to its limit
)
def test_split_target(to: str, parts: tuple[str, str]) -> None:
    assert split_target(to) == parts


@pytest.mark.parametrize(
    "to", ["b", "/c", "b/", "b/c/d", " b/c", f"{LONGEST}n/c", f"b/{LONGEST}n", "b/\x00"]
)
def test_split_target_refuses(to: str) -> None:
    with pytest.raises(InvalidRequest, match="remote receiver"):
        split_target(to)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["lease", "grant"])
def test_check_mode_accepts(kind: str, mode: str) -> None:
    assert check_mode(kind, mode) == mode


@pytest.mark.parametrize("mode", ["", "rw", "R", "own", None, 1, b"r", ["r"]])
@pytest.mark.parametrize("kind", ["lease", "grant"])
def test_check_mode_refuses(kind: str, mode: Any) -> None:
    with pytest.raises(InvalidRequest, match=f"^{kind} mode must be 'r' or 'w'"):
        check_mode(kind, mode)


@pytest.mark.parametrize(
    ("offset", "size", "block_size", "ok"),
    [(0, 0, 0, True), (0, 10, 10, True), (10, 0, 10, True), (5, 6, 10, False), (11, 0, 10, False)],
)
def test_check_range(offset: int, size: int, block_size: int, ok: bool) -> None:
    if ok:
        check_range(7, offset, size, block_size)
    else:
        with pytest.raises(OutOfBounds, match=f"outside block 7 of size {block_size}"):
            check_range(7, offset, size, block_size)


@pytest.mark.parametrize(
    ("count", "ok"), [(1, True), (MAX_BATCH, True), (0, False), (-1, False), (MAX_BATCH + 1, False)]
)
def test_check_batch(count: int, ok: bool) -> None:
    if ok:
        assert check_batch(count, "blocks") == count
    else:
        with pytest.raises(InvalidRequest, match=f"blocks must be 1 to {MAX_BATCH}"):
            check_batch(count, "blocks")


# a header whose encoding is exactly n bytes: a map of one str key and a bin8/16 value
def _header_of(n: int) -> dict[str, Any]:
    header = {"k": b""}
    header["k"] = b"x" * (n - len(msgpack.packb(header, use_bin_type=True)))
    while len(msgpack.packb(header, use_bin_type=True)) > n:  # the length prefix grew
        header["k"] = header["k"][:-1]
    assert len(msgpack.packb(header, use_bin_type=True)) == n
    return header


@pytest.mark.parametrize(
    ("header", "packed"), [(None, b"\x80"), ({}, b"\x80"), ({"k": 1}, b"\x81\xa1k\x01")]
)
def test_pack_header_encodes(header: dict[str, Any] | None, packed: bytes) -> None:
    assert pack_header(header) == packed


def test_pack_header_takes_the_largest_header() -> None:
    assert len(pack_header(_header_of(MAX_HEADER))) == MAX_HEADER
    check_header_size(MAX_HEADER)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (_header_of(MAX_HEADER + 1), f"limit is {MAX_HEADER}"),
        ([1], "must be a dict"),
        ([], "must be a dict"),  # empty, yet no header (pack_header's fast path is {}'s)
        ("", "must be a dict"),
        ({1: "x"}, "keys must be str"),
        ({"k": {1: "x"}}, "cannot be sent"),  # the receiver decodes with strict map keys
        ({"k": object()}, "cannot be sent"),
        ({"k": 1 << 64}, "cannot be sent"),
    ],
)
def test_pack_header_refuses(header: Any, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        pack_header(header)


def test_check_header_size_refuses() -> None:
    with pytest.raises(InvalidRequest, match=f"{MAX_HEADER + 1} bytes encoded"):
        check_header_size(MAX_HEADER + 1)


def test_the_header_rule_names_what_it_bounds() -> None:
    # a named object's codec meta follows the header rule (every GET echoes it)
    with pytest.raises(InvalidRequest, match=f"^codec meta is {MAX_HEADER + 1} bytes encoded"):
        pack_header(_header_of(MAX_HEADER + 1), "codec meta")
    with pytest.raises(InvalidRequest, match=r"^codec meta must be a dict"):
        pack_header([1], "codec meta")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pending", "ok"), [(0, True), (MAX_OFFERS - 1, True), (MAX_OFFERS, False)]
)
def test_check_offers(pending: int, ok: bool) -> None:
    if ok:
        check_offers(pending, "consumer")
    else:
        with pytest.raises(QuotaExceeded, match=f"'consumer' has {pending} channels offered"):
            check_offers(pending, "consumer")


@pytest.mark.parametrize(
    ("maxsize", "max_attempts", "match"),
    [
        (1, 1, None),
        (MAX_QUEUE_SIZE, MAX_ATTEMPTS, None),
        (64, None, None),  # never dead-lettered
        (0, 5, "maxsize must be 1 to"),
        (MAX_QUEUE_SIZE + 1, 5, "maxsize must be 1 to"),
        (True, 5, "maxsize must be 1 to"),
        (64, 0, "max_attempts must be 1 to"),
        (64, MAX_ATTEMPTS + 1, "max_attempts must be 1 to"),
        (64, 2.0, "max_attempts must be 1 to"),
    ],
)
def test_check_queue_settings(maxsize: Any, max_attempts: Any, match: str | None) -> None:
    if match is None:
        check_queue_settings(maxsize, max_attempts)
    else:
        with pytest.raises(InvalidRequest, match=match):
            check_queue_settings(maxsize, max_attempts)


def test_max_int_is_what_msgpack_carries_signed() -> None:
    assert msgpack.unpackb(msgpack.packb(MAX_INT)) == MAX_INT == 2**63 - 1


# -- one home: no literal limit outside _core/limits.py --------------------------------------
# Each rule: what it finds, as a regex over a line of code with its comments and
# docstrings blanked, and the one file allowed to hold it. Precise on purpose: a page
# size (min_block=4096, CTL_SIZE), a byte range, a cap on something else is not a limit
# of _core/limits.py and is not found.
RULES: dict[str, tuple[str, str]] = {
    "int max (MAX_INT)": (r"\b1\s*<<\s*63\b|\b2\s*\*\*\s*63\b", "_core/limits.py"),
    "name length (MAX_NAME)": (
        (
            r"[<>]=?\s*255\b|\b255\s*[<>]|\b1\s*(?:to|-)\s*255\b"
            r"|(?i:\w*(?:name|topic)\w*)\s*(?::[^=]*)?=\s*255\b"
        ),
        "_core/limits.py",
    ),
    "header size (MAX_HEADER)": (
        r"\b16\s*\*\s*1024\b|\b16384\b|\b1\s*<<\s*14\b",
        "_core/limits.py",
    ),
    "list limit (MAX_LIST)": (
        (
            r"(?i:\w*(?:list|touch)\w*)\s*(?::[^=]*)?=\s*4096\b|islice\([^)]*\b4096\s*\)"
            r"|\[\s*:\s*4096\s*\]|len\([^)]*\)\s*[<>]=?\s*4096\b"
        ),
        "_core/limits.py",
    ),
    "lease/grant modes (MODES, check_mode)": (
        r"""(?<!Literal\[)["']r["']\s*,\s*["']w["']""",
        "_core/limits.py",
    ),
    "a limit's constant (MAX_*)": (
        (
            r"^\s*_?(?:MAX_(?:NAME|TOPIC|INT|HEADER|LIST|BATCH|STR|TOUCH|OFFERS|QUEUES"
            r"|QUEUE_SIZE|ATTEMPTS|SUBSCRIPTIONS|CLAIMS|PARKED)|RECLAIM_SLICE)"
            r"\s*(?::[^=]*)?=(?!=)"
        ),
        "_core/limits.py",
    ),
}


def _code_lines(source: str) -> list[str]:
    """``source``'s lines with comments and docstrings blanked (other strings stay: an
    error message that restates a limit is found)."""
    lines = source.splitlines()
    blank: list[tuple[tuple[int, int], tuple[int, int]]] = []
    previous = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            blank.append((tok.start, tok.end))
        elif tok.type == tokenize.STRING and previous in (
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.NL,
        ):
            blank.append((tok.start, tok.end))  # a statement that is a string: a docstring
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            previous = tok.type
    for (row, col), (end_row, end_col) in blank:
        for r in range(row, end_row + 1):
            line = lines[r - 1]
            start = col if r == row else 0
            stop = end_col if r == end_row else len(line)
            lines[r - 1] = line[:start] + " " * (stop - start) + line[stop:]
    return lines


_ANY_RULE = re.compile("|".join(f"(?:{pattern})" for pattern, _home in RULES.values()))


def find_restated(src: Path) -> dict[str, list[str]]:
    """Every place under ``src`` that holds a limit outside its one home, by rule."""
    found: dict[str, list[str]] = {rule: [] for rule in RULES}
    for path in sorted(src.rglob("*.py")):
        for number, line in enumerate(_code_lines(path.read_text()), 1):
            if not _ANY_RULE.search(line):  # (most lines: one search, not one per rule)
                continue
            for rule, (pattern, home) in RULES.items():
                if path.relative_to(src).as_posix() != home and re.search(pattern, line):
                    found[rule].append(f"{path.relative_to(src)}:{number}: {line.strip()}")
    return found


def test_every_limit_has_one_home() -> None:
    restated = {rule: places for rule, places in find_restated(SRC).items() if places}
    assert not restated, (
        f"limits restated outside _core/limits.py (import them from there): {restated}"
    )


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_finds_its_home(rule: str) -> None:
    # the rule is not vacuous: it finds the definition in the one file allowed to hold it
    pattern, home = RULES[rule]
    assert any(re.search(pattern, line) for line in _code_lines((SRC / home).read_text()))


@pytest.mark.parametrize(
    "line",
    [
        "_MAX_INT: Final = (1 << 63) - 1",
        "if not 0 <= n <= 2**63 - 1:",
        "if len(name) > 255:",
        'raise InvalidRequest("a topic is 1 to 255 characters")',
        "MAX_HEADER = 16 * 1024",
        "_MAX_TOUCH: Final = 4096",
        "blocks = list(itertools.islice(touched, 4096))",
        "names = names[:4096]",
        'if mode not in ("r", "w"):',
        "if mode not in {'r', 'w'}:",
        "MAX_TOPIC = MAX_NAME",
        "_NAME_LIMIT = 255",
    ],
)
def test_the_scan_finds_a_restated_limit(tmp_path: Path, line: str) -> None:
    (tmp_path / "_module.py").write_text(f"def f():\n    {line}\n")
    assert any(find_restated(tmp_path).values())


@pytest.mark.parametrize(
    "line",
    [
        "min_block: int = 4096",
        "CTL_SIZE: Final = 4096",
        "MIN_CHANNEL = CTL_SIZE + 4096",
        "data = bytes(range(1, 256)) * (n // 255 + 1)",
        'def lease(self, mode: Literal["r", "w"] = "r"): ...',
        "if len(self._senders) >= 1024:",
        "# a comment may say 1 << 63 and len(name) > 255",
        "MAX_INT_SEEN = MAX_INT",
        '"""A docstring may say ("r", "w") and 16 * 1024."""',
    ],
)
def test_the_scan_leaves_other_numbers_alone(tmp_path: Path, line: str) -> None:
    (tmp_path / "_module.py").write_text(f"def f():\n    {line}\n")
    assert not any(find_restated(tmp_path).values())
