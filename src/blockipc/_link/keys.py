"""CURVE keys of the nodes: ``blockipc keygen`` and loading a node's key directory.

A key directory holds, in pyzmq's certificate format (``zmq.auth.create_certificates``),
the key pair of this node (``NAME.key`` and ``NAME.key_secret``) and the public key of
every peer it trusts (``PEER.key``). The same directory can be copied to every host
minus the other nodes' secret files: a node reads only its own secret file.

The secret file is created with mode 0600 before a byte of the key is written to it,
and a node refuses to start from a secret file that other users may read, as ssh does.

*The default directory.* A node given no ``keys`` (and not ``insecure``) uses this
user's key directory, :func:`default_key_dir` (``$BLOCKIPC_KEYS``, else
``$XDG_CONFIG_HOME/blockipc/keys``, else ``~/.config/blockipc/keys``), and
:func:`ensure_keys` makes it (mode 0700) and this node's key pair in it at the node's
first start, as ssh makes its host keys. Every node of this user on this host then
trusts every other (their public keys are side by side in the directory); another user,
who can read neither the directory nor a secret in it, is refused. A directory that
other users may enter is refused: whoever can write to it could add a trusted key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import zmq
import zmq.auth

from .._core.limits import check_node_name
from .._exceptions import BlockIPCError

__all__ = [
    "KEYS_ENV",
    "NodeKeys",
    "default_key_dir",
    "ensure_keys",
    "keygen",
    "load_keys",
    "load_trusted",
]

KEYS_ENV: Final = "BLOCKIPC_KEYS"
"""The environment variable that names the default key directory (tests point it at a
temporary one)."""


def default_key_dir() -> Path:
    """This user's key directory, for a node started without ``keys``.

    ``$BLOCKIPC_KEYS`` when set, else ``$XDG_CONFIG_HOME/blockipc/keys`` (an absolute
    ``XDG_CONFIG_HOME`` only, as the XDG spec says), else ``~/.config/blockipc/keys``.
    """
    chosen = os.environ.get(KEYS_ENV)
    if chosen:
        return Path(chosen)
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "blockipc" / "keys"


def ensure_keys(directory: str | os.PathLike[str], node: str) -> None:
    """Make ``directory`` (mode 0700) and ``node``'s key pair in it, unless there.

    Safe against nodes starting at once: the pair is written in a private temporary
    directory and its secret file linked into place (one node wins, the others use its
    pair); the public file follows, so a reader may briefly see the secret without it.

    :raises BlockIPCError: when the directory is not this user's or other users may
        enter it (whoever can write to it could add a key it trusts).
    """
    check_node_name(node)
    root = Path(directory)
    probe = root.absolute()
    while not probe.is_dir() and probe != probe.parent:  # (the directory may be made below)
        probe = probe.parent
    name_max = os.pathconf(probe, "PC_NAME_MAX")
    if len(os.fsencode(f"{node}.key_secret")) > name_max:  # the file system's NAME_MAX
        raise BlockIPCError(
            f"node name {node[:20]!r}... is too long for its key file ({node}.key_secret "
            f"must fit in {name_max} bytes): use a shorter name, or insecure=True (a plain "
            "link)"
        )
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = root.stat()
    except OSError as exc:
        raise BlockIPCError(f"cannot make the key directory {root}: {exc}") from exc
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BlockIPCError(
            f"the key directory {root} is not private to this user (owner uid {st.st_uid}, "
            f"mode {stat.S_IMODE(st.st_mode):04o}): other users could add a key it trusts; "
            f"run `chmod 700 {root}` or pass keys=DIR"
        )
    secret = root / f"{node}.key_secret"
    if secret.exists():
        return
    scratch = Path(tempfile.mkdtemp(prefix=".keygen-", dir=root))
    try:
        made_public, made_secret = keygen(node, scratch)
        with contextlib.suppress(FileExistsError):  # another node made it meanwhile
            os.link(made_secret, secret)
            os.replace(made_public, root / f"{node}.key")
    except OSError as exc:
        raise BlockIPCError(f"cannot write {node}'s key pair in {root}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    return NodeKeys(node, public, secret, load_trusted(root))


def load_trusted(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Node name -> public key (z85) of every ``NAME.key`` in ``directory``.

    :raises BlockIPCError: when a public key file cannot be read.
    """
    trusted: dict[str, bytes] = {}
    for path in sorted(Path(directory).glob("*.key")):
        try:
            key, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise BlockIPCError(f"cannot read the public key in {path}: {exc}") from exc
        trusted[path.stem] = key
    return trusted
