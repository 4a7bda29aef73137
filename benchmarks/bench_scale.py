"""How cost grows with clients: aggregate routed requests/s and coordinator CPU.

    python benchmarks/bench_scale.py [--clients 1,2,4,8,16,32] [--seconds 2] [--plot F.png]

For each count of client processes, a ``blockipc serve`` is started in a process of its
own, and each client (a process of its own) allocates a 64 B block, then does routed
64 B reads back to back for ``--seconds`` from a common start signal. Reported: the sum
of the clients' round trips per second, the coordinator's CPU over the window (user +
system from ``/proc/<pid>/stat``, as a share of one CPU) and its CPU per request.

On a 2-CPU machine the aggregate rate cannot grow past the coordinator's one CPU; the
curve says whether it stays flat there (as it should) or falls as clients are added
(which would be a cost that grows with the number of processes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from _plot import pyplot, save  # noqa: E402

import blockipc  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def client(sock: str, seconds: float) -> None:
    """One client process: ready, wait for ``go`` on stdin, read for ``seconds``."""
    async with blockipc.connect(sock, name=f"c{os.getpid()}") as c:
        block = await c.alloc(64)
        for _ in range(50):
            await c.read(block, 0, 64)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            await c.read(block, 0, 64)
            n += 1
        print(n, flush=True)
        await c.free(block)


def run(clients: int, seconds: float) -> tuple[float, float]:
    """(requests/s summed over ``clients``, coordinator CPU share over the window)."""
    with tempfile.TemporaryDirectory(prefix="bipc-scale-") as tmp:
        sock = str(Path(tmp) / "c.sock")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        server = subprocess.Popen(
            [sys.executable, "-m", "blockipc", "serve", "--socket", sock, "--pool-size", "16MiB"],
            env=env,
            stderr=subprocess.DEVNULL,  # its log
        )
        procs: list[subprocess.Popen[str]] = []
        try:
            while not Path(sock).exists():
                time.sleep(0.05)
            cmd = [sys.executable, __file__, "_client", sock, str(seconds)]
            for _ in range(clients):
                p = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                procs.append(p)
            for p in procs:
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready"
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            total = 0
            for p in procs:
                assert p.stdout is not None
                total += int(p.stdout.readline())
            cpu, wall = cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
            return total / seconds, cpu / wall
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=30)
            server.terminate()
            server.wait(timeout=60)


def main() -> None:
    if sys.argv[1:2] == ["_client"]:
        blockipc.run(lambda: client(sys.argv[2], float(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,2,4,8,16,32", help="client process counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="window per count")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves (matplotlib)")
    args = parser.parse_args()
    print(f"{'clients':>7} {'requests/s':>11} {'coordinator CPU':>15} {'CPU µs/request':>14}")
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        rate, cpu = run(n, args.seconds)
        rows.append((n, rate, cpu))
        print(f"{n:>7} {rate:>11,.0f} {cpu:>14.0%} {cpu / rate * 1e6:>14.1f}", flush=True)
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[tuple[int, float, float]], path: str) -> None:
    """Requests/s and coordinator CPU against client processes."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
    xs = [n for n, _, _ in rows]
    left.plot(xs, [r for _, r, _ in rows], "o-")
    left.set(title="routed 64 B reads/s, all clients", xlabel="client processes", xscale="log")
    right.plot(xs, [c * 100 for _, _, c in rows], "o-")
    right.set(title="coordinator CPU (% of one CPU)", xlabel="client processes", xscale="log")
    for ax in (left, right):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(True, alpha=0.3)
    save(fig, path)


if __name__ == "__main__":
    main()
