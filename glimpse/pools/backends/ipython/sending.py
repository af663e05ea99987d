"""How the IPython backend sends chunks: through ipyparallel's task scheduler, or booked on the
engines of a cluster the pool owns (``booking``). An :class:`IPythonBackend` holds one of the two.

Both send a chunk as ``runner(*task.args)`` and hand its reply's future to ``started(task,
future)``; both run a function on one engine ahead of the chunks sent to it after (``call_on``),
which is how a call's function reaches an engine before its chunks do.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Collection

from glimpse.pools.backends.ipython import compat
from glimpse.pools.backends.ipython.booking import EngineBooking

Started = Callable[[object, concurrent.futures.Future], None]


class ThroughScheduler:
    """Chunks as tasks of a load-balanced view: ipyparallel's task scheduler picks each one's
    engine, and balances them among every client of the cluster."""

    def __init__(self, client, runner, started: Started):
        self._view = client.load_balanced_view()
        self._runner, self._started = runner, started

    def send(self, task) -> None:
        self._started(task, compat.send_task(self._view, self._runner, task.args))

    def call_on(self, engine: int, func: Callable, args: tuple) -> None:
        with self._view.temp_flags(targets=[engine]):
            self._view.apply_async(func, *args)

    def wait_for_any(self, futures: Collection, timeout: float) -> set:
        return concurrent.futures.wait(futures, timeout, return_when=concurrent.futures.FIRST_COMPLETED)[0]

    def dispatch(self) -> None:
        """Nothing waits in the caller: the task scheduler holds what engines have no room for."""

    def forget(self, task) -> None:
        """Nothing is held for a task whose outcome has been read."""

    def drop(self, tasks: Collection) -> None:
        """Nothing waits to be sent."""

    def clear(self) -> None:
        """Nothing waits to be sent."""


class BookedEngines:
    """Chunks sent straight to the engines' queues, booked by the pool (``booking``), past the
    task scheduler: for a cluster the pool started, to which no one else sends work.

    ``before_sending(task, engine)`` runs before a chunk goes to an engine (the backend pushes the
    call's function there if the engine lacks it).
    """

    def __init__(self, client, runner, started: Started, before_sending: Callable[[object, int], None]):
        self._direct_view = client.direct_view()
        self._runner, self._started, self._before_sending = runner, started, before_sending
        self._booking = EngineBooking(lambda: client.ids, self._send_to)

    def send(self, task) -> None:
        self._booking.add(task)  # sent by _send_to when an engine has room

    def _send_to(self, task, engine: int) -> None:
        self._before_sending(task, engine)
        self._started(task, compat.send_direct(self._direct_view, engine, self._runner, task.args))
        task.engine = engine

    def call_on(self, engine: int, func: Callable, args: tuple) -> None:
        with contextlib.suppress(KeyError):  # it unregistered just now
            compat.send_direct(self._direct_view, engine, func, args)

    def wait_for_any(self, futures: Collection, timeout: float) -> set:
        """Those of ``futures`` done within ``timeout``. Booked chunks wait in the caller for room,
        so whichever chunk ends, of this call or a cancelled one, sends more."""
        deadline = time.monotonic() + timeout
        while True:
            self._booking.dispatch()
            watched = set(futures)
            if self._booking.waiting:
                watched.update(task.decoded for task in self._booking.held())
            done, _ = concurrent.futures.wait(
                watched, max(0.0, deadline - time.monotonic()), return_when=concurrent.futures.FIRST_COMPLETED
            )
            mine = {future for future in done if future in futures}
            if mine or time.monotonic() >= deadline:
                return mine

    def dispatch(self) -> None:
        self._booking.dispatch()

    def forget(self, task) -> None:
        self._booking.forget(task)

    def drop(self, tasks: Collection) -> None:
        self._booking.drop(tasks)

    def clear(self) -> None:
        self._booking.clear()
