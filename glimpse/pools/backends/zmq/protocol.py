"""The messages of the glimpse ZeroMQ cluster, and the timings that detect lost peers.

One broker binds one ROUTER socket (one port). Pools and workers connect DEALER sockets to it;
every message is a multipart message whose first frame is its kind, and the kinds a peer sends
tell the broker whether it is a pool (a "client") or a worker. Integers travel as ASCII digits.

client -> broker   HELLO version | CHUNK task call payload start blob | FUNC call blob | DROP call |
                   CANCEL task... | PING last_task | LIST | KILL | RESTART | BYE
broker -> client   WELCOME broker n | PONG broker n last_task task... | DONE task outcome |
                   LOST task reason | NOFUNC call | LISTED json | KILLED n | RESTARTED n | REFUSED reason
worker -> broker   READY version info | HEARTBEAT info | RESULT job outcome | FAILED job reason |
                   GAVEBACK job | GETFUNC call | LEAVING reason
broker -> worker   WELCOME broker | TASK job call payload start blob | FUNC call blob | NOFUNC call |
                   TAKEBACK job | CANCEL job | RESTART | EXIT | RESET

A call's function (``blob``) travels with its first chunk (an empty frame with the others), and
in a FUNC message when the broker lost it (it answers a chunk of an unknown call with NOFUNC, or
restarted); DROP lets it go when the call ends.

A worker holds up to two chunks (:data:`HELD_PER_WORKER`) and runs them in the order it got
them; a TASK carries the call's function (``blob``) when the broker has not sent it to that worker
yet, else an empty frame (a worker that lost it asks with GETFUNC). TAKEBACK asks for a chunk that
waits behind another: the worker answers GAVEBACK if it had not started it, else its RESULT.

Every message is signed with the cluster key (``signed_socket.py``): a last frame carries its
signature, and a peer acts on nothing that does not verify. Worker slots the broker runs in its
own process (``LaunchBroker --nworkers``) exchange the same worker messages through in-process
queues instead (``local_slots.py``), and the pool that started an embedded broker the same pool
messages through a socket pair (``pool_pipe.py``): neither leaves the two processes, so neither is signed.

Pools and workers name their sockets (a worker slot ``host:pid:token:slot``, the token random per
process, since machines may share a hostname and a pid), so replies still reach them after a
reconnection; every TCP connection sends keepalive probes and breaks after
:func:`peer_silence_limit` seconds of a silent peer, and then reconnects. A PONG
lists the tasks the broker holds for the pool among those up to ``last_task``: any other task
of the pool that is unanswered was lost (the broker restarted, or a reply was dropped).
"""

from __future__ import annotations

import json
import os

import zmq

from glimpse.pools.contract.watch import silence_timeout

VERSION = b"glimpse-zmq-5"

HELLO, WELCOME, REFUSED = b"HELLO", b"WELCOME", b"REFUSED"
FUNC, NOFUNC, GETFUNC, DROP = b"FUNC", b"NOFUNC", b"GETFUNC", b"DROP"
CHUNK, CANCEL, DONE, LOST = b"CHUNK", b"CANCEL", b"DONE", b"LOST"
PING, PONG, BYE = b"PING", b"PONG", b"BYE"
LIST, LISTED, KILL, KILLED, RESTART, RESTARTED = b"LIST", b"LISTED", b"KILL", b"KILLED", b"RESTART", b"RESTARTED"
READY, HEARTBEAT, RESULT, FAILED, LEAVING = b"READY", b"HEARTBEAT", b"RESULT", b"FAILED", b"LEAVING"
TASK, EXIT, RESET = b"TASK", b"EXIT", b"RESET"
TAKEBACK, GAVEBACK = b"TAKEBACK", b"GAVEBACK"

#: Chunks a worker holds: the one it runs and one waiting behind it, so it never waits for a round trip.
HELD_PER_WORKER = 2
#: Call functions a worker process keeps (and the broker remembers sending to each worker).
FUNCTIONS_KEPT = 4

