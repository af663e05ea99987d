"""The workers of the glimpse ZeroMQ cluster: one process, several worker slots.

Each slot has its own DEALER socket (so the broker sees one worker per slot) and a child
process that runs chunks (the ``worker_main`` program MulticorePool uses). The slot keeps sending
heartbeats while its child computes, passes on the chunks it holds (the child starts the next
the moment one ends), fetches a call's function from the broker when a chunk did not bring it,
and kills and replaces its child when its running chunk is cancelled or the child dies.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

import zmq

from glimpse.pools.backends.zmq import protocol as p
from glimpse.pools.backends.zmq.signed_socket import PeerSocket
from glimpse.pools.ipc import shared_memory
from glimpse.pools.ipc.child_process import ChildProcess, TaskProcesses, skipped_token
from glimpse.pools.ipc.frames import RETIRING
from glimpse.pools.ipc.shared_memory import SharedPayload
from glimpse.pools.security import ClusterKey, MessageSigner

log = logging.getLogger(__name__)

_CLOSE_LINGER_MS = 500
#: Machines (containers) may share a hostname and a pid: a random token keeps their slots' names apart.
_PROCESS_TOKEN = secrets.token_hex(4)


def _start_child(processes: TaskProcesses) -> ChildProcess:
    # Large chunks and outcomes go whole through shared memory and small ones through a pipe that
    # never blocks the loop serving every slot: a child waits for no slot to be scheduled.
    return processes.start(outcomes="pickles", blocking=False)


def serve(address: str, nworkers: int, key: ClusterKey, max_chunks: int | None = None) -> None:
    """Run ``nworkers`` worker slots for the broker at ``address`` until interrupted or told to exit;
    each task process runs at most ``max_chunks`` chunks, then a fresh one takes over.

    Messages are signed with ``key``; a broker that refuses it ends the workers with an ``AuthenticationError``.
    """
    context = zmq.Context()
    functions: OrderedDict[bytes, bytes] = OrderedDict()
    processes = TaskProcesses(nworkers, max_chunks)
    slots = [Slot.connect(context, address, index, functions, key, processes) for index in range(nworkers)]
    log.info("%d zmq workers (pid %d) connecting to %s", nworkers, os.getpid(), address)
    next_heartbeat = 0.0
    warn_at = time.monotonic() + p.CONNECT_SECONDS
    try:
        while slots:
            if warn_at and any(slot.welcomed for slot in slots):
                log.info("connected to the broker at %s", address)
                warn_at = 0.0
            elif warn_at and time.monotonic() > warn_at:
                log.warning("no glimpse zmq broker answers at %s yet; still trying (is the address right?)", address)
                warn_at = 0.0
            poller = zmq.Poller()
            for slot in slots:
                poller.register(slot.socket.socket, zmq.POLLIN)
                slot.watch_child(poller)
            ready = dict(poller.poll(p.HEARTBEAT_SECONDS * 500))
            for slot in list(slots):
                slot.serve_child(ready)
                if slot.socket.socket in ready and not slot.receive_available():
                    slot.close("the broker told it to exit")
                    slots.remove(slot)
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + p.HEARTBEAT_SECONDS
                for slot in slots:
                    slot.send(p.HEARTBEAT, slot.info())
    finally:
        for slot in slots:
            slot.close("its process was stopped")
        context.term()


def slot_name(index: int) -> bytes:
    """The name slot ``index`` of this process goes by at the broker: ``host:pid:token:index``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}:{index}".encode()


@dataclass(eq=False)
class SlotChunk:
    """A chunk the broker handed to a slot; ``token`` names it to the child once sent there."""

    number: bytes
    call: bytes
    payload: bytes
    start: int
    token: int | None = None
    fetching: bool = False  # its function was asked of the broker
    giving_back: bool = False  # the broker asked for it back
    cancelled: bool = False


