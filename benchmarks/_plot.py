"""matplotlib for the benchmarks' ``--plot`` (the ``bench`` extra), headless."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or exit saying which extra to install."""
    from blockipc.bench.plots import pyplot as _pyplot

    try:
        return _pyplot()
    except RuntimeError as exc:
        sys.exit(str(exc))


def save(fig: Any, path: str) -> None:
    """Write ``fig`` to ``path`` (its folder made if need be) and say so."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
