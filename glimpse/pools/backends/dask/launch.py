"""How ``LaunchBroker`` and ``LaunchWorker`` run Dask's own programs across machines: the address a
worker listens on, the settings that decide how fast a silent machine is noticed, and workers that
start again after losing their scheduler."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import dask

from glimpse.pools.backends.dask import compat
from glimpse.pools.cluster.reachability import tcp_answers
from glimpse.pools.contract.watch import silence_timeout
from glimpse.pools.thread_caps import missing_caps

log = logging.getLogger(__name__)

#: Dask's setting for how long a connection may go unanswered before it is dropped (default 30 s).
TCP_TIMEOUT_VARIABLE = "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP"
#: Dask refuses a TCP timeout shorter than this (it spreads ten keepalive probes over it).
_SHORTEST_TCP_TIMEOUT = 11
_RESTART_PAUSE_SECONDS = 1.0
#: ``dask worker``'s exit code when its workers could not reach the scheduler in time.
_FAILED_TO_START = 1


def engine_environment() -> dict[str, str]:
    """The environment for a scheduler or workers we start: Dask drops a connection that has been
    silent for ``$GLIMPSE_SILENCE_TIMEOUT`` seconds (unless ``$DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP``
    says otherwise), so a silent machine is noticed by the one setting that decides a silent head."""
    env = dict(os.environ)
    seconds = max(_SHORTEST_TCP_TIMEOUT, round(silence_timeout()))
    env.setdefault(TCP_TIMEOUT_VARIABLE, f"{seconds}s")
    return env


def nanny_thread_caps(workers_here: int) -> dict[str, str]:
    """The thread caps (see ``glimpse.pools.thread_caps``) that neither the user nor Dask's nanny sets:
    the nanny sets ``distributed.nanny.pre-spawn-environ`` (OMP, MKL and OpenBLAS at 1) in each
    worker process it starts, keeping a variable the user set."""
    set_by_dask = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    return {name: value for name, value in missing_caps(os.environ, workers_here).items() if name not in set_by_dask}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) means this machine only."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host.strip("[]"))).is_loopback
    except (OSError, ValueError):
        return False


def address_reaching(scheduler: str) -> str:
    """This machine's address on the interface that reaches ``scheduler`` (``tcp://HOST:PORT``):
    127.0.0.1 for a scheduler on loopback. A ``ValueError`` naming ``--host`` if none does."""
    location = scheduler.split("://", 1)[-1].rstrip("/")
    host, _, port = location.rpartition(":")
    host = host.strip("[]")
    if is_loopback(host):
        return "127.0.0.1"
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, int(port or 0), type=socket.SOCK_DGRAM)[0]
        # Connecting a UDP socket sends nothing; it only picks the route, and so the local address.
        with socket.socket(family, kind, proto) as probe:
            probe.connect(sockaddr)
            return probe.getsockname()[0]
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot tell which address of this machine reaches the scheduler at {scheduler} ({exc}): "
            "pass --host <this machine's address that the scheduler and the other workers reach>"
        ) from None


def run_workers(command: list[str], scheduler: str, workers_here: int) -> int:
    """Run ``dask worker`` (``command``, ``workers_here`` worker processes) until it exits on its own
    or is stopped; return its exit code.

    Dask's workers close for good when their connection to the scheduler breaks (a machine that
    went silent long enough, a scheduler restarted); then they are started again once the
    scheduler answers (and again if they then fail to reach it in time). Workers retired by the
    scheduler (``KillWorkers``) are not.
    """
    env = {**engine_environment(), **nanny_thread_caps(workers_here)}
    signal.signal(signal.SIGTERM, _interrupt)
    restarting = False
    while True:
        code, lost_scheduler, stopped = _run_once(command, env)
        if stopped or not (lost_scheduler or (restarting and code == _FAILED_TO_START)):
            return code
        restarting = True
        log.warning(
            "the Dask workers lost their connection to the scheduler at %s; starting them again once it answers",
            scheduler,
        )
        try:
            while not tcp_answers(scheduler):
                time.sleep(_RESTART_PAUSE_SECONDS)
        except KeyboardInterrupt:
            return 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_once(command: list[str], env: dict) -> tuple[int, bool, bool]:
    """Run ``command`` once, passing its output on; its exit code, whether a worker closed because
    it lost the scheduler, and whether Ctrl-C or SIGTERM stopped it (then after it has closed)."""
    lost = stopping = False
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    while True:
        try:
            for line in process.stderr:
                sys.stderr.write(line)
                sys.stderr.flush()
                lost = lost or compat.closed_for_lost_scheduler(line)
            return process.wait(), lost, stopping
        except KeyboardInterrupt:
            # Its output still comes through this process: keep passing it on while it closes.
            stopping = True
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
