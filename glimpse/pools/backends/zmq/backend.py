"""The backend of ``ZmqPool``: chunks go to a glimpse ZeroMQ broker over one DEALER socket.

``submit`` sends a chunk message, ``wait`` polls the socket and records outcomes by task id,
``cancel`` sends a cancel message. The function goes to the broker once per call, with the
call's first chunk; workers get it from there. A broker that stops answering while chunks are
out is an error, not a hang: at once if nothing listens at its address any more, after
``$GLIMPSE_SILENCE_TIMEOUT`` seconds if it is silent (a blip shorter than that does not end the
call; when the broker's port answers again the pool opens a new connection rather than wait
for TCP's backed-off retransmissions). A chunk the broker no longer knows (it restarted, a reply
was dropped, or the connection was replaced) is lost and re-sent.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections.abc import Collection

import zmq

from glimpse.pools.backends.zmq import protocol as p
from glimpse.pools.backends.zmq.pool_pipe import PoolPipe
from glimpse.pools.backends.zmq.signed_socket import PeerSocket
from glimpse.pools.cluster.embedded import OwnsEmbeddedCluster
from glimpse.pools.cluster.reachability import head_silent, tcp_answers
from glimpse.pools.contract.backend import Backend, Call, Chunk, ClusterLost, Health, TrackedChunk
from glimpse.pools.contract.watch import SILENCE_VARIABLE, silence_timeout
from glimpse.pools.errors import AuthenticationError, ClusterConnectionError
from glimpse.pools.security import ClusterKey, MessageSigner

log = logging.getLogger(__name__)

_WORKERS_FRESH_SECONDS = 1.0


class SentChunk(TrackedChunk):
    """A chunk sent to the broker, until its outcome or its loss arrives."""

    __slots__ = ("number", "task_id")

    def __init__(self, number: int):
        super().__init__()
        self.number = number
        self.task_id = p.number(number)


class ZmqBackend(OwnsEmbeddedCluster, Backend):
    """Runs chunks on the workers of the broker at ``address``.

    Args:
        address: The broker's endpoint, ``tcp://HOST:PORT``.
        key: The cluster key every message is signed with.
        source: Where the address came from, for error messages.
        cluster: An embedded cluster (``glimpse.pools.cluster.embedded.EmbeddedCluster``) this backend owns and ends;
            when it has a socket pair to its broker (``pool_end``), the messages go through that, unsigned.
    """

    chunk_seconds = 0.05
    task_seconds = 5e-4  # two hops through the broker per chunk over signed TCP (bench_zmq.py measures it)
    # Measured on 2 cores against 10k and 50k: 50k chunks cost more per item in the caller (out of cache), 10k more
    # hops; 20k is best or within noise of the best on calls of 20k, 200k and 1M tiny items, on either layout.
    max_chunk_items = 20_000

    def __init__(self, address: str, key: ClusterKey, source: str = "the address argument", cluster=None):
        self.address = p.normalize_address(address)
        self.cluster = cluster
        self.key = key
        self._source = source
        # A name of its own keeps replies coming to this pool after the connection drops and comes back.
        self._routing_id = f"pool-{uuid.uuid4().hex}".encode()
        self._socket: PeerSocket | PoolPipe | None
        if cluster is not None and cluster.pool_end is not None:
            self._socket = PoolPipe(cluster.pool_end, self.address)
        else:
            self._socket = self._peer_socket(MessageSigner(key, self._routing_id))
        self._silence_limit = silence_timeout()
        self._jobs: dict[bytes, SentChunk] = {}
        self._calls: dict[str, bytes] = {}
        self._function_due: set[str] = set()  # calls whose function goes with their next chunk
        self._task_numbers = itertools.count(1)
        self._last_number = 0
        self._broker: bytes | None = None
        self._nworkers = 0
        self._counted_at = 0.0
        self._heard_at = time.monotonic()
        self._pinged_at = self._reconnected_at = 0.0
        self._unanswered_since: float | None = None
        self._replies: dict[bytes, list] = {}
        self._connect()

    def workers(self) -> int:
        if time.monotonic() - self._counted_at > _WORKERS_FRESH_SECONDS:
            if self._jobs:
                # Mid-call: ask without waiting; the PONG arrives while the call waits, and a broker
                # that never answers is found by _check_broker there.
                self._ping(time.monotonic())
            else:
                self._ping_and_wait()
        return max(1, self._nworkers)

    def open_call(self, call: Call) -> None:
        # Not a message of its own: one wake-up fewer for the broker, and none at all for a call with no items.
        self._calls[call.id] = call.blob
        self._function_due.add(call.id)

    def close_call(self, call: Call) -> None:
        sent = call.id not in self._function_due
        self._function_due.discard(call.id)
        if self._calls.pop(call.id, None) is not None and sent and self._socket is not None:
            self._send(p.DROP, call.id.encode())

    def submit(self, call: Call, chunk: Chunk) -> SentChunk:
        if chunk.nbytes > p.MAX_FRAME_BYTES:
            raise ValueError(
                f"items #{chunk.start}-#{chunk.start + chunk.count - 1} pickle to {chunk.nbytes / 2**20:.0f} MiB, "
                f"more than a zmq message may carry ({p.MAX_FRAME_BYTES / 2**20:.0f} MiB, "
                "$GLIMPSE_ZMQ_MAX_FRAME_MB on the broker and here)"
            )
        function = b""
        if call.id in self._function_due:
            self._function_due.discard(call.id)
            function = call.blob
        job = SentChunk(next(self._task_numbers))
        self._jobs[job.task_id] = job
        self._last_number = job.number
        self._send(p.CHUNK, job.task_id, call.id.encode(), chunk.payload, p.number(chunk.start), function)
        return job

    def wait(self, handles: Collection[SentChunk], timeout: float) -> list[SentChunk]:
        return SentChunk.wait(handles, timeout, self._receive)

    def _receive(self, seconds: float) -> None:
        self._check_broker()
        if self._live_socket().poll(min(seconds, p.HEARTBEAT_SECONDS) * 1000):
            self._receive_available()

    def health(self) -> Health:
        # Pings go out on every wait (_check_broker) and their PONGs count the workers; only a broker
        # that has left them unanswered for a while is probed.
        now, unanswered = time.monotonic(), self._unanswered_since
        if unanswered is not None and now - unanswered > p.RECONNECT_SECONDS:
            if head_silent(self.address):
                return Health(self._nworkers, silent=f"the glimpse zmq broker at {self.address} does not answer")
            if not tcp_answers(self.address):
                return Health(0, lost=f"nothing listens at {self.address} any more: the glimpse zmq broker stopped")
            if now - self._reconnected_at > p.RECONNECT_SECONDS:  # a hung broker's port answers too
                self._reconnected_at = now
                self._reconnect()
        return Health(
            self._nworkers,
            address=self.address,
            start_workers=f"glimpse-cluster --type zmq LaunchWorker --address {self.address}",
        )

    def outcome(self, handle: SentChunk) -> bytes:
        return handle.outcome()

    def cancel(self, handles: Collection[SentChunk]) -> None:
        tasks = [job.task_id for job in handles if not job.done]
        for job in handles:
            if not job.done:
                job.lost = "cancelled"
            self._jobs.pop(job.task_id, None)
        if tasks and self._socket is not None:
            self._send(p.CANCEL, *tasks)

    def release(self) -> None:
        if self._socket is not None:
            self._send(p.BYE)
            self._socket.close(linger=500)
            self._socket = None
        for job in self._jobs.values():
            job.lost = "the pool was closed"
        self._jobs.clear()

    def count_workers(self) -> int:
        self._ping_and_wait()
        return self._nworkers

    def describe_cluster(self) -> dict:
        """The broker's view: its ``workers`` (dicts with ``id``, ``host``, ``pid``, ``task_pid``, ``state``),
        how many chunks are ``queued`` and how many call ``functions`` it keeps."""
        return json.loads(self._ask(p.LIST, reply=p.LISTED)[0])

    def kill_workers(self) -> int:
        """Tell every worker to exit; return how many there were."""
        return int(self._ask(p.KILL, reply=p.KILLED)[0])

    def restart_workers(self) -> int:
        """Replace every worker's task process with a fresh one; return how many workers there are."""
        return int(self._ask(p.RESTART, reply=p.RESTARTED)[0])

    def _connect(self) -> None:
        try:
            self._ask(p.HELLO, p.VERSION, reply=p.WELCOME, timeout=p.CONNECT_SECONDS)
        except AuthenticationError:
            self._socket.close()
            self._socket = None
            raise
        except _NoAnswer:
            rejected = self._socket.rejected_count
            self._socket.close()
            self._socket = None
            if rejected:
                raise AuthenticationError(
                    f"the glimpse zmq broker at {self.address} answered, but its {rejected} messages do not verify "
                    f"with the key from {self.key.source}: use the broker's key file (it prints its path when it "
                    "starts) with key_file= or $GLIMPSE_CLUSTER_KEY_FILE"
                ) from None
            raise ClusterConnectionError(
                f"no glimpse zmq broker answered at {self.address} (from {self._source}) within "
                f"{p.CONNECT_SECONDS:g} s. Start one with `glimpse-cluster --type zmq LaunchBroker --port PORT` "
                f"and workers with `glimpse-cluster --type zmq LaunchWorker --address {self.address}`, "
                "or fix the address."
            ) from None

    def _ask(self, kind: bytes, *frames: bytes, reply: bytes, timeout: float = p.BROKER_TIMEOUT_SECONDS) -> list:
        """Send a request and return the frames of its reply, handling other messages meanwhile."""
        self._replies.pop(reply, None)
        self._send(kind, *frames)
        deadline = time.monotonic() + timeout
        while reply not in self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _NoAnswer(
                    f"the glimpse zmq broker at {self.address} did not answer within {timeout:g} s; "
                    "is it still running?"
                )
            if self._live_socket().poll(remaining * 1000):
                try:
                    self._receive_available()
                except ClusterLost as lost:
                    raise ClusterConnectionError(str(lost)) from None
        return self._replies.pop(reply)

    def _check_broker(self) -> None:
        """Ping a broker that has been quiet; raise if pings stayed unanswered for ``$GLIMPSE_SILENCE_TIMEOUT``.

        Silence counts from the first unanswered ping, not from the last message, so a consumer
        that takes long between results (or a pool idle between calls) is not mistaken for a dead broker.
        """
        now = time.monotonic()
        if self._unanswered_since is not None and now - self._unanswered_since > self._silence_limit:
            raise ClusterLost(
                f"the glimpse zmq broker at {self.address} stopped answering "
                f"({now - self._unanswered_since:.0f} s without a reply, ${SILENCE_VARIABLE}={self._silence_limit:g}) "
                f"while {len(self._jobs)} chunks were out; it was stopped or is unreachable"
            )
        if now - self._heard_at > p.HEARTBEAT_SECONDS:
            self._ping(now)

    def _peer_socket(self, signer: MessageSigner) -> PeerSocket:
        return PeerSocket(
            p.dealer(zmq.Context.instance(), self.address, self._routing_id, bounded=False), signer, self.address
        )

    def _reconnect(self) -> None:
        """A new connection under the same name (the broker hands it over): what the old one held is dropped,
        and the next PONG says which chunks the broker no longer has."""
        old = self._socket
        if not isinstance(old, PeerSocket):
            return
        log.info("the glimpse zmq broker at %s answers again; reconnecting", self.address)
        self._socket = self._peer_socket(old.signer)
        old.close(linger=0)
        self._pinged_at = 0.0
        self._ping(time.monotonic())

    def _ping(self, now: float) -> None:
        """Send a PING (at most once a heartbeat); its PONG counts workers and reconciles chunks."""
        if now - self._pinged_at <= p.HEARTBEAT_SECONDS:
            return
        self._pinged_at = now
        if self._unanswered_since is None:
            self._unanswered_since = now
        self._send(p.PING, p.number(self._last_number))

    def _ping_and_wait(self) -> None:
        try:
            self._ask(p.PING, p.number(self._last_number), reply=p.PONG)
        except _NoAnswer:
            # After a silence, this connection may still wait out TCP's retransmission backoff while
            # the broker already answers a new one: connect afresh, once, before giving up.
            if not isinstance(self._socket, PeerSocket) or not tcp_answers(self.address):
                raise
            self._reconnect()
            self._ask(p.PING, p.number(self._last_number), reply=p.PONG)

    def _receive_available(self) -> None:
        while True:
            try:
                message = self._live_socket().receive()
            except zmq.Again:
                return
            if message is None:
                continue
            kind, *frames = message
            self._heard_at = time.monotonic()
            self._unanswered_since = None
            if kind == p.DONE:
                job = self._jobs.pop(frames[0], None)
                if job is not None:
                    job.result = frames[1]
            elif kind == p.LOST:
                job = self._jobs.pop(frames[0], None)
                if job is not None:
                    job.lost = frames[1].decode(errors="replace")
            elif kind == p.WELCOME:
                self._count_workers(frames[0], int(frames[1]))
                self._replies[kind] = frames
            elif kind == p.PONG:
                self._count_workers(frames[0], int(frames[1]))
                self._reconcile(int(frames[2]), set(frames[3:]))
                self._replies[kind] = frames
            elif kind == p.NOFUNC:
                call_id = frames[0].decode()
                if call_id in self._calls:
                    self._send(p.FUNC, frames[0], self._calls[call_id])
            elif kind == p.REFUSED:
                raise ClusterConnectionError(
                    f"the glimpse zmq broker at {self.address} refused this pool: {frames[0].decode()}"
                )
            else:
                self._replies[kind] = frames

    def _count_workers(self, broker: bytes, nworkers: int) -> None:
        if self._broker is not None and broker != self._broker:
            self._broker_restarted()
        self._broker, self._nworkers, self._counted_at = broker, nworkers, time.monotonic()

    def _broker_restarted(self) -> None:
        """A new broker answers at the address: give it the functions of the calls still running."""
        log.warning("the glimpse zmq broker at %s restarted; chunks it had are sent again", self.address)
        for call_id, blob in self._calls.items():
            if call_id not in self._function_due:
                self._send(p.FUNC, call_id.encode(), blob)

    def _reconcile(self, last_number: int, known: set[bytes]) -> None:
        """Chunks sent before the ping that the broker does not hold and never answered are lost."""
        for task_id, job in list(self._jobs.items()):
            if job.number <= last_number and task_id not in known:
                del self._jobs[task_id]
                job.lost = (
                    f"the glimpse zmq broker at {self.address} no longer had the chunk "
                    "(it restarted, or the connection to it dropped)"
                )

    def _send(self, kind: bytes, *frames: bytes) -> None:
        self._live_socket().send(kind, *frames)

    def _live_socket(self) -> PeerSocket | PoolPipe:
        if self._socket is None:
            raise ValueError(f"the connection to the zmq broker at {self.address} is closed; make a new pool")
        return self._socket


class _NoAnswer(ClusterConnectionError):
    """The broker did not answer a request in time."""
