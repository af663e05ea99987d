"""One backend, several calls at once from several threads: one hook at a time.

A backend is written for one thread (see :class:`~glimpse.pools.contract.backend.Backend`).
Calls from several threads (an ``imap`` per thread, ``map_async``, the thread that runs
``submit``'s batches, an asyncio face) share it through :class:`SharedBackend`: each hook runs
under one lock, and while more than one call is open a wait holds it only for a short slice,
so every call's chunks are sent and collected promptly. Backends already keep the chunks of
several calls apart (a call may end early and leave chunks on the workers), by call id.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection, Iterator
from typing import Any

from glimpse.pools.contract.backend import Backend, Call, Chunk, Health

#: How long one call's wait holds the backend while other calls are open.
_SHARED_WAIT_SLICE = 0.01
#: How long ``terminate`` waits for a hook that holds the backend (a chunk running in the caller's
#: process holds it until the chunk ends) before it stops the backend regardless.
_TERMINATE_WAIT_SECONDS = 2.0


class SharedBackend:
    """``backend`` behind a lock (re-entrant: a function run in the caller's thread, as
    SinglecorePool runs them, may use the pool itself)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._lock = threading.RLock()
        self._open_calls = 0
        self._waiting = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)  # plain attributes: serializes, max_attempts, ...

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._waiting += 1
        self._lock.acquire()
        self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def workers(self) -> int:
        with self._locked():
            return self.backend.workers()

    def window(self) -> int:
        with self._locked():
            return self.backend.window()

    def encode(self, items: list):
        return self.backend.encode(items)

    def open_call(self, call: Call) -> None:
        with self._locked():
            self._open_calls += 1
            try:
                self.backend.open_call(call)
            except BaseException:
                self._open_calls -= 1
                raise

    def close_call(self, call: Call) -> None:
        with self._locked():
            self._open_calls -= 1
            self.backend.close_call(call)

    def submit(self, call: Call, chunk: Chunk) -> Any:
        with self._locked():
            return self.backend.submit(call, chunk)

    def wait(self, handles: Collection[Any], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            with self._locked():
                alone = self._open_calls <= 1
                remaining = deadline - time.monotonic()
                done = self.backend.wait(handles, max(0.0, remaining if alone else min(remaining, _SHARED_WAIT_SLICE)))
            if done or deadline - time.monotonic() <= 0:
                return done
            if self._waiting:
                time.sleep(0.0005)  # let the thread waiting for the lock take it

    def outcome(self, handle: Any) -> Any:
        with self._locked():
            return self.backend.outcome(handle)

    def cancel(self, handles: Collection[Any]) -> None:
        with self._locked():
            self.backend.cancel(handles)

    def health(self) -> Health | None:
        with self._locked():
            return self.backend.health()

    def terminate(self) -> None:
        """Stop the backend at once, between two hooks of other threads if they let it."""
        locked = self._lock.acquire(timeout=_TERMINATE_WAIT_SECONDS)
        try:
            self.backend.terminate()
        finally:
            if locked:
                self._lock.release()
