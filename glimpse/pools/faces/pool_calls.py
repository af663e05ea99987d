"""What the faces are built on, for type checkers: the calls of the pool they are part of.

Each face is a base class of :class:`~glimpse.pools.contract.pool.Pool`, which defines these
calls; a type checker sees :class:`PoolCalls` as the faces' base, so a face's methods are
checked against the pool's calls, and a pool that lacked one could not be made. At run time the
faces derive from ``object`` and this module is not imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from glimpse.pools.contract.policy import CallOptions
    from glimpse.pools.contract.tasks import TaskQueue
    from glimpse.pools.contract.worker_policy import Failure

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


class PoolCalls(Protocol):
    """The calls of :class:`~glimpse.pools.contract.pool.Pool` the faces use."""

    def map(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> list[R]: ...

    def imap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> Iterator[R]: ...

    def imap_unordered(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        progress: bool = False,
        **options: Unpack[CallOptions],
    ) -> Iterator[R]: ...

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]: ...

    @property
    def _tasks(self) -> TaskQueue: ...

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
    ) -> Any: ...

    def _in_background(self, work: Callable[[], R], name: str) -> Future[R]: ...
