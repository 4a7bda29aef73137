"""The version of blockipc: read from the installed package's metadata, so that it is
the version ``pyproject.toml`` declares and nothing else has to be kept in step."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__: str = version("blockipc")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
