"""IPython parallel (ipyparallel) pools, the default cluster type: ``MakePool`` and ``RunMain``.

``MakePool()`` runs on the first of: a ``client`` passed in; the connection arguments; the
``GLIMPSE_IPYTHON_PROFILE`` / ``GLIMPSE_IPYTHON_PROFILE_DIR`` / ``GLIMPSE_IPYTHON_CLUSTER_ID``
environment variables; a controller of the default profile that answers; else a cluster of its
own on this machine (one engine per core, loopback only), stopped when the pool closes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from glimpse.pools.backends.ipython import IPythonBackend
from glimpse.pools.backends.ipython_connect import ENVIRONMENT, Connection, connect, connection_of, unreachable
from glimpse.pools.backends.ipython_local import LocalCluster
from glimpse.pools.backends.pool import Pool
from glimpse.pools.cluster_cli import Verb, run_verbs
from glimpse.pools.errors import ClusterConnectionError

log = logging.getLogger(__name__)

#: How long the default profile's controller may take to answer before a local cluster is started.
PROBE_SECONDS = 3.0
#: How long PingWorkers waits for each engine's answer.
PING_SECONDS = 10.0


class IPythonPool(Pool):
    """A pool whose chunks run as tasks of an ipyparallel load-balanced view.

    It pickles to its connection: a copy unpickled elsewhere connects to the same controller,
    and closing it closes only its own client, never a cluster it did not start.
    """

    def __init__(self, client, connection: Connection, owns_client: bool = True, cluster: LocalCluster | None = None):
        self.client = client
        self.connection = connection
        self._owns_client = owns_client
        self._cluster = cluster
        heal = cluster.replace_lost_engines if cluster is not None else None
        super().__init__(IPythonBackend(client, on_close=self._release, heal=heal))

    def __reduce__(self):
        return (_pool_for, (self.connection,))

    def _release(self) -> None:
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.stop()


def MakePool(
    profile: str | None = None,
    profile_dir: str | None = None,
    cluster_id: str | None = None,
    url_file: str | None = None,
    client=None,
    **client_kwargs,
) -> IPythonPool:
    """Return a pool on an IPython parallel cluster, chosen as the module docstring says.

    Keyword arguments other than these go to ``ipyparallel.Client``. A cluster that is named
    but does not answer raises ``ClusterConnectionError`` within 30 seconds.
    """
    if client is not None:
        return IPythonPool(client, connection_of(client), owns_client=False)
    named = Connection(profile, profile_dir, cluster_id, url_file)
    if any((profile, profile_dir, cluster_id, url_file, client_kwargs)):
        return IPythonPool(connect(named, **client_kwargs), named)
    from_environment = Connection.from_environment()
    if from_environment is not None:
        return IPythonPool(connect(from_environment), from_environment)
    default = Connection()
    if os.path.exists(default.client_file()):
        try:
            return IPythonPool(connect(default, PROBE_SECONDS, PROBE_SECONDS), default)
        except ClusterConnectionError as exc:
            log.warning("starting a local IPython cluster instead: %s", exc)
    cluster = LocalCluster()
    client = cluster.start()
    return IPythonPool(
        client, Connection(profile_dir=cluster.profile_dir, cluster_id=cluster.cluster_id), True, cluster
    )


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
    return _run_foreground([[sys.executable, "-m", "ipyparallel.controller", "--ip=127.0.0.1", *_options(connection)]])


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
    "LaunchBroker": Verb("run a controller on 127.0.0.1 in the foreground", _launch_broker),
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


def _pool_for(connection: Connection) -> IPythonPool:
    return IPythonPool(connect(connection), connection)


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
