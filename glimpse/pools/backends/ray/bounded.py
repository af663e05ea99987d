"""Ray calls the caller waits for only so long: Ray Client blocks in ``ray.wait`` and
``ray.cluster_resources`` while the head node is silent, and ``ray.shutdown`` blocks for minutes
when the head does not answer; the caller must stay free to notice and say so."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

log = logging.getLogger(__name__)


class TookTooLong(Exception):
    """A bounded call did not return in time; it goes on in the background."""


class BoundedCalls:
    """Runs calls one after another in a daemon thread; :meth:`run` waits up to a bound for each.

    While a call is stuck, the next :meth:`run` waits for that one instead of queueing another
    behind it (a head silent for a minute would otherwise pile up a hundred waits).
    """

    def __init__(self, name: str):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stuck: Future | None = None
        self._stuck_at = 0.0

    def stuck_for(self) -> float:
        """How long the call that did not return in time has been running (0: none is stuck)."""
        if self._stuck is None or self._stuck.done():
            return 0.0
        return time.monotonic() - self._stuck_at

    def run(self, function: Callable[[], Any], bound: float) -> Any:
        """``function()``'s result, or :class:`TookTooLong` after ``bound`` seconds."""
        if self._stuck is not None:
            try:
                self._stuck.exception(timeout=bound)
            except FutureTimeout:
                raise TookTooLong from None
            self._stuck = None
        future: Future = Future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((function, future))
        try:
            return future.result(timeout=bound)
        except FutureTimeout:
            self._stuck, self._stuck_at = future, time.monotonic() - bound
            raise TookTooLong from None

    def _serve(self) -> None:
        while True:
            function, future = self._jobs.get()
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)


def in_background(function: Callable[[], Any], name: str) -> threading.Thread:
    """Start ``function()`` in a daemon thread that nobody waits for (its failure is logged)."""

    def run() -> None:
        try:
            function()
        except Exception as exc:
            log.debug("%s failed: %s: %s", name, type(exc).__name__, exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
