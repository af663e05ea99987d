"""Running gearmand, the C job server of gearman (Debian package ``gearman-job-server``), in the foreground.

gearmand retries ``bind()`` forever without a word when its port is taken, and may already run
on this machine: a started server counts only once its admin ``getpid`` answers with the pid
this process started. It runs in this process's group, so ending the group ends it. It probes
idle connections (TCP keepalive), so a worker whose machine went silent is dropped and its job
failed back to the pool after ``protocol.peer_silence_limit()`` seconds (glimpse's own heartbeats
usually find it sooner, see ``backend.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

from glimpse.pools.backends.gearman import protocol as g

INSTALL = "sudo apt-get install -y --no-install-recommends gearman-job-server"
_STARTUP_SECONDS = 10.0
_PORT_TRIES = 5


class GearmandMissing(ImportError):
    """gearmand is not installed; the message gives the command that installs it."""


def find_gearmand() -> str:
    """The path of gearmand: ``$GLIMPSE_GEARMAND``, else on the PATH or in /usr/sbin (not on a normal user's PATH)."""
    chosen = os.environ.get("GLIMPSE_GEARMAND")
    if chosen:
        path = chosen if os.access(chosen, os.X_OK) else None
    else:
        path = shutil.which("gearmand") or next(
            (p for p in ("/usr/sbin/gearmand", "/usr/local/sbin/gearmand") if os.access(p, os.X_OK)), None
        )
    if path is None:
        named = f" ($GLIMPSE_GEARMAND names {chosen}, which is not an executable)" if chosen else ""
        raise GearmandMissing(
            f"the gearman cluster type needs gearmand, the gearman job server, which is not installed{named}: "
            f"`{INSTALL}` "
            "(Debian/Ubuntu; other systems: the gearmand package of their package manager)"
        )
    return path


def run_gearmand(host: str, port: int, on_ready: Callable[[str], None]) -> int:
    """Run gearmand on ``host:port`` (0: a free port) until it exits or this process is interrupted.

    ``on_ready`` gets ``host:port`` once gearmand answers there; returns gearmand's exit code.
    """
    gearmand = find_gearmand()
    with tempfile.TemporaryDirectory(prefix="glimpse-gearmand-") as folder:
        for _ in range(_PORT_TRIES if port == 0 else 1):
            chosen = port or _free_port(host)
            process = subprocess.Popen(
                [gearmand, f"--listen={host}", f"--port={chosen}", "--log-file=none", "--threads=2"]
                + ["--job-retries=1", f"--pid-file={os.path.join(folder, 'gearmand.pid')}", *keepalive_options()],
                stdin=subprocess.DEVNULL,
            )
            try:
                if _answers_with_pid((host, chosen), process):
                    on_ready(f"{host}:{chosen}")
                    return process.wait()
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        raise OSError(
            f"gearmand did not start listening on {host}:{port or chosen} within {_STARTUP_SECONDS:g} s "
            "(is the port taken? gearmand retries in silence)"
        )


def keepalive_options() -> list[str]:
    """gearmand's options that drop a connection whose peer is silent for ``protocol.peer_silence_limit()``."""
    idle, interval = g.KEEPALIVE_IDLE_SECONDS, g.KEEPALIVE_INTERVAL_SECONDS
    count = max(1, int((g.peer_silence_limit() - idle) // interval))
    return ["--keepalive", f"--keepalive-idle={idle}", f"--keepalive-interval={interval}", f"--keepalive-count={count}"]


def _answers_with_pid(server: tuple[str, int], process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            answer = g.admin(server, "getpid", timeout=1.0)
        except OSError:
            time.sleep(0.05)
            continue
        if answer and answer[0].strip().removeprefix("OK ") == str(process.pid):
            return True
        return False  # another gearmand answers on that port
    return False


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
