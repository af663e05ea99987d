"""``glimpse-cluster --type ray VERB``: run and inspect a Ray cluster with ``ray start``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

import ray

from glimpse.pools.backends.ray import compat
from glimpse.pools.backends.ray.connection import (
    PROG,
    connect,
    host_port,
    is_loopback,
    probe,
    use_this_machines_token,
)
from glimpse.pools.backends.ray.pool import ADDRESS_VARIABLE
from glimpse.pools.cluster import verbs as common
from glimpse.pools.cluster.reachability import tcp_answers
from glimpse.pools.contract.watch import silence_timeout
from glimpse.pools.thread_caps import capped_environment

DEFAULT_PORT = 6379
#: A node that ran at least this long and then ended was ended by Ray (declared dead): it joins again.
_REJOIN_AFTER_SECONDS = 20.0
_REJOIN_PAUSE_SECONDS = 1.0
log = logging.getLogger(__name__)

_address_option = common.address_option(ADDRESS_VARIABLE, "HOST:PORT", "the head node's address")


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type ray VERB [options]``; return the exit code."""
    return common.run_verbs(PROG, "Run and inspect a Ray cluster.", VERBS, argv, _address_option)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    common.listen_options(
        DEFAULT_PORT,
        "this machine's address that nodes and callers reach (default 127.0.0.1: this machine only); any "
        "other turns on Ray's token authentication, creating ~/.ray/auth_token if missing",
    )(parser)
    parser.add_argument(
        "--num-cpus",
        type=int,
        help="CPUs the head node offers to tasks (default: its cores; 0: none, tasks run on the other nodes)",
    )
    parser.add_argument("--temp-dir", help="where Ray keeps its session files (default /tmp/ray)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="with RAY_AUTH_MODE=disabled, start a head beyond loopback without token authentication "
        "(anyone who reaches it can run code on every node)",
    )


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        help="this machine's address that the other nodes reach (default: 127.0.0.1 for a head on "
        "127.0.0.1, else the address this machine reaches the head from)",
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs this node offers to tasks (default: its cores)")
    parser.add_argument("--temp-dir", help="where Ray keeps its session files (default /tmp/ray)")


def _launch_broker(args: argparse.Namespace) -> int:
    command = [f"--node-ip-address={args.host}", f"--port={args.port}", "--include-dashboard=false"]
    env = {"RAY_USAGE_STATS_ENABLED": "0", **health_checks()}
    if is_loopback(args.host):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # see compat.loopback_kept
    else:
        env.update(_token_for_network(args))
    return _run_ray_start(["--head", *command, *_node_options(args)], env, args.num_cpus)


