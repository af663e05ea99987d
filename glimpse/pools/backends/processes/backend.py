"""The backend of ``MulticorePool``: worker processes of its own, each running one chunk at a time
and holding the next few.

Unlike ``multiprocessing.Pool`` it knows which chunk each worker runs, so a worker that dies
(SIGKILL, ``os._exit``, a segfault) loses exactly that chunk, which is sent again to a fresh
worker; and a cancelled chunk's worker is killed and replaced, so it is free at once.
"""

from __future__ import annotations

import fcntl
import itertools
import math
import os
import select
import time
import weakref
from collections import deque

import cloudpickle

from glimpse.pools.contract.backend import Backend, Call, Chunk, TrackedChunk
from glimpse.pools.ipc import shared_memory
from glimpse.pools.ipc.child_process import ChildProcess, skipped_token
from glimpse.pools.ipc.frames import RETIRING

_EXIT_GRACE_SECONDS = 5.0
#: The most chunks a worker holds: the one it runs and those it runs next without waiting for us.
_DEPTH = 128
#: How much work (in seconds) a worker holds beyond the chunk it runs, when chunks are short.
_QUEUED_SECONDS = 0.02
#: A chunk running this long holds back the chunks behind it, which idle workers may take; and
#: no chunk is sent to wait behind one that runs three times as long as chunks do (or this long).
_STUCK_SECONDS = 0.01
#: The most chunks a call keeps in flight: each may hold a memfd open (``ulimit -n`` is often 1024).
_MAX_WINDOW = 512
#: What a chunk's message adds to its payload and function on the wire, at most.
_MESSAGE_BYTES = 512


class ProcessChunk(TrackedChunk):
    """A chunk handed to this backend: queued, sent to a worker (running or next), or done."""

    __slots__ = ("call", "chunk", "worker", "token", "skipping", "payload_bytes", "wire_bytes", "with_function")

    def __init__(self, call: Call, chunk: Chunk):
        super().__init__()
        self.call, self.chunk = call, chunk
        payload = chunk.payload
        self.payload_bytes = len(payload) if isinstance(payload, bytes) else len(payload.frame)
        self.worker: _Worker | None = None
        self.token = 0
        self.skipping = False
        self.wire_bytes = 0
        self.with_function = False


