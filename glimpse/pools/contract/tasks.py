"""Single calls (``submit``, ``apply_async``, the executor, ``asubmit``, joblib) batched into chunks.

A round trip per call is what a pool exists to avoid, so single calls are not sent one by one:
they queue here, and one thread of the pool runs them as the items of one ``imap_unordered``
call over a :class:`~glimpse.pools.contract.feed.Feed`. The contract does the rest as for any
call: chunks sized to the work, a window in flight, lost chunks re-sent, the health watch.
Each item comes back with its task id and its own outcome (``worker_tasks.run_task``), which
settles its :class:`concurrent.futures.Future`.

The thread starts with the first call and ends once the queue has stayed empty for
:data:`IDLE_SECONDS`; the next call starts it again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from glimpse.pools.contract import pickling
from glimpse.pools.contract.feed import Feed
from glimpse.pools.contract.iteration import remote_exception
from glimpse.pools.contract.worker_tasks import run_task
from glimpse.pools.errors import SerializationError

log = logging.getLogger(__name__)

#: How long the thread that runs single calls waits for another before it ends.
IDLE_SECONDS = 2.0
_FUNCTIONS_KEPT = 8

#: Runs ``func`` over a feed as one ``imap_unordered`` call, yielding lists of results.
RunCall = Callable[[Callable, Feed], Iterator[list]]


class _Task:
    __slots__ = ("id", "future", "item", "index", "started")

    def __init__(self, task_id: int, future: Future, item: tuple):
        self.id, self.future, self.item = task_id, future, item
        self.index = -1
        self.started = False


class TaskQueue(Feed):
    """The single calls of one pool, waiting or running; see the module docstring."""

    def __init__(self, run_call: RunCall, name: str = "glimpse-tasks", on_stop: Callable[[], None] = lambda: None):
        self._run_call = run_call
        self._on_stop = on_stop
        self._name = name
        self._changed = threading.Condition()
        self._queue: deque[_Task] = deque()
        self._running: dict[int, _Task] = {}
        self._ids = itertools.count()
        self._next_index = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._functions: dict[int, tuple[Any, bytes, int | None]] = {}
        self._cuts = 0  # chunks cut so far

    def submit(self, fn: Callable, args: tuple, kwargs: dict) -> Future:
        """Queue ``fn(*args, **kwargs)``; its future holds the result or the exception it raised.

        A function or argument that cannot be pickled fails the future at once (as
        ``ProcessPoolExecutor`` does) with a :class:`~glimpse.pools.SerializationError`.
        """
        future: Future = Future()
        try:
            item_blobs = self._pickled_function(fn), pickling.dumps((args, kwargs))
        except Exception as exc:
            error = SerializationError(
                f"the call {getattr(fn, '__qualname__', fn)!r} could not be pickled to send it to a worker: "
                f"{type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            future.set_exception(error)
            return future
        with self._changed:
            if self._closed:
                raise ValueError("the pool is closed; make a new pool")
            task_id = next(self._ids)
            self._queue.append(_Task(task_id, future, (task_id, *item_blobs)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._drive, name=self._name, daemon=True)
                self._thread.start()
            else:
                self._changed.notify()
        return future

    def _pickled_function(self, fn: Callable) -> bytes:
        """``fn`` pickled, kept while it is among the last few functions submitted: for good when
        pickled by reference (a module's function: its pickle is its name), until the next chunk is
        cut when pickled by value (a lambda, a function of ``__main__``): its globals may change,
        and each chunk carries them as they were when it was cut, as ``ProcessPoolExecutor``
        pickles a call when it sends it."""
        kept = self._functions.get(id(fn))
        if kept is not None and kept[0] is fn and kept[2] in (None, self._cuts):
            return kept[1]
        cuts = self._cuts
        blob = pickling.dumps(fn)
        if isinstance(fn, (types.FunctionType, types.BuiltinFunctionType)):
            if len(self._functions) >= _FUNCTIONS_KEPT:
                self._functions.pop(next(iter(self._functions)), None)
            self._functions[id(fn)] = (fn, blob, None if pickling.by_reference(blob) else cuts)
        return blob

    @property
    def running(self) -> bool:
        """Whether the thread that runs single calls is running (calls wait or run)."""
        return self._thread is not None

    def close(self) -> None:
        """Take no more calls; those queued still run."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def cancel_queued(self) -> None:
        """Cancel the calls that have not been sent to a worker yet."""
        with self._changed:
            for task in self._queue:
                if not task.started:
                    task.future.cancel()

    def join(self, timeout: float | None = None) -> None:
        """Wait until every call has ended and the thread has stopped."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the feed: read by the call's thread --------------------------------------------------

    def available(self) -> int:
        return len(self._queue)

    def take(self, most: int) -> list:
        items = []
        with self._changed:
            self._cuts += 1
            while self._queue and len(items) < most:
                task = self._queue.popleft()
                if not task.started:
                    if not task.future.set_running_or_notify_cancel():
                        continue  # cancelled while it waited: its work is gone
                    task.started = True
                task.index = self._next_index
                self._next_index += 1
                self._running[task.id] = task
                items.append(task.item)
        return items

    def wait(self) -> bool:
        deadline = time.monotonic() + IDLE_SECONDS
        with self._changed:
            while not self._queue:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    @property
    def done(self) -> bool:
        return self._closed and not self._queue

    # -- the thread ---------------------------------------------------------------------------

    def _drive(self) -> None:
        while True:
            self._next_index = 0
            try:
                for outcomes in self._run_call(run_task, self):
                    self._settle(outcomes)
            except BaseException as exc:
                self._call_ended_by(exc)
            with self._changed:
                if not self._queue:
                    self._thread = None
                    break
        self._on_stop()

    def _settle(self, outcomes: list) -> None:
        """Settle the futures of one chunk's calls (a call sent again after a loss may come back twice)."""
        with self._changed:
            settled = [(self._running.pop(task_id, None), ok, value) for task_id, ok, value in outcomes]
        for task, ok, value in settled:
            if task is None:
                continue
            if ok:
                task.future.set_result(value)
            else:
                task.future.set_exception(remote_exception(value, "the task"))

    def _call_ended_by(self, error: BaseException) -> None:
        """The call running the tasks raised: fail the tasks it is about, send the others again.

        A ``WorkerLostError`` names the items it lost; any other error (the cluster is gone, it
        has no workers, the pool was terminated) fails every task in flight, or, if none was,
        every task queued, so the queue never spins on a pool that cannot run anything.
        """
        lost_items = getattr(error, "items", None)
        with self._changed:
            running = sorted(self._running.values(), key=lambda task: task.index)
            self._running.clear()
            if lost_items:
                failed = [task for task in running if task.index in lost_items]
                self._queue.extendleft(reversed([task for task in running if task.index not in lost_items]))
            elif running:
                failed = running
            else:
                failed = [task for task in self._queue if task.started or task.future.set_running_or_notify_cancel()]
                self._queue.clear()
        if not isinstance(error, Exception):
            error = RuntimeError(f"the call running tasks ended with {type(error).__name__}: {error}")
        log.debug("%d tasks failed with %s: %s", len(failed), type(error).__name__, error)
        for task in failed:
            task.future.set_exception(error)
