"""The caller's handle on a worker process running ``worker_main``, and the two pipes to it.

Used by ``MulticorePool`` (one per worker) and by zmq workers (one per slot). The pipes keep the
protocol apart from the user's prints; ``fileno()`` lets ``multiprocessing.connection.wait``
watch many of them at once.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection

from glimpse.pools.backends.processes import shared_memory
from glimpse.pools.subprocesses import child_environment

#: Payloads smaller than this travel inside the chunk's message.
_INLINE_PAYLOAD_BYTES = 64 * 1024


class ChildProcess:
    """One worker process; send it messages, receive outcomes, stop it.

    Large buffers of chunks and outcomes go through shared memory (see ``shared_memory``), whose
    descriptors travel on a socket beside the pipes.
    """

    def __init__(self, process: subprocess.Popen, inbox: Connection, outbox: Connection, fds: socket.socket):
        self.process, self.inbox, self.outbox, self.fds = process, inbox, outbox, fds
        self.last_call = None

    @classmethod
    def start(cls, initializer: bytes | None = None, shared_outcomes: bool = True):
        """Start a worker; ``initializer`` is the pickled ``(initializer, initargs)`` it runs first.

        With ``shared_outcomes`` the worker sends large result buffers through shared memory
        (:meth:`receive` then returns a ``SharedPayload``); without, outcomes are always bytes.
        """
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        fds, child_fds = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "glimpse.pools.backends.processes.worker_main",
                    str(to_child_r),
                    str(from_child_w),
                    str(child_fds.fileno()),
                ],
                pass_fds=(to_child_r, from_child_w, child_fds.fileno()),
                env=child_environment(),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
            child_fds.close()
        worker = cls(process, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False), fds)
        worker.send(("setup", initializer, shared_outcomes))
        return worker

    @property
    def pid(self) -> int:
        return self.process.pid

    def fileno(self) -> int:
        return self.outbox.fileno()

    def send(self, message: tuple) -> bool:
        """Send a message; ``False`` if the process is gone."""
        try:
            self.inbox.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            return True
        except OSError:
            return False

    def send_chunk(self, call_id: str, function: bytes | None, payload, start: int) -> bool:
        """Send a chunk to run; ``False`` if the process is gone.

        A small payload travels inside the message (one write); a large one (bytes or a
        ``SharedPayload``) follows it as a frame of its own, so it is not pickled a second time.
        """
        if isinstance(payload, bytes) and len(payload) < _INLINE_PAYLOAD_BYTES:
            return self.send(("chunk", call_id, function, start, payload))
        if not self.send(("chunk", call_id, function, start, None)):
            return False
        try:
            shared_memory.send(self.inbox, self.fds, payload)
            return True
        except OSError:
            return False

    def receive(self):
        """The next outcome (bytes or a ``SharedPayload``); ``EOFError`` or ``OSError`` if the process died."""
        return shared_memory.receive(self.outbox, self.fds)

    def describe_death(self, grace: float = 5.0) -> str:
        """How the process ended, e.g. ``process pid 12 was killed by SIGKILL``."""
        try:
            code = self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return f"process pid {self.pid} stopped answering"
        if code < 0:
            return f"process pid {self.pid} was killed by {signal.Signals(-code).name}"
        return f"process pid {self.pid} exited with code {code}"

    def stop(self, grace: float = 0.0) -> None:
        """Ask the process to exit and wait up to ``grace`` seconds, then kill it; close the pipes."""
        if grace > 0:
            self.send(("exit",))
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.inbox.close()
        self.outbox.close()
        self.fds.close()
