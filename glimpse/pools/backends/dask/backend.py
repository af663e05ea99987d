"""The backend of ``DaskPool``: each chunk is one Dask future on a ``distributed.Client``.

Chunks handed over together are submitted together, as one graph (``Client.map``'s way: a
fraction of ``Client.submit``'s cost per chunk, so a large cluster's first chunks start sooner).
A small pickled function travels inside each chunk; a large one is published once per call on
the scheduler, from which each worker fetches it on its first chunk of the call. A chunk still
running when its call is cancelled holds a worker thread Dask cannot interrupt: on an embedded
cluster the pool owns, that worker is restarted through its nanny; on any other cluster the
chunk is left to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import warnings
from collections.abc import Collection
from concurrent.futures import CancelledError

from distributed import Client, Future, KilledWorker, get_client, get_worker, rejoin, secede

from glimpse.pools.backends.dask import compat
from glimpse.pools.cluster.reachability import PROBE_SECONDS, head_silent, tcp_answers
from glimpse.pools.contract import Backend, Call, Chunk, ChunkLost, ClusterLost, Health
from glimpse.pools.contract.backend import INLINE_FUNCTION_BYTES
from glimpse.pools.contract.out_of_band import unpickled_if_large
from glimpse.pools.contract.worker_policy import worker_where
from glimpse.pools.contract.worker_runner import run_chunk
from glimpse.pools.errors import ClusterConnectionError

log = logging.getLogger(__name__)

#: How long cancelled chunks may keep running before their workers are restarted.
_CANCEL_GRACE_SECONDS = 1.0
_RESTART_TIMEOUT_SECONDS = 60.0
_THREADS_TTL_SECONDS = 1.0
#: How long a first attempt to fetch finished results may take before the scheduler is probed.
_FETCH_SECONDS = 2.0
#: How long closing waits for workers being restarted, so that Dask does not log the interruption.
_CLOSE_GRACE_SECONDS = 10.0


class DaskBackend(Backend):
    """Runs chunks as futures of ``client``; closes ``client`` (and ``cluster``) only if it owns them."""

    # A chunk costs Dask a few round trips (submit, finish, fetch the result): milliseconds to tens
    # of milliseconds on a loaded machine, and the window (below) does not hide them.
    chunk_seconds = 0.3
    task_seconds = 2e-3  # the scheduler's bookkeeping and three messages
    # Dask already re-runs a task whose worker died, up to distributed.scheduler.allowed-failures
    # times; one more attempt of ours covers a chunk that only sat queued on dying workers.
    max_attempts = 2

    def __init__(self, client: Client, owns_client: bool = False, cluster=None, reconnect=None):
        """``reconnect()`` makes a new client of the same scheduler, for when ``client`` closed itself."""
        self.client = client
        self.address: str = client.scheduler.address
        self._reconnect = reconnect
        self.cluster = cluster
        self._owns_client = owns_client
        self._finished = threading.Condition()
        self._functions: dict[str, bytes | functools.partial] = {}  # the pickled function, or how to fetch it
        self._published: dict[str, str] = {}  # call id -> the scheduler's name for a large function
        self._seceded: set[str] = set()
        self._restarting: threading.Thread | None = None
        self._threads, self._threads_checked = 1, -_THREADS_TTL_SECONDS
        self._fetched: dict[str, object] = {}
        self._queued: list[DaskChunk] = []

    def workers(self) -> int:
        # Re-read during a call to follow workers that join or leave: once a second is enough. A
        # scheduler that went away keeps the last count; health() then says what happened.
        if time.monotonic() - self._threads_checked > _THREADS_TTL_SECONDS:
            self._threads_checked = time.monotonic()
            # A scheduler in this process needs no probe (and a TLS one logs each as a failed handshake).
            in_process = self.cluster is not None
            if self.client.status == "running" and (in_process or tcp_answers(self.address, timeout=0.5)):
                try:
                    threads = self.client.nthreads(callback_timeout=PROBE_SECONDS)
                    self._threads = max(1, sum(threads.values()))
                except (OSError, TimeoutError, asyncio.TimeoutError, asyncio.CancelledError):
                    pass
        return self._threads

    def window(self) -> int:
        # Dask keeps the tasks its threads cannot start yet on its scheduler (its default
        # worker-saturation) and hands each to the next free thread, so chunks in flight beyond the
        # threads cost nothing and hide our round trip between chunks, which matters when chunks
        # are short (items of MiBs make chunks of one item): up to 128 threads, four times the
        # threads; beyond, a quarter more, since there the scheduler is the bottleneck and more
        # tasks queued on it slow every one (bench_dask.py and bench_slots.py measure both).
        threads = self.workers()
        if threads <= 128:
            return 4 * threads + 1
        return threads + threads // 4

    def open_call(self, call: Call) -> None:
        self._reopen_if_closed()
        # A small function travels inside every chunk: no round trip to the scheduler when the call
        # starts and ends, nor from each worker for its first chunk. A large one is published on the
        # scheduler, not scattered to a worker, so no worker's death can lose it; and chunks do not
        # depend on it, since Dask would then send every chunk to its holders.
        if len(call.blob) <= INLINE_FUNCTION_BYTES:
            self._functions[call.id] = call.blob
        else:
            name = self._published[call.id] = f"glimpse-function-{call.id}"
            self.client.publish_dataset(**{name: call.blob})
            self._functions[call.id] = functools.partial(_fetch_function, name)
        if _secede_if_in_task():
            self._seceded.add(call.id)

    def _reopen_if_closed(self) -> None:
        """A Dask client that lost its scheduler for longer than its connect timeout closes itself
        for good (its tasks are gone); the next call connects again, or says why it cannot."""
        if self.client.status not in ("closing", "closed"):
            return
        if self._reconnect is None:
            raise ClusterConnectionError(
                f"the Dask client given to this pool has closed (it lost the scheduler at {self.address}): "
                "make a pool with a new client, or with the scheduler's address to let the pool reconnect"
            )
        log.info("the Dask client lost the scheduler at %s and closed; connecting again", self.address)
        self.client = self._reconnect()

    def close_call(self, call: Call) -> None:
        self._functions.pop(call.id, None)
        name = self._published.pop(call.id, None)
        if name is not None and self.client.status == "running":
            with contextlib.suppress(KeyError):
                self.client.unpublish_dataset(name)
        if call.id in self._seceded:
            self._seceded.discard(call.id)
            rejoin()

    def encode(self, items: list):
        # Large arrays travel as objects Dask serializes itself, in frames, without a copy into a pickle.
        return unpickled_if_large(items)

    def submit(self, call: Call, chunk: Chunk) -> DaskChunk:
        key = f"glimpse-chunk-{call.id}-{chunk.seq}-{chunk.attempts}"
        handle = DaskChunk(key, (call.id, self._functions[call.id], chunk.payload, chunk.start))
        self._queued.append(handle)
        return handle  # submitted by the next wait(), with every chunk handed over before it

    def wait(self, handles: Collection[DaskChunk], timeout: float) -> list[DaskChunk]:
        self._submit_queued()
        with self._finished:
            self._finished.wait_for(lambda: any(h.future.done() for h in handles), timeout)
        done = [h for h in handles if h.future.done()]
        self._fetch_results([h.future for h in done])
        # A result not fetched yet (its scheduler fell silent meanwhile) is fetched by a later wait().
        return [h for h in done if h.future.key in self._fetched or h.future.status != "finished"]

    def _submit_queued(self) -> None:
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        with warnings.catch_warnings():
            # Big arguments must travel anyway; Dask's advice to load data through Dask does not apply.
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            futures = self.client.map(
                run_chunk_in_dask, *zip(*(h.args for h in queued), strict=True), key=[h.key for h in queued], pure=False
            )
        for handle, future in zip(queued, futures, strict=True):
            handle.future, handle.args = future, None
            future.add_done_callback(self._notify)

    def health(self) -> Health:
        # A silent scheduler may be a blip: the call waits ($GLIMPSE_SILENCE_TIMEOUT). Dask's own
        # connections outlive it (LaunchBroker sets Dask's TCP timeout to the same number).
        address = self.address
        if self.client.status in ("closing", "closed"):
            return Health(0, lost=f"the connection to the Dask scheduler at {address} broke and its tasks are gone")
        if head_silent(address):
            return Health(0, silent=_scheduler_silent(address))
        if not tcp_answers(address):
            return Health(0, lost=_scheduler_gone(address))
        try:
            threads = self.client.nthreads(callback_timeout=PROBE_SECONDS)
        except (OSError, TimeoutError, asyncio.TimeoutError):
            return Health(0, silent=_scheduler_silent(address))
        return Health(
            len(threads),
            address=address,
            start_workers=f"glimpse-cluster --type dask LaunchWorker --address {address}",
        )

    def outcome(self, chunk: DaskChunk) -> bytes:
        # run_chunk never raises: an exception here is Dask's own.
        handle = chunk.future
        try:
            if handle.key in self._fetched:
                return self._fetched.pop(handle.key)
            return handle.result(timeout=PROBE_SECONDS)  # not "finished": raises what Dask lost it to
        except KilledWorker as lost:
            raise ChunkLost(str(lost).rstrip(".")) from None
        except (CancelledError, OSError, TimeoutError) as cancelled:
            # Not by us (we never ask for the outcome of a chunk we cancelled): Client.restart, or
            # the connection to the scheduler was lost (then fetching the result fails too).
            address = self.address
            if _stops_answering(address):
                raise ClusterLost(_scheduler_gone(address)) from None
            raise ChunkLost(
                f"Dask lost the task's result: {type(cancelled).__name__}: {cancelled}".rstrip(".")
            ) from None
        finally:
            # Now, not when the future is collected: Dask would recompute a lost result it still holds.
            handle.release()

    def cancel(self, handles: Collection[DaskChunk]) -> None:
        cancelled = set(handles)
        self._queued = [h for h in self._queued if h not in cancelled]
        for handle in handles:
            self._fetched.pop(handle.key, None)
        futures = [h.future for h in handles if h.future is not None and not h.future.done()]
        if not futures:
            return
        keys = [f.key for f in futures]
        self.client.cancel(futures)
        if self.cluster is None:
            # Not our cluster: its workers may run other clients' tasks, so never restart them.
            # Cancelled chunks still running finish there (adaptive chunks are short).
            return
        busy = self._workers_running(keys)
        deadline = time.monotonic() + _CANCEL_GRACE_SECONDS
        while busy and time.monotonic() < deadline:
            time.sleep(0.05)
            busy = self._workers_running(keys)
        if busy:
            log.info("restarting Dask workers %s to stop cancelled chunks", ", ".join(busy))
            self._restart_in_background(busy)

    def reclaim(self, where: str) -> None:
        """Restart the worker an item's thread was left running in, on the cluster the pool owns."""
        if self.cluster is None:
            return  # not our cluster: its workers may run other clients' tasks
        busy = [address for address, at in self.client.run(worker_where, on_error="ignore").items() if at == where]
        if busy:
            log.info("restarting Dask worker %s: an item that timed out left its thread running there", busy[0])
            self._restart_in_background(busy)

    def close(self) -> None:
        if self._restarting is not None:
            self._restarting.join(_CLOSE_GRACE_SECONDS)
        if self._owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def _restart_in_background(self, workers: list[str]) -> None:
        """Restart ``workers`` through their nannies, in a thread (:meth:`close` waits for it a while)."""
        self._restarting = threading.Thread(target=self._restart, args=(workers,), daemon=True)
        self._restarting.start()

    def _restart(self, workers: list[str]) -> None:
        try:
            self.client.restart_workers(workers, timeout=_RESTART_TIMEOUT_SECONDS, raise_for_error=False)
        except Exception as exc:  # the pool may have been closed meanwhile
            log.debug("could not restart Dask workers %s: %s", workers, exc)

    def _fetch_results(self, finished: list[Future]) -> None:
        """Fetch the results of every finished chunk in one gather: one round trip to the workers for
        all of them instead of one each, which with many threads was much of the caller's time.

        A gather goes through the scheduler. While it answers, a slow gather (large results, a
        worker holding one that fell silent, which Dask then recomputes) is waited for, in ever
        longer attempts; once it is silent, the results stay unfetched, so that the call sees
        nothing finish and decides between a blip and a loss (``health``) instead of hanging here.
        """
        ready = [f for f in finished if f.status == "finished" and f.key not in self._fetched]
        seconds = _FETCH_SECONDS
        while ready:
            try:
                results = compat.gather(self.client, ready, seconds)
            except (TimeoutError, asyncio.TimeoutError):
                if head_silent(self.address):
                    return
                seconds *= 2
                continue
            except Exception:  # a result lost meanwhile: outcome() asks each and says which
                for future in ready:
                    if future.status != "finished":
                        continue
                    with contextlib.suppress(Exception):
                        self._fetched[future.key] = future.result(timeout=seconds)
                return
            self._fetched.update(zip((f.key for f in ready), results, strict=True))
            return

    def _notify(self, future: Future) -> None:
        with self._finished:
            self._finished.notify_all()

    def _workers_running(self, keys: list[str]) -> list[str]:
        """The workers whose threads are still executing any of ``keys``."""
        running = self.client.run(_executing, keys, on_error="return")
        return [worker for worker, found in running.items() if found is True]


