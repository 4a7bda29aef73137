"""One command for the demo: ``blockipc serve`` and ``uvicorn --workers 2`` side by side.

    python examples/web_cache/run.py [--port 8000] [--workers 2]

Then ``curl localhost:8000/value/a`` (slow the first time, fast after, from either
worker) and ``curl localhost:8000/stats``. Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"blockipc serve exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise SystemExit(f"blockipc serve did not listen on {path} within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool-size", default="256MiB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="web-cache-") as tmp:
        sock = Path(tmp) / "coordinator.sock"
        env = {**os.environ, "BLOCKIPC_ADDRESS": str(sock)}
        # its own session: a Ctrl-C in the terminal reaches uvicorn only, and the
        # coordinator is stopped after the workers have closed their clients
        serve = subprocess.Popen(
            [sys.executable, "-m", "blockipc", "serve", "--socket", str(sock),
             "--pool-size", args.pool_size],
            start_new_session=True,
        )  # fmt: skip
        web: subprocess.Popen[bytes] | None = None
        try:
            wait_for_socket(sock, serve)
            web = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(HERE),
                 "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)],
                env=env,
            )  # fmt: skip
            print(f"serving on http://{args.host}:{args.port}/value/KEY and /stats; Ctrl-C stops")
            return web.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            for proc in (web, serve):  # web first: its workers say goodbye to the coordinator
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
