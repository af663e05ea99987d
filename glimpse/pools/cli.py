"""``glimpse-cluster [--type T] VERB [args]``: run a cluster type's verbs (``RunMain``) from a shell."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from glimpse.pools.registry import (
    CLUSTER_TYPES,
    DEFAULT_CLUSTER_TYPE,
    GetClusterPackage,
    extra_installed,
    install_command,
)

USAGE = """usage: glimpse-cluster [--type TYPE] VERB [options]

Start, inspect and stop the cluster that glimpse pools of TYPE run on. TYPE defaults to
$GLIMPSE_CLUSTER_TYPE, else {default}. `glimpse-cluster --type TYPE VERB --help` shows a verb's options.

cluster types and their verbs:
{types}
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glimpse-cluster`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    cluster_type, rest = _split_type(args)
    if not rest or rest[0] in ("-h", "--help"):
        print(help_text())
        return 0 if rest else 2
    try:
        package = GetClusterPackage(cluster_type)
    except (ValueError, ImportError) as exc:
        print(f"glimpse-cluster: error: {exc}", file=sys.stderr)
        return 2
    return package.RunMain(rest)


def help_text() -> str:
    """The ``--help`` text: every cluster type with its verbs, or the command that installs it."""
    lines = []
    for name in CLUSTER_TYPES:
        if extra_installed(name):
            verbs = ", ".join(GetClusterPackage(name).VERBS)
        else:
            verbs = f"not installed ({install_command(name)})"
        lines.append(f"  {name:<10} {verbs}")
    default = os.environ.get("GLIMPSE_CLUSTER_TYPE") or DEFAULT_CLUSTER_TYPE
    return USAGE.format(default=default, types="\n".join(lines))


def _split_type(args: list[str]) -> tuple[str | None, list[str]]:
    if args and args[0] in ("--type", "-t") and len(args) > 1:
        return args[1], args[2:]
    if args and args[0].startswith("--type="):
        return args[0].split("=", 1)[1], args[1:]
    return None, args


if __name__ == "__main__":
    sys.exit(main())
