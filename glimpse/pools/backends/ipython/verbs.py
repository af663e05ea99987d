"""``glimpse-cluster --type ipython VERB``: start, inspect and stop an IPython cluster (controller and engines)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from glimpse.pools.backends.ipython import engine, heartbeat
from glimpse.pools.backends.ipython.connection import (
    CONTROLLER_OPTIONS,
    ENVIRONMENT,
    Connection,
    connect,
    unreachable,
)
from glimpse.pools.cluster.verbs import Verb, run_verbs
from glimpse.pools.thread_caps import capped_environment

log = logging.getLogger(__name__)

#: How long PingWorkers waits for each engine's answer.
PING_SECONDS = 10.0
#: How long LaunchWorker waits to learn whether the controller refuses connections (it stopped).
REFUSAL_PROBE_SECONDS = 3.0
#: How long LaunchWorker waits before starting again an engine cut off from its controller.
RESTART_SECONDS = 2.0
_POLL_SECONDS = 0.2


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
        "run N engines connected to the controller, in the foreground; an engine cut off from the "
        "controller for $GLIMPSE_SILENCE_TIMEOUT seconds (default 25) starts again, and rejoins once "
        "the controller answers",
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
    command = [sys.executable, "-m", "glimpse.pools.backends.ipython.engine", *_options(connection)]
    command += heartbeat.engine_options()
    log.info("running %d engine(s) for %s", count, connection.describe())
    env = capped_environment(os.environ, count)
    return _run_foreground([command] * count, lambda code, again: _cut_off(connection, code, again), env)


def _cut_off(connection: Connection, code: int, rejoining: bool) -> str | None:
    """Why an engine that exited with ``code`` should start again, if it should: it lost the
    controller's heartbeats, or (``rejoining``: it was started again for that) the controller has
    not answered its registration yet. Not when the controller refuses connections: it stopped."""
    if code == engine.LOST_CONTROLLER:
        reason = "it heard no heartbeat from the controller for $GLIMPSE_SILENCE_TIMEOUT seconds"
    elif code == engine.REGISTRATION_TIMED_OUT and rejoining:
        reason = "the controller has not answered its registration yet"
    else:
        return None
    address = _registration_address(connection)
    if address and _refused(address):
        log.error(
            "engine stopped: %s, and nothing listens at the controller's %s any more; start LaunchWorker "
            "again once the controller runs (with a new controller, copy its ipcontroller-engine.json here)",
            reason,
            address,
        )
        return None
    return reason


def _registration_address(connection: Connection) -> str | None:
    """``host:port`` of the controller's registration socket, from the engine connection file."""
    path = connection.engine_file()
    try:
        with open(path) as file:
            info = json.load(file)
    except (OSError, TypeError, ValueError):
        return None
    interface, port = info.get("interface"), info.get("registration")
    return f"{interface.split('://', 1)[-1]}:{port}" if interface and port else None


def _refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REFUSAL_PROBE_SECONDS):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _run_foreground(
    commands: list[list[str]], restart=lambda code, rejoining: None, env: dict[str, str] | None = None
) -> int:
    """Run commands (in ``env``, else this process's environment) in this process group until they
    all exit; pass SIGTERM and SIGHUP on to them. A command that exits for a reason
    ``restart(code, whether it was started again before)`` gives, unless this process was told to
    stop, runs again."""
    children = [subprocess.Popen(command, env=env) for command in commands]
    rejoining = [False] * len(children)
    stopping = False

    def forward(signum, frame):
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        codes: dict[int, int] = {}
        while len(codes) < len(children):
            for slot, child in enumerate(children):
                code = None if slot in codes else child.poll()
                if code is None:
                    continue
                reason = None if stopping else restart(code, rejoining[slot])
                if reason is not None:
                    log.warning("process %d of %d stopped: %s; starting it again", slot + 1, len(children), reason)
                    time.sleep(RESTART_SECONDS)
                if reason is None or stopping:
                    codes[slot] = code
                    continue
                children[slot], rejoining[slot] = subprocess.Popen(commands[slot], env=env), True
            time.sleep(_POLL_SECONDS)
        return max((abs(code) for code in codes.values()), default=0)
    except KeyboardInterrupt:
        forward(signal.SIGTERM, None)
        return max(abs(child.wait()) for child in children)
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
