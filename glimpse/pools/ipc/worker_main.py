"""Runs in a worker process: run the chunks the pool sends, in order, until told to exit.

Started as ``python -m glimpse.pools.ipc.worker_main READ_FD WRITE_FD CONTROL_FD
FDS_FD``; it talks to its pool over pipes (so the user's prints to stdout cannot corrupt the
protocol) and exits when the pool says so, when the pipe closes, or when its parent is gone.

The pool may send the next chunks before this one ends (so the worker never waits for a round
trip), and may take back, on the control pipe, a chunk that has not started yet (a skip) to
give it to an idle worker. A skipped chunk is answered with a ``K`` frame; a chunk that started
is answered with its outcome, as every chunk is, in the order the chunks were sent.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
from collections import deque

from glimpse.pools.contract import pickling
from glimpse.pools.contract.worker_policy import abandoned_work, run_initializer
from glimpse.pools.contract.worker_runner import ChunkOutcome, ItemError, dumps_outcome, run_chunk
from glimpse.pools.ipc import shared_memory
from glimpse.pools.ipc.child_process import SKIPPED
from glimpse.pools.ipc.frames import RETIRING, FrameReader
from glimpse.pools.subprocesses import when_orphaned


def main(read_fd: int, write_fd: int, control_fd: int, fds_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    when_orphaned(lambda: os._exit(1))
    fds = socket.socket(fileno=fds_fd)
    chunks = _Chunks(read_fd, write_fd, fds)
    threading.Thread(target=chunks.answer_skips, args=(control_fd,), name="glimpse-skips", daemon=True).start()
    setup_error: BaseException | None = None
    dumps = pickling.dumps
    chunks_left = -1  # no limit
    while True:
        message = chunks.take()
        kind = message[0]
        if kind == "exit":
            return
        if kind == "setup":
            setup_error = _run_initializer(message[1])
            dumps = _OUTCOME_PICKLERS[message[2]]
            chunks_left = message[3] or -1
        elif kind == "chunk":
            _, _, call_id, func_blob, start, payload = message
            if setup_error is None:
                result = run_chunk(call_id, func_blob, payload, start, dumps)
            else:
                result = dumps_outcome(ChunkOutcome(failure=ItemError(start, setup_error)), start, dumps)
            del message, payload  # unmap the chunk's shared buffers before waiting for the next
            chunks.send(*shared_memory.outgoing(result))
            chunks_left -= 1
            if abandoned_work() or chunks_left == 0:
                chunks.retire()


class _Chunks:
    """The messages sent to this worker, in order; each chunk is either skipped or started, once.

    The main thread reads the chunk pipe itself (every chunk that has arrived, in one read) and
    runs them; a thread waits on the control pipe for skips, so a chunk that waits behind a long
    one can be taken back while that one runs.
    """

    def __init__(self, read_fd: int, write_fd: int, fds: socket.socket):
        self._frames = FrameReader(read_fd)
        self._outbox, self._fds = write_fd, fds
        self._arrived: deque = deque()
        self._claims = threading.Lock()  # decides, once per chunk, between skipping and starting it
        self._sending = threading.Lock()  # frames (and their memfds) never interleave
        self._skipped: set[int] = set()
        self._last_started = -1  # chunk tokens grow in the order the pool sends them
        self._skipped_function: tuple[str, bytes] | None = None

    def take(self) -> tuple:
        """The next message to act on (waits for one); skipped chunks are passed over."""
        while True:
            message = self._next_message()
            if message[0] != "chunk":
                return message
            with self._claims:
                token = message[1]
                if token in self._skipped:
                    self._skipped.discard(token)
                    if message[3] is not None:
                        self._skipped_function = (message[2], message[3])
                    continue
                self._last_started = token
            if message[3] is None and self._skipped_function and self._skipped_function[0] == message[2]:
                # The pool sends a call's function once, with the call's first chunk here; if that one
                # was skipped, the chunks of the call that follow count on it all the same.
                message = (*message[:3], self._skipped_function[1], *message[4:])
            return message

    def _next_message(self) -> tuple:
        try:
            if not self._arrived:
                self._arrived.extend(self._frames.read_frames())
            message = pickle.loads(self._arrived.popleft())
            if message[0] == "chunk" and message[5] is None:  # its payload follows as a frame of its own
                if not self._arrived:
                    self._arrived.extend(self._frames.read_frames())
                message = (*message[:5], shared_memory.incoming(self._arrived.popleft(), self._fds))
            return message
        except (EOFError, OSError):
            return ("exit",)

    def send(self, frame, memfd: int | None = None) -> None:
        """Send one frame to the pool (after its memfd, if it has one)."""
        with self._sending:
            shared_memory.write(self._outbox, self._fds, [frame], [] if memfd is None else [memfd])

    def retire(self) -> None:
        """Start nothing more (an item's thread runs on here) and wait for the pool to end this process."""
        with self._claims:
            self._last_started = 1 << 62  # the chunks queued here are given back, not skipped
            self.send(RETIRING)
        threading.Event().wait()

    def answer_skips(self, control_fd: int) -> None:
        """The skip thread: drop each chunk the pool takes back unless it started, and say so."""
        control = FrameReader(control_fd)
        try:
            while True:
                for frame in control.read_frames():
                    self._skip(int(frame))
        except (EOFError, OSError):
            return

    def _skip(self, token: int) -> None:
        # Answered under the claim lock, so the answer reaches the pool before any later chunk's outcome.
        with self._claims:
            if token <= self._last_started:
                return  # it started: its outcome will answer
            self._skipped.add(token)
            self.send(SKIPPED + str(token).encode())


_OUTCOME_PICKLERS = {
    "buffers": shared_memory.dumps,
    "bytes": pickling.dumps,
    "pickles": shared_memory.dumps_whole,
}


def _run_initializer(blob: bytes | None) -> BaseException | None:
    if blob is None:
        return None
    try:
        initializer, initargs = pickling.loads(blob)
    except BaseException as exc:
        return exc
    return run_initializer(initializer, initargs)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:5]))
