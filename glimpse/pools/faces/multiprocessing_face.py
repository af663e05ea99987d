"""``multiprocessing.Pool``'s API beyond ``map``/``imap``: starmap, apply and the ``*_async`` calls.

Code written for ``multiprocessing.Pool`` runs unchanged on every glimpse pool, with these
differences: functions travel with cloudpickle (lambdas work), ``map_async`` reads its input
lazily instead of making a list of it first, and ``apply_async`` calls are batched into chunks.

Callbacks run in a thread of the pool, one after another, as multiprocessing's result handler
runs them: they should return quickly, and must not wait for another result of the same pool.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from glimpse.pools.contract.calls import PoolCalls
from glimpse.pools.contract.policy import results_list
from glimpse.pools.contract.worker_tasks import Star

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from glimpse.pools.contract.policy import CallOptions

R = TypeVar("R")
T = TypeVar("T")


class AsyncResult(Generic[R]):
    """The result of ``apply_async``, ``map_async`` or ``starmap_async``, as multiprocessing's.

    ``callback(result)`` or ``error_callback(exception)`` has run by the time :meth:`ready` is
    true and :meth:`get`/:meth:`wait` return.
    """

    def __init__(
        self,
        future: Future[R],
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        if error_callback is not None and not callable(error_callback):
            raise TypeError(f"error_callback must be callable, not {type(error_callback).__name__}")
        self._future = future
        self._callback, self._error_callback = callback, error_callback
        self._done = threading.Event()
        future.add_done_callback(self._settled)

    def _settled(self, future: Future[R]) -> None:
        try:
            error = _error_of(future)
            if error is None and self._callback is not None:
                self._callback(future.result())
            elif error is not None and self._error_callback is not None:
                self._error_callback(error)
        finally:
            self._done.set()

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ``ValueError`` if it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return _error_of(self._future) is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds."""
        self._done.wait(timeout)

    def get(self, timeout: float | None = None) -> R:
        """The result, or the exception the call raised; ``multiprocessing.TimeoutError`` if it is
        not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        return self._future.result()

    def future(self) -> Future[R]:
        """The :class:`concurrent.futures.Future` underneath (for ``as_completed``, ``wait``, asyncio)."""
        return self._future

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__name__} {state}>"


def _error_of(future: Future[Any]) -> BaseException | None:
    if future.cancelled():
        return CancelledError("the call was cancelled (the pool was terminated before it ran)")
    return future.exception()


class MultiprocessingFace(PoolCalls):
    """The methods of ``multiprocessing.Pool`` a glimpse pool adds to ``map``/``imap``."""

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> list[R]:
        """Like :meth:`map`, calling ``func(*args)`` for each tuple ``args`` of ``iterable``."""
        return self.map(_star(func), iterable, chunksize, progress, **options)

    def istarmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> Iterator[R]:
        """Like :meth:`imap` (lazy, in input order), calling ``func(*args)`` for each tuple ``args``."""
        return self.imap(_star(func), iterable, chunksize, progress, **options)

    def istarmap_unordered(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> Iterator[R]:
        """Like :meth:`imap_unordered`, calling ``func(*args)`` for each tuple ``args``."""
        return self.imap_unordered(_star(func), iterable, chunksize, progress, **options)

    def apply(self, func: Callable[..., R], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> R:
        """``func(*args, **kwds)`` run by a worker; waits for and returns its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[R]:
        """Run ``func(*args, **kwds)`` on a worker; many such calls travel together in chunks."""
        _require_callable(func)
        future = self._tasks.submit(func, tuple(args), dict(kwds or {}))
        return AsyncResult(future, callback, error_callback)

    def map_async(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncResult[list[R]]:
        """:meth:`map` run in the background; its :class:`AsyncResult` holds the list of results."""
        collected: list[R] = results_list(options)
        failures = getattr(collected, "failures", None)
        results = self._call(func, iterable, chunksize, False, ordered=True, lists=True, failures=failures, **options)

        def gather() -> list[R]:
            for values in results:
                collected.extend(values)
            return collected

        future = self._in_background(gather, "map_async")
        return AsyncResult(future, callback, error_callback)

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncResult[list[R]]:
        """:meth:`starmap` run in the background, as :meth:`map_async`."""
        return self.map_async(_star(func), iterable, chunksize, callback, error_callback, **options)


def _require_callable(func: object) -> None:
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")


def _star(func: Callable[..., R]) -> Callable[[Iterable[Any]], R]:
    _require_callable(func)
    return Star(func)  # type: ignore[no-untyped-call]
