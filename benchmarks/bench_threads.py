"""MulticorePool with its BLAS thread caps and without them, side by side in one run, reported as ratios.

    python benchmarks/bench_threads.py [--quick] [--processes N] [--items N] [--repeats N]

Each item multiplies 512×512 float64 matrices (numpy) a few times. With the caps (glimpse's
default) each of N worker processes runs cores ÷ N BLAS threads; without them (the thread
variables set to the core count, which glimpse keeps, as BLAS does when nothing is set) each runs
one thread per core: N² threads on N cores. Ratio = uncapped time / capped time (> 1: the caps
are faster), of the best times and of the median times of interleaved runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys

import cloudpickle
from workloads import interleaved_times

from glimpse.pools import MulticorePool
from glimpse.pools.thread_caps import THREAD_VARIABLES, available_cores

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE = 512
PRODUCTS_PER_ITEM = 4


def matrix_products(seed: int) -> float:
    """A few 512×512 float64 matrix products, the BLAS work of one item."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = rng.random((SIZE, SIZE)), rng.random((SIZE, SIZE)) / SIZE
    for _ in range(PRODUCTS_PER_ITEM):
        a = a @ b
    return float(a[0, 0])


def blas_threads(_item) -> int:
    """How many threads the BLAS of the worker that runs this item uses."""
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)
    from threadpoolctl import threadpool_info

    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=0)


@contextlib.contextmanager
def thread_variables(value: str | None):
    """Every thread variable set to ``value`` (glimpse keeps what is set), or unset (glimpse caps it),
    while a pool starts its workers."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    for name in THREAD_VARIABLES:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def started_pool(processes: int) -> tuple[MulticorePool, set[int]]:
    """A pool whose workers have all started, and the BLAS thread counts its workers report."""
    pool = MulticorePool(processes)
    threads = set(pool.map(blas_threads, range(8 * processes), chunksize=1))
    return pool, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--items", type=int, help="items per map (default 64, 8 with --quick)")
    parser.add_argument("--repeats", type=int, help="interleaved runs of each pool (default 5, 1 with --quick)")
    args = parser.parse_args()
    items = args.items or (8 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 5)
    cores = available_cores()

    with thread_variables(None):
        capped, capped_threads = started_pool(args.processes)
    with thread_variables(str(cores)):
        uncapped, uncapped_threads = started_pool(args.processes)
    data = list(range(items))
    with capped, uncapped:
        capped.map(matrix_products, data[: args.processes], chunksize=1)
        uncapped.map(matrix_products, data[: args.processes], chunksize=1)
        uncapped_times, capped_times = interleaved_times(
            repeats,
            lambda: uncapped.map(matrix_products, data, chunksize=1),
            lambda: capped.map(matrix_products, data, chunksize=1),
        )

    print(
        f"MulticorePool, {args.processes} processes on {cores} cores, {items} items of {PRODUCTS_PER_ITEM} "
        f"{SIZE}x{SIZE} float64 products, Python {sys.version.split()[0]}, best and median of {repeats} interleaved"
    )
    print(f"BLAS threads per worker: capped {sorted(capped_threads)}, uncapped {sorted(uncapped_threads)}")
    print(f"{'measure':<34} {'uncapped':>10} {'capped':>10} {'ratio':>8} {'median ratio':>13}")
    best = min(uncapped_times) / min(capped_times)
    typical = statistics.median(uncapped_times) / statistics.median(capped_times)
    name = f"matrix products map ({items} items)"
    print(f"{name:<34} {min(uncapped_times):>9.3f}s {min(capped_times):>9.3f}s {best:>7.2f}x {typical:>12.2f}x")
    print("(ratio = uncapped / capped time: above 1, the caps make the map faster)")


if __name__ == "__main__":
    main()
