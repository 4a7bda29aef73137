"""``python -m blockipc``: the same as the ``blockipc`` command."""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
