"""The calls of a pool that every face builds on: ``map``, ``imap``, ``imap_unordered``, single calls, the lifecycle."""

from __future__ import annotations

import itertools
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from glimpse.pools.contract.backend import Backend
from glimpse.pools.contract.feed import Feed
from glimpse.pools.contract.iteration import iterate
from glimpse.pools.contract.policy import PLAIN, CallOptions, CallPolicy, results_list
from glimpse.pools.contract.shared_backend import SharedBackend
from glimpse.pools.contract.tasks import TaskQueue
from glimpse.pools.contract.worker_policy import Failure, WorkerSetup

if TYPE_CHECKING:
    from types import GeneratorType

    from typing_extensions import Self, Unpack

T = TypeVar("T")
R = TypeVar("R")


class PoolCalls:
    """The calls of every pool that the faces build on: ``map``, ``imap``, ``imap_unordered``, single
    calls batched into chunks, and the lifecycle. A pool is :class:`~glimpse.pools.contract.pool.Pool`."""

    def __init__(
        self, backend: Backend, initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = ()
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        self._setup = None if initializer is None else WorkerSetup(initializer, tuple(initargs), uuid.uuid4().hex)
        self._backend = backend
        self._shared = SharedBackend(backend)
        self._state = "running"
        self._calls: weakref.WeakSet[_CallResults] = weakref.WeakSet()
        self._backend_closed = False
        self._lock = threading.Lock()
        self._running_calls = 0
        self._tasks_queue: TaskQueue | None = None
        self._threads: set[threading.Thread] = set()
        self._terminated = threading.Event()

    def map(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> list[R]:
        """Return ``[func(x) for x in iterable]``, computed by the workers, in input order.

        With ``errors="skip"`` the list has an attribute ``failures``: the items left out."""
        results: list[R] = results_list(options)
        failures = getattr(results, "failures", None)
        calls = self._call(func, iterable, chunksize, progress, ordered=True, lists=True, failures=failures, **options)
        for values in calls:
            results.extend(values)
        return results

    def imap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> Iterator[R]:
        """Yield ``func(x)`` for each ``x`` in input order, each as soon as it and all before it are done.

        With ``errors="skip"`` the iterator's ``failures`` list fills with the items left out."""
        return self._iterate(func, iterable, chunksize, progress, ordered=True, **options)

    def imap_unordered(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> Iterator[R]:
        """Yield ``func(x)`` for each ``x`` in the order the results finish (``failures`` as :meth:`imap`)."""
        return self._iterate(func, iterable, chunksize, progress, ordered=False, **options)

    def _setup_arguments(self) -> dict[str, Any]:
        """``initializer=`` and ``initargs=`` as given, for a pool pickled to an equivalent one."""
        if self._setup is None:
            return {}
        return {"initializer": self._setup.initializer, "initargs": self._setup.initargs}

    def workers(self) -> int:
        """How many items the pool runs at once now: its worker processes, or the cluster's worker
        slots (threads or cores) connected now; at least 1."""
        return self._shared.workers()

    def close(self) -> None:
        """Accept no new calls. Calls still in flight go on (single calls already submitted too);
        workers this pool owns exit once those calls have ended and the workers are idle."""
        with self._lock:
            if self._state != "running":
                return
            self._state = "closed"
        if self._tasks_queue is not None:
            self._tasks_queue.close()
        self._close_backend_when_idle()

    def terminate(self) -> None:
        """Stop now, killing running work and every worker this pool owns; a call still in flight
        raises an error on its next result, and single calls not yet sent are cancelled."""
        with self._lock:
            self._state = "terminated"
        self._terminated.set()
        if self._tasks_queue is not None:
            self._tasks_queue.close()
            self._tasks_queue.cancel_queued()
        self._shared.terminate()

    def join(self) -> None:
        """Wait for the workers this pool owns to exit; call :meth:`close` or :meth:`terminate` first.

        After :meth:`close`, calls still in flight are first run to their end, reading the rest of
        their input as ``multiprocessing`` does; their iterators then deliver every result, and
        every single call submitted settles its future.
        """
        if self._state == "running":
            raise ValueError("join() needs close() or terminate() first")
        if self._state == "closed":
            for call in list(self._calls):
                call.finish()
        if self._tasks_queue is not None:
            self._tasks_queue.join()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join()
        if self._state == "closed":
            self._close_backend_when_idle()
        self._backend.join()

    def __enter__(self) -> Self:
        if self._state != "running":
            raise ValueError(f"{type(self).__name__} is {self._state}; make a new pool")  # as bpo-35477
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        self.join()

    # -- what the faces build on ----------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != "running":
            raise ValueError(f"{type(self).__name__} is {self._state}; make a new pool")

    def _iterate(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None,
        progress: bool,
        *,
        ordered: bool,
        **options: Unpack[CallOptions],
    ) -> Iterator[Any]:
        results: Iterator[Any] = self._call(func, iterable, chunksize, progress, ordered=ordered, **options)
        return results

    def _call(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        progress: bool,
        *,
        ordered: bool,
        lists: bool = False,
        stop: threading.Event | None = None,
        failures: list[Failure] | None = None,
        **options: Unpack[CallOptions],
    ) -> Any:
        """One call over the contract: its iterator of results, registered for :meth:`join` to
        finish; or, with ``lists``, its generator of lists of results, one per chunk (the caller
        runs it to its end). Setting the event ``stop`` ends it from another thread. Items left
        out by ``errors="skip"`` go to ``failures`` (or to the iterator's ``failures``)."""
        self._check_running()
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive integer or None, not {chunksize!r}")
        unknown = sorted(set(options) - set(CallOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r} (a call takes {', '.join(CallOptions.__annotations__)})"
            )
        journal, key = options.pop("journal", None), options.pop("key", None)
        if key is not None and journal is None:
            raise TypeError("key= tells one call's journal from another's: pass journal=PATH too")
        policy = CallPolicy.of(
            options.get("timeout"),
            options.get("retries", 0),
            options.get("retry_on", ()),
            options.get("errors", "raise"),
        )
        if failures is None and not lists:
            failures = []

        def run(items: Iterable[Any], function: Callable[..., Any] = func) -> Iterator[list[Any]]:
            return self._contract_call(
                policy.guard(function, self._setup),
                items,
                ordered=ordered,
                chunksize=chunksize,
                progress=progress,
                stop=stop,
                policy=policy,
                failures=failures,
            )

        if journal is not None:
            from glimpse.pools.contract.journal import journaled

            results = journaled(run, func, iterable, path=journal, key=key, ordered=ordered, failures=failures)
        else:
            results = run(iterable)
        if lists:
            return results
        call = _CallResults.of(results)  # type: ignore[arg-type]  # the contract and the journal are generators
        call.failures = failures
        self._calls.add(call)
        return call

    @property
    def _tasks(self) -> TaskQueue:
        """The queue that batches single calls (``submit``, ``apply_async`` ...) into chunks."""
        with self._lock:
            self._check_running()
            if self._tasks_queue is None:
                self._tasks_queue = TaskQueue(
                    self._run_tasks, f"glimpse-tasks-{type(self).__name__}", self._close_backend_when_idle
                )
            return self._tasks_queue

    def _run_tasks(self, func: Callable[..., Any], feed: Feed) -> Iterator[list[Any]]:
        guarded = PLAIN.guard(func, self._setup)
        return self._contract_call(guarded, feed, ordered=False)  # runs on after close(): no state check

    def _contract_call(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any] | Feed,
        *,
        ordered: bool,
        chunksize: int | None = None,
        progress: bool = False,
        stop: threading.Event | None = None,
        policy: CallPolicy = PLAIN,
        failures: list[Failure] | None = None,
    ) -> Iterator[list[Any]]:
        """The contract's generator of one call on this pool's shared backend, counted as running."""
        return iterate(
            self._shared,  # type: ignore[arg-type]  # a SharedBackend has every hook of a Backend
            func,
            iterable,  # type: ignore[arg-type]  # iterate takes a Feed where it takes an iterable
            ordered=ordered,
            chunksize=chunksize,
            progress=progress,
            length=_length(iterable),
            on_start=self._call_started,
            on_end=self._call_ended,
            stop=stop,
            terminated=self._terminated,
            policy=policy,
            failures=failures,
        )

    def _in_background(self, work: Callable[[], R], name: str) -> Future[R]:
        """Run ``work()`` (a whole call) in a thread of its own; its future holds what it returns."""
        self._check_running()
        future: Future[R] = Future()
        future.set_running_or_notify_cancel()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"glimpse-{name}", daemon=True)
        self._threads.add(thread)
        thread.start()
        return future

    def _call_started(self) -> None:
        with self._lock:
            self._running_calls += 1

    def _call_ended(self) -> None:
        with self._lock:
            self._running_calls -= 1
        self._close_backend_when_idle()

    def _close_backend_when_idle(self) -> None:
        with self._lock:
            if self._state != "closed" or self._backend_closed or self._running_calls:
                return
            if any(c.running for c in self._calls) or (self._tasks_queue is not None and self._tasks_queue.running):
                return
            self._backend_closed = True
        self._backend.close()


class _CallResults(itertools.chain[Any]):
    """The iterator of one call; it keeps the results if :meth:`Pool.join` runs the call to its end.

    A ``chain`` over the lists of results the call's generator yields, then what join() kept:
    iterating runs in C, so the call costs nothing per item.
    """

    _results: GeneratorType[list[Any], None, None]
    _kept: _Kept
    #: The items ``errors="skip"`` left out, so far.
    failures: list[Failure] | None

    @classmethod
    def of(cls, results: GeneratorType[list[Any], None, None]) -> _CallResults:
        kept = _Kept()
        call: _CallResults = cls.from_iterable(_then_kept(results, kept))  # type: ignore[assignment]  # an instance of cls
        call._results, call._kept = results, kept
        return call

    @property
    def running(self) -> bool:
        """Whether the call has not ended; a call ending right now (in its last step) has ended."""
        return self._results.gi_frame is not None and not self._results.gi_running

    def finish(self) -> None:
        """Run the call to its end now, keeping its results (and its error) for the consumer."""
        if not self.running:
            return
        try:
            for values in self._results:
                self._kept.values.extend(values)
        except Exception as exc:
            self._kept.error = exc

    def close(self) -> None:
        """Stop the call, cancelling its pending work (as leaving a ``for`` loop over it does)."""
        self._results.close()


class _Kept:
    """What :meth:`_CallResults.finish` kept: results, and the error that ended the call."""

    def __init__(self) -> None:
        self.values: deque[Any] = deque()
        self.error: BaseException | None = None


def _then_kept(results: Generator[list[Any], None, None], kept: _Kept) -> Iterator[Iterable[Any]]:
    yield from results
    yield kept.values
    if kept.error is not None:
        error, kept.error = kept.error, None
        raise error


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except (TypeError, AttributeError):
        return None
