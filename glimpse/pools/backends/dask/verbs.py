"""``glimpse-cluster --type dask VERB``: run and manage a Dask cluster with Dask's own programs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from distributed import Client, Security

from glimpse.pools.backends.dask.launch import address_reaching, engine_environment, is_loopback, run_workers
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


def _broker_options(parser: argparse.ArgumentParser) -> None:
    listen_options(
        DEFAULT_PORT,
        "address to listen on (default 127.0.0.1): for workers and callers on other machines, this machine's "
        "address on their network, with --tls-ca-file, --tls-cert and --tls-key (or --insecure)",
    )(parser)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without TLS (anyone who reaches the scheduler can run code on its workers)",
    )


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nworkers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument(
        "--host",
        help="this machine's address that the scheduler, the callers and the other workers reach (default: the "
        "address of the interface that reaches the scheduler; 127.0.0.1 for a scheduler on 127.0.0.1)",
    )


def _launch_broker(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not _tls_arguments(args) and not args.insecure:
        raise ValueError(
            f"--host {args.host} makes the scheduler reachable from other machines, and anyone who reaches it can "
            "run code on its workers: give it TLS certificates with --tls-ca-file, --tls-cert and --tls-key (the "
            "same files on every machine; e.g. `openssl req -x509 -newkey rsa:3072 -nodes -days 365 -subj "
            "/CN=dask -keyout key.pem -out cert.pem`, then cert.pem is also the CA file), or pass --insecure on a "
            "network you trust"
        )
    command = ["distributed.cli.dask_scheduler", "--host", args.host, "--port", str(args.port)]
    if _tls_arguments(args):
        command += ["--protocol", "tls", *_tls_arguments(args)]
    return run_foreground([sys.executable, "-m", *command, *_no_dashboard(args.host)], env=engine_environment())


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    host = args.host or address_reaching(address)
    command = ["distributed.cli.dask_worker", address, "--nworkers", str(args.nworkers), "--nthreads", "1"]
    command += ["--host", host, *_tls_arguments(args), *_no_dashboard(host)]
    return run_workers([sys.executable, "-m", *command], address, args.nworkers)


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


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb("run a Dask scheduler in the foreground until killed", _launch_broker, _broker_options),
    "LaunchWorker": Verb(
        "run Dask workers for the scheduler in the foreground until killed", _launch_worker, _worker_options
    ),
    "PingWorkers": Verb("print one line per worker: address, threads, memory and state", _ping_workers),
    "KillWorkers": Verb("retire every worker of the scheduler (their processes exit)", _kill_workers),
    "RestartWorkers": Verb("restart every worker process of the scheduler", _restart_workers),
}
