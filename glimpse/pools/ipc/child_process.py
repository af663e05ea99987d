"""The caller's handle on a worker process running ``worker_main``, and the two pipes to it.

Used by ``MulticorePool`` (one per worker) and by zmq and gearman workers (one per slot). The
pipes keep the protocol apart from the user's prints and carry ``frames``; ``fileno()`` lets a
``poll`` watch many workers at once.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from glimpse.pools.ipc import shared_memory
from glimpse.pools.ipc.frames import FrameReader, frame_views, write_available, write_frames
from glimpse.pools.subprocesses import child_environment
from glimpse.pools.thread_caps import capped_environment

#: The first byte of the frame that answers a skip; outcomes start with a pickle or ``S``.
SKIPPED = b"K"
#: Payloads smaller than this travel inside the chunk's message.
_INLINE_PAYLOAD_BYTES = 64 * 1024
#: How long a process whose pipe closed is given to finish exiting (it exits within microseconds).
_DEATH_GRACE_SECONDS = 0.2


class ChildProcess:
    """One worker process; send it messages and chunks, receive outcomes, stop it.

    Large buffers of chunks and outcomes go through shared memory (see ``shared_memory``), whose
    descriptors travel on a socket beside the pipes.
    """

    def __init__(self, process: subprocess.Popen, inbox: int, outbox: int, control: int, fds: socket.socket):
        self.process, self.inbox, self.outbox, self.control, self.fds = process, inbox, outbox, control, fds
        self._outcomes = FrameReader(outbox)
        self._unsent: list[memoryview] | None = None
        self.last_call = None

    @classmethod
    def start(
        cls,
        workers_here: int,
        initializer: bytes | None = None,
        outcomes: str = "buffers",
        blocking: bool = True,
        max_chunks: int | None = None,
    ):
        """Start a worker, one of ``workers_here`` on this machine (they share its cores: see
        ``thread_caps``); ``initializer`` is the pickled ``(initializer, initargs)`` it runs first.
        After ``max_chunks`` chunks it retires (see ``worker_main``), to be replaced by a fresh one.

        ``outcomes`` says how the worker sends them: ``"buffers"``, large result buffers through
        shared memory (such outcomes are ``SharedPayload`` objects); ``"pickles"``, a large
        outcome's whole pickle through shared memory (a ``SharedPayload`` without skeleton, whose
        ``view`` is the pickle); ``"bytes"``, always as bytes through the pipe.
        Without ``blocking``, sending never waits for the worker to read: what its pipe does not
        take yet waits here until :meth:`flush` (call it when ``inbox`` is writable, while
        :attr:`sending`); so one event loop can feed a worker a chunk while it writes an outcome.
        """
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        control_r, control_w = os.pipe()
        fds, child_fds = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        child_ends = (to_child_r, from_child_w, control_r, child_fds.fileno())
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "glimpse.pools.ipc.worker_main", *map(str, child_ends)],
                pass_fds=child_ends,
                env=capped_environment(child_environment(), workers_here),
                stdin=subprocess.DEVNULL,
            )
        finally:
            for fd in child_ends[:3]:
                os.close(fd)
            child_fds.close()
        worker = cls(process, to_child_w, from_child_r, control_w, fds)
        if not blocking:
            os.set_blocking(to_child_w, False)
            worker._unsent = []
        worker.send(("setup", initializer, outcomes, max_chunks))
        return worker

    @property
    def pid(self) -> int:
        return self.process.pid

    def fileno(self) -> int:
        return self.outbox

    def send(self, message: tuple) -> bool:
        """Send a message; ``False`` if the process is gone."""
        return self._write([pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)], [])

    def send_chunks(self, chunks: list[tuple[int, str, bytes | None, object, int]]) -> bool:
        """Send chunks to run after those sent before, in one write; ``False`` if the process is gone.

        Each chunk is ``(token, call_id, function, payload, start)``; ``token`` names it for
        :meth:`send_skip` and must grow from chunk to chunk. A small payload travels inside its
        chunk's message; a large one (bytes or a ``SharedPayload``) follows it as a frame of its
        own, so it is not pickled a second time.
        """
        frames, memfds = [], []
        for token, call_id, function, payload, start in chunks:
            inline = isinstance(payload, bytes) and len(payload) < _INLINE_PAYLOAD_BYTES
            message = ("chunk", token, call_id, function, start, payload if inline else None)
            frames.append(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            if not inline:
                frame, memfd = shared_memory.outgoing(payload)
                frames.append(frame)
                if memfd is not None:
                    memfds.append(memfd)
        return self._write(frames, memfds)

    def send_chunk(self, call_id: str, function: bytes | None, payload, start: int) -> bool:
        """Send one chunk (see :meth:`send_chunks`); ``False`` if the process is gone."""
        return self.send_chunks([(0, call_id, function, payload, start)])

    def send_skip(self, token: int) -> bool:
        """Ask the process to drop the chunk ``token`` unless it has started it; ``False`` if it is gone.

        It answers with a frame that :func:`skipped_token` reads, or with the chunk's outcome.
        """
        try:
            write_frames(self.control, [str(token).encode()])
            return True
        except OSError:
            return False

    def receive_all(self) -> list:
        """Every outcome (bytes or a ``SharedPayload``) or skip answer that has arrived, at least
        one (waits for it); ``EOFError`` or ``OSError`` if the process died."""
        return [shared_memory.incoming(frame, self.fds) for frame in self._outcomes.read_frames()]

    def receive(self):
        """The outcome of the one chunk sent; ``EOFError`` or ``OSError`` if the process died."""
        (outcome,) = self.receive_all()
        return outcome

    @property
    def sending(self) -> bool:
        """Whether sent messages still wait for room in the pipe (without ``blocking`` only)."""
        return bool(self._unsent)

    def flush(self) -> bool:
        """Write what the pipe takes now of what waits to go; ``False`` if the process is gone."""
        try:
            write_available(self.inbox, self._unsent)
            return True
        except OSError:
            return False

    def _write(self, frames: list, memfds: list[int]) -> bool:
        try:
            if self._unsent is None:
                shared_memory.write(self.inbox, self.fds, frames, memfds)
                return True
            shared_memory.send_memfds(self.fds, memfds)
            self._unsent.extend(frame_views(frames))
        except OSError:
            return False
        return self.flush()

    def describe_death(self) -> str:
        """How the process ended, e.g. ``process pid 12 was killed by SIGKILL``; called once its pipe
        closed. One that closed it and lives on is waited for only briefly (callers then kill it):
        the one loop that runs the process also serves other workers, or a whole broker."""
        try:
            code = self.process.wait(timeout=_DEATH_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            return f"process pid {self.pid} closed its pipes but did not exit (killed)"
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
        if self.fds.fileno() != -1:  # not closed yet: a descriptor number is never closed twice
            for fd in (self.inbox, self.outbox, self.control):
                os.close(fd)
            self.fds.close()


@dataclass(frozen=True)
class TaskProcesses:
    """How a zmq or gearman worker slot starts its task processes: ``workers_here`` slots share this
    machine, and each process runs at most ``max_chunks`` chunks (multiprocessing's ``maxtasksperchild``)."""

    workers_here: int
    max_chunks: int | None = None

    def start(self, outcomes: str, blocking: bool = True) -> ChildProcess:
        return ChildProcess.start(self.workers_here, outcomes=outcomes, blocking=blocking, max_chunks=self.max_chunks)


def skipped_token(frame) -> int | None:
    """The token of the chunk a frame from :meth:`ChildProcess.receive` says was skipped, if it is one."""
    if isinstance(frame, bytes) and frame[:1] == SKIPPED:
        return int(frame[1:])
    return None
