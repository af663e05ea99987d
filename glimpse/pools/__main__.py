"""``python -m glimpse.pools demo [options]``: the demo; ``python -m glimpse.pools cluster ...``: glimpse-cluster."""

import sys

from glimpse.pools import cli, demo

_COMMANDS = {"demo": demo.main, "cluster": cli.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in _COMMANDS:
        print(f"usage: python -m glimpse.pools {{{','.join(_COMMANDS)}}} [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(_COMMANDS[sys.argv[1]](sys.argv[2:]))
