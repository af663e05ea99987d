"""The backend of ``RayPool``: each chunk is one Ray task, and ``ray.wait`` says which finished.

A small pickled function (up to ``INLINE_FUNCTION_BYTES``) travels inside every chunk's task,
so a task needs nothing from the object store before it runs; a larger one goes into the object
store once per call (``ray.put``) and every task takes that object ref as an argument, so Ray
hands workers the bytes, not the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection

import ray
import ray.exceptions

from glimpse.pools.cluster.reachability import tcp_answers
from glimpse.pools.contract import Backend, Call, Chunk, ChunkLost, Health
from glimpse.pools.contract.backend import INLINE_FUNCTION_BYTES
from glimpse.pools.contract.out_of_band import unpickled_if_large
from glimpse.pools.contract.worker_runner import run_chunk
from glimpse.pools.errors import RemoteTraceback

#: Ray runs a task again itself this many times when its worker dies; a function that always
#: kills its worker is then lost ``(RETRIES + 1) * RayBackend.max_attempts`` times in all.
RETRIES = 1

_LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.TaskCancelledError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.RaySystemError,
)
log = logging.getLogger(__name__)
_remote_chunk = None
_CPUS_TTL_SECONDS = 1.0
_RECANCEL_SECONDS = 3.0
_CANCEL_GRACE_SECONDS = 1.0


class RayBackend(Backend):
    """Runs chunks as Ray tasks on the Ray this process is connected to.

    Args:
        owns_ray: Whether :meth:`close` calls ``ray.shutdown()``: true when the pool started
            Ray or opened this process's connection to it, false for a Ray someone else set up.
    """

    chunk_seconds = 0.1
    task_seconds = 2e-3  # submitting a task and fetching its object
    max_attempts = 2

    def __init__(self, owns_ray: bool = False, address: str = ""):
        self._owns_ray = owns_ray
        self._address = address
        self._functions: dict[str, bytes | ray.ObjectRef] = {}
        self._cpus, self._cpus_read_at = 1, -_CPUS_TTL_SECONDS
        self._cancelled: list[ray.ObjectRef] = []
        self._cancelling = threading.Lock()
        self._cancelled_at = self._recancelled_at = 0.0
        self._warned_of_cancelled = False

    def workers(self) -> int:
        # Re-read during a call to follow nodes that join or leave: once a second is enough. Not
        # while the head node is down: the read would block until Ray gives up on it (and on us).
        if time.monotonic() - self._cpus_read_at > _CPUS_TTL_SECONDS and self._head_answers():
            self._cpus = int(ray.cluster_resources().get("CPU", 0))
            self._cpus_read_at = time.monotonic()
        return max(1, self._cpus)

    def _head_answers(self) -> bool:
        return not self._address or tcp_answers(self._address, timeout=0.5)

    def health(self) -> Health:
        if not self._head_answers():
            # Ray's core worker ends this whole process once it gives up on the head node (60 s
            # by default); disconnecting first keeps the caller alive to see the error.
            ray.shutdown()
            self._owns_ray = False
            return Health(
                0, lost=f"the Ray head node at {self._address} does not answer (it stopped, or is unreachable)"
            )
        self._cpus_read_at = -_CPUS_TTL_SECONDS
        self.workers()
        return Health(
            self._cpus,
            address=self._address,
            start_workers=f"glimpse-cluster --type ray LaunchWorker --address {self._address}",
        )

    def open_call(self, call: Call) -> None:
        # A small function travels inside each task; a large one once, into the object store.
        small = len(call.blob) <= INLINE_FUNCTION_BYTES
        self._functions[call.id] = call.blob if small else ray.put(call.blob)

    def close_call(self, call: Call) -> None:
        self._functions.pop(call.id, None)

    def encode(self, items: list):
        # Large arrays go into the object store as they are, so workers read them zero-copy
        # (read-only, as with Ray's own API); small items travel inline in the task, pickled.
        payload = unpickled_if_large(items)
        return payload if isinstance(payload, bytes) else _Stored(ray.put(payload), len(payload))

    def submit(self, call: Call, chunk: Chunk) -> ray.ObjectRef:
        payload = chunk.payload.ref if isinstance(chunk.payload, _Stored) else chunk.payload
        return _chunk_task().remote(call.id, self._functions[call.id], payload, chunk.start)

    def wait(self, handles: Collection[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
        self._cancel_again()
        handles = list(handles)
        if not handles:
            return []
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def outcome(self, handle: ray.ObjectRef) -> bytes:
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as error:
            # run_chunk never raises, so this is Ray's own failure around the task.
            if isinstance(error, _LOST) or isinstance(error.cause, _LOST):
                raise ChunkLost(_describe_loss(error)) from None
            if error.cause is None:
                raise
            raise error.cause from RemoteTraceback(str(error))
        except _LOST as error:
            raise ChunkLost(_describe_loss(error)) from None

    def cancel(self, handles: Collection[ray.ObjectRef]) -> None:
        # Not at once: Ray's driver aborts when a cancel races with the task's completion (RAY_CHECK
        # in task_manager.cc, ray-project/ray#54846; seen here under load). Short chunks finish
        # within the grace; only the tasks still running after it are cancelled, from a timer.
        self._cancelled.extend(handles)
        self._cancelled_at = time.monotonic()
        self._recancelled_at = self._cancelled_at - _RECANCEL_SECONDS + _CANCEL_GRACE_SECONDS
        self._warned_of_cancelled = False
        timer = threading.Timer(_CANCEL_GRACE_SECONDS, self._cancel_later)
        timer.daemon = True
        timer.start()

    def _cancel_later(self) -> None:
        try:
            self._cancel_again()
        except Exception as exc:  # the pool may have disconnected from Ray meanwhile
            log.debug("could not cancel abandoned Ray tasks: %s", exc)

    def _cancel_again(self) -> None:
        """Cancel the cancelled tasks still running (a timer after the grace, then every few seconds
        from :meth:`wait`): under load a cancel can miss a task that was being scheduled, and its
        worker would stay busy with abandoned work."""
        with self._cancelling:
            now = time.monotonic()
            if not self._cancelled or now - self._recancelled_at < _RECANCEL_SECONDS or not ray.is_initialized():
                return
            self._recancelled_at = now
            _, self._cancelled = ray.wait(self._cancelled, num_returns=len(self._cancelled), timeout=0)
            for handle in self._cancelled:
                _cancel(handle)
        if self._cancelled and now - self._cancelled_at > 10 and not self._warned_of_cancelled:
            self._warned_of_cancelled = True
            log.warning(
                "%d cancelled Ray tasks still hold workers %.0f s after they were cancelled; cancelling them again",
                len(self._cancelled),
                now - self._cancelled_at,
            )

    def close(self) -> None:
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()


class _Stored:
    """A chunk's items in Ray's object store: the ref, and their size for the window."""

    __slots__ = ("ref", "nbytes")

    def __init__(self, ref: ray.ObjectRef, nbytes: int):
        self.ref, self.nbytes = ref, nbytes

    def __len__(self) -> int:
        return self.nbytes


def run_chunk_in_ray(call_id: str, function, payload, start: int):
    """On a Ray worker: run a chunk; an outcome with large arrays goes back for Ray to store zero-copy."""
    return run_chunk(call_id, function, payload, start, dumps=unpickled_if_large)


def _chunk_task():
    """:func:`run_chunk_in_ray` as a Ray remote function, made once per process."""
    global _remote_chunk
    if _remote_chunk is None:
        _remote_chunk = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(run_chunk_in_ray)
    return _remote_chunk


def _cancel(handle: ray.ObjectRef) -> None:
    # force=True ends the worker process running our task (only that task's), so it is free at once.
    try:
        ray.cancel(handle, force=True)
    except (ValueError, TypeError, ray.exceptions.RayError):
        pass


def _describe_loss(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = " ".join(lines[:3])
    if len(detail) > 400:
        detail = detail[:397] + "..."
    return f"Ray lost the task with its worker ({type(error).__name__}: {detail})"
