"""The cluster key: the secret shared by the pools, brokers and workers of glimpse's own transports.

Whoever holds the key can run code on the workers, so it is read from a file only its owner can
read, or from the environment, and never appears in a log, ``repr``, message, command line or
pickle. Where it comes from, first that applies:

1. ``key=`` (the key itself) or ``key_file=`` given to ``MakePool``, ``--key-file`` given to a verb;
2. ``$GLIMPSE_CLUSTER_KEY`` (the key itself, hex or base64);
3. ``$GLIMPSE_CLUSTER_KEY_FILE`` (a file holding it);
4. the default key file, ``$XDG_CONFIG_HOME/glimpse/cluster.key`` (``~/.config/glimpse/cluster.key``),
   which the zmq ``LaunchBroker`` and the gearman ``LaunchWorker`` create (256 random bits, mode 0600)
   when no key is given.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from glimpse.pools.errors import AuthenticationError

log = logging.getLogger(__name__)

KEY_VARIABLE = "GLIMPSE_CLUSTER_KEY"
KEY_FILE_VARIABLE = "GLIMPSE_CLUSTER_KEY_FILE"
KEY_BYTES = 32
#: The ``source`` of a key read from the ``key_file`` a caller gave.
KEY_FILE_ARGUMENT = "the key file argument"
_MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class ClusterKey:
    """A cluster key and where it came from (``source``, for messages; the key itself is never shown).

    ``file`` is the key file it was read from, if any: a pickled pool refers to that file (or to
    the environment), not to the key.
    """

    secret: bytes = field(repr=False)
    source: str
    file: str | None = None

    def __repr__(self) -> str:
        return f"<ClusterKey from {self.source}>"

    def __reduce__(self):
        raise TypeError(f"a cluster key is not pickled (it came from {self.source}); pickle where it comes from")


#: The key of a transport started with ``--insecure``: messages are not signed, and anyone who reaches
#: the broker can run code on its workers. Both ends must say ``--insecure``.
INSECURE = ClusterKey(b"", "--insecure (no key: messages are not signed)")


def insecure_key(what: str) -> ClusterKey:
    """:data:`INSECURE`, with the warning every start with ``--insecure`` logs."""
    log.warning(
        "%s runs with --insecure: its messages are not signed, and anyone who can reach the broker can run "
        "code on its workers",
        what,
    )
    return INSECURE


def generate_key(source: str = "a random key of this pool") -> ClusterKey:
    """A new random 256-bit key (an embedded cluster makes one and hands it to its processes)."""
    return ClusterKey(secrets.token_bytes(KEY_BYTES), source)


def default_key_file() -> Path:
    """The per-user key file ``LaunchBroker`` creates when no key is given."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "glimpse" / "cluster.key"


def resolve_key(key: str | bytes | None = None, key_file: str | os.PathLike | None = None) -> ClusterKey:
    """The cluster key from the first source that names one (see the module's docstring).

    Raises ``AuthenticationError`` when no source has a key, saying where to put one.
    """
    if key is not None and key_file is not None:
        raise ValueError("give key= or key_file=, not both")
    if key is not None:
        return ClusterKey(_decode(key, "the key argument"), "the key argument")
    if key_file is not None:
        return read_key_file(key_file, KEY_FILE_ARGUMENT)
    if os.environ.get(KEY_VARIABLE):
        return ClusterKey(_decode(os.environ[KEY_VARIABLE], f"${KEY_VARIABLE}"), f"${KEY_VARIABLE}")
    if os.environ.get(KEY_FILE_VARIABLE):
        return read_key_file(os.environ[KEY_FILE_VARIABLE], f"${KEY_FILE_VARIABLE}")
    path = default_key_file()
    if path.exists():
        return read_key_file(path, "the default key file")
    raise AuthenticationError(
        f"no cluster key: none of the key argument, ${KEY_VARIABLE}, ${KEY_FILE_VARIABLE} or the default key "
        f"file {path} names one. `glimpse-cluster --type zmq LaunchBroker` and `glimpse-cluster --type gearman "
        f"LaunchWorker` create {path} when there is no key; copy it (mode 600) to this machine, or set "
        f"${KEY_FILE_VARIABLE} to its path"
    )


def key_for_broker(key_file: str | os.PathLike | None = None) -> ClusterKey:
    """The key a broker uses: as :func:`resolve_key`, but the default key file is created if missing."""
    if key_file is None and not os.environ.get(KEY_VARIABLE) and not os.environ.get(KEY_FILE_VARIABLE):
        path = default_key_file()
        if not path.exists():
            create_key_file(path)
    return resolve_key(key_file=key_file)


def create_key_file(path: str | os.PathLike) -> Path:
    """Write a new random 256-bit key (hex) to ``path``, readable by its owner only; its directory too.

    The key appears at ``path`` whole or not at all (written aside, then linked), and a file that
    another process created first is left as it is: both then use that one.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(KEY_BYTES) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
    finally:
        draft.unlink()
    return path


def read_key_file(path: str | os.PathLike, source: str) -> ClusterKey:
    """The key in ``path``; refused (as ssh refuses a private key) if others may read the file."""
    path = Path(path).expanduser()
    where = f"{source} ({path})"
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read(4096)
    except OSError as exc:
        raise AuthenticationError(f"cannot read the cluster key file {where}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthenticationError(
            f"the cluster key file {where} can be read by other users (mode {stat.S_IMODE(mode):o}): "
            f"anyone who reads it can run code on the workers. Run `chmod 600 {path}`"
        )
    return ClusterKey(_decode(text, where), where, str(path))


def _decode(text: str | bytes, source: str) -> bytes:
    """A key written as hex or base64 (surrounding whitespace ignored), at least 128 bits."""
    text = text.strip() if isinstance(text, (str, bytes)) else text
    if isinstance(text, str):
        text = text.encode()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        try:
            secret = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AuthenticationError(f"the cluster key from {source} is neither hex nor base64") from None
    if len(secret) < _MIN_KEY_BYTES:
        raise AuthenticationError(
            f"the cluster key from {source} has {len(secret) * 8} bits; use at least {_MIN_KEY_BYTES * 8} "
            f"(`python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return secret


def key_environment(key: ClusterKey) -> dict[str, str]:
    """Environment entries that hand ``key`` to a child process (never put it on a command line)."""
    return {KEY_VARIABLE: key.secret.hex(), KEY_FILE_VARIABLE: ""}
