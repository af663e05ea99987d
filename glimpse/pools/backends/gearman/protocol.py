"""The gearman protocol, as much as glimpse needs of it, over plain sockets.

A binary packet is a 12-byte header (``\\0REQ`` or ``\\0RES``, a type, a length) and arguments
separated by NUL bytes; the last argument is raw bytes and may itself contain NULs. The admin
protocol on the same port is text: ``status``, ``workers`` (lists ending in a ``.`` line),
``getpid``, ``version``. Every socket sets TCP_NODELAY (without it, Nagle's algorithm delays every job), and TCP
keepalive with a user timeout (:func:`keep_alive`), so a peer on a machine that went silent
breaks the connection in seconds, not after the ~15 minutes of the kernel's retransmissions.

No gearman client on the package index holds up on Python 3 (see the README), so this is the
package's own, like its ZeroMQ protocol.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from glimpse.pools.contract.watch import silence_timeout

REQ, RES = b"\0REQ", b"\0RES"
_HEADER = struct.Struct(">4sII")
DEFAULT_PORT = 4730

CAN_DO, PRE_SLEEP, NOOP, SUBMIT_JOB, JOB_CREATED = 1, 4, 6, 7, 8
NO_JOB, WORK_STATUS, WORK_COMPLETE, WORK_FAIL = 10, 12, 13, 14
ECHO_REQ, ECHO_RES, SUBMIT_JOB_BG, ERROR = 16, 17, 18, 19
WORK_EXCEPTION, WORK_DATA, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, SUBMIT_JOB_HIGH_BG = 25, 28, 30, 31, 32

#: How many arguments each packet type has (the last one may contain NULs).
ARGUMENTS = {
    CAN_DO: 1,
    PRE_SLEEP: 0,
    NOOP: 0,
    SUBMIT_JOB: 3,
    SUBMIT_JOB_BG: 3,
    SUBMIT_JOB_HIGH_BG: 3,
    JOB_CREATED: 1,
    NO_JOB: 0,
    WORK_STATUS: 3,
    WORK_COMPLETE: 2,
    WORK_FAIL: 1,
    WORK_EXCEPTION: 2,
    WORK_DATA: 2,
    ECHO_REQ: 1,
    ECHO_RES: 1,
    ERROR: 2,
    GRAB_JOB_UNIQ: 0,
    JOB_ASSIGN_UNIQ: 4,
}
CONNECT_SECONDS = 5.0
#: How much longer than ``$GLIMPSE_SILENCE_TIMEOUT`` a connection waits for its peer before it breaks.
#: TCP's retransmissions back off while a network is down: after a silence of S seconds the next one
#: may come up to S seconds after the network is back, so a blip just under the limit must survive that.
TCP_GRACE_SECONDS = 10.0
#: How often gearmand's keepalive (``LaunchBroker``) and ours probe an idle connection, in seconds.
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS = 10, 5


class ProtocolError(ConnectionError):
    """The peer sent something that is not gearman, or closed the connection."""


@dataclass
class Packet:
    kind: int
    arguments: list[bytes]


def pack(kind: int, *arguments: bytes, magic: bytes = REQ) -> bytes:
    """One packet: header and NUL-separated arguments."""
    body = b"\0".join(arguments)
    return _HEADER.pack(magic, kind, len(body)) + body


def parse_servers(text: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (a bare host means port 4730) as a list; ``ValueError`` if malformed."""
    servers = []
    for part in text.split(","):
        part = part.strip().removeprefix("gearman://")
        if not part:
            continue
        host, _, port = part.rpartition(":") if ":" in part else (part, "", str(DEFAULT_PORT))
        if not host or not port.isdigit():
            raise ValueError(f"bad gearman server address {part!r}: expected HOST:PORT, e.g. 127.0.0.1:4730")
        servers.append((host.strip("[]"), int(port)))
    if not servers:
        raise ValueError(f"no gearman server in {text!r}: expected HOST:PORT[,HOST:PORT...]")
    return servers


def format_servers(servers: list[tuple[str, int]]) -> str:
    return ",".join(f"{host}:{port}" for host, port in servers)


