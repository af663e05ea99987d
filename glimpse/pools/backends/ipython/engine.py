"""An ipyparallel engine that says why it stopped, so ``LaunchWorker`` knows when to start it again:
``python -m glimpse.pools.backends.ipython.engine [ipengine options]``.

ipyparallel never lets an engine its controller unregistered back in: an engine cut off from the
controller for longer than the controller's heartbeat limit is lost for good, even once its machine
is back. ipyparallel's engine exits with status 1 both when it heard no heartbeat for
``IPEngine.max_heartbeat_misses`` checks and when it is told to stop (SIGTERM), so this engine looks
at why it stopped: :data:`LOST_CONTROLLER` after missed heartbeats (``LaunchWorker`` sets them to
last ``$GLIMPSE_SILENCE_TIMEOUT``), :data:`REGISTRATION_TIMED_OUT` when the controller did not
answer its registration, 0 when told to stop. It ignores glimpse's interrupt signal from the start
(a cancelled call signals every engine, also one registered after the call began).
"""

from __future__ import annotations

import signal
import sys

from glimpse.pools.backends.ipython import compat
from glimpse.pools.backends.ipython.backend import INTERRUPT_SIGNAL

#: Exit status after losing the controller's heartbeats (EX_TEMPFAIL).
LOST_CONTROLLER = 75
#: Exit status when the controller did not answer the engine's registration (EX_UNAVAILABLE).
REGISTRATION_TIMED_OUT = 69


def main(argv: list[str] | None = None) -> int:
    """Run an engine until it stops; its exit status, as the module docstring says."""
    from ipyparallel.engine.app import IPEngine

    app = IPEngine.instance()
    app.initialize(argv)
    timed_out = []
    abort = app.abort

    def registration_timed_out():
        timed_out.append(True)
        abort()

    app.abort = registration_timed_out
    signal.signal(getattr(signal, INTERRUPT_SIGNAL), signal.SIG_IGN)
    try:
        app.start()
    except SystemExit:
        if timed_out:
            return REGISTRATION_TIMED_OUT
        raise
    except RuntimeError as error:
        # ipyparallel stops the event loop under the engine's feet after missed heartbeats and on SIGTERM
        if "loop stopped" not in str(error):
            raise
    return LOST_CONTROLLER if compat.engine_lost_controller(app) else 0


if __name__ == "__main__":
    sys.exit(main())
