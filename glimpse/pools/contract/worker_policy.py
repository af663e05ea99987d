"""Runs on the workers: a call's policy for items that fail or hang, and the pool's initializer.

A call with ``timeout=``, ``retries=``, ``errors=`` other than ``"raise"``, or on a pool with an
``initializer``, sends its function wrapped in a :class:`Guarded`. ``worker_runner`` calls it on
each item as it would the function, or, for a call with a timeout, hands it the chunk's items
(:meth:`Guarded.run_items`). Like ``worker_runner``, this imports only the standard library and
cloudpickle.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from typing import Any

from glimpse.pools.errors import InitializerError, RemoteError, TaskTimeoutError


class Failure:
    """What ``errors="return"`` delivers in place of an item whose function raised (or timed out).

    ``exception`` is the exception (a :class:`~glimpse.pools.TaskTimeoutError` for an item that
    ran too long), ``traceback`` the worker's formatted traceback, ``item`` the input item,
    ``index`` its position in the input, ``attempts`` how many times it ran, ``where`` the worker.
    With ``errors="skip"`` the same objects are in the call's ``failures`` list instead.
    """

    __slots__ = ("exception", "traceback", "item", "index", "attempts", "where")

    def __init__(self, exception: BaseException, traceback: str, item: Any, index: int, attempts: int, where: str):
        self.exception, self.traceback, self.item = exception, traceback, item
        self.index, self.attempts, self.where = index, attempts, where

    def __reduce__(self):
        return Failure, (self.exception, self.traceback, self.item, self.index, self.attempts, self.where)

    def __repr__(self) -> str:
        return f"Failure(item #{self.index}: {type(self.exception).__name__}: {self.exception})"

    def reraise(self):
        """Raise the exception again, with the worker's traceback chained, as ``errors="raise"`` would."""
        from glimpse.pools.errors import RemoteTraceback

        raise self.exception from RemoteTraceback(self.traceback)


class WorkerSetup:
    """A pool's ``initializer(*initargs)``, run once per worker process before its first item."""

    __slots__ = ("initializer", "initargs", "token")

    def __init__(self, initializer, initargs: tuple, token: str):
        self.initializer, self.initargs, self.token = initializer, tuple(initargs), token

    def __reduce__(self):
        return WorkerSetup, (self.initializer, self.initargs, self.token)


_worker_state: dict[str, Any] = {}


def worker_state() -> dict[str, Any]:
    """A dict of this worker process, for what a pool's initializer loads (a model, a table) and its
    items use.

    A function defined in your script (``__main__``) travels by value, and each call unpickles its
    own copy of the globals it uses: a global that an initializer sets is not the one a later call
    reads. This dict is the same for every call in the process, on every engine.
    """
    return _worker_state


_setups_done: dict[str, InitializerError | None] = {}
_setup_lock = threading.Lock()
_abandoned_threads = 0


def abandoned_work() -> bool:
    """Whether an item that timed out left a thread running in this process: a worker process
    glimpse owns is replaced once it has sent its chunk's outcome."""
    return _abandoned_threads > 0


