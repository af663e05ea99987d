"""The backend of ``GearmanPool``: each chunk is one gearman job, signed, on the cluster's function.

A call has connections of its own (one per server; chunks go round-robin), because gearman cannot
revoke a queued job but drops the queued jobs of a client that disconnects: ending a call early
closes them, and every worker slot of the key is told (through its control function) to stop the
call's running chunk and to fail any job of the call gearmand hands it later. A job started twice
was re-queued because its worker died: it counts as lost (the contract re-sends it, a bounded
number of times), and the second run is cancelled. A server that closes a connection mid-call is
a lost cluster.

A worker whose machine goes silent closes nothing: gearmand would wait for its job forever. So a
running job's worker sends heartbeats (WORK_STATUS, forwarded by gearmand), the pool sends ECHO
requests on its own connections, and a job with no heartbeat for ``jobs.WORKER_SILENCE_SECONDS``
while gearmand answers the echoes is lost and sent again; its first run's result, should it come
later, is ignored. A silent gearmand is the contract's to judge (``health`` says ``silent``): no
job is counted lost while gearmand itself is silent, and for a while after it answers again.
Each job carries the call's pickled function (workers keep the last one), so a
function that closes over a large object costs that object per chunk: pass such data as items,
or use a module-level function.
"""

from __future__ import annotations

import itertools
import logging
import select
import time
import uuid
from collections import deque
from collections.abc import Collection

from glimpse.pools.backends.gearman import jobs
from glimpse.pools.backends.gearman import protocol as g
from glimpse.pools.cluster.embedded import OwnsEmbeddedCluster
from glimpse.pools.cluster.reachability import head_silent
from glimpse.pools.contract.backend import Backend, Call, Chunk, ClusterLost, Health, TrackedChunk
from glimpse.pools.contract.watch import silence_timeout
from glimpse.pools.errors import ClusterConnectionError
from glimpse.pools.security import ClusterKey, MessageSigner, Rejected

log = logging.getLogger(__name__)

_WORKERS_FRESH_SECONDS = 1.0
#: Mid-call, a worker count that failed (gearmand silent) is not asked again for this long.
_COUNT_RETRY_SECONDS = 5.0
#: How long a health probe waits for gearmand to accept a connection (on a network it takes milliseconds):
#: short, so that the call watch looks often enough to end a silent call close to the silence limit.
_PROBE_SECONDS = 1.0
#: How often a call's connections ask gearmand for an echo, and how long without any answer means it is silent.
_ECHO_SECONDS, _SERVER_QUIET_SECONDS = 1.0, 3.0


class GearmanJob(TrackedChunk):
    """A chunk submitted as a job, until its outcome or its loss arrives."""

    __slots__ = ("unique", "connection", "call", "handle", "worker", "starts", "beat_at")

    def __init__(self, unique: bytes, connection: g.Connection, call: str):
        super().__init__()
        self.unique, self.connection, self.call = unique, connection, call
        self.handle: bytes | None = None
        self.worker: str | None = None
        self.starts = 0
        #: When its worker's last heartbeat came (0: none yet; a worker too old to send them is not watched).
        self.beat_at = 0.0


class CallConnections:
    """One call's connections, its jobs waiting for their handles (first in, first out), and its jobs by
    connection and handle (two servers may hand out the same handle)."""

    def __init__(self, servers: list[tuple[str, int]]):
        self.connections = [g.Connection(server) for server in servers]
        self.next = itertools.cycle(self.connections)
        self.unnamed: dict[g.Connection, deque[GearmanJob]] = {c: deque() for c in self.connections}
        self.jobs: dict[tuple[g.Connection, bytes], GearmanJob] = {}
        now = time.monotonic()
        #: When each connection last heard from its server, and since when it has heard without a gap.
        self.heard_at = dict.fromkeys(self.connections, now)
        self.steady_since = dict.fromkeys(self.connections, now)
        self.echoed_at = 0.0

    def heard(self, connection: g.Connection, now: float) -> None:
        if now - self.heard_at[connection] > _SERVER_QUIET_SECONDS:
            self.steady_since[connection] = now
        self.heard_at[connection] = now

    def echo(self, now: float) -> None:
        """Ask every server for an echo (at most every :data:`_ECHO_SECONDS`), to know it still answers."""
        if now - self.echoed_at < _ECHO_SECONDS:
            return
        self.echoed_at = now
        for connection in self.connections:
            try:
                connection.send(g.ECHO_REQ, b"")
            except OSError as exc:
                raise ClusterLost(f"the gearman server at {connection.name} went away: {exc}") from None

    def silent_jobs(self, now: float, limit: float) -> list[GearmanJob]:
        """The running jobs whose worker sent no heartbeat for ``limit`` seconds while their server answered."""
        return [
            job
            for (connection, _), job in self.jobs.items()
            if job.beat_at
            and now - self.heard_at[connection] < _SERVER_QUIET_SECONDS
            and now - max(job.beat_at, self.steady_since[connection]) > limit
        ]

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