#: How often a worker tells the broker it is alive, and a waiting pool asks the broker.
HEARTBEAT_SECONDS = 1.0
#: A worker silent this long is lost, with the chunk it was running.
WORKER_TIMEOUT_SECONDS = 5.0
#: How long a pool waits for the broker to answer a request (LIST, KILL, RESTART) outside a call; mid-call
#: a silent broker ends the call after ``$GLIMPSE_SILENCE_TIMEOUT`` (``glimpse.pools.contract.watch``).
BROKER_TIMEOUT_SECONDS = 10.0
#: A pool whose pings go unanswered this long while the broker's port accepts connections opens a new
#: connection (after a network blip, TCP's backed-off retransmissions on the old one may take as long again).
RECONNECT_SECONDS = 3.0
#: How much longer than ``$GLIMPSE_SILENCE_TIMEOUT`` a TCP connection waits for a silent peer before it
#: breaks (ZeroMQ then reconnects): a blip shorter than the silence limit never breaks one.
TCP_GRACE_SECONDS = 10.0
_KEEPALIVE_IDLE_SECONDS, _KEEPALIVE_INTERVAL_SECONDS = 10, 5
#: How long a pool waits for the broker to answer its first message.
CONNECT_SECONDS = 8.0
DEFAULT_PORT = 5555
#: The largest message frame the broker accepts (``$GLIMPSE_ZMQ_MAX_FRAME_MB``, default 1024): a peer
#: that sends a larger one is disconnected before it is buffered.
MAX_FRAME_BYTES = int(float(os.environ.get("GLIMPSE_ZMQ_MAX_FRAME_MB") or 1024) * 2**20)


def number(value: int) -> bytes:
    """An integer as a frame."""
    return str(value).encode()


def to_json(value) -> bytes:
    """A JSON frame."""
    return json.dumps(value, sort_keys=True).encode()


def from_json(frame: bytes):
    """The value of a JSON frame."""
    return json.loads(frame.decode())


def normalize_address(address: str) -> str:
    """``host:port`` or ``tcp://host:port`` as a ZeroMQ endpoint; a ``ValueError`` for anything else."""
    text = address.strip()
    if "://" not in text:
        text = f"tcp://{text}"
    scheme, _, rest = text.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or not host or not port.isdigit():
        raise ValueError(f"bad zmq broker address {address!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    return text


def peer_silence_limit() -> float:
    """Seconds a TCP connection waits for a silent peer before it breaks (``$GLIMPSE_SILENCE_TIMEOUT`` + 10)."""
    return silence_timeout() + TCP_GRACE_SECONDS


def keep_alive(socket: zmq.Socket) -> None:
    """TCP keepalive probes while ``socket``'s connections are idle, and a limit on unacknowledged data
    (``TCP_USER_TIMEOUT``), so a connection to a machine that went silent breaks after
    :func:`peer_silence_limit` instead of the ~15 minutes of the kernel's retransmissions."""
    limit = peer_silence_limit()
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _KEEPALIVE_IDLE_SECONDS)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _KEEPALIVE_INTERVAL_SECONDS)
    socket.setsockopt(
        zmq.TCP_KEEPALIVE_CNT, max(1, int((limit - _KEEPALIVE_IDLE_SECONDS) // _KEEPALIVE_INTERVAL_SECONDS))
    )
    socket.setsockopt(zmq.TCP_MAXRT, int(limit * 1000))


def dealer(context: zmq.Context, address: str, routing_id: bytes, bounded: bool = True) -> zmq.Socket:
    """A DEALER socket named ``routing_id``, connected to the broker at ``address``, that never blocks on close.

    A pool's socket is not ``bounded``: a call limits what it sends and receives, and a dropped
    message would be a lost chunk. A worker's keeps ZeroMQ's default limit, so heartbeats sent
    while the broker is down cannot pile up.
    """
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.routing_id = routing_id
    keep_alive(socket)
    if not bounded:
        socket.rcvhwm = 0
        socket.sndhwm = 0
    try:
        socket.connect(address)
    except zmq.ZMQError as exc:
        socket.close()
        raise ValueError(f"cannot connect to the zmq broker address {address!r}: {exc}") from None
    return socket
