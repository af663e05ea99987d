"""Starting engine processes for tests in their own process group, and ending them by its id.

Every group is also registered with a small reaper process, which ends them all when the test
session's process goes away, even by SIGKILL (a crashed session leaves no engine behind).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_REAPER = """
import os, signal, sys, time
groups = set()
for line in sys.stdin:  # ends when the test session's process is gone, however it ended
    group = int(line)
    if group > 0:
        groups.add(group)
    else:
        groups.discard(-group)  # ended by the test: its id may be reused by then
for sig in (signal.SIGTERM, signal.SIGKILL):
    for group in groups:
        try:
            os.killpg(group, sig)
        except OSError:
            pass
    time.sleep(2)
"""
_reaper: subprocess.Popen | None = None


def start_process(args: list[str], log_path: Path, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start ``args`` in a new session (its own process group), output to ``log_path``."""
    log = open(log_path, "ab")
    process = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
        start_new_session=True,
    )
    _register_with_reaper(process.pid)
    return process


def _register_with_reaper(pgid: int) -> None:
    """Tell the reaper about a group (a negative id: the group has ended)."""
    global _reaper
    if _reaper is None or _reaper.poll() is not None:
        _reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER], stdin=subprocess.PIPE, text=True, start_new_session=True
        )
    _reaper.stdin.write(f"{pgid}\n")
    _reaper.stdin.flush()


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it after ``grace`` seconds."""
    pgid = process.pid
    _signal_group(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=grace)
    _register_with_reaper(-pgid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen | None = None, log_path: Path | None = None
) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``; fail with the log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    log = log_path.read_text(errors="replace")[-4000:] if log_path and log_path.exists() else ""
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout}s\n{log}")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_members(pgids) -> list[str]:
    """``pid command`` of every process still in one of the process groups ``pgids``."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(process.pid) in pgids:
                found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])}")
        except (ProcessLookupError, psutil.Error):
            continue
    return found
