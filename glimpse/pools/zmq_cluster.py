"""Pools on a glimpse ZeroMQ cluster: ``MakePool`` connects to or starts one, ``RunMain`` runs
``glimpse-cluster --type zmq``.

A cluster is one broker listening on one port (127.0.0.1 unless told otherwise); pools and
workers both connect to it, and the messages they send tell them apart (see
``backends/zmq_protocol.py``). Where a pool runs, first that applies: the ``address`` argument;
``$GLIMPSE_ZMQ_ADDRESS``; else an embedded broker and one worker per core that the pool starts
and ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import weakref
from collections.abc import Sequence

from glimpse.pools.registry import require_extra

require_extra("zmq")

from glimpse.pools.backends import zmq_broker, zmq_worker  # noqa: E402
from glimpse.pools.backends.pool import Pool  # noqa: E402
from glimpse.pools.backends.zmq import ZmqBackend  # noqa: E402
from glimpse.pools.backends.zmq_local import STARTUP_SECONDS, LocalCluster, exit_with_parent  # noqa: E402
from glimpse.pools.backends.zmq_protocol import DEFAULT_PORT, normalize_address  # noqa: E402
from glimpse.pools.cluster_cli import Verb, run_verbs  # noqa: E402

ADDRESS_VARIABLE = "GLIMPSE_ZMQ_ADDRESS"


def MakePool(address: str | None = None, workers: int | None = None) -> ZmqPool:
    """Return a :class:`ZmqPool`; see it for the arguments."""
    return ZmqPool(address, workers)


class ZmqPool(Pool):
    """A pool whose chunks run on the workers of a glimpse ZeroMQ broker.

    Args:
        address: The broker's address, ``tcp://HOST:PORT``. Defaults to ``$GLIMPSE_ZMQ_ADDRESS``;
            without either, the pool starts a broker on 127.0.0.1 and ``workers`` worker
            processes, and ends them on :meth:`close`.
        workers: How many workers an embedded cluster has (default: one per core).

    A pool pickles to its broker's address: a copy unpickled in another process or in a task
    connects to the same broker and never stops a cluster it did not start.
    """

    def __init__(self, address: str | None = None, workers: int | None = None):
        address, source = _resolve_address(address)
        if address is None:
            backend = _embedded_backend(workers or os.cpu_count() or 1)
            self.cluster: LocalCluster | None = backend.cluster
        elif workers is not None:
            raise TypeError(f"workers= sizes an embedded cluster; the pool connects to {address} (from {source})")
        else:
            backend = ZmqBackend(address, source)
            self.cluster = None
        self.address: str = backend.address
        super().__init__(backend)
        if self.cluster is not None:
            weakref.finalize(self, self.cluster.kill)

    def __reduce__(self):
        return (ZmqPool, (self.address,))

    def __repr__(self) -> str:
        return f"<ZmqPool {self.address} {self._state}>"


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type zmq VERB [options]``; return the exit code."""
    return run_verbs("glimpse-cluster --type zmq", "Run and manage a glimpse ZeroMQ cluster.", VERBS, argv)


def _embedded_backend(nworkers: int) -> ZmqBackend:
    if nworkers < 1:
        raise ValueError(f"workers must be at least 1, not {nworkers}")
    cluster = LocalCluster.start(nworkers)
    try:
        backend = ZmqBackend(cluster.address, "the embedded cluster", cluster=cluster)
        connected = backend.wait_for_workers(nworkers, STARTUP_SECONDS)
        if connected < nworkers:
            raise RuntimeError(
                f"only {connected} of {nworkers} embedded zmq workers connected within {STARTUP_SECONDS:g} s"
            )
    except BaseException:
        cluster.kill()
        raise
    return backend


def _resolve_address(address: str | None) -> tuple[str | None, str]:
    """The broker address to use and where it came from (``None`` means start a cluster)."""
    if address:
        return normalize_address(address), "the address argument"
    if os.environ.get(ADDRESS_VARIABLE):
        return normalize_address(os.environ[ADDRESS_VARIABLE]), f"${ADDRESS_VARIABLE}"
    return None, ""


# -- RunMain's verbs ------------------------------------------------------------------------------


def _address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=f"the broker's address, tcp://HOST:PORT (default: ${ADDRESS_VARIABLE})")


def _embedded_options(parser: argparse.ArgumentParser) -> None:
    # --exit-with-parent is for the embedded cluster of a pool, so it is not in --help.
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1); whoever reaches the broker can run code on its workers",
    )
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    _embedded_options(parser)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _address_option(parser)
    parser.add_argument("--nworkers", type=int, default=os.cpu_count() or 1, help="worker slots (default: cores)")
    _embedded_options(parser)


def _launch_broker(args: argparse.Namespace) -> int:
    _prepare_foreground(args)
    return _until_stopped(lambda: zmq_broker.serve(args.host, args.port, args.ready_fd))


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    _prepare_foreground(args)
    return _until_stopped(lambda: zmq_worker.serve(address, args.nworkers))


def _ping_workers(args: argparse.Namespace) -> int:
    backend = _cli_backend(args)
    try:
        workers = backend.describe_cluster()["workers"]
    finally:
        backend.close()
    if not workers:
        print(f"no workers are connected to the zmq broker at {backend.address}", file=sys.stderr)
        return 1
    for worker in sorted(workers, key=lambda w: w["id"]):
        print(
            f"{worker['id']} host={worker.get('host')} pid={worker.get('pid')} task_pid={worker.get('task_pid')} "
            f"state={worker['state']} for={worker['for_seconds']:g}s chunks={worker.get('chunks', 0)}"
        )
    return 0


def _kill_workers(args: argparse.Namespace) -> int:
    backend = _cli_backend(args)
    try:
        count = backend.kill_workers()
    finally:
        backend.close()
    print(f"told {count} workers to exit")
    return 0


def _restart_workers(args: argparse.Namespace) -> int:
    backend = _cli_backend(args)
    try:
        count = backend.restart_workers()
    finally:
        backend.close()
    print(f"restarted the task processes of {count} workers")
    return 0


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    """The broker address of a verb, and where it came from."""
    if args.address:
        return normalize_address(args.address), "--address"
    if os.environ.get(ADDRESS_VARIABLE):
        return normalize_address(os.environ[ADDRESS_VARIABLE]), f"${ADDRESS_VARIABLE}"
    raise ValueError(f"no broker address: pass --address tcp://HOST:PORT or set ${ADDRESS_VARIABLE}")


def _cli_backend(args: argparse.Namespace) -> ZmqBackend:
    return ZmqBackend(*_required_address(args))


def _prepare_foreground(args: argparse.Namespace) -> None:
    if args.quiet:
        logging.getLogger("glimpse.pools").setLevel(logging.WARNING)
    if args.exit_with_parent:
        exit_with_parent()


def _until_stopped(serve) -> int:
    """Run ``serve`` until it returns, Ctrl-C or SIGTERM (which lets it clean up)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        serve()
    except KeyboardInterrupt:
        pass
    return 0


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb("run a broker in the foreground until stopped", _launch_broker, _broker_options),
    "LaunchWorker": Verb(
        "run worker slots for a broker in the foreground until stopped", _launch_worker, _worker_options
    ),
    "PingWorkers": Verb("print one line per worker: id, host, pid, state", _ping_workers, _address_option),
    "KillWorkers": Verb("tell every worker of the broker to exit", _kill_workers, _address_option),
    "RestartWorkers": Verb(
        "give every worker a fresh task process (running chunks are re-sent)", _restart_workers, _address_option
    ),
}

if __name__ == "__main__":
    sys.exit(RunMain())
