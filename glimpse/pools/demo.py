"""The main job: run one CPU-bound workload through every installed pool and compare speeds."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from glimpse.pools.registry import CLUSTER_TYPES, LOCAL_POOLS, MakePool, embedded_runs_here


def count_primes_below(limit: int) -> int:
    """A small CPU-bound task: the number of primes below ``limit``, by trial division."""
    count = 0
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


@dataclass
class Timing:
    """One row of the demo's table."""

    pool: str
    items: int
    startup: float
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else float("inf")


def run_demo(kinds: list[str], items: int, work: int, address: str | None, progress: bool) -> list[Timing]:
    """Time ``pool.map(count_primes_below, ...)`` on each pool kind; check every result agrees."""
    inputs = [work + i % 7 for i in range(items)]
    expected = None
    timings = []
    for kind in kinds:
        started = time.perf_counter()
        kwargs = {"address": address} if address and kind in CLUSTER_TYPES else {}
        with MakePool(kind, **kwargs) as pool:
            pool.map(count_primes_below, inputs[: min(4, items)])
            ready = time.perf_counter()
            results = pool.map(count_primes_below, inputs, progress=progress)
            done = time.perf_counter()
        if expected is None:
            expected = results
        elif results != expected:
            raise AssertionError(f"{kind} returned different results from {kinds[0]}")
        timings.append(Timing(kind, items, ready - started, done - ready))
    return timings


def format_table(timings: list[Timing]) -> str:
    """The table: pool, items, startup and compute seconds, items/s, speedup over the first row."""
    base = timings[0].seconds if timings else 0.0
    rows = [f"{'pool':<12} {'items':>7} {'startup s':>10} {'seconds':>9} {'items/s':>9} {'speedup':>8}"]
    for t in timings:
        speedup = base / t.seconds if t.seconds else float("inf")
        rows.append(f"{t.pool:<12} {t.items:>7} {t.startup:>10.2f} {t.seconds:>9.2f} {t.rate:>9.1f} {speedup:>7.2f}x")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m glimpse.pools demo``: parse options, run the demo, print the table."""
    installed = [*LOCAL_POOLS, *(name for name in CLUSTER_TYPES if embedded_runs_here(name))]
    parser = argparse.ArgumentParser(
        prog="python -m glimpse.pools demo",
        description="Run a CPU-bound workload (counting primes) through every installed pool and compare. "
        "Cluster pools start an embedded engine unless --address names an existing one.",
    )
    parser.add_argument(
        "--pools",
        default=",".join(installed),
        help=f"comma-separated pool kinds, singlecore first as the baseline (default: {','.join(installed)})",
    )
    parser.add_argument("--items", type=int, default=400, help="number of tasks (default: 400)")
    parser.add_argument(
        "--work", type=int, default=6000, help="size of each task: count primes below this (default: 6000)"
    )
    parser.add_argument("--address", help="address of an existing Dask or Ray scheduler for the cluster pool chosen")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.pools.split(",") if k.strip()]
    if args.address and sum(k in CLUSTER_TYPES for k in kinds) != 1:
        parser.error("--address needs exactly one cluster pool in --pools")
    timings = run_demo(kinds, args.items, args.work, args.address, progress=not args.no_progress)
    print(format_table(timings))
    return 0
