"""Replacement jobs submitted before a worker retires, not after it has gone.

With ``jobs=N``, a worker that reaches its lifetime retires, and adaptive scaling would only then
submit the job that replaces it: the call runs one worker short for as long as that job takes to
be scheduled and to start. The relay watches each worker's age and, ``lead`` seconds before the
earliest its lifetime can end, lets the cluster grow by one job for it; once it has retired, the
cluster is back to ``N``. So a worker's chunks pass to one that is already there, and for those
seconds the pool holds up to one job more per retiring worker.
"""

from __future__ import annotations

import logging
import threading
import time

import dask
from dask.utils import parse_timedelta
from distributed import Client

from glimpse.pools.backends.slurm.lifetime import Lifetime

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0
#: How long before a worker may retire its replacement is submitted, at most: a job's way through
#: the queue and the worker's start in it; never more than a quarter of a lifetime.
LEAD_SECONDS = 30.0


class Relay:
    """Keeps ``adaptive``'s bounds (of ``cluster``) at ``jobs`` plus one for each worker about to retire."""

    def __init__(self, client: Client, cluster, adaptive, jobs: int, lifetime: Lifetime):
        self._client = client
        self._cluster = cluster
        self._adaptive = adaptive
        self._jobs = jobs
        self._due_after = lifetime.seconds - lifetime.stagger - min(LEAD_SECONDS, lifetime.seconds / 4)
        self._first_seen: dict[str, float] = {}
        self._shrink_since: float | None = None
        lingering = dask.config.get("distributed.deploy.lost-worker-timeout")
        self._books_seconds = parse_timedelta(lingering) + 2 * CHECK_SECONDS
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glimpse-slurm-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(CHECK_SECONDS):
            try:
                self.step()
            except Exception as exc:  # a scheduler closing under us: the pool is ending
                log.debug("relay: %s", exc)

    def step(self) -> None:
        """Re-read the workers, and set the cluster's size for those about to retire."""
        workers = set(self._client.scheduler_info(n_workers=-1)["workers"])
        now = time.monotonic()
        self._first_seen = {w: self._first_seen.get(w, now) for w in workers}
        retiring = sum(1 for seen in self._first_seen.values() if now - seen >= self._due_after)
        size = self._jobs + retiring
        if size >= self._adaptive.maximum or len(self._cluster.workers) <= size:
            self._shrink_since = None
        else:
            # A retired worker's job stays on the cluster's books a while (Dask's lost-worker-timeout):
            # shrinking before it has left would make adaptive scaling cancel a replacement still
            # pending in the queue. Jobs still on the books after that are a surplus.
            self._shrink_since = self._shrink_since or now
            if now - self._shrink_since < self._books_seconds:
                return
        if size != self._adaptive.maximum:
            log.info("%d workers retire soon for their jobs' time limit: %d jobs for now", retiring, size)
            self._adaptive.minimum = self._adaptive.maximum = size

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(CHECK_SECONDS * 2)
