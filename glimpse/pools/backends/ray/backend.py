"""The backend of ``RayPool``: each chunk is one Ray task, and ``ray.wait`` says which finished.

A small pickled function (up to ``INLINE_FUNCTION_BYTES``) travels inside every chunk's task,
so a task needs nothing from the object store before it runs; a larger one goes into the object
store once per call (``ray.put``) and every task takes that object ref as an argument, so Ray
hands workers the bytes, not the caller.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import ray
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from glimpse.pools.backends.ray.bounded import BoundedCalls, TookTooLong, in_background
from glimpse.pools.backends.ray.nodes import NodeWatch
from glimpse.pools.cluster.reachability import head_silent, tcp_answers
from glimpse.pools.contract import Backend, Call, Chunk, ChunkLost, ClusterLost, Health
from glimpse.pools.contract.backend import INLINE_FUNCTION_BYTES
from glimpse.pools.contract.out_of_band import unpickled_if_large
from glimpse.pools.contract.watch import SILENCE_VARIABLE, silence_timeout
from glimpse.pools.contract.worker_policy import parse_where
from glimpse.pools.contract.worker_runner import run_chunk
from glimpse.pools.errors import ClusterLostError, RemoteTraceback
from glimpse.pools.subprocesses import kill_worker_here

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
_remote_kill = None
_CPUS_TTL_SECONDS = 1.0
_RECANCEL_SECONDS = 3.0
_CANCEL_GRACE_SECONDS = 1.0
#: How long a probe of the head node may take (twice: it answers, else it is silent or refuses).
_PROBE_SECONDS = 1.0
#: The watch checks health every 2 s while the head is silent: let go one check before it gives up.
_SILENCE_MARGIN = 1.0
#: How much longer than asked a Ray Client's wait may take before it counts as stuck.
_CLIENT_GRACE_SECONDS = 2.0
#: How long a Ray Client's get waits before the caller asks whether the head node still answers.
_GET_SLICE_SECONDS = 2.0
_READ_SECONDS = 2.0
_SHUTDOWN_SECONDS = 15.0


class RayBackend(Backend):
    """Runs chunks as Ray tasks on the Ray this process is connected to.

    Args:
        owns_ray: Whether :meth:`close` calls ``ray.shutdown()``: true when the pool started
            Ray or opened this process's connection to it, false for a Ray someone else set up.
        address: The head node's ``host:port`` to probe when nothing finishes (its GCS, or its Ray
            Client server); empty: nothing to probe (an embedded Ray).
        client: Whether this process is a Ray Client: its Ray calls block while the head is silent,
            so the caller waits for them only so long.
    """

    chunk_seconds = 0.1
    task_seconds = 2e-3  # submitting a task and fetching its object
    max_attempts = 2

    def __init__(self, owns_ray: bool = False, address: str = "", client: bool = False):
        self._owns_ray = owns_ray
        self._address = address
        self._bounded = BoundedCalls("glimpse-ray-client") if client else None
        self._functions: dict[str, bytes | ray.ObjectRef] = {}
        self._cpus, self._cpus_read_at = 1, -_CPUS_TTL_SECONDS
        self._cancelled: list[ray.ObjectRef] = []
        self._cancelling = threading.Lock()
        self._cancelled_at = self._recancelled_at = 0.0
        self._warned_of_cancelled = False
        self._heard_at = time.monotonic()
        self._gone: str | None = None
        self._nodes: NodeWatch | None = None
        self._placed: dict[ray.ObjectRef, str] = {}
        self._placed_at: dict[ray.ObjectRef, float] = {}
        self._lost: dict[ray.ObjectRef, str] = {}

    def workers(self) -> int:
        if self._gone:
            raise ClusterLostError(f"{self._gone}; this pool has let go of it: make a new pool once it is back")
        # Re-read during a call to follow nodes that join or leave: once a second is enough. Not
        # while the head node is down: the read would block until Ray gives up on it (and on us).
        if time.monotonic() - self._cpus_read_at > _CPUS_TTL_SECONDS and self._head_answers():
            cpus = self._bounded_call(lambda: ray.cluster_resources().get("CPU", 0), _READ_SECONDS, None)
            if cpus is not None:
                self._cpus, self._cpus_read_at = int(cpus), time.monotonic()
        return max(1, self._cpus)

    def _head_answers(self) -> bool:
        return not self._address or tcp_answers(self._address, timeout=0.5)

    def _bounded_call(self, function, seconds: float, default):
        """``function()`` here, or for a Ray Client in a thread, given up (``default``) after ``seconds``."""
        if self._bounded is None:
            return function()
        try:
            return self._bounded.run(function, seconds)
        except TookTooLong:
            return default

    def health(self) -> Health:
        if self._address and not tcp_answers(self._address, timeout=_PROBE_SECONDS):
            if head_silent(self._address, timeout=_PROBE_SECONDS):
                # The call's watch ends the call once the silence reaches silence_timeout(); then let
                # go of Ray before its core worker ends this process (60 s without its head node).
                if time.monotonic() - self._heard_at >= silence_timeout() - _SILENCE_MARGIN:
                    self._let_go(f"the Ray head node at {self._address} stopped answering")
                return Health(0, silent=f"the Ray head node at {self._address} does not answer")
            self._let_go(f"the Ray head node at {self._address} refuses connections", refused=True)
            return Health(0, lost=f"the Ray head node at {self._address} refuses connections (it stopped)")
        self._heard_at = time.monotonic()
        stuck = self._bounded.stuck_for() if self._bounded is not None else 0.0
        if stuck >= silence_timeout():
            # Seen after a head silent for 20 s: the head answers again, Ray Client's wait never returns.
            reason = (
                f"Ray Client's connection to the head node at {self._address} has not answered for {stuck:.0f} s "
                "although the head accepts connections again (Ray Client does not recover it)"
            )
            self._let_go(reason)
            return Health(0, lost=reason)
        self._cpus_read_at = -_CPUS_TTL_SECONDS
        self.workers()
        return Health(
            self._cpus,
            address=self._address,
            start_workers=f"glimpse-cluster --type ray LaunchWorker --address {self._address}",
        )

    def _let_go(self, reason: str, refused: bool = False) -> None:
        """Disconnect from a head node that is gone. Ray's core worker ends this whole process once it
        gives up on its head node (60 s by default) unless it disconnected first. ``ray.shutdown()``
        returns soon from a head that refuses connections (and must run here to keep the process),
        but blocks for minutes on a silent one: that one goes on in the background."""
        if self._gone is None:
            self._gone = reason
            self._owns_ray = False
            if self._nodes is not None:
                self._nodes.stop()
            if refused:
                ray.shutdown()
            else:
                in_background(ray.shutdown, "glimpse-ray-shutdown")

    def open_call(self, call: Call) -> None:
        if self._address and self._nodes is None:
            self._nodes = NodeWatch(self._address, probe_nodes=self._bounded is None)
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
        task = _chunk_task()
        node_id = self._nodes.place() if self._nodes is not None and self._nodes.several() else None
        if node_id is not None:
            task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True))
        handle = task.remote(call.id, self._functions[call.id], payload, chunk.start)
        if self._bounded is not None:
            # A Ray Client's ref gets its id from the head node; the window's hash of it would wait
            # for a silent head until Ray Client gives up on it (a minute and a half).
            self._while_head_answers(handle.binary)
        if node_id is not None:
            self._placed[handle], self._placed_at[handle] = node_id, time.monotonic()
        return handle

    def wait(self, handles: Collection[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
        if self._gone:
            raise ClusterLost(self._gone)
        handles = list(handles)
        ready = self._bounded_call(lambda: self._wait(handles, timeout), timeout + _CLIENT_GRACE_SECONDS, [])
        if ready:
            self._heard_at = time.monotonic()
        if self._placed:
            ready += self._on_gone_nodes(handles, set(ready))
            for handle in ready:
                self._unplace(handle)
        return ready

    def _on_gone_nodes(self, handles: list[ray.ObjectRef], ready: set) -> list[ray.ObjectRef]:
        """The chunks placed on nodes that are gone, as lost: Ray would wait for them forever."""
        lost = []
        for handle in handles:
            node_id = self._placed.get(handle)
            if node_id is None or handle in ready:
                continue
            reason = self._nodes.gone(node_id) or self._nodes.went_silent_after(node_id, self._placed_at[handle])
            if reason:
                self._lost[handle] = f"the Ray node at {self._nodes.address(node_id)} {reason}"
                lost.append(handle)
        if lost:
            in_background(lambda: [_cancel(handle) for handle in lost], "glimpse-ray-cancel")
        return lost

    def _unplace(self, handle: ray.ObjectRef) -> None:
        node_id = self._placed.pop(handle, None)
        self._placed_at.pop(handle, None)
        if node_id is not None:
            self._nodes.release(node_id)

    def _wait(self, handles: list[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
        self._cancel_again()
        if not handles:
            return []
        ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def outcome(self, handle: ray.ObjectRef) -> bytes:
        if handle in self._lost:
            raise ChunkLost(self._lost.pop(handle))
        try:
            return self._get(handle)
        except ray.exceptions.RayTaskError as error:
            # run_chunk never raises, so this is Ray's own failure around the task.
            if isinstance(error, _LOST) or isinstance(error.cause, _LOST):
                raise ChunkLost(_describe_loss(error)) from None
            if error.cause is None:
                raise
            raise error.cause from RemoteTraceback(str(error))
        except _LOST as error:
            raise ChunkLost(_describe_loss(error)) from None
        except ConnectionError as error:  # Ray Client gave up on its connection to the head node
            raise ClusterLost(f"Ray Client lost its connection to the head node at {self._address}: {error}") from None

    def _get(self, handle: ray.ObjectRef):
        """``ray.get(handle)``; for a Ray Client, for as long as the head node answers (Ray Client's
        get waits a minute and more for a head that fell silent after its wait)."""
        if self._bounded is None:
            return ray.get(handle)
        return self._while_head_answers(lambda: ray.get(handle))

    def _while_head_answers(self, function):
        """``function()`` in a thread, waited for while the head node answers (or is silent for less
        than the silence timeout); else :class:`ClusterLost`, as when Ray Client gives up itself."""
        result: Future = Future()

        def run() -> None:
            try:
                result.set_result(function())
            except BaseException as exc:
                result.set_exception(exc)

        in_background(run, "glimpse-ray-client-call")
        while True:
            until_silence_ends_it = self._heard_at + silence_timeout() - time.monotonic()
            try:
                return result.result(timeout=min(_GET_SLICE_SECONDS, max(0.1, until_silence_ends_it)))
            except FutureTimeout:
                pass
            except ConnectionError as error:
                raise ClusterLost(
                    f"Ray Client lost its connection to the head node at {self._address}: {error}"
                ) from None
            health = self.health()
            if health.lost:
                raise ClusterLost(health.lost)
            silent_for = time.monotonic() - self._heard_at
            limit = silence_timeout()
            if health.silent and silent_for >= limit:
                raise ClusterLost(f"{health.silent} for {silent_for:.0f} s (${SILENCE_VARIABLE}={limit:g})")

    def cancel(self, handles: Collection[ray.ObjectRef]) -> None:
        # Not at once: Ray's driver aborts when a cancel races with the task's completion (RAY_CHECK
        # in task_manager.cc, ray-project/ray#54846; seen here under load). Short chunks finish
        # within the grace; only the tasks still running after it are cancelled, from a timer.
        for handle in handles:
            self._unplace(handle)
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
        if not self._cancelling.acquire(blocking=False):
            return  # another thread is at it (and may be stuck on a silent head)
        try:
            now = time.monotonic()
            if not self._cancelled or now - self._recancelled_at < _RECANCEL_SECONDS or not ray.is_initialized():
                return
            self._recancelled_at = now
            _, self._cancelled = ray.wait(self._cancelled, num_returns=len(self._cancelled), timeout=0)
            for handle in self._cancelled:
                _cancel(handle)
        finally:
            self._cancelling.release()
        if self._cancelled and now - self._cancelled_at > 10 and not self._warned_of_cancelled:
            self._warned_of_cancelled = True
            log.warning(
                "%d cancelled Ray tasks still hold workers %.0f s after they were cancelled; cancelling them again",
                len(self._cancelled),
                now - self._cancelled_at,
            )

    def reclaim(self, where: str) -> None:
        """End the Ray worker process an item's thread was left running in, as ``ray.cancel(force=True)``
        ends a task's: Ray's worker processes serve one job, ours, and Ray starts another. A task
        pinned to the worker's node kills it there (never waited for)."""
        pid, host = parse_where(where)
        node = next((n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerHostname"] == host), None)
        if pid is None or node is None:
            return
        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        _kill_task().options(scheduling_strategy=strategy).remote(pid)
        log.info("ending Ray worker %s: an item that timed out left its thread running there", where)

    def close(self) -> None:
        if self._nodes is not None:
            self._nodes.stop()
        if self._owns_ray:
            self._owns_ray = False
            # Bounded: a head that stopped answering a moment ago would hold the caller for minutes.
            in_background(ray.shutdown, "glimpse-ray-shutdown").join(_SHUTDOWN_SECONDS)


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
        # SPREAD: over every node with a free CPU. Ray's default prefers the node holding a task's
        # arguments, which for a Ray Client caller is the head node (it stores what the client puts).
        _remote_chunk = ray.remote(
            num_cpus=1, max_retries=RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD"
        )(run_chunk_in_ray)
    return _remote_chunk


def kill_worker_on_this_node(pid: int) -> bool:
    """On a Ray worker: SIGKILL the Ray worker process ``pid`` of this node."""
    return kill_worker_here(pid, socket.gethostname(), "ray::")


def _kill_task():
    """:func:`kill_worker_on_this_node` as a Ray remote function, made once per process."""
    global _remote_kill
    if _remote_kill is None:
        _remote_kill = ray.remote(num_cpus=0, max_retries=0)(kill_worker_on_this_node)
    return _remote_kill


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
