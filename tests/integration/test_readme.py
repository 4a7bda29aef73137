"""Every fenced code block of README.md runs, or says here why it cannot.

``CHECKS`` names each block by its section heading and a piece of its text, and says
how it is checked. A block that no entry names fails the suite (so does an entry
that names no block), so a block added later needs its line here:

* ``script(expect=...)``: a whole program; it runs as a file in a scratch directory
  (``python -W error``) and must exit 0 printing ``expect`` and nothing else.
* ``fragment(HARNESS)``: Python that needs names around it; ``tests/_readme_harness.py``
  supplies them (clients of an embedded coordinator, ``frames``, ...) in a subprocess,
  runs the block as written and checks what it did.
* ``shell(not_here={PREFIX: REASON})``: each command line runs in a scratch directory
  with the venv's ``bin`` on ``PATH`` and must exit 0, except the lines that start with a
  listed prefix, which cannot run here for that reason.
* ``synopsis()``: a usage summary: every ``--option`` it shows must be in the
  ``--help`` of its ``blockipc`` subcommand.
* ``stats_sample()``: sample output of ``blockipc stats``; its lines name Stats' fields.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from _procs import ROOT

README = ROOT / "README.md"
HARNESS = ROOT / "tests" / "_readme_harness.py"
TIMEOUT = 45.0


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, text, first line (in README.md) and section."""

    lang: str
    text: str
    line: int
    section: str


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, each with the heading it sits under."""
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            section = heading.group(1).strip()
        fence = re.match(r"(`{3,}|~{3,})(\w*)", line)
        if fence:
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))),
                None,
            )
            assert end is not None, f"README.md:{i + 1}: the fence is never closed"
            blocks.append(Block(fence.group(2), "".join(lines[i + 1 : end]), i + 2, section))
            i = end
        i += 1
    return blocks


# -- how a block is checked ---------------------------------------------------------------
Check = Callable[[Block, Path], None]


def _env() -> dict[str, str]:
    """This tree's blockipc first, the venv's scripts (``blockipc``) on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own process group; on timeout the whole group is killed
    (a script's own children included)."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{argv} did not end in {TIMEOUT} s\n{out}\n{err}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr


def script(expect: str) -> Check:
    def check(block: Block, tmp: Path) -> None:
        assert block.lang == "python", block
        path = tmp / "readme_example.py"
        path.write_text(block.text)
        result = _run([sys.executable, "-W", "error", str(path)], tmp)
        _ok(result)
        # exactly what the example prints: blockipc itself adds nothing, on either stream
        assert result.stdout.strip() == expect, result.stdout
        assert result.stderr == "", result.stderr

    return check


def fragment(harness: str) -> Check:
    def check(block: Block, tmp: Path) -> None:
        assert block.lang == "python", block
        path = tmp / "readme_fragment.py"
        path.write_text(block.text)
        _ok(
            _run(
                [sys.executable, "-W", "error", str(HARNESS), harness, str(path), str(block.line)],
                tmp,
            )
        )

    return check


def _commands(block: Block) -> list[str]:
    """The block's command lines: comments and blank lines left out."""
    return [
        ln.strip()
        for ln in block.text.splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]


def shell(not_here: dict[str, str] | None = None) -> Check:
    skips = not_here or {}
    assert all(reason.strip() for reason in skips.values()), "every skipped line needs a reason"

    def check(block: Block, tmp: Path) -> None:
        assert block.lang in ("sh", "bash", "console", "shell"), block
        used = set()
        for command in _commands(block):
            prefix = next((p for p in skips if command.startswith(p)), None)
            if prefix is not None:
                used.add(prefix)
                continue
            _ok(_run(["bash", "-e", "-c", command], tmp))
        unused = set(skips) - used
        assert not unused, f"not_here names lines the block no longer has: {sorted(unused)}"

    return check


def synopsis() -> Check:
    def check(block: Block, tmp: Path) -> None:
        usages: dict[str, set[str]] = {}
        current = None
        for line in block.text.splitlines():
            start = re.match(r"blockipc(?: (\w+))?(?= |$)", line)
            if start:  # "blockipc SUB ..." or, for the top-level options, "blockipc --..."
                current = start.group(1) or ""
                usages.setdefault(current, set())
            assert current is not None, f"a synopsis line before any command: {line!r}"
            usages[current].update(re.findall(r"--[a-z][a-z-]*", line))
        assert usages, block
        for command, options in usages.items():
            result = _run(["blockipc", *filter(None, [command]), "--help"], tmp)
            _ok(result)
            missing = sorted(o for o in options if o not in result.stdout)
            assert not missing, f"blockipc {command} --help has no {missing}"

    return check


def stats_sample() -> Check:
    """A sample of ``blockipc stats``: its field lines are Stats' fields, in order (the
    format itself is checked against a live coordinator in tests/test_cli.py)."""

    def check(block: Block, tmp: Path) -> None:
        from blockipc import Stats

        shown = [
            line.split()[0]
            for line in block.text.splitlines()
            if line and not line.startswith(("process ", "link ", "queue "))
        ]
        fields = [
            f.name for f in dataclasses.fields(Stats) if f.name not in ("links", "usage", "queues")
        ]
        assert shown == fields, (shown, fields)

    return check


# -- every block of README.md, by (section heading, a piece of its text) ------------------
CHECKS: dict[tuple[str, str], Check] = {
    ("Quick start", "make demo"): shell(
        not_here={
            "make demo": "creates its own .venv and installs into it (network, minutes)",
            "make test": "runs this whole suite, this test included",
        }
    ),
    ("Install", "pip install blockipc"): shell(
        not_here={
            "pip install": "installs from PyPI (network); tests/integration/test_install.py checks "
            "each extra against pyproject.toml"
        }
    ),
    ("Two processes exchanging a block", "async def producer"): script(
        expect="producer {'kind': 'greeting'} b'hello'"
    ),
    ("Sharing and backpressure", 'send_many("consumer"'): fragment("inline"),
    ("Channels: streams without the coordinator", "open_channel"): fragment("channel"),
    ("Work queues", "declare_queue"): script(expect="[0, 2] {'image': 1} 0\n0 1 1"),
    ("Work queues", "enqueue_many"): script(expect="100 [0, 1, 4, 9] 100"),
    ("Request/reply", "adder.requests()"): script(
        expect="6\n'adder' failed the request: ValueError: numbers only"
    ),
    ("Objects, codecs and the cache", 'codec="numpy", name="weights"'): fragment("objects"),
    ("Command line", "blockipc serve"): synopsis(),
    ("Command line", "pool_size        256.0 MiB"): stats_sample(),
    ("Remote send", 'to="b/consumer"'): fragment("remote"),
    ("Remote send", 'get("b/weights")'): fragment("across_nodes"),
    ("Remote send", "blockipc keygen a --dir keys/"): shell(
        not_here={
            "blockipc serve": "10.0.0.2 is another host (the remote fragment runs both on loopback)"
        }
    ),
    ("Not async? / trio", "blockipc.sync.connect(address"): script(expect="14\n[1, 2, 3]"),
    ("Inside your application", "logging.basicConfig"): script(expect=""),
}

BLOCKS = readme_blocks(README.read_text())


def _matching(key: tuple[str, str]) -> list[Block]:
    section, piece = key
    return [b for b in BLOCKS if b.section == section and piece in b.text]


def test_every_block_has_a_check() -> None:
    assert BLOCKS, "no code blocks found in README.md"
    for block in BLOCKS:
        keys = [key for key in CHECKS if block in _matching(key)]
        assert len(keys) == 1, (
            f"README.md:{block.line} ({block.section!r}, {block.lang}) is named by {len(keys)} "
            f"entries of CHECKS in tests/integration/test_readme.py, not one: {keys}\n{block.text}"
        )
    for key in CHECKS:
        assert len(_matching(key)) == 1, f"CHECKS entry {key} names {len(_matching(key))} blocks"


@pytest.mark.parametrize("key", list(CHECKS), ids=[f"{s}: {p}" for s, p in CHECKS])
def test_block_runs(key: tuple[str, str], tmp_path: Path) -> None:
    blocks = _matching(key)
    assert len(blocks) == 1, f"{key} names {len(blocks)} blocks (see test_every_block_has_a_check)"
    CHECKS[key](blocks[0], tmp_path)
