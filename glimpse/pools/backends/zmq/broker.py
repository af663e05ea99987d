"""The broker of the glimpse ZeroMQ cluster: one ROUTER socket between pools and workers.

It queues the chunks pools send and hands them to workers: one to each idle worker first, then
a second to each busy one, which its worker starts the moment the first ends (no round trip
between chunks); while a worker is idle and nothing is queued, a chunk waiting behind another is
taken back for it. It forwards outcomes back, keeps each call's pickled function until the pool
releases it (sending it along with a worker's first chunk of the call), and reports the chunk a
worker was running when it stopped sending heartbeats as lost to the pool that sent it (the
chunk waiting behind it goes to another worker). See ``protocol.py`` for the messages. Worker
slots may also run in the broker's own process (``local_slots.py``), and the pool that started
it may talk to it through a socket pair (``pool_pipe.py``), both served by the same loop.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import zmq

from glimpse.pools.backends.zmq import protocol as p
from glimpse.pools.backends.zmq.local_slots import LocalSlots
from glimpse.pools.backends.zmq.pool_pipe import PIPE_POOL, PipeClient
from glimpse.pools.backends.zmq.signed_socket import BROKER, BrokerSocket
from glimpse.pools.security import ClusterKey, MessageSigner, Tagged

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


def serve(
    host: str,
    port: int,
    key: ClusterKey,
    ready_fd: int | None = None,
    nworkers: int = 0,
    pool_fd: int | None = None,
    max_chunks: int | None = None,
) -> None:
    """Bind ``tcp://host:port`` (port 0 picks a free one) and run the broker until interrupted.

    Only messages signed with ``key`` are acted on. When ``ready_fd`` is given, the bound
    address is written to it and it is closed. ``nworkers`` worker slots run in the broker's own
    process (see ``local_slots.py``), beside any that connect, each task process running at most
    ``max_chunks`` chunks. ``pool_fd`` is a socket the pool that started this broker talks through
    (see ``pool_pipe.py``).
    """
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.linger = 0
    socket.sndhwm = 0
    socket.rcvhwm = 0
    socket.maxmsgsize = p.MAX_FRAME_BYTES
    p.keep_alive(socket)
    # Workers name themselves; a worker that reconnects (after a network blip) keeps its name.
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    try:
        socket.bind(f"tcp://{host}:{port}")
    except zmq.ZMQError as exc:
        socket.close()
        raise OSError(f"the zmq broker cannot listen on tcp://{host}:{port}: {exc}") from None
    address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    log.info("glimpse zmq broker listening on %s; cluster key: %s", address, key.source)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the broker listens on %s: messages are signed, not encrypted; anyone on the network path can read "
            "the data, so keep it to a private network",
            address,
        )
    broker = Broker(BrokerSocket(socket, MessageSigner(key, BROKER)), nworkers, pool_fd, max_chunks)
    if ready_fd is not None:
        with os.fdopen(ready_fd, "w") as ready:
            ready.write(address + "\n")
    try:
        broker.run()
    finally:
        broker.close()
        socket.close()
        context.term()


@dataclass(eq=False)
class QueuedChunk:
    """A chunk a pool sent: queued, or running on a worker."""

    number: int
    client: bytes
    task: bytes
    call: bytes
    payload: bytes | Tagged
    start: bytes
    worker: Worker | None = None
    taking_back: bool = False


@dataclass(eq=False)
class Worker:
    """One worker slot as the broker knows it."""

    id: bytes
    info: dict
    seen: float
    #: The chunks it holds, in the order it was sent them: it runs the first, the others wait.
    held: list[QueuedChunk] = field(default_factory=list)
    functions: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    since: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        return f"zmq worker {self.id.decode(errors='replace')} (pid {self.info.get('pid')} on {self.info.get('host')})"


class Broker:
    """The broker's state and its message handlers; :meth:`run` is the event loop."""

    def __init__(
        self, socket: BrokerSocket, local_workers: int = 0, pool_fd: int | None = None, max_chunks: int | None = None
    ):
        self.socket = socket
        self.local = LocalSlots(local_workers, socket.signer, max_chunks) if local_workers else None
        self.pipe = PipeClient(pool_fd, socket.signer) if pool_fd is not None else None
        self.id = uuid.uuid4().hex.encode()
        self.workers: OrderedDict[bytes, Worker] = OrderedDict()
        self.queue: deque[QueuedChunk] = deque()
        self.chunks: dict[tuple[bytes, bytes], QueuedChunk] = {}
        self.running: dict[int, QueuedChunk] = {}
        self.functions: dict[bytes, tuple[bytes, bytes | Tagged]] = {}
        #: When each worker this broker did not know was last told to start over.
        self.resets: dict[bytes, float] = {}
        self.next_job = 0
        self.handlers = {
            p.HELLO: self.on_hello,
            p.PING: self.on_ping,
            p.FUNC: self.on_func,
            p.DROP: self.on_drop,
            p.CHUNK: self.on_chunk,
            p.CANCEL: self.on_cancel,
            p.LIST: self.on_list,
            p.KILL: self.on_kill,
            p.RESTART: self.on_restart,
            p.BYE: self.on_bye,
            p.READY: self.on_ready,
            p.HEARTBEAT: self.on_heartbeat,
            p.RESULT: self.on_result,
            p.FAILED: self.on_failed,
            p.GETFUNC: self.on_getfunc,
            p.GAVEBACK: self.on_gaveback,
            p.LEAVING: self.on_leaving,
        }

    def run(self) -> None:
        next_heartbeat = 0.0
        while True:
            self.pass_local_messages()
            poller = zmq.Poller()
            poller.register(self.socket.socket, zmq.POLLIN)
            if self.local is not None:
                self.local.watch(poller)
            if self.pipe is not None:
                self.pipe.watch(poller)
            ready = dict(poller.poll(_POLL_SECONDS * 1000))
            if self.socket.socket in ready:
                self.receive_available()
            if self.pipe is not None:
                for message in self.pipe.serve(ready):
                    self.act_on(PIPE_POOL, message)
            if self.local is not None:
                self.local.serve(ready)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + p.HEARTBEAT_SECONDS
                    self.local.heartbeat()
            self.pass_local_messages()
            self.expire_silent_workers()
            self.dispatch()

    def close(self) -> None:
        """Stop the task processes of the slots in this process, and close the pool's socket pair."""
        if self.local is not None:
            self.local.close("the broker stopped")
        if self.pipe is not None:
            self.pipe.close()

    def receive_available(self) -> None:
        while True:
            try:
                message = self.socket.receive()
            except zmq.Again:
                return
            if message is not None and not self.in_process(message[0]):
                self.act_on(*message)

    def in_process(self, name: bytes) -> bool:
        """Whether ``name`` is a peer of this process (its slots, its pool's socket pair): a ZeroMQ peer
        that takes such a name is not listened to."""
        return (self.local is not None and name in self.local) or (self.pipe is not None and name == PIPE_POOL)

    def pass_local_messages(self) -> None:
        """Hand the slots in this process what was sent them, and act on what they answer, until both wait."""
        while self.local is not None and self.local.pending:
            self.local.hand_over()
            while self.local.inbox:
                self.act_on(*self.local.inbox.popleft())

    def act_on(self, sender: bytes, frames: list) -> None:
        """Handle one verified message from a pool or a worker."""
        kind, *frames = frames
        worker = self.workers.get(sender)
        if worker is not None:
            worker.seen = time.monotonic()
        handler = self.handlers.get(kind) if isinstance(kind, bytes) else None
        if handler is None:
            log.warning("ignoring an unknown %r message", kind[:20] if isinstance(kind, bytes) else b"<large>")
            return
        try:
            handler(sender, *frames)
        except Exception:  # a signed but malformed message (a different glimpse version): keep serving
            log.warning("ignoring a malformed %s message", kind.decode(errors="replace"), exc_info=True)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand queued chunks to the workers holding the fewest; with none queued, take back for idle ones."""
        while self.queue and self.workers:
            worker = min(self.workers.values(), key=lambda w: len(w.held))
            if len(worker.held) >= p.HELD_PER_WORKER:
                return
            self.hand_out(self.queue.popleft(), worker)
        if not self.queue:
            self.take_back_for_idle_workers()

    def hand_out(self, job: QueuedChunk, worker: Worker) -> None:
        job.worker = worker
        if not worker.held:
            worker.since = time.monotonic()
        worker.held.append(job)
        self.running[job.number] = job
        function = b""
        entry = self.functions.get(job.call)
        # A large function (a Tagged frame, signed end to end) is fetched once per worker process instead.
        if job.call not in worker.functions and entry is not None and not isinstance(entry[1], Tagged):
            function = entry[1]
            worker.functions[job.call] = None
            while len(worker.functions) > p.FUNCTIONS_KEPT:
                worker.functions.popitem(last=False)
        self.send(worker.id, p.TASK, p.number(job.number), job.call, job.payload, job.start, function)

    def take_back_for_idle_workers(self) -> None:
        """Ask busy workers to give back chunks waiting behind their running one, one per idle worker."""
        idle = sum(1 for worker in self.workers.values() if not worker.held)
        if not idle:  # the usual case on a busy cluster, after every message: look at no chunk
            return
        idle -= sum(job.taking_back for worker in self.workers.values() for job in worker.held)
        for worker in self.workers.values():
            if idle <= 0:
                return
            for job in worker.held[1:]:
                if idle > 0 and not job.taking_back:
                    job.taking_back = True
                    self.send(worker.id, p.TAKEBACK, p.number(job.number))
                    idle -= 1

    def expire_silent_workers(self) -> None:
        limit = time.monotonic() - p.WORKER_TIMEOUT_SECONDS
        for worker in [w for w in self.workers.values() if w.seen < limit]:
            self.remove_worker(
                worker,
                f"{worker.describe()} sent no heartbeat for {p.WORKER_TIMEOUT_SECONDS:g} s "
                "(its process was killed, or its machine is unreachable)",
            )

    # -- messages from pools -----------------------------------------------------------------

    def on_hello(self, client: bytes, version: bytes) -> None:
        if version != p.VERSION:
            self.send(client, p.REFUSED, f"the broker speaks {p.VERSION.decode()}, not {version.decode()}".encode())
            return
        self.send(client, p.WELCOME, self.id, p.number(len(self.workers)))

    def on_ping(self, client: bytes, last_task: bytes) -> None:
        held = [task for owner, task in self.chunks if owner == client]
        self.send(client, p.PONG, self.id, p.number(len(self.workers)), last_task, *held)

    def on_func(self, client: bytes, call: bytes, blob: bytes) -> None:
        self.functions[call] = (client, blob)

    def on_drop(self, client: bytes, call: bytes) -> None:
        self.functions.pop(call, None)

    def on_chunk(
        self, client: bytes, task: bytes, call: bytes, payload: bytes, start: bytes, function: bytes = b""
    ) -> None:
        if function:
            self.functions[call] = (client, function)
        if call not in self.functions:
            # The pool sent the function to an earlier broker at this address: ask for it again.
            self.send(client, p.NOFUNC, call)
            self.send(client, p.LOST, task, b"the zmq broker did not have the function of the call (it restarted)")
            return
        self.next_job += 1
        job = QueuedChunk(self.next_job, client, task, call, payload, start)
        self.chunks[client, task] = job
        self.queue.append(job)

    def on_cancel(self, client: bytes, *tasks: bytes) -> None:
        for task in tasks:
            job = self.chunks.pop((client, task), None)
            if job is None:
                continue
            if job.worker is None:
                self.queue.remove(job)
            else:
                self.running.pop(job.number, None)
                self.send(job.worker.id, p.CANCEL, p.number(job.number))
                job.worker.held.remove(job)

    def on_list(self, client: bytes) -> None:
        now = time.monotonic()
        workers = [
            {
                "id": worker.id.decode(errors="replace"),
                **worker.info,
                "state": "busy" if worker.held else "idle",
                "chunks_held": len(worker.held),
                "for_seconds": round(now - worker.since, 1),
            }
            for worker in self.workers.values()
        ]
        summary = {"workers": workers, "queued": len(self.queue), "functions": len(self.functions)}
        self.send(client, p.LISTED, p.to_json(summary))

    def on_kill(self, client: bytes) -> None:
        count = len(self.workers)
        for worker in list(self.workers.values()):
            self.send(worker.id, p.EXIT)
            self.remove_worker(worker, f"{worker.describe()} was stopped by KillWorkers")
        self.send(client, p.KILLED, p.number(count))

    def on_restart(self, client: bytes) -> None:
        for worker in self.workers.values():
            self.send(worker.id, p.RESTART)
            self.lose_chunks(worker, f"{worker.describe()} was restarted by RestartWorkers")
        self.send(client, p.RESTARTED, p.number(len(self.workers)))

    def on_bye(self, client: bytes) -> None:
        for call in [call for call, (owner, _) in self.functions.items() if owner == client]:
            del self.functions[call]
        tasks = [task for owner, task in self.chunks if owner == client]
        self.on_cancel(client, *tasks)

    # -- messages from workers ---------------------------------------------------------------

    def on_ready(self, sender: bytes, version: bytes, info: bytes) -> None:
        if version != p.VERSION:
            log.warning("refusing worker %r: it speaks %r, not %r", sender, version, p.VERSION)
            self.send(sender, p.EXIT)
            return
        old = self.workers.pop(sender, None)
        if old is not None:
            self.lose_chunks(old, f"{old.describe()} started over while running it")
        self.workers[sender] = Worker(sender, p.from_json(info), time.monotonic())
        self.send(sender, p.WELCOME, self.id)
        log.info("worker %s joined (%d workers)", sender.decode(errors="replace"), len(self.workers))

    def on_heartbeat(self, sender: bytes, info: bytes) -> None:
        worker = self.workers.get(sender)
        if worker is None:
            self.reset(sender)
            return
        worker.info = p.from_json(info)

    def reset(self, sender: bytes) -> None:
        """Tell a worker this broker does not know (it restarted, or expired it) to start over: once.

        After a network blip a worker's heartbeats arrive in a burst; a RESET for each would make it
        start over again and again, and each time lose the chunk it had been handed since.
        """
        now = time.monotonic()
        if now - self.resets.get(sender, -p.WORKER_TIMEOUT_SECONDS) < p.WORKER_TIMEOUT_SECONDS:
            return
        for name in [name for name, at in self.resets.items() if now - at >= p.WORKER_TIMEOUT_SECONDS]:
            del self.resets[name]
        self.resets[sender] = now
        self.send(sender, p.RESET)

    def on_result(self, sender: bytes, job_number: bytes, outcome: bytes) -> None:
        job = self.finish(sender, job_number)
        if job is not None:
            self.send(job.client, p.DONE, job.task, outcome)

    def on_failed(self, sender: bytes, job_number: bytes, reason: bytes) -> None:
        job = self.finish(sender, job_number)
        if job is not None:
            self.send(job.client, p.LOST, job.task, reason)

    def on_getfunc(self, sender: bytes, call: bytes) -> None:
        entry = self.functions.get(call)
        if entry is None:
            self.send(sender, p.NOFUNC, call)
        else:
            self.send(sender, p.FUNC, call, entry[1])

    def on_gaveback(self, sender: bytes, job_number: bytes) -> None:
        """A worker gave back a chunk it had not started: it goes first to the next free worker."""
        job = self.running.get(int(job_number))
        worker = self.workers.get(sender)
        if job is None or worker is None or job.worker is not worker:
            return
        self.requeue(worker, [job])

    def on_leaving(self, sender: bytes, reason: bytes) -> None:
        worker = self.workers.get(sender)
        if worker is not None:
            self.remove_worker(worker, f"{worker.describe()} left: {reason.decode(errors='replace')}")

    # -- helpers -------------------------------------------------------------------------------

    def finish(self, sender: bytes, job_number: bytes) -> QueuedChunk | None:
        """The job a worker reports on, taken off the books; ``None`` if it was cancelled or lost."""
        job = self.running.get(int(job_number))
        worker = self.workers.get(sender)
        if job is None or worker is None or job.worker is not worker:
            return None
        del self.running[job.number]
        self.chunks.pop((job.client, job.task), None)
        worker.held.remove(job)
        worker.since = time.monotonic()
        return job

    def lose_chunks(self, worker: Worker, reason: str) -> None:
        """The worker is gone or restarted: the chunk it ran is lost, those waiting go to other workers."""
        if not worker.held:
            return
        running, *waiting = worker.held
        self.requeue(worker, waiting)
        worker.held.clear()
        worker.since = time.monotonic()
        self.running.pop(running.number, None)
        self.chunks.pop((running.client, running.task), None)
        self.send(running.client, p.LOST, running.task, reason.encode())

    def requeue(self, worker: Worker, jobs: list[QueuedChunk]) -> None:
        """Put chunks a worker never started back at the front of the queue, in order."""
        for job in reversed(jobs):
            worker.held.remove(job)
            self.running.pop(job.number, None)
            job.worker, job.taking_back = None, False
            self.queue.appendleft(job)

    def remove_worker(self, worker: Worker, reason: str) -> None:
        self.workers.pop(worker.id, None)
        log.info("%s (%d workers)", reason, len(self.workers))
        self.lose_chunks(worker, reason)

    def send(self, peer: bytes, kind: bytes, *frames: bytes | Tagged) -> None:
        if self.local is not None and peer in self.local:
            self.local.deliver(peer, kind, frames)
        elif self.pipe is not None and peer == PIPE_POOL:
            self.pipe.send(kind, frames)
        else:
            self.socket.send(peer, kind, *frames)
