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
from glimpse.pools.cluster import verbs as cli

log = logging.getLogger(__name__)

PROG = "glimpse-cluster --type gearman"


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type gearman VERB [options]``; return the exit code."""
    return cli.run_verbs(PROG, "Run and manage a glimpse gearman cluster.", VERBS, argv)


_address_option = cli.address_option(
    ADDRESS_VARIABLE, "HOST:PORT[,HOST:PORT...]", "the gearman servers", cli.key_options
)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    cli.listen_options(
        g.DEFAULT_PORT, "interface gearmand listens on (default 127.0.0.1); gearmand authenticates nobody"
    )(parser)
    cli.embedded_broker_options(parser)


def _worker_options(parser: argparse.ArgumentParser) -> None:
    _address_option(parser)
    cli.worker_slot_options(parser)


def _launch_broker(args: argparse.Namespace) -> int:
    gearmand.find_gearmand()
    cli.prepare_foreground(args)

    def ready(address: str) -> None:
        log.info("gearmand listening on %s (it authenticates nobody: glimpse signs every job)", address)
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as out:
                out.write(address + "\n")

    return cli.until_stopped(lambda: gearmand.run_gearmand(args.host, args.port, ready))


def _launch_worker(args: argparse.Namespace) -> int:
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, not {args.nworkers}")
    address, _ = _required_address(args)
    # gearmand is not ours, so the first worker creates the default key file when there is no key.
    key = cli.verb_key(args, for_broker=True)
    cli.prepare_foreground(args)
    log.info("cluster key: %s", key.source)
    servers = g.parse_servers(address)
    return cli.until_stopped(lambda: gearman_worker.serve(servers, args.nworkers, key, args.maxtasksperchild))


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


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    return cli.required_address(args, ADDRESS_VARIABLE, "HOST:PORT")


def _cli_backend(args: argparse.Namespace) -> GearmanBackend:
    address, source = _required_address(args)
    return GearmanBackend(g.parse_servers(address), cli.verb_key(args), source)


VERBS: dict[str, cli.Verb] = {
    "LaunchBroker": cli.Verb("run gearmand in the foreground until stopped", _launch_broker, _broker_options),
    "LaunchWorker": cli.Verb(
        "run worker slots for the gearman servers in the foreground until stopped", _launch_worker, _worker_options
    ),
    **cli.worker_verbs(
        _cli_backend,
        _address_option,
        _ping_workers,
        "print one line per worker slot of this key, then the queue",
        "worker slot",
    ),
}
