"""Child processes glimpse starts on this machine: their environment, their end, and their parent's end.

Workers, brokers and engine wrappers that a pool starts must not outlive it: each watches its
parent and stops when the parent is gone (even after SIGKILL), and the pool ends each by its
process group id.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable


def child_environment() -> dict[str, str]:
    """This process's environment, with ``PYTHONPATH`` set so a child imports what this process imports."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))


def when_orphaned(action: Callable[[], None]) -> None:
    """Run ``action`` in a daemon thread once the process that started this one is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        action()

    threading.Thread(target=watch, name="glimpse-parent-watch", daemon=True).start()


def terminate_self() -> None:
    """Send this process SIGTERM, so its handlers clean up (an ``action`` for :func:`when_orphaned`)."""
    os.kill(os.getpid(), signal.SIGTERM)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group, if it still exists and is ours to signal."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_worker_here(pid: int | None, host: str, command_contains: str) -> bool:
    """SIGKILL the worker process ``pid`` if it runs on this machine (``host``) and its command line
    contains ``command_contains`` (so a pid reused by another program is never hit)."""
    if pid is None or host != socket.gethostname():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if command_contains.encode() not in cmdline.read():
                return False
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True
