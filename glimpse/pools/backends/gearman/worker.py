"""The workers of a glimpse gearman cluster: one process, several worker slots.

Each slot has, to every gearman server, one connection that can do the cluster's chunk function
and one that can do the slot's own control function (so a cancel reaches it while it computes),
and a task process (``worker_main``, as MulticorePool's) that runs the chunks. When a slot starts
a job it tells the pool with a WORK_DATA ``started <slot id>``: the pool counts attempts and knows
whom to ask to cancel. While the job runs, the slot sends a WORK_STATUS heartbeat every
:data:`jobs.HEARTBEAT_SECONDS`, so the pool notices a worker whose machine went silent. A job or
control request that does not verify with the cluster key is failed without being unpickled.
Slot ids are ``host:pid:token:slot``, with a random token per process.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import socket
import time
from collections import deque
from dataclasses import dataclass

from glimpse.pools.backends.gearman import jobs
from glimpse.pools.backends.gearman import protocol as g
from glimpse.pools.ipc.child_process import TaskProcesses
from glimpse.pools.ipc.frames import RETIRING
from glimpse.pools.security import ClusterKey, MessageSigner, Rejected

log = logging.getLogger(__name__)

_RECONNECT_SECONDS = 2.0
#: How long a slot waits for a server to accept a connection (a live one on a network takes milliseconds;
#: this allows one lost SYN): the other slots' heartbeats wait meanwhile.
_CONNECT_SECONDS = 2.0
#: How many cancelled calls a slot remembers (their jobs still queued in gearmand are dropped unrun).
_CANCELLED_CALLS_KEPT = 256


def serve(servers: list[tuple[str, int]], nworkers: int, key: ClusterKey, max_chunks: int | None = None) -> None:
    """Run ``nworkers`` slots for the gearman servers until interrupted or told to exit; each task
    process runs at most ``max_chunks`` chunks, then a fresh one takes over."""
    signer = MessageSigner(key, jobs.WORKER, ordered=False)
    # Machines (containers) may share a hostname and a pid: a random token keeps the slot ids apart.
    names = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    processes = TaskProcesses(nworkers, max_chunks)
    slots = [Slot(servers, f"{names}:{index}", key, signer, processes) for index in range(nworkers)]
    log.info(
        "%d gearman workers (pid %d) serving %s for %s",
        nworkers,
        os.getpid(),
        jobs.chunk_function(key).decode(),
        g.format_servers(servers),
    )
    reconnect_at = 0.0
    try:
        while slots:
            sources = {}
            for slot in slots:
                for source in slot.sources():
                    sources[source.fileno()] = (slot, source)
            readable, _, _ = select.select(list(sources), [], [], jobs.HEARTBEAT_SECONDS)
            for fileno in readable:
                slot, source = sources[fileno]
                if slot not in slots or not any(source is current for current in slot.sources()):
                    continue  # closed by an earlier event of this round (its descriptor may be reused)
                if not slot.on_readable(source):
                    slot.close()
                    slots.remove(slot)
            now = time.monotonic()
            for slot in slots:
                slot.beat(now)
            if now >= reconnect_at:
                reconnect_at, failed = now + _RECONNECT_SECONDS, set()
                for slot in slots:
                    slot.reconnect(failed)
    finally:
        for slot in slots:
            slot.close()


@dataclass
class RunningJob:
    connection: g.Connection
    handle: bytes
    unique: bytes
    call: bytes = b""
    beat_at: float = 0.0
    #: What was sent to the task process, to send again to a fresh one if that one retires first.
    sent: tuple | None = None


class Slot:
    """One worker: connections to the servers and a task process that runs its chunks."""

    def __init__(
        self,
        servers: list[tuple[str, int]],
        slot_id: str,
        key: ClusterKey,
        signer: MessageSigner,
        processes: TaskProcesses,
    ):
        self.id = slot_id
        #: How its task processes start.
        self.processes = processes
        self.servers, self.key, self.signer = servers, key, signer
        self.work: dict[tuple[str, int], g.Connection | None] = dict.fromkeys(servers)
        self.control: dict[tuple[str, int], g.Connection | None] = dict.fromkeys(servers)
        self.process = processes.start(outcomes="bytes")
        self.job: RunningJob | None = None
        self.grabbing: g.Connection | None = None
        self.woken: list[g.Connection] = []
        self.unreachable: set[tuple[str, int]] = set()
        self.cancelled_calls: deque[bytes] = deque(maxlen=_CANCELLED_CALLS_KEPT)
        self.reconnect()

    # -- connections -------------------------------------------------------------------------

    def sources(self) -> list:
        live = [c for c in [*self.work.values(), *self.control.values()] if c is not None]
        return [*live, self.process] if self.job is not None else live

    def reconnect(self, failed: set[tuple[str, int]] | None = None) -> None:
        """Open the connections that are missing (at start, or after a server went away).

        A server in ``failed`` (it did not answer another slot this round) is not tried: each try
        may wait :data:`_CONNECT_SECONDS`, and the slots' heartbeats wait with it.
        """
        failed = set() if failed is None else failed
        for server in self.servers:
            if server in failed:
                continue
            # Control first: a slot that can take chunks can already be told to stop one.
            if self.control[server] is None:
                connection = self._register(server, jobs.control_function(self.key, self.id))
                self.control[server] = connection
                if connection is None:
                    failed.add(server)
                    continue
                self._send(connection, g.GRAB_JOB_UNIQ)
            if self.work[server] is None:
                self.work[server] = self._register(server, jobs.chunk_function(self.key))
                if self.work[server] is None:
                    failed.add(server)
                else:
                    self.woken.append(self.work[server])
        self.next_grab()

    def _register(self, server: tuple[str, int], function: bytes) -> g.Connection | None:
        try:
            connection = g.Connection(server, _CONNECT_SECONDS)
            connection.send(g.CAN_DO, function)
        except OSError as exc:
            if server not in self.unreachable:
                self.unreachable.add(server)
                log.warning("cannot reach the gearman server at %s:%d (%s); retrying every few seconds", *server, exc)
            return None
        if server in self.unreachable:
            self.unreachable.discard(server)
            log.info("reconnected to the gearman server at %s:%d", *server)
        return connection

    def _send(self, connection: g.Connection, kind: int, *arguments: bytes) -> None:
        """Send a packet; a server that went away is reconnected later, never a crash."""
        try:
            connection.send(kind, *arguments)
        except OSError as exc:
            self._lost(connection, f"the connection to the gearman server at {connection.name} failed: {exc}")

    def _lost(self, connection: g.Connection, reason: str) -> None:
        log.warning("%s; reconnecting", reason)
        connection.close()
        for table in (self.work, self.control):
            if table.get(connection.server) is connection:
                table[connection.server] = None
        if self.job is not None and self.job.connection is connection:
            # Its result cannot be delivered: gearmand gives the job to another worker.
            self.replace_process()
            self.job = None
        if self.grabbing is connection:
            self.grabbing = None
        self.woken = [c for c in self.woken if c is not connection]

    # -- events ------------------------------------------------------------------------------

    def on_readable(self, source) -> bool:
        """Handle what ``source`` has; ``False`` once the slot was told to exit."""
        if source is self.process:
            self.collect()
            return True
        try:
            packets = source.receive()
        except g.ProtocolError as exc:
            self._lost(source, str(exc))
            return True
        for packet in packets:
            if source is self.control.get(source.server):
                if not self.on_control_packet(source, packet):
                    return False
            else:
                self.on_work_packet(source, packet)
        return True

    def on_work_packet(self, connection: g.Connection, packet: g.Packet) -> None:
        if packet.kind == g.NOOP:
            if connection not in self.woken:
                self.woken.append(connection)
        elif packet.kind == g.NO_JOB:
            self.grabbing = None
        elif packet.kind == g.JOB_ASSIGN_UNIQ and len(packet.arguments) == 4:
            self.grabbing = None
            handle, _, unique, data = packet.arguments
            self.start(connection, handle, unique, data)
        elif packet.kind == g.ERROR:
            log.warning("the gearman server at %s reported an error: %s", connection.name, packet.arguments)
        self.next_grab()

    def on_control_packet(self, connection: g.Connection, packet: g.Packet) -> bool:
        if packet.kind == g.NOOP:
            self._send(connection, g.GRAB_JOB_UNIQ)
        elif packet.kind == g.NO_JOB:
            self._send(connection, g.PRE_SLEEP)
        elif packet.kind == g.JOB_ASSIGN_UNIQ and len(packet.arguments) == 4:
            handle, data = packet.arguments[0], packet.arguments[3]
            try:
                request = jobs.open_sealed(self.signer, jobs.POOL, data)
            except Rejected as reason:
                self.signer.rejected(b"control requests", reason)
                request = []
            self._send(connection, g.WORK_COMPLETE, handle, b"")
            self._send(connection, g.GRAB_JOB_UNIQ)
            return self.control_request(request)
        return True

    def control_request(self, request: list[bytes]) -> bool:
        if request[:1] == [jobs.EXIT]:
            return False
        if request[:1] == [jobs.RESTART]:
            self.abort()
            self.replace_process()
        elif request[:1] == [jobs.CANCEL] and self.job is not None and self.job.handle in request[1:]:
            self.abort()
        elif request[:1] == [jobs.CANCEL_CALLS]:
            self.cancelled_calls.extend(request[1:])
            if self.job is not None and self.job.call in request[1:]:
                self.abort()
        return True

    # -- running chunks ----------------------------------------------------------------------

    def next_grab(self) -> None:
        """Ask a server that may have work for a job, or tell them all the slot sleeps."""
        if self.job is not None or self.grabbing is not None:
            return
        if self.woken:
            self.grabbing = self.woken.pop(0)
            self._send(self.grabbing, g.GRAB_JOB_UNIQ)
        else:
            for connection in self.work.values():
                if connection is not None:
                    self._send(connection, g.PRE_SLEEP)

    def beat(self, now: float) -> None:
        """Tell the pool the running job is alive, if the last heartbeat is a heartbeat's time ago."""
        if self.job is not None and now - self.job.beat_at >= jobs.HEARTBEAT_SECONDS:
            self.job.beat_at = now
            self._send(self.job.connection, g.WORK_STATUS, self.job.handle, b"0", b"0")

    def start(self, connection: g.Connection, handle: bytes, unique: bytes, data: bytes) -> None:
        self._send(connection, g.WORK_DATA, handle, jobs.STARTED + self.id.encode())
        self.job = RunningJob(connection, handle, unique)
        self.beat(time.monotonic())  # the first heartbeat tells the pool this worker sends them
        if self.job is None:
            return  # the connection failed
        try:
            call, blob, payload, start = jobs.open_sealed(self.signer, jobs.POOL, data)
            call_id, start = call.decode(), int(start)
        except (Rejected, ValueError) as reason:
            self.signer.rejected(b"jobs", Rejected(str(reason)))
            self.finish(g.WORK_FAIL)
            return
        if call in self.cancelled_calls:
            self.finish(g.WORK_FAIL)  # its pool left the call: gearmand handed it out before it heard
            return
        self.job.call = call
        self.job.sent = (call_id, blob, payload, start)
        if self.process.last_call == call_id:
            blob = None
        if not self.process.send_chunk(call_id, blob, payload, start):
            log.warning("the task process of %s %s", self.id, self.process.describe_death())
            self.replace_process()
            self.finish(g.WORK_FAIL)
            return
        self.process.last_call = call_id

    def collect(self) -> None:
        """Send the finished chunk's signed outcome; fail the job if the task process died."""
        try:
            frames = self.process.receive_all()
        except (EOFError, OSError):
            log.warning("the task process of %s %s", self.id, self.process.describe_death())
            self.replace_process()
            self.finish(g.WORK_FAIL)
            return
        for frame in frames:
            if frame == RETIRING:
                self.replace_retiring_process()
            elif self.job is not None:
                self.finish(g.WORK_COMPLETE, jobs.seal(self.signer, jobs.POOL, [self.job.unique, frame]))

    def replace_retiring_process(self) -> None:
        """The task process left an item's thread running: a fresh one takes over the job it did not start."""
        self.replace_process()
        if self.job is not None and self.job.sent is not None:
            call_id = self.job.sent[0]
            if not self.process.send_chunk(*self.job.sent):
                log.warning("the task process of %s %s", self.id, self.process.describe_death())
                self.replace_process()
                self.finish(g.WORK_FAIL)
                return
            self.process.last_call = call_id

    def finish(self, kind: int, result: bytes | None = None) -> None:
        job, self.job = self.job, None
        self._send(job.connection, kind, job.handle, *(() if result is None else (result,)))
        if self.work.get(job.connection.server) is job.connection and job.connection not in self.woken:
            self.woken.append(job.connection)
        self.next_grab()

    def abort(self) -> None:
        """Stop the running chunk (its task process is replaced) and fail its job."""
        if self.job is None:
            return
        self.replace_process()
        self.finish(g.WORK_FAIL)

    def replace_process(self) -> None:
        self.process.stop()
        self.process = self.processes.start(outcomes="bytes")

    def close(self) -> None:
        self.process.stop()
        for connection in [*self.work.values(), *self.control.values()]:
            if connection is not None:
                connection.close()
