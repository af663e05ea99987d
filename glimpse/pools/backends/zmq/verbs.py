"""``glimpse-cluster --type zmq VERB``: run and manage a glimpse ZeroMQ cluster (broker and workers)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from glimpse.pools.backends.zmq import broker as zmq_broker
from glimpse.pools.backends.zmq import worker as zmq_worker
from glimpse.pools.backends.zmq.backend import ZmqBackend
from glimpse.pools.backends.zmq.pool import ADDRESS_VARIABLE
from glimpse.pools.backends.zmq.protocol import DEFAULT_PORT, normalize_address
from glimpse.pools.cluster import verbs as cli


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type zmq VERB [options]``; return the exit code."""
    return cli.run_verbs("glimpse-cluster --type zmq", "Run and manage a glimpse ZeroMQ cluster.", VERBS, argv)


_address_option = cli.address_option(ADDRESS_VARIABLE, "tcp://HOST:PORT", "the broker's address", cli.key_options)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    cli.listen_options(
        DEFAULT_PORT,
        "interface to listen on (default 127.0.0.1); whoever reaches the broker can run code on its workers",
    )(parser)
    cli.key_options(parser)
    parser.add_argument(
        "--nworkers",
        type=int,
        default=0,
        help="worker slots to run in the broker's own process, beside those that connect (default 0)",
    )
    cli.max_chunks_option(parser)
    parser.add_argument("--pool-fd", type=int, help=argparse.SUPPRESS)  # the embedded cluster's pool's socket
    cli.embedded_broker_options(parser)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _address_option(parser)
    cli.worker_slot_options(parser)


def _launch_broker(args: argparse.Namespace) -> int:
    if args.nworkers < 0:
        raise ValueError(f"--nworkers must be 0 or more, not {args.nworkers}")
    key = cli.verb_key(args, for_broker=True)
    cli.prepare_foreground(args)
    return cli.until_stopped(
        lambda: zmq_broker.serve(
            args.host, args.port, key, args.ready_fd, args.nworkers, args.pool_fd, args.maxtasksperchild
        )
    )


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    key = cli.verb_key(args)
    cli.prepare_foreground(args)
    return cli.until_stopped(lambda: zmq_worker.serve(address, args.nworkers, key, args.maxtasksperchild))


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


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    return cli.required_address(args, ADDRESS_VARIABLE, "tcp://HOST:PORT", normalize_address)


def _cli_backend(args: argparse.Namespace) -> ZmqBackend:
    address, source = _required_address(args)
    return ZmqBackend(address, cli.verb_key(args), source)


VERBS: dict[str, cli.Verb] = {
    "LaunchBroker": cli.Verb("run a broker in the foreground until stopped", _launch_broker, _broker_options),
    "LaunchWorker": cli.Verb(
        "run worker slots for a broker in the foreground until stopped", _launch_worker, _worker_options
    ),
    **cli.worker_verbs(_cli_backend, _address_option, _ping_workers, "print one line per worker: id, host, pid, state"),
}
