"""``concurrent.futures`` on any pool: ``pool.submit`` and a real ``Executor``, ``pool.executor()``.

Single calls are not sent one by one: they queue, and the pool sends whatever has queued as one
chunk (see :mod:`glimpse.pools.contract.tasks`), so ten thousand ``submit`` calls cost a few
round trips, not ten thousand. A future is ``running()`` once its call has been taken into a
chunk; cancelling it before then removes its work.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from glimpse.pools.contract.calls import PoolCalls

P = ParamSpec("P")
R = TypeVar("R")


class FuturesFace(PoolCalls):
    """``submit`` and ``executor`` on every pool."""

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker; the :class:`concurrent.futures.Future` holds its
        result, or the exception it raised with the worker's traceback chained."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        return self._tasks.submit(fn, args, kwargs)

    def executor(self) -> PoolExecutor:
        """A :class:`concurrent.futures.Executor` over this pool (shutting it down leaves the pool open)."""
        return PoolExecutor(self)


class PoolExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose work runs on a glimpse pool.

    ``map(fn, *iterables, timeout=None, chunksize=1, buffersize=None)`` behaves as Python 3.14's:
    every call is submitted at once, or with ``buffersize`` only that many ahead of the consumer
    (for inputs longer than memory). ``chunksize`` is accepted for compatibility: calls are
    batched into chunks by the pool in any case. ``shutdown`` waits for (or cancels) the futures
    of this executor only; the pool stays open for its owner to close.
    """

    def __init__(self, pool: FuturesFace) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._shut_down = False
        self._futures: set[Future[Any]] = set()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = self._pool.submit(fn, *args, **kwargs)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        # No lock (a set's discard is atomic): the pool's thread that settles futures must not
        # wait while submit() holds the lock to pickle the next call.
        self._futures.discard(future)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        arguments = zip(*iterables, strict=False)
        futures: collections.deque[Future[R]] = collections.deque(
            self.submit(fn, *args) for args in (itertools.islice(arguments, buffersize) if buffersize else arguments)
        )
        return _results(weakref.ref(self), futures, fn, arguments if buffersize else None, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut_down = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            for future in futures:
                if not future.cancelled():
                    future.exception()  # waits; the error stays the future's to report


def _results(
    executor_ref: weakref.ref[PoolExecutor],
    futures: collections.deque[Future[R]],
    fn: Callable[..., R],
    more_arguments: Iterator[tuple[Any, ...]] | None,
    end_time: float | None,
) -> Iterator[R]:
    """The results in order, submitting one more call per result taken when buffered (as CPython)."""
    try:
        futures.reverse()
        while futures:
            if more_arguments is not None:
                executor = executor_ref()
                args = next(more_arguments, None) if executor is not None else None
                if args is not None:
                    futures.appendleft(executor.submit(fn, *args))  # type: ignore[union-attr]  # args is None when executor is
                del executor
            yield _result_or_cancel(futures.pop(), None if end_time is None else end_time - time.monotonic())
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[R], timeout: float | None) -> R:
    """The future's result; cancelled if it timed out. Holds no reference to it once returned (as
    CPython: a future kept while the result is yielded would keep the result alive too)."""
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future
