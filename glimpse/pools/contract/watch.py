"""Watching one call from the caller's side: the cluster's size as it changes, and its health when
nothing finishes, so a call follows a growing cluster and never waits in silence."""

from __future__ import annotations

import logging
import os
import time

from glimpse.pools.contract.backend import Backend, ClusterLost
from glimpse.pools.errors import NoWorkersError

log = logging.getLogger(__name__)

#: How long no chunk may finish before the cluster's health is checked (and then how often).
HEALTH_SECONDS = 5.0
#: How often a call re-reads how many workers the cluster has, to size its window and chunks.
RESIZE_SECONDS = 2.0
NO_WORKERS_WARNING_SECONDS = 10.0
NO_WORKERS_VARIABLE = "GLIMPSE_NO_WORKERS_TIMEOUT"
DEFAULT_NO_WORKERS_TIMEOUT = 300.0
SILENCE_VARIABLE = "GLIMPSE_SILENCE_TIMEOUT"
#: A head silent this long is lost; a shorter silence is a blip the call rides out.
DEFAULT_SILENCE_TIMEOUT = 25.0
#: How often a silent head is probed again.
SILENT_RECHECK_SECONDS = 2.0


def no_workers_timeout() -> float:
    """``$GLIMPSE_NO_WORKERS_TIMEOUT``: seconds a call waits with no worker before ``NoWorkersError``
    (default 300; 0 waits forever, as Dask does)."""
    return _seconds(NO_WORKERS_VARIABLE, DEFAULT_NO_WORKERS_TIMEOUT, "0 (wait forever) or more")


def silence_timeout() -> float:
    """``$GLIMPSE_SILENCE_TIMEOUT``: seconds a cluster's head (scheduler, head node, controller,
    broker, job server) may not answer before a call ends with ``ClusterLostError`` (default 25).

    A shorter silence (a network blip, a switch that reboots) does not end the call; a head that
    refuses connections is lost at once. Backends that watch their own connections (heartbeats)
    use the same number, so there is one line between a blip and a loss.
    """
    return _seconds(SILENCE_VARIABLE, DEFAULT_SILENCE_TIMEOUT, "more than 0", minimum=1e-3)


def _seconds(variable: str, default: float, allowed: str, minimum: float = 0.0) -> float:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"${variable} must be a number of seconds, not {text!r}") from None
    if seconds < minimum:
        raise ValueError(f"${variable} must be {allowed}, not {text!r}")
    return seconds


class CallWatch:
    """When a call should re-read the cluster's size, and what to do when nothing finishes."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self._timeout = no_workers_timeout()
        self._silence_limit = silence_timeout()
        now = time.monotonic()
        self._progress_at = self._checked_at = self._resized_at = self._heard_at = now
        self._warned = False

    def progress(self) -> None:
        """A chunk finished."""
        self._progress_at = self._heard_at = time.monotonic()
        self._warned = False

    def resize_due(self) -> bool:
        """Whether it is time to re-read the cluster's size (at most every :data:`RESIZE_SECONDS`)."""
        now = time.monotonic()
        if now - self._resized_at < RESIZE_SECONDS:
            return False
        self._resized_at = now
        return True

    def check(self) -> None:
        """If nothing finished for a while, ask the backend how the cluster is.

        Raises ``ClusterLost`` when it is gone or has been silent for ``$GLIMPSE_SILENCE_TIMEOUT``
        seconds, and ``NoWorkersError`` when it has had no worker for ``$GLIMPSE_NO_WORKERS_TIMEOUT``
        seconds (after a warning at 10 s).
        """
        now = time.monotonic()
        every = SILENT_RECHECK_SECONDS if self._heard_at < self._checked_at else HEALTH_SECONDS
        if now - self._progress_at < HEALTH_SECONDS or now - self._checked_at < every:
            return
        self._checked_at = now
        health = self._backend.health()
        if health is None:
            return
        if health.lost:
            raise ClusterLost(health.lost)
        now = time.monotonic()
        if health.silent:
            silent_for, limit = now - self._heard_at, self._silence_limit
            if silent_for >= limit:
                raise ClusterLost(f"{health.silent} for {silent_for:.0f} s (${SILENCE_VARIABLE}={limit:g})")
            log.warning("%s for %.0f s; the call waits up to %g s for it", health.silent, silent_for, limit)
            return
        self._heard_at = now
        if health.workers > 0:
            return
        waited = now - self._progress_at
        where = f"the cluster at {health.address}" if health.address else "the cluster"
        hint = f"; start one with `{health.start_workers}`" if health.start_workers else ""
        if health.waiting:
            hint = f": {health.waiting}{hint}"
        if not self._warned and waited >= NO_WORKERS_WARNING_SECONDS:
            self._warned = True
            limit = f"up to {self._timeout:g} s" if self._timeout else "until one connects"
            log.warning("no worker is connected to %s (%.0f s so far); the call waits %s%s", where, waited, limit, hint)
        if self._timeout and waited >= self._timeout:
            limit = f"${NO_WORKERS_VARIABLE}={self._timeout:g}"
            raise NoWorkersError(f"no worker was connected to {where} for {waited:.0f} s ({limit}){hint}")
