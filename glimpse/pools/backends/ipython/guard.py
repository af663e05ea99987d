"""Run a command as a child and end its whole process group when the guard's parent goes away.

``python -m glimpse.pools.backends.ipython.guard CMD [ARGS...]`` wraps the controller and engines of
an ipyparallel cluster that a pool starts: ipyparallel launches each in its own session and
never watches its launcher, so without the guard a launcher killed by SIGKILL leaves them
running. The guard forwards SIGTERM, SIGINT and SIGHUP to the child and exits with its status;
if the guard itself is killed, the child gets SIGKILL (Linux's parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

_POLL_SECONDS = 0.5
_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    """Run ``argv`` until it exits or the guard's parent does; return the child's exit status."""
    if not argv:
        print("usage: python -m glimpse.pools.backends.ipython.guard CMD [ARGS...]", file=sys.stderr)
        return 2
    parent = os.getppid()
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: _forward(child, signum))
    code = None
    while code is None:
        try:
            code = child.wait(timeout=_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                _forward(child, signal.SIGTERM)
                code = _wait_or_kill(child)
    _end_group_leftovers()
    return 128 - code if code < 0 else code


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the guard dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _forward(child: subprocess.Popen, signum: int) -> None:
    if child.poll() is None:
        child.send_signal(signum)


def _wait_or_kill(child: subprocess.Popen) -> int:
    try:
        return child.wait(timeout=_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def _end_group_leftovers() -> None:
    """End what the child left in this process group (the controller's scheduler processes)."""
    if os.getpgid(0) != os.getpid():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_SECONDS
    while _others_in_group() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _others_in_group():
        _kill(pid, signal.SIGKILL)


def _others_in_group() -> list[int]:
    """Live processes of the guard's process group other than the guard (Linux /proc)."""
    me = os.getpid()
    others = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == me:
            others.append(int(name))
    return others


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