class ProcessBackend(Backend):
    """Runs chunks on ``processes`` worker processes started on first use.

    Each worker holds the chunk it runs and the next one or, when chunks are short,
    ``_QUEUED_SECONDS`` of them (up to ``_DEPTH``), so it never waits for the caller between
    chunks, and the chunks sent together travel in one write. A chunk waiting behind one that runs
    longer than ``_STUCK_SECONDS`` is taken back when another worker is idle, as a shared queue
    would let that worker take it.
    """

    chunk_seconds = 0.02
    task_seconds = 2e-5  # a pipe write and read, batched

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
        self._tokens = itertools.count(1)
        self._depth = 2  # chunks per worker: grows to _DEPTH once chunks turn out short
        self._seconds_per_chunk = 1.0
        # The result pipes of the workers holding a chunk, kept registered: one poll() per wait.
        self._busy = select.poll()
        self._busy_by_fd: dict[int, _Worker] = {}
        self._terminated = False
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._exiting)

    def workers(self) -> int:
        return self._size

    def window(self) -> int:
        # As many chunks as the workers hold now, and as many again waiting here: short chunks
        # (a deep hold) keep many in flight, long or large ones few.
        return min((self._depth + 1) * self._size + 2, _MAX_WINDOW)

    def encode(self, items: list):
        return shared_memory.dumps(items)

    def submit(self, call: Call, chunk: Chunk) -> ProcessChunk:
        if self._terminated:
            raise ValueError("the pool was terminated; make a new pool")
        job = ProcessChunk(call, chunk)
        self._queue.append(job)
        return job  # sent by the next wait(), with every chunk submitted before it

    def wait(self, handles, timeout: float) -> list[ProcessChunk]:
        self._dispatch()
        return TrackedChunk.wait(handles, timeout, self._receive)

    def _receive(self, seconds: float) -> None:
        """Collect what workers sent within ``seconds`` (sooner if a chunk may get stuck), then
        hand out what is queued."""
        next_check = self._take_back_stuck_chunks(time.monotonic())
        for fd, _ in self._busy.poll(min(seconds, next_check) * 1000):
            worker = self._busy_by_fd.get(fd)
            if worker is not None and worker.held:
                self._collect(worker)
        self._dispatch()

    def outcome(self, handle: ProcessChunk) -> bytes:
        return handle.outcome()

    def cancel(self, handles) -> None:
        cancelled = {job for job in handles if not job.done}
        if not cancelled:
            return
        self._queue = deque(job for job in self._queue if job not in cancelled)
        for worker in {job.worker for job in cancelled if job.worker is not None}:
            if worker.held[0] in cancelled:
                self._requeue([job for job in worker.held if job not in cancelled])
                self._retire(worker, kill=True)
            else:
                for job in worker.held:
                    if job in cancelled and worker.send_skip(job.token):
                        job.skipping = True
        for job in cancelled:
            job.lost = "cancelled"

    def close(self) -> None:
        for worker in [w for w in self._workers if not w.held]:
            self._retire(worker, kill=False)

    def terminate(self) -> None:
        self._terminated = True
        for job in [*self._queue, *(job for w in self._workers for job in w.held)]:
            job.lost = "the pool was terminated"
        self._queue.clear()
        _kill_all(self._workers, self._exiting)
        self._busy, self._busy_by_fd = select.poll(), {}
        self._workers.clear()
        self._exiting.clear()

    def join(self) -> None:
        busy = [job for worker in self._workers for job in worker.held]
        self.wait(busy, _EXIT_GRACE_SECONDS)
        for worker in list(self._workers):
            self._retire(worker, kill=False)
        for worker in self._exiting:
            worker.stop(_EXIT_GRACE_SECONDS)
        self._exiting.clear()

    def _dispatch(self) -> None:
        """Hand queued chunks to workers; the chunks one worker gets go in one write."""
        batches: dict[_Worker, list[ProcessChunk]] = {}
        # A worker is stuck once its chunk has run much longer than chunks do.
        stuck_since = time.monotonic() - max(_STUCK_SECONDS, min(3 * self._seconds_per_chunk, 1.0))
        while self._queue:
            worker = self._worker_for(self._queue[0], stuck_since)
            if worker is None:
                break
            job = self._queue.popleft()
            self._assign(worker, job)
            batches.setdefault(worker, []).append(job)
        for worker, jobs in batches.items():
            self._send(worker, jobs)

    def _worker_for(self, job: ProcessChunk, stuck_since: float) -> _Worker | None:
        """An idle worker, a new one, or the least loaded that has room for ``job``.

        A busy worker takes a chunk only if it is not stuck and the chunk fits in its pipe
        beside those it has not answered, so a write to it never blocks: a blocked write while
        the worker waits for us to read its outcomes would hang both.
        """
        best = None
        for worker in self._workers:
            if not worker.held:
                return worker
            if (
                len(worker.held) < self._depth
                and (best is None or len(worker.held) < len(best.held))
                and worker.head_since > stuck_since
                and worker.unanswered_bytes + _wire_bytes(job, worker) <= worker.pipe_bytes
                and worker.may_take_more(self._chunks_per_worker)
            ):
                best = worker
        if len(self._workers) < self._size:
            worker = _Worker.start(self._size, self._initializer)
            self._workers.append(worker)
            return worker
        return best

    def _assign(self, worker: _Worker, job: ProcessChunk) -> None:
        job.worker, job.token, job.skipping = worker, next(self._tokens), False
        job.wire_bytes = _wire_bytes(job, worker)
        job.with_function = worker.last_call != job.call.id
        worker.last_call = job.call.id
        worker.unanswered_bytes += job.wire_bytes
        if not worker.held:
            worker.head_since = time.monotonic()
            self._busy.register(worker.fileno(), select.POLLIN)
            self._busy_by_fd[worker.fileno()] = worker
        worker.held.append(job)

    def _send(self, worker: _Worker, jobs: list[ProcessChunk]) -> None:
        chunks = [
            (job.token, job.call.id, job.call.blob if job.with_function else None, job.chunk.payload, job.chunk.start)
            for job in jobs
        ]
        if not worker.send_chunks(chunks):
            self._lose_worker(worker, "before it took" if worker.held[0] is jobs[0] else "while running")

    def _collect(self, worker: _Worker) -> None:
        fresh = worker.chunks_done == 0  # its first chunk's time includes starting the process
        try:
            frames = worker.receive_all()
        except (EOFError, OSError):
            self._lose_worker(worker, "while running")
            return
        results = 0
        for frame in frames:
            if frame == RETIRING:
                self._replace_retiring(worker)
                return
            token = skipped_token(frame)
            if token is not None:
                job = next((job for job in worker.held if job.token == token), None)
                if job is not None:
                    worker.held.remove(job)
                    worker.unanswered_bytes -= job.wire_bytes
                    self._requeue([job])
                continue
            job = worker.held.popleft()
            worker.unanswered_bytes -= job.wire_bytes
            job.worker = None
            if not job.done:  # a cancelled chunk that had started: its outcome is not wanted
                job.result = frame
            worker.chunks_done += 1
            results += 1
        if results:  # (skip answers say nothing about how long a chunk takes)
            self._learn_chunk_time(worker, results, fresh)
        if not worker.held:
            self._idle(worker)
            if self._chunks_per_worker is not None and worker.chunks_done >= self._chunks_per_worker:
                self._retire(worker, kill=False)

    def _learn_chunk_time(self, worker: _Worker, chunks: int, fresh: bool) -> None:
        """Follow how long a chunk takes, and hold as many per worker as ``_QUEUED_SECONDS`` of work."""
        now = time.monotonic()
        sample = (now - worker.head_since) / chunks
        worker.head_since = now
        if fresh:
            return
        self._seconds_per_chunk += 0.2 * (sample - self._seconds_per_chunk)
        self._depth = max(2, min(_DEPTH, 1 + math.ceil(_QUEUED_SECONDS / max(self._seconds_per_chunk, 1e-6))))

    def _take_back_stuck_chunks(self, now: float) -> float:
        """While a worker is idle and nothing is queued, ask a worker whose chunk has run longer
        than ``_STUCK_SECONDS`` to give back the chunks behind it. Returns the seconds until a
        chunk could get stuck (when to look again; ``inf`` when nothing can)."""
        next_check = math.inf
        if self._queue or (len(self._workers) == self._size and all(w.held for w in self._workers)):
            return next_check
        for worker in self._workers:
            if len(worker.held) < 2:
                continue
            stuck_for = now - worker.head_since
            if stuck_for < _STUCK_SECONDS:
                next_check = min(next_check, max(_STUCK_SECONDS - stuck_for, 0.001))
                continue
            for job in list(worker.held)[1:]:
                if not job.skipping:
                    job.skipping = worker.send_skip(job.token)
        return next_check

    def _requeue(self, jobs: list[ProcessChunk]) -> None:
        """Put chunks that never started back at the front of the queue, in order."""
        for job in reversed(jobs):
            job.worker = None
            if not job.done:
                self._queue.appendleft(job)

    def _lose_worker(self, worker: _Worker, how: str) -> None:
        """The worker died: its running chunk is lost, the chunks behind it go to other workers."""
        running, *waiting = worker.held
        running.lost = f"worker {worker.describe_death()} {how} {running.chunk.describe()}"
        self._requeue(waiting)
        self._retire(worker, kill=True)

    def _replace_retiring(self, worker: _Worker) -> None:
        """The worker left an item's thread running: its queued chunks go to others, and it is killed."""
        self._requeue(list(worker.held))
        worker.held.clear()
        worker.unanswered_bytes = 0
        self._idle(worker)
        self._retire(worker, kill=True)

    def _idle(self, worker: _Worker) -> None:
        self._busy.unregister(worker.fileno())
        del self._busy_by_fd[worker.fileno()]

    def _retire(self, worker: _Worker, kill: bool) -> None:
        """Take a worker out of service: kill it now, or ask it to exit and let join() reap it."""
        if worker in self._workers:
            self._workers.remove(worker)
        if worker.held:
            worker.held.clear()
            worker.unanswered_bytes = 0
            self._idle(worker)
        if kill:
            worker.stop(0.0)
        else:
            worker.send(("exit",))
            self._exiting.append(worker)


class _Worker(ChildProcess):
    """A worker process and the chunks sent to it, the first running, in the order sent."""

    def __init__(self, *args):
        super().__init__(*args)
        self.held: deque[ProcessChunk] = deque()
        self.head_since = 0.0
        self.chunks_done = 0
        #: The bytes of the chunks sent and not answered: at most what is still in the pipe.
        self.unanswered_bytes = 0
        self.pipe_bytes = _pipe_capacity(self.inbox) - _MESSAGE_BYTES

    def may_take_more(self, chunks_per_worker: int | None) -> bool:
        """Whether another chunk stays within ``maxtasksperchild``."""
        return chunks_per_worker is None or self.chunks_done + len(self.held) < chunks_per_worker


def _wire_bytes(job: ProcessChunk, worker: _Worker) -> int:
    """About how many bytes sending ``job`` to ``worker`` puts in its pipe."""
    function = len(job.call.blob) if worker.last_call != job.call.id else 0
    return job.payload_bytes + function + _MESSAGE_BYTES


def _pipe_capacity(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (AttributeError, OSError):  # not Linux: assume the smallest pipe
        return 4096


def _kill_all(*groups: list[_Worker]) -> None:
    for workers in groups:
        for worker in workers:
            worker.stop(0.0)
