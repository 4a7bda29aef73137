"""Remote send in one command: two coordinators (nodes ``a`` and ``b``) linked on
loopback, a producer on ``a`` sending to ``b/consumer``, a consumer on ``b``.

Each coordinator is a ``blockipc serve`` process of its own, as it would be on two
hosts, linked with CURVE authentication and encryption: by default with the keys each
node makes in this user's key directory, with ``--curve`` with a key pair per node made
by ``blockipc keygen`` in a directory of the run's own. The producer and consumer are
the scripts of the local example (``examples/producer.py`` and
``examples/consumer.py``): a remote send differs only by the receiver's name,
``--to b/consumer``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent
BLOCKIPC = [sys.executable, "-m", "blockipc", "--log-level", "warning"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_socket(path: Path, server: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if server.poll() is not None:
            raise SystemExit(f"run: coordinator for {path.name} exited ({server.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"run: coordinator for {path.name} did not start")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="blocks to send")
    parser.add_argument("--sizes", default="64,4096,1048576,16777216")
    parser.add_argument(
        "--curve",
        action="store_true",
        help="a key directory of its own (blockipc keygen), not the user's default one",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="blockipc-remote-"))
    port = free_port()
    servers: list[subprocess.Popen[bytes]] = []
    clients: list[subprocess.Popen[bytes]] = []
    try:
        keys: dict[str, list[str]] = {"a": [], "b": []}
        if args.curve:
            for node in ("a", "b"):
                subprocess.run([*BLOCKIPC, "keygen", node, "--dir", str(tmp / "keys")], check=True)
            keys = {node: ["--keys", str(tmp / "keys")] for node in ("a", "b")}
        common = ["serve", "--pool-size", "64MiB", "--link-timeout", "5"]
        b_sock, a_sock = tmp / "b.sock", tmp / "a.sock"
        listen = ["--listen", f"tcp://127.0.0.1:{port}"]
        peer = ["--peer", f"b=tcp://127.0.0.1:{port}"]
        servers.append(
            subprocess.Popen(
                [*BLOCKIPC, *common, "--socket", str(b_sock), "--node", "b", *listen, *keys["b"]]
            )
        )
        servers.append(
            subprocess.Popen(
                [*BLOCKIPC, *common, "--socket", str(a_sock), "--node", "a", *peer, *keys["a"]]
            )
        )
        wait_for_socket(b_sock, servers[0])
        wait_for_socket(a_sock, servers[1])
        print(f"run: node a ({a_sock}) -> node b ({b_sock}, tcp://127.0.0.1:{port})", flush=True)
        where = tmp / "keys" if args.curve else "this user's default key directory"
        print(f"run: link CURVE (keys in {where})")
        count = ["--count", str(args.count)]
        send = ["--to", "b/consumer", "--sizes", args.sizes, *count]
        clients.append(
            subprocess.Popen(
                [sys.executable, str(EXAMPLES / "consumer.py"), "--socket", str(b_sock), *count]
            )
        )
        clients.append(
            subprocess.Popen(
                [sys.executable, str(EXAMPLES / "producer.py"), "--socket", str(a_sock), *send]
            )
        )
        codes = [proc.wait(timeout=60) for proc in reversed(clients)]
        return 0 if codes == [0, 0] else 1
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
