"""``glimpse-cluster --type gearman VERB``: run and manage a glimpse gearman cluster (gearmand and workers)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from glimpse.pools.backends.gearman import jobs
from glimpse.pools.backends.gearman import protocol as g
from glimpse.pools.backends.gearman import server as gearmand
from glimpse.pools.backends.gearman import worker as gearman_worker
from glimpse.pools.backends.gearman.backend import GearmanBackend
from glimpse.pools.backends.gearman.pool import ADDRESS_VARIABLE
from glimpse.pools.cluster.verbs import (
    Verb,
    address_option,
    embedded_broker_options,
    key_options,
    listen_options,
    prepare_foreground,
    required_address,
    run_verbs,
    until_stopped,
    verb_key,
    worker_slot_options,
)

log = logging.getLogger(__name__)

PROG = "glimpse-cluster --type gearman"


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type gearman VERB [options]``; return the exit code."""
    return run_verbs(PROG, "Run and manage a glimpse gearman cluster.", VERBS, argv)


_address_option = address_option(ADDRESS_VARIABLE, "HOST:PORT[,HOST:PORT...]", "the gearman servers", key_options)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    listen_options(g.DEFAULT_PORT, "interface gearmand listens on (default 127.0.0.1); gearmand authenticates nobody")(
        parser
    )
    embedded_broker_options(parser)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _address_option(parser)
    worker_slot_options(parser)


def _launch_broker(args: argparse.Namespace) -> int:
    gearmand.find_gearmand()
    prepare_foreground(args)

    def ready(address: str) -> None:
        log.info("gearmand listening on %s (it authenticates nobody: glimpse signs every job)", address)
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as out:
                out.write(address + "\n")

    return until_stopped(lambda: gearmand.run_gearmand(args.host, args.port, ready))


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    # gearmand is not ours, so the first worker creates the default key file when there is no key.
    key = verb_key(args, for_broker=True)
    prepare_foreground(args)
    log.info("cluster key: %s", key.source)
    servers = g.parse_servers(address)
    return until_stopped(lambda: gearman_worker.serve(servers, args.nworkers, key, args.maxtasksperchild))


def _ping_workers(args: argparse.Namespace) -> int:
    backend = _cli_backend(args)
    ids = backend.worker_ids()
    if not ids:
        print(f"no glimpse workers with this key are connected to {backend.address}", file=sys.stderr)
        return 1
    for worker in ids:
        print(worker)
    function = jobs.chunk_function(backend.key).decode()
    for server in backend.servers:
        queued, running, available = g.status(server).get(function, (0, 0, 0))
        print(f"{server[0]}:{server[1]} {function}: queued={queued} running={running} workers={available}")
    return 0


def _kill_workers(args: argparse.Namespace) -> int:
    print(f"told {_cli_backend(args).tell_workers(jobs.EXIT)} worker slots to exit")
    return 0


def _restart_workers(args: argparse.Namespace) -> int:
    print(f"restarted the task processes of {_cli_backend(args).tell_workers(jobs.RESTART)} worker slots")
    return 0


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    return required_address(args, ADDRESS_VARIABLE, "HOST:PORT")


def _cli_backend(args: argparse.Namespace) -> GearmanBackend:
    address, source = _required_address(args)
    return GearmanBackend(g.parse_servers(address), verb_key(args), source)


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb("run gearmand in the foreground until stopped", _launch_broker, _broker_options),
    "LaunchWorker": Verb(
        "run worker slots for the gearman servers in the foreground until stopped", _launch_worker, _worker_options
    ),
    "PingWorkers": Verb("print one line per worker slot of this key, then the queue", _ping_workers, _address_option),
    "KillWorkers": Verb("tell every worker slot of this key to exit", _kill_workers, _address_option),
    "RestartWorkers": Verb(
        "give every worker slot of this key a fresh task process (running chunks are re-sent)",
        _restart_workers,
        _address_option,
    ),
}