class GearmanBackend(OwnsEmbeddedCluster, Backend):
    """Runs chunks as jobs on the gearman servers ``servers``, signed with ``key``.

    Args:
        servers: ``(host, port)`` of each gearman server.
        key: The cluster key jobs and results are signed with.
        source: Where the address came from, for error messages.
        cluster: An embedded cluster (``embedded.EmbeddedGearmanCluster``) this backend owns and ends.
    """

    chunk_seconds = 0.05
    task_seconds = 5e-4  # two signed hops through gearmand per chunk (bench_gearman.py measures it)
    max_chunk_items = 20_000  # larger chunks fall out of the CPU's cache and cost more per item in the caller

    def __init__(
        self, servers: list[tuple[str, int]], key: ClusterKey, source: str = "the address argument", cluster=None
    ):
        self.servers, self.key, self.cluster = servers, key, cluster
        self.address = g.format_servers(servers)
        self._source = source
        self._signer = MessageSigner(key, jobs.POOL, ordered=False)
        self._function = jobs.chunk_function(key)
        self._calls: dict[str, CallConnections] = {}
        self._control: g.Connection | None = None
        self._nworkers, self._counted_at = 0, 0.0
        self._silent: str | None = None  # what health() last found silent
        self._worker_silence = min(jobs.WORKER_SILENCE_SECONDS, silence_timeout())
        self._checked_jobs_at = 0.0
        self._count_workers()

    def workers(self) -> int:
        if time.monotonic() - self._counted_at > _WORKERS_FRESH_SECONDS:
            if not self._calls:
                self._count_workers()
            elif not self._silent:
                # Mid-call a silent gearmand is the call watch's to judge (health): keep the last count.
                try:
                    self._count_workers(timeout=_PROBE_SECONDS)
                except ClusterConnectionError:
                    self._counted_at = time.monotonic() + _COUNT_RETRY_SECONDS
        return max(1, self._nworkers)

    def open_call(self, call: Call) -> None:
        try:
            self._calls[call.id] = CallConnections(self.servers)
        except OSError as exc:
            raise ClusterLost(f"cannot connect to the gearman server at {self.address}: {exc}") from None

    def close_call(self, call: Call) -> None:
        connections = self._calls.pop(call.id, None)
        if connections is not None:
            connections.close()

    def submit(self, call: Call, chunk: Chunk) -> GearmanJob:
        connections = self._calls[call.id]
        connection = next(connections.next)
        job = GearmanJob(uuid.uuid4().hex.encode(), connection, call.id)
        data = jobs.seal(
            self._signer, jobs.WORKER, [call.id.encode(), call.blob, chunk.payload, str(chunk.start).encode()]
        )
        try:
            connection.send(g.SUBMIT_JOB, self._function, job.unique, data)
        except OSError as exc:
            raise ClusterLost(f"the gearman server at {connection.name} went away: {exc}") from None
        connections.unnamed[connection].append(job)
        return job

    def wait(self, handles: Collection[GearmanJob], timeout: float) -> list[GearmanJob]:
        return GearmanJob.wait(handles, timeout, self._receive)

    def health(self) -> Health:
        self._silent = next(
            (
                f"the gearman server at {host}:{port} does not answer"
                for host, port in self.servers
                if head_silent(f"{host}:{port}", timeout=_PROBE_SECONDS)
            ),
            None,
        )
        if self._silent:
            return Health(self._nworkers, silent=self._silent, address=self.address)
        try:
            self._count_workers(timeout=_PROBE_SECONDS)
        except ClusterConnectionError as exc:
            return Health(0, lost=str(exc), address=self.address)
        return Health(self._nworkers, address=self.address, start_workers=self._start_workers_hint())

    def outcome(self, handle: GearmanJob) -> bytes:
        return handle.outcome()

    def cancel(self, handles: Collection[GearmanJob]) -> None:
        calls = sorted({job.call.encode() for job in handles if not job.done})
        for job in handles:
            if not job.done:
                job.lost = "cancelled"
        for call_id in {job.call for job in handles}:
            # Gearman drops the queued jobs of a client that disconnects; other calls (of other
            # threads) keep their connections.
            connections = self._calls.pop(call_id, None)
            if connections is not None:
                connections.close()
        if self._silent:
            log.warning("%s: the chunks still running there are left to finish", self._silent)
            return
        # A job gearmand handed out before it saw the disconnect still runs: every slot of this key
        # stops the calls' running chunk and fails any of their jobs it is handed later.
        try:
            workers = self.worker_ids(timeout=_PROBE_SECONDS)
        except ClusterConnectionError as exc:
            log.warning("could not reach gearmand to cancel the chunks still running: %s", exc)
            return
        for worker in workers:
            self._control_request(worker, [jobs.CANCEL_CALLS, *calls])

    def release(self) -> None:
        for connections in list(self._calls.values()):
            connections.close()
        self._calls.clear()
        if self._control is not None:
            self._control.close()
            self._control = None

    def count_workers(self) -> int:
        self._count_workers()
        return self._nworkers

    def worker_ids(self, timeout: float = g.CONNECT_SECONDS) -> list[str]:
        """The ids (``host:pid:token:slot``) of this key's worker slots, from the servers' ``workers`` lists."""
        prefix = jobs.control_function(self.key, "").decode()
        ids = set()
        for server in self.servers:
            for functions in self._ask(server, g.worker_functions, timeout):
                ids.update(name[len(prefix) :] for name in functions if name.startswith(prefix))
        return sorted(ids)

    def kill_workers(self) -> int:
        """Tell every worker slot of this key to exit; return how many there were."""
        return self._tell_workers(jobs.EXIT)

    def restart_workers(self) -> int:
        """Replace the task process of every worker slot of this key with a fresh one; return how many slots."""
        return self._tell_workers(jobs.RESTART)

    def _tell_workers(self, request: bytes) -> int:
        ids = self.worker_ids()
        for worker in ids:
            self._control_request(worker, [request])
        return len(ids)

    # -- helpers -----------------------------------------------------------------------------

    def _receive(self, timeout: float) -> None:
        sources = {c.fileno(): (c, calls) for calls in self._calls.values() for c in calls.connections}
        if not sources:
            time.sleep(timeout)
            return
        for calls in self._calls.values():
            calls.echo(time.monotonic())
        readable, _, _ = select.select(list(sources), [], [], min(timeout, _ECHO_SECONDS))
        now = time.monotonic()
        for fileno in readable:
            connection, calls = sources[fileno]
            try:
                packets = connection.receive()
            except g.ProtocolError as exc:
                raise ClusterLost(f"{exc} while chunks were out") from None
            calls.heard(connection, now)
            for packet in packets:
                self._on_packet(calls, connection, packet)
        if now - self._checked_jobs_at >= _ECHO_SECONDS:
            self._checked_jobs_at = now
            self._lose_silent_jobs(now)

    def _lose_silent_jobs(self, now: float) -> None:
        """Count lost the jobs whose worker went silent (the contract sends them again)."""
        for calls in self._calls.values():
            for job in calls.silent_jobs(now, self._worker_silence):
                del calls.jobs[job.connection, job.handle]
                job.lost = (
                    f"the gearman worker {job.worker} sent no heartbeat for {now - job.beat_at:.0f} s while "
                    "running it (its machine is unreachable, or its process hangs)"
                )

    def _on_packet(self, calls: CallConnections, connection: g.Connection, packet: g.Packet) -> None:
        arguments = packet.arguments
        if packet.kind == g.JOB_CREATED:
            job = calls.unnamed[connection].popleft()
            job.handle = arguments[0]
            if not job.done:
                calls.jobs[connection, job.handle] = job
            return
        if packet.kind == g.ERROR:
            text = b" ".join(arguments).decode(errors="replace")
            raise ClusterConnectionError(f"the gearman server at {connection.name} reported an error: {text}")
        job = calls.jobs.get((connection, arguments[0])) if arguments else None
        if job is None:
            return  # an echo, or news of a job that ended (a late result of a job sent again is dropped here)
        if packet.kind == g.WORK_STATUS:
            job.beat_at = time.monotonic()
        elif packet.kind == g.WORK_DATA and arguments[1].startswith(jobs.STARTED):
            job.starts += 1
            job.worker = arguments[1][len(jobs.STARTED) :].decode(errors="replace")
            if job.starts > 1:
                # gearmand re-queued the job after its worker died: lost; the contract re-sends it.
                del calls.jobs[connection, job.handle]
                job.lost = "the gearman worker running it died (its process was killed, or its machine went away)"
                self._control_request(job.worker, [jobs.CANCEL, job.handle])
        elif packet.kind == g.WORK_COMPLETE:
            del calls.jobs[connection, job.handle]
            job.result, job.lost = self._verified_outcome(job, arguments[1])
        elif packet.kind in (g.WORK_FAIL, g.WORK_EXCEPTION):
            del calls.jobs[connection, job.handle]
            job.lost = (
                f"the gearman worker {job.worker or ''} could not finish it (its task process died, or it was "
                "cancelled, or gearmand gave up after its worker died)"
            )

    def _verified_outcome(self, job: GearmanJob, blob: bytes) -> tuple[bytes | None, str | None]:
        try:
            unique, outcome = jobs.open_sealed(self._signer, jobs.WORKER, blob)
        except (Rejected, ValueError) as reason:
            self._signer.rejected(b"results", Rejected(str(reason)))
            return None, f"its result did not verify with the cluster key from {self.key.source} ({reason})"
        if unique != job.unique:
            return None, "its result was signed for another job"
        return outcome, None

    def _control_request(self, worker: str, request: list[bytes]) -> None:
        """A background job for one worker slot's control function (fire and forget)."""
        data = jobs.seal(self._signer, jobs.WORKER, request)
        try:
            if self._control is None:
                self._control = g.Connection(self.servers[0])
            self._control.send(g.SUBMIT_JOB_HIGH_BG, jobs.control_function(self.key, worker), b"", data)
            while select.select([self._control], [], [], 0)[0]:
                self._control.receive()  # JOB_CREATED of earlier requests
        except (OSError, g.ProtocolError) as exc:
            log.warning("could not ask gearman worker %s to %s: %s", worker, request[0].decode(), exc)
            if self._control is not None:
                self._control.close()
                self._control = None

    def _count_workers(self, timeout: float = g.CONNECT_SECONDS) -> None:
        function = self._function.decode()
        counts = [self._ask(server, g.status, timeout).get(function, (0, 0, 0))[2] for server in self.servers]
        self._nworkers, self._counted_at = max(counts), time.monotonic()

    def _ask(self, server: tuple[str, int], question, timeout: float = g.CONNECT_SECONDS):
        try:
            return question(server, timeout)
        except OSError as exc:
            raise ClusterConnectionError(
                f"no gearman server answered at {server[0]}:{server[1]} (from {self._source}): {exc}. Start one with "
                "`glimpse-cluster --type gearman LaunchBroker --port PORT` (or gearmand), or fix the address."
            ) from None

    def _start_workers_hint(self) -> str:
        command = f"glimpse-cluster --type gearman LaunchWorker --address {self.address}"
        try:
            others = {
                name
                for name, (_, _, workers) in self._ask(self.servers[0], g.status).items()
                if name.startswith("glimpse:") and workers and name != self._function.decode()
            }
        except ClusterConnectionError:
            others = set()
        if others:
            command += (
                f" (workers with another cluster key serve {', '.join(sorted(others))}: give them this pool's key, "
                f"from {self.key.source})"
            )
        return command
