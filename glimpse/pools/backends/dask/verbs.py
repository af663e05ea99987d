"""``glimpse-cluster --type dask VERB``: run and manage a Dask cluster with Dask's own programs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from distributed import Client, Security

from glimpse.pools.backends.dask.pool import ADDRESS_VARIABLE, connect
from glimpse.pools.cluster.verbs import (
    Verb,
    address_option,
    listen_options,
    required_address,
    run_foreground,
    run_verbs,
)

PROG = "glimpse-cluster --type dask"
DEFAULT_PORT = 8786


def _tls_options(parser: argparse.ArgumentParser) -> None:
    """Dask's own TLS options (PEM files); with them the cluster speaks tls:// only."""
    parser.add_argument("--tls-ca-file", help="CA certificate(s) for TLS, PEM")
    parser.add_argument("--tls-cert", help="certificate for TLS, PEM")
    parser.add_argument("--tls-key", help="private key for TLS, PEM")


_address_option = address_option(ADDRESS_VARIABLE, "tcp://HOST:PORT", "the scheduler's address", _tls_options)


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type dask VERB [options]`` (verbs in ``VERBS``); return the exit code."""
    return run_verbs(PROG, "Run and manage a Dask cluster.", VERBS, argv, _address_option)


_broker_options = listen_options(DEFAULT_PORT)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nworkers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument("--host", default="127.0.0.1", help="interface workers listen on (default 127.0.0.1)")


def _launch_broker(args: argparse.Namespace) -> int:
    command = ["distributed.cli.dask_scheduler", "--host", args.host, "--port", str(args.port)]
    if _tls_arguments(args):
        command += ["--protocol", "tls", *_tls_arguments(args)]
    return _run_module([*command, *_no_dashboard(args.host)])


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    command = ["distributed.cli.dask_worker", address, "--nworkers", str(args.nworkers), "--nthreads", "1"]
    return _run_module([*command, "--host", args.host, *_tls_arguments(args), *_no_dashboard(args.host)])


def _ping_workers(args: argparse.Namespace) -> int:
    with _cli_client(args) as client:
        address = client.scheduler.address
        workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        print(f"no workers are connected to the Dask scheduler at {address}", file=sys.stderr)
        return 1
    for address, info in sorted(workers.items()):
        memory = info.get("memory_limit") or 0
        state = info.get("status", "unknown")
        print(f"{address} threads={info['nthreads']} memory={memory / 2**30:.2f}GiB state={state}")
    return 0


def _kill_workers(args: argparse.Namespace) -> int:
    with _cli_client(args) as client:
        retired = client.retire_workers(close_workers=True)
    print(f"retired {len(retired)} workers")
    return 0


def _restart_workers(args: argparse.Namespace) -> int:
    with _cli_client(args) as client:
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        states = client.restart_workers(workers, raise_for_error=False)
    failed = {worker: state for worker, state in states.items() if state != "OK"}
    for worker, state in sorted(failed.items()):
        print(f"{worker}: {state}", file=sys.stderr)
    print(f"restarted {len(states) - len(failed)} of {len(states)} workers")
    return 1 if failed else 0


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    return required_address(args, ADDRESS_VARIABLE, "tcp://HOST:PORT")


def _cli_client(args: argparse.Namespace) -> Client:
    if not _tls_arguments(args):
        return connect(*_required_address(args))
    security = Security(
        tls_ca_file=args.tls_ca_file,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
        require_encryption=True,
    )
    return connect(*_required_address(args), security=security)


def _tls_arguments(args: argparse.Namespace) -> list[str]:
    """The TLS options given, as Dask's programs take them."""
    given = [("--tls-ca-file", args.tls_ca_file), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)]
    return [part for option, value in given if value for part in (option, value)]


def _no_dashboard(host: str) -> list[str]:
    # Without a dashboard Dask still serves /health on the dashboard address, all interfaces by default.
    return ["--no-dashboard", "--dashboard-address", f"{host}:0"]


def _run_module(module_args: list[str]) -> int:
    return run_foreground([sys.executable, "-m", *module_args])


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb("run a Dask scheduler in the foreground until killed", _launch_broker, _broker_options),
    "LaunchWorker": Verb(
        "run Dask workers for the scheduler in the foreground until killed", _launch_worker, _worker_options
    ),
    "PingWorkers": Verb("print one line per worker: address, threads, memory and state", _ping_workers),
    "KillWorkers": Verb("retire every worker of the scheduler (their processes exit)", _kill_workers),
    "RestartWorkers": Verb("restart every worker process of the scheduler", _restart_workers),
}
