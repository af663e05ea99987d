"""DaskPool against Dask's own futures, side by side in one run on one embedded cluster, as ratios.

    python benchmarks/bench_dask.py [--quick]

Rows: tiny tasks through ``map`` and ``imap_unordered(chunksize=None)`` against
``client.gather(client.map(f, items))`` on the same cluster (goal: >= 20x); then CPU-bound
efficiency, serial time on a worker / (threads x wall time), for items of about 50 ms (goal >= 0.9), with
``client.map`` measured the same way. Each contender runs while the other is idle.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import dask
from workloads import best_of, busy, tiny

from glimpse.pools.dask_cluster import DaskPool


def dask_map(client, func, items) -> list:
    return client.gather(client.map(func, items, pure=False))


def measure_tiny(pool: DaskPool, items: int, repeats: int) -> list[tuple]:
    """Rows of (measure, items, Dask's seconds, glimpse's seconds) for ``tiny`` over many items."""
    client = pool._backend.client
    data = list(range(items))
    dask_map(client, tiny, range(100))
    # One future per item costs milliseconds each: one run of Dask's side is long enough to time.
    theirs = best_of(1, lambda: dask_map(client, tiny, data))
    pool.map(tiny, range(100))
    our_map = best_of(repeats, lambda: pool.map(tiny, data))
    our_unordered = best_of(repeats, lambda: list(pool.imap_unordered(tiny, data)))
    return [
        ("tiny map vs client.map+gather", items, theirs, our_map),
        ("tiny imap_unordered vs client.map+gather", items, theirs, our_unordered),
    ]


def calibrate(seconds: float) -> int:
    """The argument of ``busy`` that takes about ``seconds`` here."""
    n = 100_000
    took = best_of(3, functools.partial(busy, n))
    while took < seconds / 4:
        n *= 2
        took = best_of(3, functools.partial(busy, n))
    return int(n * seconds / took)


def measure_efficiency(pool: DaskPool, threads: int, tasks: int, work: int, repeats: int) -> list[tuple]:
    """Rows of (measure, efficiency): one thread's share of the items run serially on a worker,
    over the wall time of all items; each the best of ``repeats`` runs timed next to its own
    serial run, so that other load on a shared machine hits both alike."""
    client = pool._backend.client
    data = [work] * tasks
    contenders = {
        "client.map+gather": lambda: dask_map(client, busy, data),
        "glimpse map": lambda: pool.map(busy, data),
        "glimpse imap_unordered": lambda: list(pool.imap_unordered(busy, data)),
    }
    rows = []
    for name, run in contenders.items():
        best = 0.0
        for _ in range(repeats):
            share = client.submit(serial_seconds, data[: tasks // threads], pure=False).result()
            best = max(best, share / best_of(1, run))
        rows.append((name, best))
    return rows


def serial_seconds(data: list) -> float:
    """Run on a worker: how long ``busy`` takes over ``data`` in one thread."""
    started = time.perf_counter()
    for n in data:
        busy(n)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat of each, fewer CPU-bound items")
    args = parser.parse_args()
    # Four chunks per thread, as map cuts them, so every thread gets the same work.
    repeats, chunk = (1, 3) if args.quick else (3, 8)

    with dask.config.set({"scheduler-address": None}), DaskPool() as pool:
        threads = pool._backend.workers()
        print(f"DaskPool vs Dask {dask.__version__} on an embedded LocalCluster with {threads} threads, ", end="")
        print(f"Python {sys.version.split()[0]}")
        print(f"{'measure':<60} {'Dask':>9} {'glimpse':>9} {'ratio':>8}")
        for name, count, theirs, mine in measure_tiny(pool, 20_000, repeats):
            print(f"{name + f' ({count} items)':<60} {theirs:>8.3f}s {mine:>8.3f}s {theirs / mine:>7.1f}x")
        work = calibrate(0.05)
        rows = dict(measure_efficiency(pool, threads, threads * 4 * chunk, work, repeats))
        theirs = rows.pop("client.map+gather")
        for name, mine in rows.items():
            label = f"CPU-bound efficiency, {name} ({threads * 4 * chunk} x 50 ms)"
            print(f"{label:<60} {theirs:>9.2f} {mine:>9.2f} {mine / theirs:>7.2f}x")
        print("(ratio = Dask / glimpse for times, glimpse / Dask for efficiency; > 1 means glimpse is better)")
        print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
