"""CURVE keys of the nodes: ``blockipc keygen`` and loading a node's key directory.

A key directory holds, in pyzmq's certificate format (``zmq.auth.create_certificates``),
the key pair of this node (``NAME.key`` and ``NAME.key_secret``) and the public key of
every peer it trusts (``PEER.key``). The same directory can be copied to every host
minus the other nodes' secret files: a node reads only its own secret file.

The secret file is created with mode 0600 before a byte of the key is written to it,
and a node refuses to start from a secret file that other users may read, as ssh does.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth

from .._core.limits import check_node_name
from .._exceptions import BlockIPCError

__all__ = ["NodeKeys", "keygen", "load_keys"]


def keygen(
    name: str, directory: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, Path]:
    """Write a CURVE key pair for node ``name`` into ``directory``.

    Returns ``(public_file, secret_file)``: ``DIR/NAME.key`` and ``DIR/NAME.key_secret``
    (mode 0600). An existing pair is kept unless ``force=True``. The command line is
    ``blockipc keygen NAME --dir DIR``::

        >>> keygen("a", "keys/")           # doctest: +SKIP
        (PosixPath('keys/a.key'), PosixPath('keys/a.key_secret'))
    """
    check_node_name(name)
    if not zmq.has("curve"):  # pragma: no cover - pyzmq wheels are built with libsodium
        raise BlockIPCError("this libzmq has no CURVE support")
    root = Path(directory)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = root / f"{name}.key", root / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise BlockIPCError(f"keys for {name!r} already exist in {root}; pass force to replace")
    # Create the secret file 0600 first: create_certificates opens it with "w", which
    # keeps the mode of an existing file, so the key is never readable by others.
    secret.unlink(missing_ok=True)
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    made_public, made_secret = zmq.auth.create_certificates(root, name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """A node's key pair and the public keys it trusts, all z85-encoded (40 bytes)."""

    node: str
    public: bytes
    secret: bytes = field(repr=False)
    trusted: dict[str, bytes]
    """Node name -> public key of every ``*.key`` in the directory (this node's too)."""

    def node_of(self, public_key: bytes) -> str | None:
        """The trusted node whose public key is ``public_key`` (z85), if any."""
        for name, key in self.trusted.items():
            if key == public_key:
                return name
        return None


def load_keys(directory: str | os.PathLike[str], node: str) -> NodeKeys:
    """Load ``node``'s key pair and every trusted public key from ``directory``.

    :raises BlockIPCError: when the directory or ``NODE.key_secret`` is missing or
        unreadable, or when the secret file may be read by other users.
    """
    root = Path(directory)
    if not root.is_dir():
        raise BlockIPCError(f"key directory {root} does not exist")
    secret_file = root / f"{node}.key_secret"
    try:
        mode = secret_file.stat().st_mode
    except FileNotFoundError:
        raise BlockIPCError(
            f"no secret key for node {node!r}: {secret_file} is missing "
            f"(create it with `blockipc keygen {node} --dir {root}`)"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BlockIPCError(
            f"{secret_file} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {secret_file}`"
        )
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise BlockIPCError(f"cannot read the key pair in {secret_file}: {exc}") from exc
    if secret is None:
        raise BlockIPCError(f"{secret_file} holds no secret key")
    trusted: dict[str, bytes] = {}
    for path in sorted(root.glob("*.key")):
        try:
            key, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise BlockIPCError(f"cannot read the public key in {path}: {exc}") from exc
        trusted[path.stem] = key
    return NodeKeys(node, public, secret, trusted)
