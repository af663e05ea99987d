"""``glimpse-cluster --type ipython VERB``: start, inspect and stop an IPython cluster (controller and engines)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from glimpse.pools.backends.ipython import heartbeat
from glimpse.pools.backends.ipython.connection import (
    CONTROLLER_OPTIONS,
    ENVIRONMENT,
    Connection,
    connect,
    unreachable,
)
from glimpse.pools.cluster.verbs import Verb, run_verbs

log = logging.getLogger(__name__)

#: How long PingWorkers waits for each engine's answer.
PING_SECONDS = 10.0


def RunMain(argv: Sequence[str] | None = None) -> int:
    """``glimpse-cluster --type ipython VERB [options]``: start, inspect and stop an IPython cluster."""
    return run_verbs(
        "glimpse-cluster --type ipython",
        "Run and inspect an IPython parallel cluster (controller and engines).",
        VERBS,
        argv,
        _cluster_options,
    )


def _launch_broker(args) -> int:
    connection = _connection(args)
    controller = [sys.executable, "-m", "ipyparallel.controller", *_listen_options(args.host)]
    controller += [*CONTROLLER_OPTIONS, *heartbeat.controller_options()]
    return _run_foreground([[*controller, *_options(connection)]])


def _launch_worker(args) -> int:
    connection = _connection(args)
    if not os.path.exists(connection.engine_file()):
        raise unreachable(connection, f"the engine connection file {connection.engine_file()} does not exist")
    return _run_engines(connection, args.n)


def _ping_workers(args) -> int:
    client = connect(_connection(args), engine_seconds=0)
    try:
        if not client.ids:
            print(f"no engines are registered with the controller at {_connection(args).describe()}")
            return 1
        answers = {engine: client[engine].apply_async(_where_am_i) for engine in client.ids}
        for engine, answer in answers.items():
            try:
                host, pid = answer.get(PING_SECONDS)
                print(f"engine {engine}  host {host}  pid {pid}")
            except Exception as exc:
                print(f"engine {engine}  did not answer within {PING_SECONDS:.0f}s ({type(exc).__name__})")
        return 0
    finally:
        client.close()


def _kill_workers(args) -> int:
    _stop_engines(_connection(args))
    return 0


def _restart_workers(args) -> int:
    connection = _connection(args)
    count = _stop_engines(connection)
    if not count:
        raise unreachable(connection, "no engines are registered, so there are none to restart", engines=True)
    return _run_engines(connection, count)


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb(
        "run a controller in the foreground, keeping no task records (--nodb); it writes the connection "
        "files engines and callers need into the profile's security/ directory, and unregisters an "
        "engine silent for $GLIMPSE_SILENCE_TIMEOUT seconds (default 25)",
        _launch_broker,
        lambda parser: parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="address to listen on and to write into the connection files (default 127.0.0.1: this "
            "machine only); for engines on other machines, this machine's address on their network",
        ),
    ),
    "LaunchWorker": Verb(
        "run N engines connected to the controller, in the foreground",
        _launch_worker,
        lambda parser: parser.add_argument(
            "-n", type=int, default=os.cpu_count() or 1, help="engines (default: cores)"
        ),
    ),
    "PingWorkers": Verb("print each engine's id, host and pid", _ping_workers),
    "KillWorkers": Verb("stop every engine", _kill_workers),
    "RestartWorkers": Verb("stop every engine and run as many new ones here, in the foreground", _restart_workers),
}


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help=f"IPython profile name (default: ${ENVIRONMENT['profile']}, else default)")
    parser.add_argument("--profile-dir", help=f"IPython profile directory (default: ${ENVIRONMENT['profile_dir']})")
    parser.add_argument("--cluster-id", help=f"cluster id within the profile (default: ${ENVIRONMENT['cluster_id']})")


def _connection(args) -> Connection:
    given = Connection(args.profile, args.profile_dir, args.cluster_id)
    if given != Connection():
        return given
    return Connection.from_environment() or given


def _options(connection: Connection) -> list[str]:
    return connection.cli_options() or ["--profile=default"]


def _listen_options(host: str) -> list[str]:
    """Bind every socket of the controller to ``host`` and name it in the connection files."""
    if not host or host in ("0.0.0.0", "*", "::"):
        raise ValueError(
            f"--host must be one address of this machine, not {host!r}: the connection files name it, "
            "and engines and callers connect to it"
        )
    return [f"--ip={host}", f"--location={host}"]


def _run_engines(connection: Connection, count: int) -> int:
    if count < 1:
        raise ValueError(f"-n must be at least 1, not {count}")
    command = [sys.executable, "-m", "ipyparallel.engine", *_options(connection)]
    log.info("running %d engine(s) for %s", count, connection.describe())
    return _run_foreground([command] * count)


def _run_foreground(commands: list[list[str]]) -> int:
    """Run commands in this process group until they all exit; pass SIGTERM and SIGHUP on to them."""
    children = [subprocess.Popen(command) for command in commands]

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        codes = []
        for child in children:
            try:
                codes.append(child.wait())
            except KeyboardInterrupt:
                forward(signal.SIGTERM, None)
                codes.append(child.wait())
        return max((abs(code) for code in codes), default=0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_engines(connection: Connection) -> int:
    client = connect(connection, engine_seconds=0)
    try:
        engines = list(client.ids)
        if engines:
            client.shutdown(targets=engines, block=True)
        print(f"stopped {len(engines)} engine(s) of {connection.describe()}")
        return len(engines)
    finally:
        client.close()


def _where_am_i() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()
