"""An ipyparallel cluster on this machine owned by one pool: loopback only, self-healing, ended on close.

The controller and every engine run under :mod:`glimpse.pools.backends.ipython.guard`, so they end
with the process that started them even if it is killed. An engine that dies (a function that
calls ``os._exit``, a segfault) is replaced, within a budget, so the pool keeps its size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections import deque

from glimpse.pools.backends.ipython import compat
from glimpse.pools.backends.ipython.connection import CONTROLLER_OPTIONS
from glimpse.pools.subprocesses import signal_group
from glimpse.pools.thread_caps import missing_caps

log = logging.getLogger(__name__)

#: How long a new cluster may take to register its engines.
START_SECONDS = 90.0
_GUARD = [sys.executable, "-m", "glimpse.pools.backends.ipython.guard"]
_CHECK_SECONDS = 1.0
_STOP_GRACE_SECONDS = 5.0
_REPLACEMENTS_PER_MINUTE_PER_ENGINE = 5


class EmbeddedIPythonCluster:
    """A controller on 127.0.0.1 and ``engines`` engines, in a private profile directory."""

    def __init__(self, engines: int | None = None):
        import ipyparallel

        self.engines = engines or os.cpu_count() or 1
        self.profile_dir = tempfile.mkdtemp(prefix="glimpse-ipython-")
        config = compat.guarded_launch_config(_GUARD)
        config.LocalEngineSetLauncher.environment = missing_caps(os.environ, self.engines)
        self._cluster = ipyparallel.Cluster(
            profile_dir=self.profile_dir,
            n=self.engines,
            controller_ip="127.0.0.1",
            controller_args=list(CONTROLLER_OPTIONS),
            shutdown_atexit=False,
            log_level=logging.WARNING,
            config=config,
        )
        self.cluster_id = self._cluster.cluster_id
        self._lock = threading.Lock()
        self._last_check = 0.0
        self._replaced: deque[float] = deque()
        self._finalizer = weakref.finalize(self, _stop, self._cluster, self.profile_dir)

    def start(self):
        """Start the controller and engines; return a client once every engine has registered."""
        try:
            client = self._cluster.start_and_connect_sync(n=self.engines)
        except BaseException:
            self.stop()
            raise
        client.wait_for_engines(self.engines, timeout=START_SECONDS)
        return client

    def replace_lost_engines(self, force: bool = False) -> None:
        """Start an engine for each engine process that has exited (checked at most once a second)."""
        now = time.monotonic()
        if not force and now - self._last_check < _CHECK_SECONDS:
            return
        with self._lock:
            self._last_check = now
            missing = self.engines - sum(_alive(process) for process in compat.engine_processes(self._cluster))
            while self._replaced and now - self._replaced[0] > 60:
                self._replaced.popleft()
            budget = _REPLACEMENTS_PER_MINUTE_PER_ENGINE * self.engines - len(self._replaced)
            if missing <= 0 or not self._finalizer.alive:
                return
            if budget < missing:
                log.warning("not replacing %d lost ipyparallel engines: too many died in the last minute", missing)
                return
            log.warning("starting %d ipyparallel engine(s) to replace lost ones", missing)
            self._replaced.extend([now] * missing)
            self._cluster.start_engines_sync(missing)

    def stop(self) -> None:
        """End the engines and the controller by process group, and remove the profile directory."""
        self._finalizer()


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(cluster, profile_dir: str) -> None:
    """End the controller's and every engine's process group (each guard leads one), then the files."""
    processes = compat.controller_and_engine_processes(cluster)
    groups = [process.pid for process in processes]
    # Each engine's nanny runs in a session of its own: end it as a descendant of the guard.
    for process in _descendants(processes):
        with contextlib.suppress(Exception):
            if os.getpgid(process.pid) not in groups:
                process.terminate()
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    while time.monotonic() < deadline and any(_group_alive(pgid, processes) for pgid in groups):
        time.sleep(0.1)
    _signal_groups(groups, signal.SIGKILL)
    shutil.rmtree(profile_dir, ignore_errors=True)


def _descendants(processes: list) -> list:
    found = []
    for process in processes:
        with contextlib.suppress(Exception):
            found.extend(process.children(recursive=True))
    return found


def _signal_groups(groups: list[int], sig: int) -> None:
    for pgid in groups:
        signal_group(pgid, sig)


def _group_alive(pgid: int, processes: list) -> bool:
    for process in processes:
        if process.pid == pgid:
            with contextlib.suppress(Exception):
                process.wait(0)  # reap our exited child, or the group looks alive as a zombie
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