def _token_for_network(args: argparse.Namespace) -> dict:
    """Token authentication for a head beyond loopback: this machine's token, created if missing."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        if args.insecure:
            log.warning("a Ray head on %s without token authentication: anyone who reaches it runs code", args.host)
            return {}
        raise ValueError(
            f"RAY_AUTH_MODE=disabled would start a Ray head on {args.host} that anyone who reaches it can use "
            "to run code on every node; unset it (the head then uses token authentication), or pass --insecure"
        )
    if not compat.has_token():
        compat.create_token()
    log.info(
        "Token authentication is on. Copy this machine's Ray token (`ray get-auth-token` prints it; by default "
        "~/.ray/auth_token) to ~/.ray/auth_token on every node and every machine that connects to %s.",
        args.host,
    )
    return {"RAY_AUTH_MODE": "token"}


def _launch_worker(args: argparse.Namespace) -> int:
    address, source = common.required_address(args, ADDRESS_VARIABLE, "HOST:PORT")
    use_this_machines_token(address, source)
    probe(address, source)
    command = [f"--address={address}", *_node_options(args)]
    host = args.host or ("127.0.0.1" if is_loopback(host_port(address)[0]) else None)
    if host:
        command.append(f"--node-ip-address={host}")
    while True:
        started = time.monotonic()
        code = _run_ray_start(command, {"RAY_USAGE_STATS_ENABLED": "0"}, args.num_cpus, keep_loopback=True)
        ran = time.monotonic() - started
        if code == 130 or ran < _REJOIN_AFTER_SECONDS:
            return code  # stopped by Ctrl-C, or a start that failed: the admin's to see
        # Ray ends a node its head declared dead (its machine was silent for a while): join again.
        log.warning(
            "the Ray node ended after %.0f s (exit code %s), as Ray ends a node its head declared dead; "
            "joining the cluster at %s again once it answers",
            ran,
            code,
            address,
        )
        _wait_until_answers(address)


def _wait_until_answers(address: str) -> None:
    while not tcp_answers(address):
        time.sleep(_REJOIN_PAUSE_SECONDS)
    time.sleep(_REJOIN_PAUSE_SECONDS)


def _ping_workers(args: argparse.Namespace) -> int:
    address, source = common.required_address(args, ADDRESS_VARIABLE, "HOST:PORT")
    connect(address, source, {"log_to_driver": False})
    try:
        nodes = ray.nodes()
    finally:
        ray.shutdown()
    for node in sorted(nodes, key=lambda n: (not n.get("Alive"), n["NodeManagerAddress"], n["NodeManagerPort"])):
        cpus = node.get("Resources", {}).get("CPU", 0)
        role = " head" if node.get("Resources", {}).get("node:__internal_head__") else ""
        state = "alive" if node.get("Alive") else "dead"
        print(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']} cpus={cpus:g} {state}{role}")
    return 0 if any(node.get("Alive") for node in nodes) else 1


def _kill_workers(args: argparse.Namespace) -> int:
    return _cannot(
        "KillWorkers",
        "Ray has no API to stop a node from a client. Stop a node by ending its `ray start` process "
        f"(the `{PROG} LaunchWorker` you started) on its machine; Ray replaces crashed worker processes itself.",
    )


def _restart_workers(args: argparse.Namespace) -> int:
    return _cannot(
        "RestartWorkers",
        "Ray has no API to restart a node's worker processes from a client; it starts fresh ones itself "
        "when one dies. To restart a node, end its `ray start` process and run LaunchWorker again.",
    )


VERBS: dict[str, common.Verb] = {
    "LaunchBroker": common.Verb("run a Ray head node in the foreground until killed", _launch_broker, _broker_options),
    "LaunchWorker": common.Verb(
        "run a Ray node that joins the cluster, in the foreground; it joins again after Ray ends it for a silence",
        _launch_worker,
        _worker_options,
    ),
    "PingWorkers": common.Verb("print one line per node: address, CPUs, alive or dead", _ping_workers),
    "KillWorkers": common.Verb("not possible with Ray (says why and exits with code 1)", _kill_workers),
    "RestartWorkers": common.Verb("not possible with Ray (says why and exits with code 1)", _restart_workers),
}


def health_checks() -> dict[str, str]:
    """The head's GCS health checks of every node, as ``RAY_*`` settings for ``ray start --head``: a
    node that does not answer for about ``$GLIMPSE_SILENCE_TIMEOUT`` seconds (25) is declared dead,
    instead of Ray's default of about a minute. A failed check takes its period plus its timeout.

    Not shorter: a head that is itself cut off for a moment would declare every node dead.
    An existing ``RAY_health_check_*`` in the environment wins.
    """
    period_ms = timeout_ms = 1000
    settings = {
        "RAY_health_check_period_ms": str(period_ms),
        "RAY_health_check_timeout_ms": str(timeout_ms),
        "RAY_health_check_failure_threshold": str(max(1, round(silence_timeout() * 1000 / (period_ms + timeout_ms)))),
    }
    return {name: os.environ.get(name, value) for name, value in settings.items()}


def _node_options(args: argparse.Namespace) -> list[str]:
    options = [f"--temp-dir={args.temp_dir}"] if args.temp_dir else []
    if args.num_cpus is None:
        return options
    if args.num_cpus < 0:
        raise ValueError(f"--num-cpus must be 0 or more, not {args.num_cpus}")
    return [*options, f"--num-cpus={args.num_cpus}"]


def _run_ray_start(options: list[str], env: dict, num_cpus: int | None, keep_loopback: bool = False) -> int:
    """Run ``ray start``; its workers (one per CPU it offers) get the thread caps Ray leaves unset."""
    launcher = ["-c", compat.RAY_START_KEEPING_LOOPBACK] if keep_loopback else ["-m", "ray.scripts.scripts"]
    command = [sys.executable, *launcher, "start", "--block", "--disable-usage-stats", *options]
    workers_here = num_cpus or os.cpu_count() or 1
    return common.run_foreground(command, env=capped_environment({**os.environ, **env}, workers_here))


def _cannot(verb: str, reason: str) -> int:
    print(f"{PROG} {verb}: error: {reason}", file=sys.stderr)
    return 1
