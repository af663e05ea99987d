"""Pools on Dask: ``MakePool`` finds or starts a Dask cluster, ``RunMain`` runs ``glimpse-cluster --type dask``.

Where a pool runs, first that applies: a ``client`` passed in; an ``address``;
``$DASK_SCHEDULER_ADDRESS`` or Dask's ``scheduler-address`` setting; else an embedded
``distributed.LocalCluster`` on 127.0.0.1 that the pool starts and shuts down.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import weakref
from collections.abc import Sequence

from glimpse.pools.registry import require_extra

require_extra("dask")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from distributed.deploy.cluster import Cluster  # noqa: E402

from glimpse.pools.backends.dask import DaskBackend  # noqa: E402
from glimpse.pools.backends.pool import Pool  # noqa: E402
from glimpse.pools.cluster_cli import Verb, run_verbs  # noqa: E402
from glimpse.pools.errors import ClusterConnectionError  # noqa: E402

PROG = "glimpse-cluster --type dask"
ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
DEFAULT_PORT = 8786
CONNECT_SECONDS = 5.0


def MakePool(address: str | None = None, client: Client | None = None, **kwargs) -> DaskPool:
    """Return a :class:`DaskPool`; see it for the arguments."""
    return DaskPool(address, client, **kwargs)


class DaskPool(Pool):
    """A pool whose chunks run as futures on a Dask cluster.

    Args:
        address: The scheduler's address (``tcp://host:8786``). Defaults to
            ``$DASK_SCHEDULER_ADDRESS``, then Dask's ``scheduler-address`` setting; without any,
            the pool starts a ``LocalCluster`` (one single-threaded worker process per core,
            on 127.0.0.1) and shuts it down on :meth:`close`.
        client: A ``distributed.Client`` to use instead; the pool never closes it.
        **kwargs: Passed to ``LocalCluster`` for an embedded cluster, else to ``Client``.

    A pool pickles to its scheduler's address: a copy unpickled in another process or in a
    task connects to the same scheduler and never shuts down a cluster it did not start (used
    in a task, it leaves the worker's thread pool while it waits, as ``worker_client`` does).

    Leaving ``imap`` early cancels its pending chunks; Dask cannot interrupt a running task, so
    a worker still running a cancelled chunk a second later is restarted through its nanny.
    Like ``multiprocessing``, the embedded cluster imports the main module in its workers: a
    script makes the pool under ``if __name__ == "__main__":``.
    """

    def __init__(self, address: str | None = None, client: Client | None = None, **kwargs):
        backend = _backend(address, client, kwargs)
        self.address: str = backend.client.scheduler.address
        super().__init__(backend)
        # Shuts an embedded cluster down if the pool is dropped unclosed; distributed handles exit.
        weakref.finalize(self, backend.close).atexit = False

    def __reduce__(self):
        return (DaskPool, (self.address,))

    def __repr__(self) -> str:
        return f"<DaskPool {self.address} {self._state}>"


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type dask VERB [options]`` (verbs in ``VERBS``); return the exit code."""
    return run_verbs(PROG, "Run and manage a Dask cluster.", VERBS, argv, _common_options)


def _backend(address: str | None, client: Client | None, kwargs: dict) -> DaskBackend:
    if client is not None:
        if kwargs:
            raise TypeError(f"with a client, DaskPool takes no other arguments; got {', '.join(kwargs)}")
        return DaskBackend(client)
    address, source = _resolve_address(address)
    if address is None:
        cluster = _local_cluster(kwargs)
        return DaskBackend(Client(cluster, set_as_default=False), owns_client=True, cluster=cluster)
    return DaskBackend(_connect(address, source, **kwargs), owns_client=True)


class _OwnedLocalCluster(LocalCluster):
    """A ``LocalCluster`` that never gives up on a worker: its nannies restart the workers that die."""

    def _update_worker_status(self, op, msg) -> None:
        # SpecCluster closes the nanny of a worker not back within distributed.deploy.lost-worker-
        # timeout, which a function that keeps killing its workers triggers while the nanny is
        # restarting it; the cluster then shrinks for good and tasks can wait forever.
        Cluster._update_worker_status(self, op, msg)


def _local_cluster(kwargs: dict) -> LocalCluster:
    options = {"n_workers": os.cpu_count() or 1, "threads_per_worker": 1, "processes": True}
    options.update(host="127.0.0.1", dashboard_address="127.0.0.1:0")
    try:
        # A task whose worker dies twice is given up on (Dask's default is four times); the chunk
        # is then sent once more, so a function that kills its worker fails after four deaths.
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            return _OwnedLocalCluster(**{**options, **kwargs})
    except RuntimeError as exc:
        raise RuntimeError(
            f"could not start the embedded Dask cluster: {str(exc).rstrip('.')}. Dask starts its worker processes with "
            "multiprocessing's spawn, which imports the main module again: if your script makes the pool "
            'at import time, move that code under `if __name__ == "__main__":`.'
        ) from exc


def _resolve_address(address: str | None) -> tuple[str | None, str]:
    """The scheduler address to use and where it came from (``None`` means start a cluster)."""
    if address:
        return address, "the address argument"
    if os.environ.get(ADDRESS_VARIABLE):
        return os.environ[ADDRESS_VARIABLE], f"${ADDRESS_VARIABLE}"
    configured = dask.config.get("scheduler-address", None)
    if configured:
        return configured, "Dask's scheduler-address setting"
    return None, ""


def _connect(address: str, source: str, **kwargs) -> Client:
    kwargs.setdefault("timeout", CONNECT_SECONDS)
    try:
        return Client(address, set_as_default=False, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise ClusterConnectionError(
            f"no Dask scheduler answered at {address} (from {source}) within {kwargs['timeout']:g} s: {exc}. "
            f"Start one with `glimpse-cluster --type dask LaunchBroker` (or `dask scheduler`), "
            f"or fix the address."
        ) from None


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help=f"the scheduler's address, tcp://HOST:PORT (default: ${ADDRESS_VARIABLE})",
    )


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nworkers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument("--host", default="127.0.0.1", help="interface workers listen on (default 127.0.0.1)")


def _launch_broker(args: argparse.Namespace) -> int:
    command = ["distributed.cli.dask_scheduler", "--host", args.host, "--port", str(args.port)]
    return _run_foreground([*command, *_no_dashboard(args.host)])


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    command = ["distributed.cli.dask_worker", address, "--nworkers", str(args.nworkers), "--nthreads", "1"]
    return _run_foreground([*command, "--host", args.host, *_no_dashboard(args.host)])


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
    """The scheduler address of a verb, and where it came from."""
    if args.address:
        return args.address, "--address"
    if os.environ.get(ADDRESS_VARIABLE):
        return os.environ[ADDRESS_VARIABLE], f"${ADDRESS_VARIABLE}"
    raise ValueError(f"no scheduler address: pass --address tcp://HOST:PORT or set ${ADDRESS_VARIABLE}")


def _cli_client(args: argparse.Namespace) -> Client:
    return _connect(*_required_address(args))


def _no_dashboard(host: str) -> list[str]:
    # Without a dashboard Dask still serves /health on the dashboard address, all interfaces by default.
    return ["--no-dashboard", "--dashboard-address", f"{host}:0"]


def _run_foreground(module_args: list[str]) -> int:
    try:
        return subprocess.call([sys.executable, "-m", *module_args])
    except KeyboardInterrupt:
        return 130


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb("run a Dask scheduler in the foreground until killed", _launch_broker, _broker_options),
    "LaunchWorker": Verb(
        "run Dask workers for the scheduler in the foreground until killed", _launch_worker, _worker_options
    ),
    "PingWorkers": Verb("print one line per worker: address, threads, memory and state", _ping_workers),
    "KillWorkers": Verb("retire every worker of the scheduler (their processes exit)", _kill_workers),
    "RestartWorkers": Verb("restart every worker process of the scheduler", _restart_workers),
}

if __name__ == "__main__":
    sys.exit(RunMain())
