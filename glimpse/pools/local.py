"""The two pools that need no cluster: one process, or many cores of this machine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from glimpse.pools.backends.inline.backend import InlineBackend
from glimpse.pools.backends.processes.backend import ProcessBackend
from glimpse.pools.contract import Pool


class SinglecorePool(Pool):
    """A fall-back pool that runs everything in the caller's process, one item at a time.

    Nothing is pickled, so it is the pool to debug with: exceptions carry their local traceback.
    ``initializer(*initargs)`` runs once, in the caller's process, before the first item, as
    multiprocessing's does in each worker process.
    """

    def __init__(self, initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = ()) -> None:
        self._args = (initializer, tuple(initargs))
        super().__init__(InlineBackend(), initializer=initializer, initargs=initargs)

    def __reduce__(self) -> tuple[type[SinglecorePool], tuple[Any, ...]]:
        return (SinglecorePool, self._args)


class MulticorePool(Pool):
    """A pool of worker processes on this machine; arguments as ``multiprocessing.Pool``.

    ``MulticorePool(processes=None, initializer=None, initargs=(), maxtasksperchild=None)``:
    ``processes`` defaults to ``os.cpu_count()``. Functions travel with cloudpickle, so lambdas,
    closures and functions defined in ``__main__`` work. Workers start on first use; a worker
    that dies loses only its chunk, which runs again on a fresh worker.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
    ) -> None:
        self._args = (processes, initializer, tuple(initargs), maxtasksperchild)
        super().__init__(ProcessBackend(*self._args))

    def __reduce__(self) -> tuple[type[MulticorePool], tuple[Any, ...]]:
        return (MulticorePool, self._args)
