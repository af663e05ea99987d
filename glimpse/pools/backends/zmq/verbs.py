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
from glimpse.pools.cluster.verbs import (
    Verb,
    address_option,
    embedded_broker_options,
    key_options,
    listen_options,
    max_chunks_option,
    prepare_foreground,
    required_address,
    run_verbs,
    until_stopped,
    verb_key,
    worker_slot_options,
)


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type zmq VERB [options]``; return the exit code."""
    return run_verbs("glimpse-cluster --type zmq", "Run and manage a glimpse ZeroMQ cluster.", VERBS, argv)


_address_option = address_option(ADDRESS_VARIABLE, "tcp://HOST:PORT", "the broker's address", key_options)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    listen_options(
        DEFAULT_PORT,
        "interface to listen on (default 127.0.0.1); whoever reaches the broker can run code on its workers",
    )(parser)
    key_options(parser)
    parser.add_argument(
        "--nworkers",
        type=int,
        default=0,
        help="worker slots to run in the broker's own process, beside those that connect (default 0)",
    )
    max_chunks_option(parser)
    parser.add_argument("--pool-fd", type=int, help=argparse.SUPPRESS)  # the embedded cluster's pool's socket
    embedded_broker_options(parser)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _address_option(parser)
    worker_slot_options(parser)


def _launch_broker(args: argparse.Namespace) -> int:
    if args.nworkers < 0:
        raise ValueError(f"--nworkers must be 0 or more, not {args.nworkers}")
    key = verb_key(args, for_broker=True)
    prepare_foreground(args)
    return until_stopped(
        lambda: zmq_broker.serve(
            args.host, args.port, key, args.ready_fd, args.nworkers, args.pool_fd, args.maxtasksperchild
        )
    )


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    key = verb_key(args)
    prepare_foreground(args)
    return until_stopped(lambda: zmq_worker.serve(address, args.nworkers, key, args.maxtasksperchild))


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
    print(f"told {_ask_broker(args, ZmqBackend.kill_workers)} workers to exit")
    return 0


def _restart_workers(args: argparse.Namespace) -> int:
    print(f"restarted the task processes of {_ask_broker(args, ZmqBackend.restart_workers)} workers")
    return 0


def _ask_broker(args: argparse.Namespace, request):
    """The answer of the verb's broker to ``request`` (a ``ZmqBackend`` method), on a connection of its own."""
    backend = _cli_backend(args)
    try:
        return request(backend)
    finally:
        backend.close()


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    return required_address(args, ADDRESS_VARIABLE, "tcp://HOST:PORT", normalize_address)


def _cli_backend(args: argparse.Namespace) -> ZmqBackend:
    address, source = _required_address(args)
    return ZmqBackend(address, verb_key(args), source)


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
