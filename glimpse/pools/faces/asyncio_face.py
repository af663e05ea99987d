"""asyncio on any pool: ``await pool.amap(...)``, ``async for ... in pool.aimap(...)``, ``await pool.asubmit(...)``.

The event loop never waits for the pool: a call runs in a thread of the pool (one per call, never
one per item) that hands its results to the loop a chunk at a time, and the loop takes them in
slices of at most :data:`SLICE_SECONDS`. The thread keeps at most :data:`CHUNKS_AHEAD` chunks of
results the consumer has not taken, so a slow consumer holds the call back as it would an
``imap``. Cancelling the awaiting task, or leaving the ``async for``, cancels the call's pending
work as leaving an ``imap`` does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from glimpse.pools.contract.policy import results_list
from glimpse.pools.faces.futures_face import FuturesFace

if TYPE_CHECKING:
    from concurrent.futures import Future

    from typing_extensions import Unpack

    from glimpse.pools.contract.policy import CallOptions
    from glimpse.pools.contract.worker_policy import Failure

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

#: The longest the loop spends handing results to a consumer before it lets other tasks run.
SLICE_SECONDS = 0.001
#: How many chunks of results the call's thread may have handed over and the consumer not taken.
CHUNKS_AHEAD = 4
_POLL_SECONDS = 0.1


class AsyncioFace(FuturesFace):
    """``amap``, ``aimap``, ``aimap_unordered`` and ``asubmit`` on every pool."""

    async def amap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        **options: Unpack[CallOptions],
    ) -> list[R]:
        """:meth:`map` for a coroutine: ``await`` the list of results, in input order."""
        results: list[R] = results_list(options)
        failures = getattr(results, "failures", None)
        async for values in _chunks(self, func, iterable, chunksize, ordered=True, failures=failures, **options):
            results.extend(values)
        return results

    def aimap(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[R]:
        """:meth:`imap` for ``async for``: results in input order, the input read lazily."""
        return _items(_chunks(self, func, iterable, chunksize, ordered=True, **options))

    def aimap_unordered(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[R]:
        """:meth:`imap_unordered` for ``async for``: results as they finish."""
        return _items(_chunks(self, func, iterable, chunksize, ordered=False, **options))

    async def asubmit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`submit` for a coroutine: ``await`` the result of ``fn(*args, **kwargs)``."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))


async def _items(chunks: AsyncGenerator[list[R], None]) -> AsyncIterator[R]:
    began = time.monotonic()  # a slice spans chunks: taking one that has arrived lets no other task run
    try:
        async for values in chunks:
            for index, value in enumerate(values):
                yield value
                if index & 63 == 63 and time.monotonic() - began > SLICE_SECONDS:
                    await asyncio.sleep(0)
                    began = time.monotonic()
            if time.monotonic() - began > SLICE_SECONDS:
                await asyncio.sleep(0)
                began = time.monotonic()
    finally:
        await chunks.aclose()


async def _chunks(
    pool: AsyncioFace,
    func: Callable[[T], R],
    iterable: Iterable[T],
    chunksize: int | None,
    *,
    ordered: bool,
    failures: list[Failure] | None = None,
    **options: Unpack[CallOptions],
) -> AsyncGenerator[list[R], None]:
    """The call's lists of results (one per chunk), produced by a thread of the pool."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    results = pool._call(
        func, iterable, chunksize, False, ordered=ordered, lists=True, stop=stop, failures=failures, **options
    )
    arrived: asyncio.Queue[list[R] | Future[None]] = asyncio.Queue()
    room = threading.Semaphore(CHUNKS_AHEAD)

    def hand_over(item: list[R] | Future[None]) -> None:
        try:
            loop.call_soon_threadsafe(arrived.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody waits for the results
            stop.set()

    def produce() -> None:
        try:
            for values in results:
                while not room.acquire(timeout=_POLL_SECONDS):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(values)
        finally:
            results.close()  # cancels what is still in flight when the consumer left

    done = pool._in_background(produce, "aimap")
    done.add_done_callback(lambda future: hand_over(future))
    try:
        while True:
            item = await arrived.get()
            if isinstance(item, list):
                room.release()
                yield item
                continue
            error = item.exception()
            if error is not None:
                raise error
            return
    finally:
        stop.set()
