"""The workloads and the timer every benchmark shares.

Registered with cloudpickle to travel by value, so workers of any cluster can run them
without importing this folder.
"""

from __future__ import annotations

import sys
import time

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def tiny(x):
    """A task so small that only the pool's overhead is measured."""
    return x + 1


def busy(n):
    """A CPU-bound task whose cost grows with ``n``."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def best_of(repeats: int, run, *args) -> float:
    """The shortest wall time of ``run(*args)`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - started)
    return min(times)
