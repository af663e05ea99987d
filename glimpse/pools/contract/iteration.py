"""The iteration contract, written once for every pool.

One generator drives a backend: it reads chunks lazily within a window bounded in chunks and
in bytes (``$GLIMPSE_WINDOW_MB``), re-sends chunks the engine lost, yields results in input
order (``imap``) or completion order (``imap_unordered``), re-raises the first error with its
remote traceback after every earlier result, and cancels what is still in flight when the
consumer stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from glimpse.pools.contract import pickling
from glimpse.pools.contract.backend import Backend, Call, Chunk, ChunkLost, ClusterLost
from glimpse.pools.contract.policy import PLAIN, CallPolicy
from glimpse.pools.contract.reader import ChunkReader
from glimpse.pools.contract.sizing import AdaptiveSize, FixedSize, window_bytes
from glimpse.pools.contract.watch import CallWatch
from glimpse.pools.contract.worker_policy import Failure
from glimpse.pools.contract.worker_runner import ChunkOutcome, ItemError
from glimpse.pools.errors import (
    ClusterLostError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)

log = logging.getLogger(__name__)

_WAIT_SECONDS = 0.5
#: How soon items that arrive in a feed while chunks run are sent.
_FEED_WAIT_SECONDS = 0.02


def iterate(
    backend: Backend,
    func,
    iterable: Iterable,
    *,
    ordered: bool,
    chunksize: int | None,
    progress: bool,
    length: int | None,
    on_start: Callable[[], None] = lambda: None,
    on_end: Callable[[], None] = lambda: None,
    stop: threading.Event | None = None,
    terminated: threading.Event | None = None,
    policy: CallPolicy = PLAIN,
    failures: list | None = None,
) -> Iterator:
    """Yield the results of ``func`` on every item, as the module docstring describes, as one
    list per chunk (a consumer flattens them in C: a generator step per item costs more than
    the rest of a small item's trip).

    ``length`` is the input's length if it has one (chunks then shrink towards the end, so the
    workers finish together). ``on_start`` is called when the call starts (its first result is
    asked for), ``on_end`` once it has ended, however it ended. ``iterable`` may be a
    :class:`~glimpse.pools.contract.feed.Feed`: the call then runs until the feed ends it.
    Setting ``stop`` ends the call within a wait (under a second), as closing it does, even
    while the consumer waits in another thread for its next result; setting ``terminated`` (the
    pool was terminated) ends it as soon with an error, whatever the engine does with its chunks.
    ``policy`` says what becomes of failed items (``func`` comes wrapped for it already); with
    ``errors="skip"`` they go to ``failures``.
    """
    on_start()
    try:
        sizes = _chunk_sizes(backend, backend.workers(), chunksize)
        window = _Window(backend.window(), window_bytes())
        reader = ChunkReader(iterable, sizes, backend.encode if backend.serializes else None, length)
        call = _open_call(backend, func)
        bar = _progress_bar(progress, length)
    except BaseException:
        on_end()
        raise
    watch = CallWatch(backend)
    next_start = delivered = 0
    input_error: BaseException | None = None
    try:
        while stop is None or not stop.is_set():
            if terminated is not None and terminated.is_set():
                raise ValueError("the pool was terminated during the call; make a new pool")
            if watch.resize_due():
                _follow_cluster_size(backend, window, sizes)
            while (
                (input_error is None or reader.gave_back)
                and not reader.exhausted
                and window.has_room(given_back=reader.gave_back)
                and not sizes.learning(len(window.pending))
            ):
                try:
                    chunk = reader.read()
                except Exception as exc:
                    input_error = exc
                    break
                if chunk is None:
                    break
                window.send(backend.submit(call, chunk), chunk)
            if window.empty():
                if input_error is not None:
                    raise input_error
                if reader.feed is None or reader.exhausted or not reader.feed.wait():
                    return
                watch.progress()  # the time waiting for the feed was no time without workers
                continue
            finished = backend.wait(list(window.pending), _WAIT_SECONDS if reader.feed is None else _FEED_WAIT_SECONDS)
            if finished:
                window.chunks = max(window.chunks, backend.window())  # grows as the backend learns
            else:
                watch.check()
            for handle in finished:
                watch.progress()
                chunk = window.finish(handle)
                outcome, nbytes = _outcome_or_resubmit(backend, call, chunk, handle, window)
                if outcome is None:
                    continue
                if policy.timeout is not None:
                    _reclaim_timed_out(backend, outcome, policy)
                count = len(outcome.values)
                sizes.observe(count + (outcome.failure is not None), outcome.seconds)
                bar.update(count)
                if outcome.failure is None and count < chunk.count:  # a probe's time ran out
                    reader.give_back(chunk.start + count, chunk.items[count:])
                if ordered:
                    window.hold(chunk.start, outcome, nbytes)
                else:
                    yield policy.deliverable(outcome.values, chunk.start, failures)
                    delivered += count
                    if outcome.failure is not None:
                        _raise(outcome.failure)
            while next_start in window.held:
                outcome = window.release(next_start)
                yield policy.deliverable(outcome.values, next_start, failures)
                next_start += len(outcome.values)
                delivered += len(outcome.values)
                if outcome.failure is not None:
                    _raise(outcome.failure)
    except ClusterLost as lost:
        raise ClusterLostError(
            f"{lost}; the call had delivered {delivered} results, none after them. "
            "Restart the cluster (or fix the address) and run the call again."
        ) from None
    finally:
        try:
            if window.pending:
                backend.cancel(list(window.pending))
            backend.close_call(call)
        except Exception as exc:  # the cluster may be gone; never hide why the call ended
            log.warning("could not cancel the rest of the call on the cluster: %s: %s", type(exc).__name__, exc)
        bar.close()
        on_end()


class _Window:
    """What one call holds: chunks in flight and results held back for order (by the index of
    their first item), by count and bytes.

    There is room for another chunk while both are under their limits, and always when the
    window is empty, so an item larger than the byte budget still runs, alone. Items a probe
    gave back come before results held back, and are in memory already: they need only room
    among the chunks in flight.
    """

    def __init__(self, chunks: int, budget: int):
        self.chunks, self.budget = chunks, budget
        self.pending: dict = {}
        self.held: dict[int, tuple[ChunkOutcome, int]] = {}
        self.nbytes = 0

    def has_room(self, given_back: bool = False) -> bool:
        if self.empty() or (given_back and len(self.pending) < self.chunks):
            return True
        return len(self.pending) + len(self.held) < self.chunks and self.nbytes < self.budget

    def empty(self) -> bool:
        return not self.pending and not self.held

    def send(self, handle, chunk: Chunk) -> None:
        self.pending[handle] = chunk
        self.nbytes += chunk.nbytes

    def finish(self, handle) -> Chunk:
        chunk = self.pending.pop(handle)
        self.nbytes -= chunk.nbytes
        return chunk

    def hold(self, start: int, outcome: ChunkOutcome, nbytes: int) -> None:
        self.held[start] = (outcome, nbytes)
        self.nbytes += nbytes

    def release(self, start: int) -> ChunkOutcome:
        outcome, nbytes = self.held.pop(start)
        self.nbytes -= nbytes
        return outcome


def _follow_cluster_size(backend: Backend, window: _Window, sizes) -> None:
    """Workers joined or left: keep the window and the chunk sizes in step with the cluster."""
    window.chunks = backend.window()
    if isinstance(sizes, AdaptiveSize):
        sizes.workers = backend.workers()


def _chunk_sizes(backend: Backend, workers: int, chunksize: int | None):
    if chunksize:
        return FixedSize(chunksize)
    return AdaptiveSize(backend.chunk_seconds, backend.task_seconds, workers, backend.max_chunk_items)


def _open_call(backend: Backend, func) -> Call:
    call = Call(func)
    if backend.serializes:
        try:
            call.blob = pickling.dumps(func)  # by reference when the workers can import it
        except Exception as exc:
            raise SerializationError(
                f"the function {_name(func)} could not be pickled to send it to the workers: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    backend.open_call(call)
    return call


def _outcome_or_resubmit(backend, call, chunk, handle, window: _Window) -> tuple[ChunkOutcome | None, int]:
    """The chunk's outcome and its size in bytes; or ``None`` after sending a lost chunk again."""
    try:
        raw = backend.outcome(handle)
    except ChunkLost as lost:
        chunk.attempts += 1
        if chunk.attempts >= backend.max_attempts:
            error = WorkerLostError(
                f"lost {chunk.describe()} {chunk.attempts} times with the worker running it; last: {lost}. "
                "The function may crash its worker (os._exit, a segfault, running out of memory)."
            )
            error.items = range(chunk.start, chunk.stop)
            raise error from None
        # The reason as text: a log record that kept the exception would keep its frames and the chunk.
        log.warning("re-sending %s after a worker was lost: %s", chunk.describe(), str(lost))
        window.send(backend.submit(call, chunk), chunk)
        return None, 0
    if not backend.serializes:
        return raw, 0
    return _decode(raw, chunk), len(raw)


