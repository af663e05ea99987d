"""Runs in a worker process: receive a chunk, run it, send the outcome, until told to exit.

Started as ``python -m glimpse.pools.backends.processes.worker_main READ_FD WRITE_FD``; it talks to its pool
over two pipes (so the user's prints to stdout cannot corrupt the protocol) and exits when the
pool says so, when the pipe closes, or when its parent process is gone.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from multiprocessing.connection import Connection

import cloudpickle

from glimpse.pools.backends.processes import shared_memory
from glimpse.pools.contract.worker_runner import ChunkOutcome, Failure, dumps_outcome, run_chunk
from glimpse.pools.subprocesses import when_orphaned


def main(read_fd: int, write_fd: int, fds_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    when_orphaned(lambda: os._exit(1))
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    fds = socket.socket(fileno=fds_fd)
    setup_error: BaseException | None = None
    dumps = cloudpickle.dumps
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "exit":
            return
        if kind == "setup":
            setup_error = _run_initializer(message[1])
            dumps = shared_memory.dumps if message[2] else cloudpickle.dumps
        elif kind == "chunk":
            _, call_id, func_blob, start, payload = message
            if payload is None:  # it follows as a frame of its own
                try:
                    payload = shared_memory.receive(inbox, fds)
                except (EOFError, OSError):
                    return
            if setup_error is None:
                result = run_chunk(call_id, func_blob, payload, start, dumps)
            else:
                result = dumps_outcome(ChunkOutcome(failure=Failure(start, setup_error)), start, dumps)
            del payload  # unmap the chunk's shared buffers before waiting for the next
            shared_memory.send(outbox, fds, result)


def _run_initializer(blob: bytes | None) -> BaseException | None:
    if blob is None:
        return None
    try:
        initializer, initargs = cloudpickle.loads(blob)
        initializer(*initargs)
    except BaseException as exc:
        return exc
    return None


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
