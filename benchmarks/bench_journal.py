"""The cost of ``journal=PATH``: MulticorePool.map with and without a journal, side by side in one run.

    python benchmarks/bench_journal.py [--quick] [--processes N] [--repeats N]

Rows: 1 ms items (CPU spin) with small results (goal: time ratio journal / none <= 1.10), items
returning a 1 MiB numpy array each, and a run over a finished journal (every result read from the
file) beside the run that wrote it. Each journalled run starts from a fresh file. Times are the best and the
median of interleaved runs; ``bytes/item`` is the journal file's size over its items (after the
run: SQLite folds its write-ahead log into the file when the last connection closes). The 1 MiB
row is bound by how fast the disk takes writes: SQLite writes each result twice (its log, then
the database).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from workloads import interleaved_times

from glimpse.pools import MulticorePool


def one_ms(x):
    """About a millisecond of CPU, then a small result."""
    deadline = time.perf_counter() + 0.001
    while time.perf_counter() < deadline:
        pass
    return x + 1


def one_mib(x):
    """A 1 MiB float64 array: the size of a small feature map."""
    import numpy as np

    return np.full(2**17, float(x))


def fresh(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def measure(pool, func, data, path: str, repeats: int) -> tuple[list[float], list[float], int]:
    """Times of ``map`` without and with a fresh journal, and the journal's size in bytes."""

    def with_journal():
        fresh(path)
        pool.map(func, data, journal=path)

    plain, journalled = interleaved_times(repeats, lambda: pool.map(func, data), with_journal)
    return plain, journalled, os.path.getsize(path)


def measure_resume(pool, func, data, path: str, repeats: int) -> tuple[list[float], list[float]]:
    """Times of a first journalled run and of a run over its finished journal."""
    first, resumed = [], []
    for _ in range(repeats):
        fresh(path)
        started = time.perf_counter()
        pool.map(func, data, journal=path)
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        pool.map(func, data, journal=path)
        resumed.append(time.perf_counter() - started)
    return first, resumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, help="interleaved runs of each measure (default 5, 1 with --quick)")
    args = parser.parse_args()
    small, large, repeats = (1_000, 40, 1) if args.quick else (10_000, 400, 5)
    repeats = args.repeats or repeats

    print(
        f"MulticorePool({args.processes}).map without and with journal=PATH, Python {sys.version.split()[0]}, "
        f"best and median of {repeats} interleaved"
    )
    print(f"{'measure':<38} {'no journal':>11} {'journal':>9} {'ratio':>7} {'median ratio':>13} {'bytes/item':>11}")
    with tempfile.TemporaryDirectory(prefix="glimpse-bench-journal-") as folder, MulticorePool(args.processes) as pool:
        path = os.path.join(folder, "bench.journal")
        pool.map(one_ms, range(4 * args.processes))
        rows = [
            (f"1 ms items, small results ({small})", one_ms, list(range(small))),
            (f"1 MiB numpy results ({large})", one_mib, list(range(large))),
        ]
        for name, func, data in rows:
            plain, journalled, size = measure(pool, func, data, path, repeats)
            best = min(journalled) / min(plain)
            typical = statistics.median(journalled) / statistics.median(plain)
            print(
                f"{name:<38} {min(plain):>10.3f}s {min(journalled):>8.3f}s {best:>6.2f}x {typical:>12.2f}x "
                f"{size / len(data):>11.0f}"
            )
        first, resumed = measure_resume(pool, one_ms, list(range(small)), path, repeats)
        name = f"resume a finished journal ({small})"
        print(
            f"{name:<38} {min(first):>10.3f}s {min(resumed):>8.3f}s {min(first) / min(resumed):>6.1f}x "
            f"{statistics.median(first) / statistics.median(resumed):>12.1f}x"
        )
    print("(ratio = with journal / without: the journal's cost, goal <= 1.10 on 1 ms items;")
    print(" resume row: the run that wrote the journal / a run over the finished journal, which reads every result)")


if __name__ == "__main__":
    main()
