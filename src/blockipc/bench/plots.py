"""The PNG plots of ``blockipc bench --plot DIR``: latency and throughput against the
alternatives, drawn from the same metrics the tables print (matplotlib, the ``bench``
extra; imported only when asked for)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["pyplot", "write_plots"]

LATENCY: dict[str, str] = {
    "read_blockipc": "blockipc routed read",
    "ping_raw": "raw uvloop socket",
    "ping_zmq": "pyzmq DEALER/ROUTER",
}
"""The round-trip metrics drawn, in order, with their labels."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (also benchmarks/*.py --plot).

    :raises RuntimeError: if matplotlib is not installed (``blockipc[bench]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'blockipc[bench]'") from exc
    return plt


def write_plots(
    metrics: Mapping[str, Any],
    directory: str | Path,
    *,
    sizes: Sequence[int],
    labels: Mapping[str, str],
) -> list[Path]:
    """Write ``latency.png`` (median and p99 round trips, 64 B) and ``throughput.png``
    (bytes/s against payload size, one line per contender of ``labels``) into
    ``directory`` for the parts ``metrics`` holds; return the files written.

    :raises RuntimeError: if matplotlib is not installed (``blockipc[bench]``).
    """
    plt = pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    drawn = {k: v for k, v in LATENCY.items() if k in metrics}
    if drawn:
        fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
        ys = range(len(drawn))
        ax.barh(
            [y + 0.2 for y in ys], [metrics[k]["median_us"] for k in drawn], 0.4, label="median"
        )
        ax.barh([y - 0.2 for y in ys], [metrics[k]["p99_us"] for k in drawn], 0.4, label="p99")
        ax.set_yticks(list(ys), list(drawn.values()))
        ax.invert_yaxis()
        ax.set(title="64 B round trip (lower is better)", xlabel="µs")
        ax.legend()
        written.append(out / "latency.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    tp = metrics.get("throughput")
    if tp:
        fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
        for contender, label in labels.items():
            keys = [(s, f"{contender}@{s}") for s in sizes]
            points = [(s, tp[key]["bytes_per_s"]) for s, key in keys if key in tp]
            if points:
                ax.plot([s for s, _ in points], [r / 1e9 for _, r in points], "o-", label=label)
        ax.set(
            title="producer -> consumer throughput (higher is better)",
            xlabel="payload bytes",
            ylabel="GB/s",
            xscale="log",
            yscale="log",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        written.append(out / "throughput.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
