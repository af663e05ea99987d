"""The backend of ``MulticorePool``: worker processes of its own, each running one chunk at a time.

Unlike ``multiprocessing.Pool`` it knows which chunk each worker runs, so a worker that dies
(SIGKILL, ``os._exit``, a segfault) loses exactly that chunk, which is sent again to a fresh
worker; and a cancelled chunk's worker is killed and replaced, so it is free at once.
"""

from __future__ import annotations

import os
import select
import time
import weakref
from collections import deque

import cloudpickle

from glimpse.pools.backends.processes import shared_memory
from glimpse.pools.backends.processes.child_process import ChildProcess
from glimpse.pools.contract.backend import Backend, Call, Chunk, TrackedChunk

_EXIT_GRACE_SECONDS = 5.0


class ProcessChunk(TrackedChunk):
    """A chunk handed to this backend: queued, running on a worker, or done."""

    __slots__ = ("call", "chunk", "worker")

    def __init__(self, call: Call, chunk: Chunk):
        super().__init__()
        self.call, self.chunk = call, chunk
        self.worker: _Worker | None = None


class ProcessBackend(Backend):
    """Runs chunks on ``processes`` worker processes started on first use."""

    chunk_seconds = 0.02

    def __init__(self, processes: int | None = None, initializer=None, initargs=(), maxtasksperchild=None):
        # The same checks, errors and messages as multiprocessing.Pool, at construction.
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool)):
            raise TypeError(f"processes must be an int or None, not {type(processes).__name__}")
        if processes is not None and processes < 1:
            raise ValueError(f"Number of processes must be at least 1, not {processes}")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or isinstance(maxtasksperchild, bool) or maxtasksperchild <= 0
        ):
            raise ValueError(f"maxtasksperchild must be a positive int or None, not {maxtasksperchild!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {type(initializer).__name__}")
        self._size = processes or os.cpu_count() or 1
        self._initializer = cloudpickle.dumps((initializer, initargs)) if initializer else None
        self._chunks_per_worker = maxtasksperchild
        self._workers: list[_Worker] = []
        self._exiting: list[_Worker] = []
        self._queue: deque[ProcessChunk] = deque()
        # The result pipes of the workers running a chunk, kept registered: one poll() per wait.
        self._busy = select.poll()
        self._busy_by_fd: dict[int, _Worker] = {}
        self._terminated = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._exiting)

    def workers(self) -> int:
        return self._size

    def encode(self, items: list):
        return shared_memory.dumps(items)

    def submit(self, call: Call, chunk: Chunk) -> ProcessChunk:
        if self._terminated:
            raise ValueError("the pool was terminated; make a new pool")
        job = ProcessChunk(call, chunk)
        self._queue.append(job)
        self._dispatch()
        return job

    def wait(self, handles, timeout: float) -> list[ProcessChunk]:
        if not handles:
            return []
        deadline = time.monotonic() + timeout
        self._dispatch()
        while True:
            done = [job for job in handles if job.done]
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                return done
            for fd, _ in self._busy.poll(remaining * 1000):
                worker = self._busy_by_fd.get(fd)
                if worker is not None and worker.job is not None:
                    self._collect(worker)
            self._dispatch()

    def outcome(self, handle: ProcessChunk) -> bytes:
        return handle.outcome()

    def cancel(self, handles) -> None:
        for job in handles:
            if job.done:
                continue
            if job.worker is None:
                self._queue.remove(job)
            else:
                self._retire(job.worker, kill=True)
            job.lost = "cancelled"

    def close(self) -> None:
        for worker in [w for w in self._workers if w.job is None]:
            self._retire(worker, kill=False)

    def terminate(self) -> None:
        self._terminated = True
        for job in [*self._queue, *(w.job for w in self._workers if w.job is not None)]:
            job.lost = "the pool was terminated"
        self._queue.clear()
        _kill_all(self._workers, self._exiting)
        self._busy, self._busy_by_fd = select.poll(), {}
        self._workers.clear()
        self._exiting.clear()

    def join(self) -> None:
        busy = [worker.job for worker in self._workers if worker.job is not None]
        self.wait(busy, _EXIT_GRACE_SECONDS)
        for worker in list(self._workers):
            self._retire(worker, kill=False)
        for worker in self._exiting:
            worker.stop(_EXIT_GRACE_SECONDS)
        self._exiting.clear()

    def _dispatch(self) -> None:
        while self._queue:
            worker = next((w for w in self._workers if w.job is None), None)
            if worker is None:
                if len(self._workers) >= self._size:
                    return
                worker = _Worker.start(self._initializer)
                self._workers.append(worker)
            job = self._queue.popleft()
            call = job.call
            blob = None if worker.last_call == call.id else call.blob
            self._assign(worker, job)
            worker.last_call = call.id
            if not worker.send_chunk(call.id, blob, job.chunk.payload, job.chunk.start):
                job.lost = f"worker {worker.describe_death()} before it took {job.chunk.describe()}"
                self._retire(worker, kill=True)

    def _collect(self, worker: _Worker) -> None:
        job = worker.job
        try:
            job.result = worker.receive()
        except (EOFError, OSError):
            job.lost = f"worker {worker.describe_death()} while running {job.chunk.describe()}"
            self._retire(worker, kill=True)
            return
        self._unassign(worker)
        worker.chunks_done += 1
        if self._chunks_per_worker is not None and worker.chunks_done >= self._chunks_per_worker:
            self._retire(worker, kill=False)

    def _assign(self, worker: _Worker, job: ProcessChunk) -> None:
        worker.job, job.worker = job, worker
        self._busy.register(worker.fileno(), select.POLLIN)
        self._busy_by_fd[worker.fileno()] = worker

    def _unassign(self, worker: _Worker) -> None:
        worker.job.worker = None
        worker.job = None
        self._busy.unregister(worker.fileno())
        del self._busy_by_fd[worker.fileno()]

    def _retire(self, worker: _Worker, kill: bool) -> None:
        """Take a worker out of service: kill it now, or ask it to exit and let join() reap it."""
        if worker in self._workers:
            self._workers.remove(worker)
        if worker.job is not None:
            self._unassign(worker)
        if kill:
            worker.stop(0.0)
        else:
            worker.send(("exit",))
            self._exiting.append(worker)


class _Worker(ChildProcess):
    """A worker process and the chunk it runs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.job: ProcessChunk | None = None
        self.chunks_done = 0


def _kill_all(*groups: list[_Worker]) -> None:
    for workers in groups:
        for worker in workers:
            worker.stop(0.0)
