"""RayPool against Ray's own APIs, side by side in one run on one embedded Ray, reported as ratios.

    python benchmarks/bench_ray.py [--quick]

Rows: CPU-bound efficiency, serial time / (CPUs x wall time) (goal >= 0.9); then tiny tasks
through ``map`` and ``imap``, against ``ray.util.multiprocessing.Pool`` (goal: ratio >= 1,
glimpse at least as fast) and against one ``@ray.remote`` task per item (goal: >= 10x).
Each contender runs while the other is idle.
"""

from __future__ import annotations

import argparse
import os
import sys

import ray
from ray.util.multiprocessing import Pool as RayMultiprocessingPool
from workloads import best_of, busy, tiny

from glimpse.pools.ray_cluster import RayPool


def measure_tiny(ours: RayPool, cpus: int, items: int, per_task_items: int, repeats: int) -> list[tuple]:
    """Rows of (measure, items, Ray's seconds, glimpse's seconds) for ``tiny`` over many items."""
    many, few = list(range(items)), list(range(per_task_items))
    mp_chunks = max(1, items // (4 * cpus))
    with RayMultiprocessingPool(cpus) as theirs:
        theirs.map(tiny, range(100))
        pool_map = best_of(repeats, lambda: theirs.map(tiny, many))
        pool_imap = best_of(repeats, lambda: list(theirs.imap(tiny, many, chunksize=mp_chunks)))
        pool_imap_default = best_of(repeats, lambda: list(theirs.imap(tiny, few)))
    remote_tiny = ray.remote(num_cpus=1)(tiny)
    ray.get([remote_tiny.remote(x) for x in range(100)])
    per_task = best_of(repeats, lambda: ray.get([remote_tiny.remote(x) for x in few]))

    ours.map(tiny, range(100))
    our_map = best_of(repeats, lambda: ours.map(tiny, many))
    our_imap = best_of(repeats, lambda: list(ours.imap(tiny, many)))
    our_map_few = best_of(repeats, lambda: ours.map(tiny, few))
    our_imap_few = best_of(repeats, lambda: list(ours.imap(tiny, few)))
    return [
        ("tiny map vs Ray Pool.map", items, pool_map, our_map),
        (f"tiny imap vs Ray Pool.imap(chunksize={mp_chunks})", items, pool_imap, our_imap),
        ("tiny imap vs Ray Pool.imap (its default)", per_task_items, pool_imap_default, our_imap_few),
        ("tiny map vs one task per item", per_task_items, per_task, our_map_few),
        ("tiny imap vs one task per item", per_task_items, per_task, our_imap_few),
    ]


def measure_efficiency(ours: RayPool, cpus: int, tasks: int, work: int, repeats: int) -> tuple[float, float]:
    """Serial time / (CPUs x wall time), the best of ``repeats`` runs each timed next to its own serial
    run, so that other load on a shared machine hits both alike."""
    data = [work] * tasks

    def efficiency(pool) -> float:
        pool.map(busy, [work // 10] * (4 * cpus))
        best = 0.0
        for _ in range(repeats):
            serial = best_of(1, lambda: [busy(n) for n in data[:cpus]]) * tasks / cpus
            wall = best_of(1, lambda: pool.map(busy, data))
            best = max(best, serial / (cpus * wall))
        return best

    our_efficiency = efficiency(ours)
    with RayMultiprocessingPool(cpus) as theirs:
        return efficiency(theirs), our_efficiency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    args = parser.parse_args()
    items, per_task_items, repeats = (20_000, 2_000, 1) if args.quick else (200_000, 10_000, 3)
    tasks, work = (16, 500_000) if args.quick else (32, 2_000_000)

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    pool = RayPool(log_to_driver=False)
    try:
        cpus = int(ray.cluster_resources()["CPU"])
        print(f"RayPool vs Ray {ray.__version__} on an embedded Ray with {cpus} CPUs, Python {sys.version.split()[0]}")
        print(f"{'measure':<48} {'Ray':>9} {'glimpse':>9} {'ratio':>8}")
        pool_eff, our_eff = measure_efficiency(pool, cpus, tasks, work, repeats=3)
        print(
            f"{'CPU-bound efficiency vs Ray Pool.map':<48} {pool_eff:>9.2f} {our_eff:>9.2f} {our_eff / pool_eff:>7.2f}x"
        )
        for name, count, theirs, mine in measure_tiny(pool, cpus, items, per_task_items, repeats):
            print(f"{name + f' ({count} items)':<48} {theirs:>8.3f}s {mine:>8.3f}s {theirs / mine:>7.2f}x")
        print("(ratio = Ray / glimpse for times, glimpse / Ray for efficiency; > 1 means glimpse is better)")
        print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
