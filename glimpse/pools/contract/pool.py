"""The pool interface users call: ``map``, ``imap``, ``imap_unordered`` and the lifecycle."""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator

from glimpse.pools.contract.backend import Backend
from glimpse.pools.contract.iteration import iterate


class Pool:
    """A worker pool over one backend. Every pool in glimpse has exactly these methods.

    ``map`` and ``imap`` keep input order; ``imap_unordered`` yields in completion order.
    ``imap``/``imap_unordered`` read the input lazily, so it may be an endless generator.
    ``chunksize=None`` picks a size automatically. ``progress=True`` shows a tqdm bar.
    A pool is meant to be used from one thread at a time.
    """

    def __init__(self, backend: Backend):
        self._backend = backend
        self._state = "running"
        self._calls: weakref.WeakSet[_CallResults] = weakref.WeakSet()
        self._backend_closed = False

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None, progress: bool = False) -> list:
        """Return ``[func(x) for x in iterable]``, computed by the workers, in input order."""
        results: list = []
        for values in self._iterate(func, iterable, chunksize, progress, ordered=True, whole=True):
            results.extend(values)
        return results

    def imap(
        self, func: Callable, iterable: Iterable, chunksize: int | None = None, progress: bool = False
    ) -> Iterator:
        """Yield ``func(x)`` for each ``x`` in input order, each as soon as it and all before it are done."""
        return self._iterate(func, iterable, chunksize, progress, ordered=True)

    def imap_unordered(
        self, func: Callable, iterable: Iterable, chunksize: int | None = None, progress: bool = False
    ) -> Iterator:
        """Yield ``func(x)`` for each ``x`` in the order the results finish."""
        return self._iterate(func, iterable, chunksize, progress, ordered=False)

    def close(self) -> None:
        """Accept no new calls. Calls still in flight go on; workers this pool owns exit once those
        calls have ended and the workers are idle."""
        if self._state == "running":
            self._state = "closed"
            self._close_backend_when_idle()

    def terminate(self) -> None:
        """Stop now, killing running work and every worker this pool owns; a call still in flight
        raises an error on its next result."""
        self._state = "terminated"
        self._backend.terminate()

    def join(self) -> None:
        """Wait for the workers this pool owns to exit; call :meth:`close` or :meth:`terminate` first.

        After :meth:`close`, calls still in flight are first run to their end, reading the rest of
        their input as ``multiprocessing`` does; their iterators then deliver every result.
        """
        if self._state == "running":
            raise ValueError("join() needs close() or terminate() first")
        if self._state == "closed":
            for call in list(self._calls):
                call.finish()
            self._close_backend_when_idle()
        self._backend.join()

    def __enter__(self):
        if self._state != "running":
            raise ValueError(f"{type(self).__name__} is {self._state}; make a new pool")  # as bpo-35477
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
        self.join()

    def _iterate(self, func, iterable, chunksize, progress, *, ordered, whole=False) -> Iterator:
        if self._state != "running":
            raise ValueError(f"{type(self).__name__} is {self._state}; make a new pool")
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive integer or None, not {chunksize!r}")
        length = _length(iterable)
        results = iterate(
            self._backend,
            func,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            progress=progress,
            length=length,
            on_end=self._close_backend_when_idle,
        )
        if whole:
            return results
        call = _CallResults.of(results)
        self._calls.add(call)
        return call

    def _close_backend_when_idle(self) -> None:
        if self._state == "closed" and not self._backend_closed and not any(c.running for c in self._calls):
            self._backend_closed = True
            self._backend.close()


class _CallResults(itertools.chain):
    """The iterator of one call; it keeps the results if :meth:`Pool.join` runs the call to its end.

    A ``chain`` over the lists of results the call's generator yields, then what join() kept:
    iterating runs in C, so the call costs nothing per item.
    """

    @classmethod
    def of(cls, results: Generator) -> _CallResults:
        kept = _Kept()
        call = cls.from_iterable(_then_kept(results, kept))
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

    def __init__(self):
        self.values: deque = deque()
        self.error: BaseException | None = None


def _then_kept(results: Generator, kept: _Kept) -> Iterator:
    yield from results
    yield kept.values
    if kept.error is not None:
        error, kept.error = kept.error, None
        raise error


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except (TypeError, AttributeError):
        return None