class DaskChunk:
    """A chunk handed to :class:`DaskBackend`: its key and arguments until submitted, then its future."""

    __slots__ = ("key", "args", "future")

    def __init__(self, key: str, args: tuple):
        self.key, self.args = key, args
        self.future: Future | None = None


def _stops_answering(address: str, probes: int = 3) -> bool:
    """Whether the scheduler at ``address`` refuses a connection within a second or so (a killed
    scheduler's socket can still accept for a moment while its process is ending)."""
    for probe in range(probes):
        if not tcp_answers(address):
            return True
        if probe < probes - 1:
            time.sleep(0.5)
    return False


def _scheduler_silent(address: str) -> str:
    return f"the Dask scheduler at {address} does not answer (its machine or the network to it is down)"


def _scheduler_gone(address: str) -> str:
    return f"the Dask scheduler at {address} does not answer (it stopped, or the network to it is down)"


def _secede_if_in_task() -> bool:
    """Leave the worker's thread pool if this thread runs a Dask task; return whether it left.

    A pool used inside a task waits for its chunks, which may need this very thread.
    """
    if not compat.running_a_task_in_pool_thread():
        return False
    try:
        get_worker()
    except ValueError:
        return False
    secede()
    return True


def run_chunk_in_dask(call_id: str, function, payload, start: int):
    """On a Dask worker: run a chunk; an outcome with large arrays goes back for Dask to serialize."""
    return run_chunk(call_id, function, payload, start, dumps=unpickled_if_large)


def _fetch_function(name: str) -> bytes:
    """Run on a worker, on its first chunk of a call: the pickled function, from the scheduler."""
    try:
        return get_client().get_dataset(name)
    except KeyError:
        raise RuntimeError(f"this chunk's call has ended: its function ({name}) is gone from the scheduler") from None


def _executing(keys: list[str], dask_worker=None) -> bool:
    """Run on a worker: whether a thread of it is executing one of ``keys`` (cancelled or not)."""
    wanted = set(keys)
    return any(ts.key in wanted for ts in dask_worker.state.executing)
