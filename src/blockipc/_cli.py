"""The ``blockipc`` command line: ``serve``, ``stats`` and ``bench``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import anyio

from ._address import ADDRESS_ENV, coordinator_address
from ._client.client import connect
from ._core.linkwire import IO_NICE
from ._core.sizes import format_size, parse_size
from ._exceptions import BlockIPCError
from ._log import configure_logging, get_logger
from ._runtime import run
from ._server.coordinator import Coordinator
from ._types import Stats
from ._version import __version__

if TYPE_CHECKING:
    from .metrics import MetricsServer

__all__ = ["main"]

log = get_logger("blockipc.cli")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except BlockIPCError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _socket(text: str) -> str:
    # argparse passes the default ("") through here too: no --socket means $BLOCKIPC_ADDRESS
    try:
        return coordinator_address(text, given_as="--socket")
    except BlockIPCError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockipc", description="asyncio inter-process communication over shared memory"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="blockipc's events printed to stderr from this level on (default: info)",
    )
    parser.add_argument(
        "--log-json", action="store_true", help="print the events as JSON lines (to stderr)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a standalone coordinator until SIGINT/SIGTERM")
    serve.add_argument(
        "--socket",
        type=_socket,
        default="",
        help=f"Unix socket path clients connect to (default: ${ADDRESS_ENV})",
    )
    serve.add_argument("--pool-size", type=_size, default="256MiB", help="e.g. 256MiB (default)")
    serve.add_argument("--max-pool-size", type=_size, default=None, help="grow up to this size")
    serve.add_argument(
        "--min-block", type=_size, default=4096, help="smallest block (power of two, page aligned)"
    )
    serve.add_argument(
        "--metrics",
        type=_metrics_address,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (host default 127.0.0.1; "
        "needs prometheus-client: pip install 'blockipc[metrics]')",
    )
    quotas = serve.add_argument_group("quotas (off unless given)")
    quotas.add_argument(
        "--max-client-bytes", type=_size, default=None, help="bytes of blocks one client may hold"
    )
    quotas.add_argument(
        "--max-client-blocks", type=int, default=None, help="blocks one client may hold"
    )
    quotas.add_argument(
        "--max-connections", type=int, default=None, help="clients connected at once"
    )
    link = serve.add_argument_group(
        "remote sends", "link this coordinator to coordinators on other hosts (pyzmq, tcp://)"
    )
    link.add_argument("--node", help="this node's name; remote senders appear as NODE/NAME")
    link.add_argument(
        "--listen", metavar="tcp://HOST:PORT", help="accept links from peers here (port 0: any)"
    )
    link.add_argument(
        "--peer",
        action="append",
        default=[],
        type=_peer,
        metavar="NAME=tcp://HOST:PORT",
        help="a node to send to (repeatable)",
    )
    link.add_argument(
        "--keys",
        metavar="DIR",
        help="CURVE keys (blockipc keygen): NODE.key_secret, and PEER.key of every trusted peer "
        "(default: this user's key directory, $BLOCKIPC_KEYS or ~/.config/blockipc/keys, "
        "made with this node's pair at its first start)",
    )
    link.add_argument(
        "--link-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a send to a node unreachable this long fails (default 5)",
    )
    link.add_argument(
        "--link-io-nice",
        type=int,
        default=IO_NICE,
        metavar="N",
        help="added to the nice value of the link's I/O thread on a listening node, 0-19 "
        f"(default {IO_NICE}; 0: unchanged)",
    )
    link.add_argument(
        "--insecure",
        action="store_true",
        help="a plain link (no --keys): unauthenticated and unencrypted, open to anyone who "
        "reaches the port, any local user included",
    )

    keygen = sub.add_parser("keygen", help="write a node's CURVE key pair (pyzmq's format)")
    keygen.add_argument("name", help="the node name: writes NAME.key and NAME.key_secret (0600)")
    keygen.add_argument(
        "--dir",
        help="the key directory, created 0700 (default: this user's, $BLOCKIPC_KEYS or "
        "~/.config/blockipc/keys)",
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")

    stats = sub.add_parser("stats", help="print a running coordinator's pool statistics")
    stats.add_argument(
        "--socket",
        type=_socket,
        default="",
        help=f"the coordinator's socket path (default: ${ADDRESS_ENV})",
    )
    stats.add_argument("--name", default=f"stats-{os.getpid()}", help="process name to register")
    stats.add_argument(
        "--json", action="store_true", help="print one JSON object (Stats, field by field)"
    )
    live = stats.add_argument_group("live view", "needs rich: pip install 'blockipc[watch]'")
    live.add_argument(
        "--watch",
        action="store_true",
        help="a live view of the pool (segments, used, fragmentation), each process (blocks, "
        "bytes, leases, inbox, requests per second), the cache's hit rate, links and queues, "
        "redrawn every --interval seconds until Ctrl-C (exit 0)",
    )
    live.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help="seconds between samples of --watch (default 1); the rates are per second",
    )
    live.add_argument(
        "--once",
        action="store_true",
        help="with --watch: print the view once (two samples --interval apart) and exit",
    )

    sub.add_parser(
        "bench",
        help="benchmark against the alternatives (see benchmarks/README.md)",
        add_help=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.epilog = (
        f"environment: {ADDRESS_ENV} is the coordinator's socket path for serve and stats "
        "(and blockipc.asgi.lifespan) when --socket is not given"
    )
    return parser


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0.05 <= seconds <= 3600:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected seconds from 0.05 to 3600, not {text!r}")
    return seconds


def _metrics_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _peer(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    if not sep or not name or not address:
        raise argparse.ArgumentTypeError(f"expected NAME=tcp://HOST:PORT, not {text!r}")
    return name, address


def _metrics_server_class() -> type[MetricsServer]:
    try:
        from .metrics import MetricsServer
    except ImportError as exc:  # the extra is not installed: the message names it
        raise BlockIPCError(str(exc)) from None
    return MetricsServer


async def _serve(args: argparse.Namespace) -> int:
    # a missing prometheus-client fails here, before the pool or the socket exists
    metrics_server = None if args.metrics is None else _metrics_server_class()
    # signals are caught from before the socket exists: a SIGINT or SIGTERM that comes
    # while the coordinator starts still ends it cleanly (socket removed, exit 0)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Coordinator(
            args.socket,
            args.pool_size,
            args.max_pool_size,
            args.min_block,
            node=args.node,
            listen=args.listen,
            peers=dict(args.peer),
            keys=args.keys,
            link_timeout=args.link_timeout,
            insecure=args.insecure,
            link_io_nice=args.link_io_nice,
            max_client_bytes=args.max_client_bytes,
            max_client_blocks=args.max_client_blocks,
            max_connections=args.max_connections,
        ) as coord:
            async with contextlib.AsyncExitStack() as stack:
                if metrics_server is not None:
                    host, port = args.metrics
                    await stack.enter_async_context(metrics_server(coord, host, port))
                async for signum in signals:
                    log.info("coordinator.signal", signal=signal.Signals(signum).name)
                    break
            await coord.aclose()
    return 0


async def _stats(args: argparse.Namespace) -> int:
    if args.watch:
        return await _watch(args)
    async with connect(args.socket, name=args.name) as client:
        stats = await client.stats()
    stats = _without_process(stats, args.name)  # this command's own connection
    if args.json:
        print(json.dumps(dataclasses.asdict(stats)))
        return 0
    for line in _stats_lines(stats):
        print(line)
    return 0


def _watch_module() -> ModuleType:
    try:
        from . import _watch
    except ImportError as exc:  # rich is not installed: the message names the extra
        raise BlockIPCError(str(exc)) from None
    return _watch


async def _watch(args: argparse.Namespace) -> int:
    watch = _watch_module()  # before connecting: a missing rich fails at once
    async with connect(args.socket, name=args.name) as client:

        async def sample() -> Stats:
            return _without_process(await client.stats(), args.name)

        await watch.watch(
            sample,
            interval=args.interval,
            once=args.once,
            heading=f"blockipc stats {args.socket}",
        )
    return 0


def _without_process(stats: Stats, name: str) -> Stats:
    return dataclasses.replace(
        stats,
        processes=tuple(p for p in stats.processes if p != name),
        usage=tuple(u for u in stats.usage if u.name != name),
        processes_total=stats.processes_total - 1,  # counted, listed or not (past 4096)
    )


def _stats_lines(stats: Stats) -> Iterator[str]:
    """``blockipc stats`` for people: sizes in binary units, names comma-separated."""
    for field in dataclasses.fields(stats):
        if field.name in ("links", "usage", "queues"):  # a line per item, below
            continue
        value = getattr(stats, field.name)
        if isinstance(value, tuple):
            text = ", ".join(value) or "(none)"
        elif field.name.endswith(("_size", "_bytes")) or field.name == "largest_free":
            text = format_size(value)
        else:
            text = str(value)
        yield f"{field.name:16} {text}"
    for proc in stats.usage:  # one line per process: who holds the pool
        yield (
            f"process {proc.name} (pid {proc.pid}): {proc.blocks} blocks held, "
            f"{format_size(proc.owned_bytes)} owned, {proc.leases} leases, inbox {proc.inbox} "
            f"({format_size(proc.inbox_bytes)}), {proc.channels} channels, {proc.requests} requests"
        )
    for q in stats.queues:  # one line per work queue
        yield (
            f"queue {q.name}: {q.depth} waiting (maxsize {q.maxsize}), {q.in_flight} in "
            f"flight, {q.enqueued} enqueued, {q.acked} acked, {q.redelivered} redelivered, "
            f"{q.dead_lettered} dead-lettered"
        )
    for link in stats.links:  # one line per node of the link
        yield (
            f"link {link.node:11} {link.state}: queued {link.queued}, in flight "
            f"{link.in_flight}, sent {link.sent} ({format_size(link.sent_bytes)}), failed "
            f"{link.failed}, received {link.received} ({format_size(link.received_bytes)}), "
            f"refused {link.refused}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blockipc`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # bench has a parser of its own: the options before it are ours, the rest its
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    configure_logging(args.log_level, json=args.log_json)
    if args.command == "bench":
        from .bench.core import main as bench_main

        return bench_main(rest)
    try:
        if args.command == "serve":
            return run(lambda: _serve(args))
        if args.command == "keygen":
            from ._link.keys import default_key_dir, keygen

            where = default_key_dir() if args.dir is None else args.dir
            public, secret = keygen(args.name, where, force=args.force)
            print(f"public key: {public}\nsecret key: {secret} (mode 0600, keep it on this host)")
            return 0
        if args.once and not args.watch:
            parser.error("--once goes with --watch")
        if args.watch and args.json:
            parser.error("--watch and --json exclude each other")
        return run(lambda: _stats(args))
    except BlockIPCError as exc:
        print(f"blockipc {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before --watch's own handler was in place: still an end
        return 0 if args.command == "stats" and args.watch else 130
