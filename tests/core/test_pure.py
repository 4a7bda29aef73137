"""The pure modules decide and never do I/O: they import, and the protocol and the
link's configuration run, with every I/O module blocked.

Every module of ``blockipc._core`` is pure and is found by walking the folder, so a module
added there is checked at once; a few pure modules outside it are listed. The
modules are imported into a stub ``blockipc`` package, so that ``blockipc/__init__.py``
(which imports the client, the coordinator and the link) never runs.
"""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

from _procs import ROOT

SRC = ROOT / "src" / "blockipc"

CORE = tuple(
    sorted(f"_core.{path.stem}" for path in (SRC / "_core").glob("*.py") if path.stem != "__init__")
)
# pure modules outside the core: public values, the LRU cache, the link's host Protocols
PURE = (
    "_core",
    *CORE,
    "cache",  # the LRU cache
    "_link.host",  # what the link needs from the coordinator (Protocols)
    "_exceptions",
    "_types",
    "_address",
)
BLOCKED = ("asyncio", "socket", "selectors", "anyio", "trio", "uvloop", "zmq", "mmap")

SCRIPT = """
import importlib, sys, types

blocked, modules = sys.argv[2].split(","), sys.argv[3].split(",")
for name in blocked:
    sys.modules[name] = None  # import raises ImportError
package = types.ModuleType("blockipc")
package.__path__ = [sys.argv[1]]
sys.modules["blockipc"] = package
for name in modules:
    module = importlib.import_module(f"blockipc.{name}")
    assert module.__file__.startswith(sys.argv[1]), module.__file__
# and they run so: a handshake through the protocol, a link configuration checked
protocol = sys.modules["blockipc._core.protocol"]
client = protocol.Connection(protocol.Role.CLIENT)
server = protocol.Connection(protocol.Role.SERVER)
args = {"version": 1, "name": "a", "pid": 1, "inbox_messages": 8, "inbox_bytes": 8, "access": "r"}
hello = protocol.Request(1, protocol.Op.HELLO, args)
server.receive_data(client.send(hello))
assert server.next_event() == hello
linkwire = sys.modules["blockipc._core.linkwire"]
assert linkwire.make_config("a", "tcp://127.0.0.1:0", {}, None, 1.0, False)
leaked = sorted(name for name in blocked if sys.modules.get(name) is not None)
assert not leaked, leaked
print("pure:", len(modules))
"""


def _import(modules: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    lists = [",".join(BLOCKED), ",".join(modules)]
    return subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c", SCRIPT, str(SRC), *lists],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_core_is_found() -> None:
    assert len(CORE) >= 8, CORE


def test_every_pure_module_imports_without_io() -> None:
    result = _import(PURE)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pure: {len(PURE)}\n"


@pytest.mark.parametrize("module", ["_shm.pool", "_client.client", "_server.coordinator"])
def test_the_check_sees_an_io_module(module: str) -> None:
    # the blocking works: a module that does I/O fails to import
    result = _import((*PURE, module))
    assert result.returncode != 0
    assert "halted; None in sys.modules" in result.stderr


@pytest.mark.parametrize("module", PURE)
def test_the_examples_in_its_docstrings_hold(module: str) -> None:
    results = doctest.testmod(importlib.import_module(f"blockipc.{module}"))
    assert results.failed == 0, results