def worker_where() -> str:
    """How a failure names the worker process it happened in."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def parse_where(where: str) -> tuple[int | None, str]:
    """The pid and host of a :func:`worker_where` text (pid ``None`` if it is not one)."""
    pid, _, host = where.removeprefix("pid ").partition(" on ")
    return (int(pid) if pid.isdigit() else None), host


class Guarded:
    """The user's function as a call's policy runs it on the workers (pickled as the call's function)."""

    __slots__ = ("func", "timeout", "retries", "retry_on", "keep_failures", "setup")

    def __init__(self, func, timeout=None, retries=0, retry_on=(), keep_failures=False, setup=None):
        self.func, self.timeout, self.retries, self.retry_on = func, timeout, retries, tuple(retry_on)
        self.keep_failures, self.setup = keep_failures, setup

    def __reduce__(self):
        return Guarded, (self.func, self.timeout, self.retries, self.retry_on, self.keep_failures, self.setup)

    def __call__(self, item):
        """One item, without a timeout (the ``submit`` path and pools without one)."""
        if self.setup is not None:
            _ensure_setup(self.setup)
        return self._attempts(item, -1)

    def run_items(self, items, start: int, values: list) -> None:
        """Run a chunk's items, each on the clock of the call's timeout, appending their values to
        ``values``; an exception raised here ends the chunk at item ``start + len(values)``."""
        if self.setup is not None:
            _ensure_setup(self.setup)
        position = 0
        items = list(items)
        while position < len(items):
            position = self._run_until_timeout(items, start, position, values)

    def _attempts(self, item, index: int):
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.func(item)
            except Exception as exc:
                if attempt <= self.retries and isinstance(exc, self.retry_on):
                    continue
                if not self.keep_failures:
                    raise
                return _failure(exc, item, index, attempt)

    def _run_until_timeout(self, items: list, start: int, position: int, values: list) -> int:
        """Run items from ``position`` in a thread; return where to go on after one timed out (or the end)."""
        global _abandoned_threads
        runner = _ItemRunner(self, items, start, position, values)
        runner.start()
        while True:
            index, began = runner.current
            if runner.finished.wait(max(0.0, began + self.timeout - time.monotonic())):
                if runner.error is not None:
                    raise runner.error
                return len(items)
            if not runner.abandon_if_still(index, began):
                continue
            _abandoned_threads += 1
            item = items[index - start]
            named, shown = self.func.input_of(item) if hasattr(self.func, "input_of") else (index, item)
            error = TaskTimeoutError(
                f"item #{named} ran longer than timeout={self.timeout:g} s in worker pid {os.getpid()} on "
                f"{socket.gethostname()}; its thread was left behind (item was {short_repr(shown)})"
            )
            if not self.keep_failures:
                raise error
            values.append(_failure(error, item, index, 1))
            return index - start + 1


class _ItemRunner(threading.Thread):
    """Runs a chunk's items from one position on; the chunk's own thread watches each item's clock."""

    def __init__(self, guarded: Guarded, items: list, start: int, position: int, values: list):
        super().__init__(name="glimpse-item", daemon=True)
        self.guarded, self.items, self.start_index, self.position, self.values = guarded, items, start, position, values
        self.current = (start + position, time.monotonic())
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        try:
            for offset in range(self.position, len(self.items)):
                index = self.start_index + offset
                value = self.guarded._attempts(self.items[offset], index)
                with self._lock:
                    if self._abandoned:
                        return
                    self.values.append(value)
                    self.current = (index + 1, time.monotonic())
        except BaseException as exc:
            with self._lock:
                if not self._abandoned:
                    self.error = exc
        self.finished.set()

    def abandon_if_still(self, index: int, began: float) -> bool:
        """Give up this runner if it is still on the item ``index`` it began at ``began``."""
        with self._lock:
            if self.finished.is_set() or self.current != (index, began):
                return False
            self._abandoned = True
            return True


def _ensure_setup(setup: WorkerSetup) -> None:
    if setup.token not in _setups_done:
        with _setup_lock:
            if setup.token not in _setups_done:
                _setups_done[setup.token] = run_initializer(setup.initializer, setup.initargs)
    error = _setups_done[setup.token]
    if error is not None:
        raise error


def run_initializer(initializer, initargs: tuple) -> InitializerError | None:
    """Run a pool's initializer in this worker process; what it raised, as an :class:`InitializerError`."""
    try:
        initializer(*initargs)
    except BaseException as exc:
        name = getattr(initializer, "__qualname__", repr(initializer))
        error = InitializerError(
            f"the pool's initializer {name} raised in worker pid {os.getpid()} on {socket.gethostname()}: "
            f"{type(exc).__name__}: {exc}. Every chunk on this worker fails with this error; fix the initializer "
            "and make a new pool"
        )
        error.__cause__ = exc
        return error
    return None


def _failure(exc: BaseException, item, index: int, attempts: int) -> Failure:
    exc, text = portable_exception(exc)
    return Failure(exc, text, item, index, attempts, worker_where())


def portable_exception(exc: BaseException) -> tuple[BaseException, str]:
    """The exception as it can travel to the caller (a :class:`RemoteError` if it does not survive
    a pickle round trip), without its frames, and its traceback formatted here."""
    import cloudpickle

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:
        exc = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc, text


def short_repr(value, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