def _reclaim_timed_out(backend: Backend, outcome: ChunkOutcome, policy: CallPolicy) -> None:
    """Tell the backend which worker processes items that timed out left their threads in."""
    timed_out = []
    if outcome.failure is not None and isinstance(outcome.failure.exception, TaskTimeoutError):
        timed_out.append(outcome.failure.where)
    if policy.keeps_failures:
        timed_out += [
            value.where
            for value in outcome.values
            if type(value) is Failure and isinstance(value.exception, TaskTimeoutError)
        ]
    for where in timed_out:
        try:
            backend.reclaim(where)
        except Exception as exc:  # the item's failure is reported all the same
            log.warning("could not replace the worker process %s: %s: %s", where, type(exc).__name__, exc)


def _decode(raw, chunk: Chunk) -> ChunkOutcome:
    try:
        return ChunkOutcome.from_wire(raw.load() if hasattr(raw, "load") else pickling.loads(raw))
    except Exception as exc:
        raise SerializationError(
            f"the results of {chunk.describe()} could not be unpickled in the caller: {type(exc).__name__}: {exc}"
        ) from exc


def _raise(failure: ItemError):
    raise remote_exception(failure)


def remote_exception(failure: ItemError, what: str = "") -> BaseException:
    """The exception a worker raised, its traceback chained as a :class:`RemoteTraceback` and a
    note naming ``what`` raised it (default: the item) and the worker."""
    exc = failure.exception
    if failure.traceback:
        exc.__cause__ = RemoteTraceback(failure.traceback)
        note = f"raised by {what or f'item #{failure.index}'} in worker {failure.where}"
        if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
    return exc


def _progress_bar(enabled: bool, total: int | None):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", dynamic_ncols=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
