"""The command-line shape shared by every cluster module's ``RunMain``: verbs and their options."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from glimpse.pools.errors import ClusterConnectionError
from glimpse.pools.subprocesses import terminate_self, when_orphaned

log = logging.getLogger(__name__)


@dataclass
class Verb:
    """One verb of ``glimpse-cluster``: what it does, its options, and the function that runs it."""

    help: str
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda parser: None)


def worker_verbs(
    open_backend: Callable[[argparse.Namespace], Any],
    options: Callable[[argparse.ArgumentParser], None],
    ping: Callable[[argparse.Namespace], int],
    ping_help: str,
    worker: str = "worker",
) -> dict[str, Verb]:
    """``PingWorkers`` (``ping``), ``KillWorkers`` and ``RestartWorkers`` of a cluster whose backend,
    opened by ``open_backend(args)``, has ``kill_workers()`` and ``restart_workers()``."""

    def told(tell: Callable[[Any], int], done: str) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            backend = open_backend(args)
            try:
                count = tell(backend)
            finally:
                backend.close()
            print(done.format(count))
            return 0

        return run

    return {
        "PingWorkers": Verb(ping_help, ping, options),
        "KillWorkers": Verb(
            f"tell every {worker} to exit",
            told(lambda backend: backend.kill_workers(), f"told {{}} {worker}s to exit"),
            options,
        ),
        "RestartWorkers": Verb(
            f"give every {worker} a fresh task process (running chunks are re-sent)",
            told(lambda backend: backend.restart_workers(), f"restarted the task processes of {{}} {worker}s"),
            options,
        ),
    }


def run_verbs(
    prog: str,
    description: str,
    verbs: dict[str, Verb],
    argv: Sequence[str] | None,
    common_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> int:
    """Parse ``argv`` as ``VERB [options]``, run the verb, and return an exit code.

    ``common_arguments`` adds the options every verb takes (such as ``--address``).

    ``--help`` and usage errors exit through argparse (code 0 and 2). An unreachable cluster or a
    bad value prints one clear line on stderr and returns 1.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, verb in verbs.items():
        sub = subparsers.add_parser(name, help=verb.help, description=verb.help)
        common_arguments(sub)
        verb.arguments(sub)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return verbs[args.verb].run(args) or 0
    except (ClusterConnectionError, ValueError, OSError, TimeoutError, ImportError) as exc:
        print(f"{prog} {args.verb}: error: {exc}", file=sys.stderr)
        return 1


def required_address(args: argparse.Namespace, variable: str, form: str, normalize=str.strip) -> tuple[str, str]:
    """A verb's cluster address (``--address``, else ``$variable``) and where it came from; a
    ``ValueError`` showing ``form`` (``tcp://HOST:PORT``) when neither is given."""
    if getattr(args, "address", None):
        return normalize(args.address), "--address"
    if os.environ.get(variable):
        return normalize(os.environ[variable]), f"${variable}"
    raise ValueError(f"no cluster address: pass --address {form} or set ${variable}")


def address_option(variable: str, form: str, what: str = "the cluster's address", *with_options):
    """The ``--address`` option of a verb, defaulting to ``$variable``, and the options ``with_options``
    add (how to authenticate to that address: ``key_options``, TLS files)."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--address", help=f"{what}, {form} (default: ${variable})")
        for add_options in with_options:
            add_options(parser)

    return add


def key_options(parser: argparse.ArgumentParser) -> None:
    """The ``--key-file`` and ``--insecure`` options of a verb of a signed transport (zmq, gearman)."""
    parser.add_argument(
        "--key-file",
        help="file holding the cluster key (default: $GLIMPSE_CLUSTER_KEY, $GLIMPSE_CLUSTER_KEY_FILE, "
        "then ~/.config/glimpse/cluster.key)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not sign messages (anyone who reaches the broker can run code on the workers); every peer must say it",
    )


def verb_key(args: argparse.Namespace, for_broker: bool = False):
    """The cluster key a verb's options name (``--insecure``, ``--key-file``, then the usual sources)."""
    from glimpse.pools.security import insecure_key, key_for_broker, resolve_key

    if args.insecure:
        return insecure_key(f"glimpse-cluster {args.verb}")
    return key_for_broker(args.key_file) if for_broker else resolve_key(key_file=args.key_file)


def listen_options(default_port: int, host_help: str = "interface to listen on (default 127.0.0.1)"):
    """The ``--port`` and ``--host`` options of a verb that starts a server (on 127.0.0.1 by default)."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--port", type=int, default=default_port, help=f"port to listen on (default {default_port})"
        )
        parser.add_argument("--host", default="127.0.0.1", help=host_help)

    return add


def foreground_options(parser: argparse.ArgumentParser) -> None:
    """``--quiet``, and ``--exit-with-parent`` (for the embedded cluster of a pool, so not in --help)."""
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def worker_slot_options(parser: argparse.ArgumentParser) -> None:
    """``--nworkers``, :func:`max_chunks_option` and :func:`foreground_options`, for ``LaunchWorker``
    of a transport of our own."""
    parser.add_argument("--nworkers", type=int, default=os.cpu_count() or 1, help="worker slots (default: cores)")
    max_chunks_option(parser)
    foreground_options(parser)


def max_chunks_option(parser: argparse.ArgumentParser) -> None:
    """``--maxtasksperchild N``: how many chunks a slot's task process runs before a fresh one replaces it."""
    parser.add_argument(
        "--maxtasksperchild",
        type=_positive_int,
        help="chunks each task process runs before a fresh one replaces it, as multiprocessing's (default: no limit)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def embedded_broker_options(parser: argparse.ArgumentParser) -> None:
    """``--ready-fd`` (where an embedded cluster's broker writes its address) and :func:`foreground_options`."""
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    foreground_options(parser)


def prepare_foreground(args: argparse.Namespace) -> None:
    """Apply :func:`foreground_options`: log warnings only; exit once the parent is gone."""
    if args.quiet:
        logging.getLogger("glimpse.pools").setLevel(logging.WARNING)
    if args.exit_with_parent:
        when_orphaned(terminate_self)


def until_stopped(serve: Callable[[], None]) -> int:
    """Run ``serve`` until it returns, Ctrl-C or SIGTERM (which lets it clean up); return 0."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        serve()
    except KeyboardInterrupt:
        pass
    return 0


def run_foreground(command: list[str], env: dict | None = None) -> int:
    """Run an engine's own command until it exits (Ctrl-C: 130); return its exit code."""
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
