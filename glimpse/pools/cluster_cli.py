"""The command-line shape shared by every cluster module's ``RunMain``: verbs and their options."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from glimpse.pools.errors import ClusterConnectionError

log = logging.getLogger(__name__)


@dataclass
class Verb:
    """One verb of ``glimpse-cluster``: what it does, its options, and the function that runs it."""

    help: str
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda parser: None)


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
    except (ClusterConnectionError, ValueError, OSError, TimeoutError) as exc:
        print(f"{prog} {args.verb}: error: {exc}", file=sys.stderr)
        return 1