class Slot:
    """One worker: a connection to the broker and a child process that runs its chunks.

    The slot holds the chunks the broker sent (the one running and one waiting) and passes them
    to its child as soon as it has their function, so the child starts the next chunk the moment
    one ends. A waiting chunk the broker takes back or cancels is skipped by the child unless it
    started (``worker_main`` decides, once per chunk).
    """

    def __init__(self, name: bytes, link, functions: OrderedDict[bytes, bytes], processes: TaskProcesses):
        self.id = name
        #: How its task processes start.
        self.processes = processes
        #: What it sends with: a signed socket to the broker, or a ``LocalLink`` inside the broker's process.
        self.socket = link
        self.functions = functions
        self.process = _start_child(processes)
        self.held: list[SlotChunk] = []
        self.tokens = itertools.count()
        self.chunks = 0
        self.welcomed = False
        self.send(p.READY, p.VERSION, self.info())

    @classmethod
    def connect(
        cls,
        context: zmq.Context,
        address: str,
        index: int,
        functions: OrderedDict[bytes, bytes],
        key: ClusterKey,
        processes: TaskProcesses,
    ) -> Slot:
        """Slot ``index`` of this process, connected to the broker at ``address``; it says READY at once."""
        name = slot_name(index)
        link = PeerSocket(p.dealer(context, address, name), MessageSigner(key, name), address)
        return cls(name, link, functions, processes)

    @property
    def running(self) -> bool:
        """Whether its child holds chunks (so its outcomes must be watched for)."""
        return any(job.token is not None for job in self.held)

    def info(self) -> bytes:
        return p.to_json(
            {"host": socket.gethostname(), "pid": os.getpid(), "task_pid": self.process.pid, "chunks": self.chunks}
        )

    def watch_child(self, poller: zmq.Poller) -> None:
        """Register with ``poller`` what its child's pipes are waited on for (outcomes, room to send)."""
        if self.running:
            poller.register(self.process.fileno(), zmq.POLLIN)
        if self.process.sending:
            poller.register(self.process.inbox, zmq.POLLOUT)

    def serve_child(self, ready: dict) -> None:
        """Send on and collect what the ``ready`` pipes of its child allow."""
        if self.process.sending and self.process.inbox in ready:
            self.process.flush()  # a dead child is found by collect(), at the end of its pipe
        if self.running and self.process.fileno() in ready:
            self.collect()

    def receive_available(self) -> bool:
        """Handle every message the broker sent; ``False`` once it says to exit."""
        while True:
            try:
                message = self.socket.receive()
            except zmq.Again:
                return True
            if message is None:
                continue
            kind, *frames = message
            if kind == p.EXIT:
                return False
            try:
                self.handle(kind, frames)
            except (TypeError, ValueError, AttributeError):  # signed, but malformed: a different glimpse version
                log.warning("ignoring a malformed %r message from the broker", kind[:20], exc_info=True)

    def handle(self, kind: bytes, frames: list[bytes]) -> None:
        """Act on one verified message from the broker."""
        if kind == p.WELCOME:
            self.welcomed = True
        elif kind == p.TASK:
            self.on_task(*frames)
        elif kind == p.FUNC:
            self.on_function(*frames)
        elif kind == p.NOFUNC:
            self.on_missing_function(*frames)
        elif kind == p.TAKEBACK:
            self.on_take_back(*frames)
        elif kind == p.CANCEL:
            self.on_cancel(*frames)
        elif kind == p.RESTART:
            self.drop_all(restart=True)
        elif kind == p.RESET:
            self.drop_all()
            self.send(p.READY, p.VERSION, self.info())

    def on_task(self, number: bytes, call: bytes, payload: bytes, start: bytes, function: bytes) -> None:
        # How many chunks a worker holds is the broker's to decide: a chunk it cancelled may still
        # be here, waiting for the child to say it skipped it, when the next one arrives.
        if function:
            self.keep_function(call, function)
        self.held.append(SlotChunk(number, call, payload, int(start)))
        self.forward()

    def on_function(self, call: bytes, blob: bytes) -> None:
        self.keep_function(call, blob)
        self.forward()

    def keep_function(self, call: bytes, blob: bytes) -> None:
        self.functions[call] = blob
        self.functions.move_to_end(call)
        while len(self.functions) > p.FUNCTIONS_KEPT:
            self.functions.popitem(last=False)

    def on_missing_function(self, call: bytes) -> None:
        for job in [job for job in self.held if job.token is None and job.call == call]:
            self.held.remove(job)
            self.send(p.FAILED, job.number, self.failure("the broker no longer has the function of this call"))
        self.forward()

    def on_take_back(self, number: bytes) -> None:
        job = self.find(number)
        if job is None:
            return  # it finished: its RESULT is on the way
        job.giving_back = True
        if job.token is None:
            self.answer_unstarted(job)
        elif not self.process.send_skip(job.token):
            self.child_died()

    def on_cancel(self, number: bytes) -> None:
        job = self.find(number)
        if job is None:
            return
        job.cancelled = True
        if job.token is None:
            self.held.remove(job)
        elif job is self.head():
            self.replace_process()  # it may be running: stop it
        elif not self.process.send_skip(job.token):
            self.child_died()

    def forward(self) -> None:
        """Send the child, in order, every held chunk it does not have yet and whose function is here."""
        batch = []
        for job in self.held:
            if job.token is not None:
                continue
            if self.process.last_call == job.call:
                blob = None
            elif job.call in self.functions:
                blob = self.functions[job.call]
                self.functions.move_to_end(job.call)
            else:
                if not job.fetching:
                    job.fetching = True
                    self.send(p.GETFUNC, job.call)
                break
            job.token = next(self.tokens)
            self.process.last_call = job.call
            batch.append((job.token, job.call.decode(), blob, shared_memory.share_pickle(job.payload), job.start))
        if batch and not self.process.send_chunks(batch):
            self.child_died()

    def collect(self) -> None:
        """Forward the outcomes the child sent, and the chunks it skipped; replace a child that died."""
        try:
            frames = self.process.receive_all()
        except (EOFError, OSError):
            self.child_died()
            return
        for frame in frames:
            if frame == RETIRING:  # an item's thread runs on there: the chunks it holds go to a fresh one
                self.replace_process()
                return
            token = skipped_token(frame)
            if token is not None:
                job = next((job for job in self.held if job.token == token), None)
                if job is not None:
                    self.answer_unstarted(job)
                continue
            job = self.head()
            if job is None:  # (never: the child answers only chunks it was sent)
                log.warning("ignoring an outcome from task process %d for no chunk", self.process.pid)
                continue
            self.held.remove(job)
            self.chunks += 1
            if not job.cancelled:
                self.send(p.RESULT, job.number, frame.view if isinstance(frame, SharedPayload) else frame)

    def answer_unstarted(self, job: SlotChunk) -> None:
        """A chunk that never ran leaves: given back if the broker asked, dropped if it cancelled it."""
        self.held.remove(job)
        if job.giving_back and not job.cancelled:
            self.send(p.GAVEBACK, job.number)

    def child_died(self) -> None:
        """The chunk the child ran is lost; the ones behind it go to a fresh child."""
        head = self.head()
        death = self.process.describe_death()
        self.process.stop()  # one that closed its pipes and lives on is gone before the pool hears of it
        if head is not None:
            self.held.remove(head)
            if not head.cancelled:
                self.send(p.FAILED, head.number, self.failure(f"its task {death} while running it"))
        self.replace_process()

    def head(self) -> SlotChunk | None:
        """The chunk the child runs (or ran last without answering yet)."""
        return next((job for job in self.held if job.token is not None), None)

    def find(self, number: bytes) -> SlotChunk | None:
        return next((job for job in self.held if job.number == number), None)

    def failure(self, reason: str) -> bytes:
        return f"zmq worker {self.id.decode()}: {reason}".encode()

    def drop_all(self, restart: bool = False) -> None:
        """Forget every chunk (the broker did), replacing the child if it held any (or to ``restart`` it)."""
        replace = self.running or restart
        self.held.clear()
        if replace:
            self.replace_process()

    def replace_process(self) -> None:
        """Start a fresh child; the chunks the old one held are sent again, except those that are leaving."""
        self.process.stop()
        self.process = _start_child(self.processes)
        for job in [job for job in self.held if job.token is not None]:
            job.token = None
            if job.cancelled or job.giving_back:
                self.answer_unstarted(job)
        self.forward()

    def close(self, reason: str) -> None:
        self.send(p.LEAVING, reason.encode())
        self.process.stop()
        self.socket.close(linger=_CLOSE_LINGER_MS)

    def send(self, kind: bytes, *frames: bytes) -> None:
        try:
            self.socket.send(kind, *frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("dropped a %s message: the broker is unreachable", kind.decode())
