"""The workloads and the timer every benchmark shares.

Registered with cloudpickle to travel by value, so workers of any cluster can run them
without importing this folder.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
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


def array_sum(a):
    """A 4 MiB array in, a float out: the cost of sending large items."""
    return float(a.sum())


def array_double(a):
    """A 4 MiB array in, another out: the cost of large items both ways."""
    return a * 2


def array_filtered(a):
    """A 4 MiB array in, a filtered 4 MiB array out, ~50 ms of FFTs between: a feature map's cost."""
    import numpy as np

    for _ in range(4):
        a = np.fft.irfft(np.fft.rfft(a), len(a))
    return a


def arrays(count: int):
    """``count`` arrays of 4 MiB (512 Ki float64), the size of the images and feature maps users send."""
    import numpy as np

    return [np.full(2**19, float(i)) for i in range(count)]


def best_of(repeats: int, run, *args) -> float:
    """The shortest wall time of ``run(*args)`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def efficiencies(pools: list, workers: int, work: int, rounds: int) -> list[float]:
    """Serial time / (workers x wall time) of each pool on CPU-bound tasks, best of ``rounds``.

    Each round times the serial run and every pool back to back, so a machine busy with other
    work lowers one round rather than one column.
    """
    data = [work] * (4 * workers)
    best = [0.0] * len(pools)
    for _ in range(rounds):
        serial = best_of(1, list, map(busy, data[:workers])) * 4
        for index, pool in enumerate(pools):
            wall = best_of(1, pool.map, busy, data, 1)
            best[index] = max(best[index], serial / (workers * wall))
    return best


def interleaved(repeats: int, *runs) -> list[float]:
    """The shortest wall time of each of ``runs``, timed in turn ``repeats`` times, so that other
    load on the machine hits every column alike."""
    return [min(times) for times in interleaved_times(repeats, *runs)]


def interleaved_times(repeats: int, *runs) -> list[list[float]]:
    """Every wall time of each of ``runs``, timed in turn ``repeats`` times (see :func:`interleaved`).

    Each round starts with the next run, so no run always follows the same one: what a call
    leaves behind can slow the next (on IPython, a glimpse call right after ``map_sync`` took
    9.65 ms median, right after another glimpse call 9.06 ms), and that must not always land on
    the same column.
    """
    times: list[list[float]] = [[] for _ in runs]
    for round_ in range(repeats):
        for offset in range(len(runs)):
            index = (round_ + offset) % len(runs)
            times[index].append(best_of(1, runs[index]))
    return times


class BusyLoops:
    """``count`` processes spinning on the CPU (``--load``), each in its own session, ended by group.

    Measures a pool on a machine that is busy with other work, as a shared node often is.
    """

    def __init__(self, count: int):
        self.count = count
        self.processes: list = []

    def __enter__(self):
        import subprocess

        for _ in range(self.count):
            command = [sys.executable, "-c", "while True: pass"]
            self.processes.append(subprocess.Popen(command, start_new_session=True))
        return self

    def __exit__(self, *exc_info):
        import os
        import signal

        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class PeriodicSampler:
    """Calls :meth:`sample` every ``every`` seconds from a daemon thread while in a ``with`` block."""

    every = 1.0

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()


class JsonRecord:
    """The rows of one benchmark run, written as JSON for ``benchmarks/charts.py`` (``--json PATH``).

    The file holds ``{"benchmark", "machine", "settings", "rows"}``; each row is a dict of the
    figures the benchmark prints, so a chart never depends on the printed layout.
    """

    def __init__(self, benchmark: str, settings: dict):
        self.data = {
            "benchmark": benchmark,
            "machine": {
                "cores": os.cpu_count(),
                "python": sys.version.split()[0],
                "system": platform.platform(terse=True),
                "date": time.strftime("%Y-%m-%d"),
            },
            "settings": settings,
            "rows": [],
        }

    def add(self, **row) -> None:
        self.data["rows"].append(row)

    def write(self, path: str | None) -> None:
        if not path:
            return
        with open(path, "w") as file:
            json.dump(self.data, file, indent=1)
            file.write("\n")