def connect(server: tuple[str, int], timeout: float = CONNECT_SECONDS) -> socket.socket:
    """A TCP connection to a gearman server, with TCP_NODELAY and :func:`keep_alive`; ``OSError`` if it
    does not answer."""
    sock = socket.create_connection(server, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keep_alive(sock)
    return sock


def peer_silence_limit() -> float:
    """Seconds a connection waits for a silent peer before it breaks: ``$GLIMPSE_SILENCE_TIMEOUT`` plus
    :data:`TCP_GRACE_SECONDS`, so a blip shorter than the silence limit never breaks one."""
    return silence_timeout() + TCP_GRACE_SECONDS


def keep_alive(sock: socket.socket) -> None:
    """Make ``sock`` notice a peer that went silent (a machine off the network) after :func:`peer_silence_limit`:
    keepalive probes while it is idle, and a user timeout while data it sent goes unacknowledged."""
    limit = peer_silence_limit()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", max(1, int((limit - KEEPALIVE_IDLE_SECONDS) // KEEPALIVE_INTERVAL_SECONDS))),
        ("TCP_USER_TIMEOUT", int(limit * 1000)),
    ):
        if hasattr(socket, option):  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class PacketReader:
    """Splits the bytes read from a connection into packets."""

    def __init__(self, magic: bytes = RES):
        self.magic = magic
        self.buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Packet]:
        self.buffer += data
        while len(self.buffer) >= _HEADER.size:
            magic, kind, size = _HEADER.unpack_from(self.buffer)
            if magic != self.magic:
                raise ProtocolError(f"not a gearman packet (starts with {bytes(self.buffer[:4])!r})")
            if len(self.buffer) < _HEADER.size + size:
                return
            body = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
            del self.buffer[: _HEADER.size + size]
            count = ARGUMENTS.get(kind, 1)
            arguments = body.split(b"\0", count - 1) if count else []
            if kind == WORK_FAIL and arguments:
                arguments[0] = arguments[0].rstrip(b"\0")  # a WORK_FAIL converted from WORK_EXCEPTION
            yield Packet(kind, arguments)


def admin(server: tuple[str, int], command: str, timeout: float = CONNECT_SECONDS) -> list[str]:
    """The lines a server answers to an admin command (``status``/``workers``: up to the ``.`` line)."""
    with connect(server, timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(command.encode() + b"\n")
        data = b""
        listing = command in ("status", "workers")
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if (listing and (data == b".\n" or data.endswith(b"\n.\n"))) or (not listing and data.endswith(b"\n")):
                break
    lines = data.decode(errors="replace").splitlines()
    if lines and lines[0].startswith("ERR"):
        raise ProtocolError(f"the gearman server at {server[0]}:{server[1]} answered {command!r} with {lines[0]}")
    return [line for line in lines if line != "."]


def status(server: tuple[str, int], timeout: float = CONNECT_SECONDS) -> dict[str, tuple[int, int, int]]:
    """Each function's (queued, running, available workers), from the admin ``status`` command."""
    table = {}
    for line in admin(server, "status", timeout):
        parts = line.split("\t")
        if len(parts) == 4 and all(part.isdigit() for part in parts[1:]):
            table[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return table


def worker_functions(server: tuple[str, int], timeout: float = CONNECT_SECONDS) -> list[list[str]]:
    """The functions each worker connection can do, from the admin ``workers`` command."""
    connections = []
    for line in admin(server, "workers", timeout):
        _, _, functions = line.partition(" : ")
        connections.append(functions.split())
    return connections


class Connection:
    """One connection to a gearman server, as a client or a worker: send packets, read those that arrived."""

    def __init__(self, server: tuple[str, int], timeout: float = CONNECT_SECONDS):
        self.server = server
        self.sock = connect(server, timeout)
        # Reads wait in select(); a send to a server that went silent gives up after the silence limit
        # (an OSError: the connection is then unusable, and closed).
        self.sock.settimeout(silence_timeout())
        self.reader = PacketReader()

    @property
    def name(self) -> str:
        return f"{self.server[0]}:{self.server[1]}"

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: int, *arguments: bytes) -> None:
        self.sock.sendall(pack(kind, *arguments))

    def receive(self) -> list[Packet]:
        """The packets that arrived (call when the socket is readable); ``ProtocolError`` once it closed."""
        try:
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            raise ProtocolError(f"the connection to the gearman server at {self.name} failed: {exc}") from None
        if not data:
            raise ProtocolError(f"the gearman server at {self.name} closed the connection")
        return list(self.reader.feed(data))

    def close(self) -> None:
        self.sock.close()
