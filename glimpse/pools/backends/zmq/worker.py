"""The workers of the glimpse ZeroMQ cluster: one process, several worker slots.

Each slot has its own DEALER socket (so the broker sees one worker per slot) and a child
process that runs chunks (the ``worker_main`` program MulticorePool uses). The slot keeps sending
heartbeats while its child computes, fetches a call's function from the broker the first time
it needs it, and kills and replaces its child when a chunk is cancelled or the child dies.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

import zmq

from glimpse.pools.backends.processes.child_process import ChildProcess
from glimpse.pools.backends.zmq import protocol as p
from glimpse.pools.backends.zmq.signed_socket import PeerSocket
from glimpse.pools.security import ClusterKey, MessageSigner

log = logging.getLogger(__name__)

_FUNCTIONS_KEPT = 4
_CLOSE_LINGER_MS = 500


def serve(address: str, nworkers: int, key: ClusterKey) -> None:
    """Run ``nworkers`` worker slots for the broker at ``address`` until interrupted or told to exit.

    Messages are signed with ``key``; a broker that refuses it ends the workers with an ``AuthenticationError``.
    """
    context = zmq.Context()
    functions: OrderedDict[bytes, bytes] = OrderedDict()
    slots = [Slot(context, address, index, functions, key) for index in range(nworkers)]
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
                if slot.running:
                    poller.register(slot.process.fileno(), zmq.POLLIN)
            ready = dict(poller.poll(p.HEARTBEAT_SECONDS * 500))
            for slot in list(slots):
                if slot.running and slot.process.fileno() in ready:
                    slot.collect()
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


@dataclass
class SlotChunk:
    """A chunk the broker handed to a slot."""

    number: bytes
    call: bytes
    payload: bytes
    start: int
    running: bool = False


class Slot:
    """One worker: a connection to the broker and a child process that runs its chunks."""

    def __init__(
        self, context: zmq.Context, address: str, index: int, functions: OrderedDict[bytes, bytes], key: ClusterKey
    ):
        self.id = f"{socket.gethostname()}:{os.getpid()}:{index}".encode()
        self.index = index
        self.socket = PeerSocket(p.dealer(context, address, self.id), MessageSigner(key, self.id), address)
        self.functions = functions
        self.process = ChildProcess.start(shared_outcomes=False)
        self.job: SlotChunk | None = None
        self.chunks = 0
        self.welcomed = False
        self.send(p.READY, p.VERSION, self.info())

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def info(self) -> bytes:
        return p.to_json(
            {"host": socket.gethostname(), "pid": os.getpid(), "task_pid": self.process.pid, "chunks": self.chunks}
        )

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
        elif kind == p.CANCEL:
            if self.job is not None and self.job.number == frames[0]:
                self.abort()
        elif kind == p.RESTART:
            self.abort()
            self.replace_process()
        elif kind == p.RESET:
            self.abort()
            self.send(p.READY, p.VERSION, self.info())

    def on_task(self, number: bytes, call: bytes, payload: bytes, start: bytes) -> None:
        if self.job is not None:
            self.send(p.FAILED, number, f"zmq worker {self.id.decode()} was still busy with another chunk".encode())
            return
        self.job = SlotChunk(number, call, payload, int(start))
        if self.process.last_call == call:
            self.run(None)
        elif call in self.functions:
            self.functions.move_to_end(call)
            self.run(self.functions[call])
        else:
            self.send(p.GETFUNC, call)

    def on_function(self, call: bytes, blob: bytes) -> None:
        self.functions[call] = blob
        while len(self.functions) > _FUNCTIONS_KEPT:
            self.functions.popitem(last=False)
        if self.job is not None and not self.job.running and self.job.call == call:
            self.run(blob)

    def on_missing_function(self, call: bytes) -> None:
        if self.job is not None and not self.job.running and self.job.call == call:
            self.fail("the broker no longer has the function of this call (its pool released it)")

    def run(self, blob: bytes | None) -> None:
        job = self.job
        job.running = True
        if not self.process.send_chunk(job.call.decode(), blob, job.payload, job.start):
            self.fail(f"its task {self.process.describe_death(2.0)} before it took the chunk")
            self.replace_process()
            return
        self.process.last_call = job.call

    def collect(self) -> None:
        """Forward the finished chunk's outcome, or report the chunk lost if the child died."""
        try:
            outcome = self.process.receive()
        except (EOFError, OSError):
            self.fail(f"its task {self.process.describe_death(2.0)} while running it")
            self.replace_process()
            return
        self.send(p.RESULT, self.job.number, outcome)
        self.job = None
        self.chunks += 1

    def abort(self) -> None:
        """Drop the current chunk, killing the child if it was running it."""
        if self.running:
            self.replace_process()
        self.job = None

    def fail(self, reason: str) -> None:
        self.send(p.FAILED, self.job.number, f"zmq worker {self.id.decode()}: {reason}".encode())
        self.job = None

    def replace_process(self) -> None:
        self.process.stop()
        self.process = ChildProcess.start(shared_outcomes=False)

    def close(self, reason: str) -> None:
        self.send(p.LEAVING, reason.encode())
        self.process.stop()
        self.socket.close(linger=_CLOSE_LINGER_MS)

    def send(self, kind: bytes, *frames: bytes) -> None:
        try:
            self.socket.send(kind, *frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("dropped a %s message: the broker is unreachable", kind.decode())
