"""How fast an IPython controller gives up on a silent engine: the heartbeat settings glimpse passes
to the controllers its verbs start, drawn from ``$GLIMPSE_SILENCE_TIMEOUT``.

The controller's hub pings every engine each ``HeartMonitor.period`` ms and unregisters one that
misses more than ``HeartMonitor.max_heartmonitor_misses`` pings in a row; its tasks then come back
as ``EngineError`` and glimpse runs them again elsewhere. A silent controller looks to the hub
like every engine falling silent at once, so the hub must wait out a blip as long as the caller
does: one line, ``silence_timeout()``, for both. The same line tells an engine that hears no ping
for that long to stop, so ``LaunchWorker`` starts one that can register again.
"""

from __future__ import annotations

import math

from glimpse.pools.contract.watch import silence_timeout

#: How often the hub pings each engine, in milliseconds (ipyparallel's default: 3000).
PERIOD_MS = 1000
#: An engine checks for the hub's pings this much less often than the hub sends them.
_ENGINE_CHECK_EXTRA_MS = 500


def misses_allowed(silence_seconds: float, period_ms: int = PERIOD_MS) -> int:
    """``max_heartmonitor_misses`` that unregisters an engine after ``silence_seconds`` of silence
    (the hub acts on the ping after the last one allowed to go unanswered)."""
    return max(1, math.ceil(silence_seconds * 1000 / period_ms) - 1)


def controller_options() -> list[str]:
    """``ipcontroller`` options: an engine silent for ``$GLIMPSE_SILENCE_TIMEOUT`` seconds (25) is
    unregistered (within one period more); a shorter silence is a blip it survives."""
    misses = misses_allowed(silence_timeout())
    return [f"--HeartMonitor.period={PERIOD_MS}", f"--HeartMonitor.max_heartmonitor_misses={misses}"]


def engine_options(period_ms: int = PERIOD_MS) -> list[str]:
    """``ipengine`` options: an engine that hears no ping from its controller (sent every ``period_ms``,
    as glimpse's controllers do) for ``$GLIMPSE_SILENCE_TIMEOUT`` seconds stops, to be started again."""
    checks = math.ceil(silence_timeout() * 1000 / (period_ms + _ENGINE_CHECK_EXTRA_MS))
    return [f"--IPEngine.max_heartbeat_misses={max(1, checks)}"]
