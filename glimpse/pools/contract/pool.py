"""The pool interface users call: ``map``, ``imap``, ``imap_unordered`` and the lifecycle."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

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

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None, progress: bool = False) -> list:
        """Return ``[func(x) for x in iterable]``, computed by the workers, in input order."""
        return list(self._iterate(func, iterable, chunksize, progress, ordered=True, whole=True))

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
        """Accept no more work; workers this pool owns exit once they are idle."""
        if self._state == "running":
            self._state = "closed"
            self._backend.close()

    def terminate(self) -> None:
        """Stop now, killing running work and every worker this pool owns."""
        self._state = "terminated"
        self._backend.terminate()

    def join(self) -> None:
        """Wait for the workers this pool owns to exit; call :meth:`close` or :meth:`terminate` first."""
        if self._state == "running":
            raise ValueError("join() needs close() or terminate() first")
        self._backend.join()

    def __enter__(self):
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
        return iterate(
            self._backend,
            func,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            progress=progress,
            length=length,
            whole=whole,
        )


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except (TypeError, AttributeError):
        return None
