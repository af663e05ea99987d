"""The base of every cluster pool: where its address comes from, how it pickles, how it ends."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from glimpse.pools.contract import Backend, Pool


class ClusterPool(Pool):
    """A pool on a cluster at ``address``, which it pickles to.

    A copy unpickled in another process (or in a task on the cluster) connects to the same
    cluster and never stops one it did not start. A pool that started an embedded engine ends it
    on :meth:`close`; if ``end_when_dropped``, also when the pool is garbage-collected unclosed
    (at interpreter exit each engine's own exit hooks, and the embedded processes' watch on their
    parent, end what is left). ``initializer(*initargs)`` runs once in each worker process before
    its first item, as multiprocessing's; a copy unpickled elsewhere has it too.
    """

    def __init__(
        self,
        backend: Backend,
        address: Any,
        end_when_dropped: bool = True,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ):
        try:
            super().__init__(backend, initializer=initializer, initargs=initargs)
        except BaseException:
            backend.terminate()  # a bad initializer leaves no embedded cluster behind
            raise
        self.address = address
        if end_when_dropped:
            weakref.finalize(self, backend.terminate).atexit = False

    def __reduce__(self):
        return remade, (type(self), (self.address,), self._setup_arguments())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} {self._state}>"


def resolve_address(
    argument: str | None, variable: str, normalize: Callable[[str], str] = str.strip
) -> tuple[str | None, str]:
    """The address to use and where it came from: the argument, else ``$variable``.

    ``(None, "")`` means neither names one, so the pool starts an embedded cluster.
    """
    if argument:
        return normalize(argument), "the address argument"
    if os.environ.get(variable):
        return normalize(os.environ[variable]), f"${variable}"
    return None, ""


def remade(cls, args: tuple, kwargs: dict):
    """A pool unpickled: ``cls(*args, **kwargs)`` (keyword arguments: its initializer, if any)."""
    return cls(*args, **kwargs)
