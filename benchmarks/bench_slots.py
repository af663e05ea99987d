"""Efficiency on a cluster of many worker slots, against the engine's own API, in one run.

    python benchmarks/bench_slots.py [--engine dask|ray|zmq] [--slots 64 256] [--quick] [--json PATH]

Many slots are simulated on this machine: Dask workers with many threads, Ray with ``num_cpus``
set high, an embedded zmq cluster with many worker slots (a process each), and tasks that sleep
50 ms (so the cores are free and only the engine's and the pool's cost per task count).
Efficiency = ideal time (items x 50 ms / slots) / wall time; goal >= 0.9 for glimpse ``map``,
``imap`` and ``imap_unordered`` (no chunksize given), beside ``client.map`` + ``gather`` (Dask),
one ``ray.remote`` task per item (Ray), or ``multiprocessing.Pool(slots).map`` (zmq, which has no
API of its own).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from workloads import JsonRecord, best_of

SECONDS = 0.05


def nap(x):
    time.sleep(SECONDS)
    return x


def measure(pool, engine_map, slots: int, items: int, repeats: int) -> dict[str, float]:
    data = list(range(items))
    ideal = items * SECONDS / slots
    runs = {
        "engine's own": lambda: engine_map(data),
        "glimpse map": lambda: pool.map(nap, data),
        "glimpse imap": lambda: list(pool.imap(nap, data)),
        "glimpse imap_unordered": lambda: list(pool.imap_unordered(nap, data)),
    }
    expected = sorted(data)
    assert sorted(runs["glimpse imap_unordered"]()) == expected  # also lets the pool learn the item cost
    return {name: ideal / best_of(repeats, run) for name, run in runs.items()}


def dask_rows(slots: int, items: int, repeats: int) -> dict[str, float]:
    from distributed import LocalCluster

    from glimpse.pools.dask_cluster import DaskPool

    with (
        LocalCluster(n_workers=2, threads_per_worker=slots // 2, host="127.0.0.1", dashboard_address=None) as cluster,
        DaskPool(cluster.scheduler_address) as pool,
    ):
        client = pool._backend.client

        def engine_map(data):
            return client.gather(client.map(nap, data, pure=False))

        return measure(pool, engine_map, slots, items, repeats)


def ray_rows(slots: int, items: int, repeats: int) -> dict[str, float]:
    import ray

    from glimpse.pools.ray_cluster import RayPool

    pool = RayPool(num_cpus=slots, log_to_driver=False)
    try:
        remote_nap = ray.remote(num_cpus=1)(nap)

        def engine_map(data):
            return ray.get([remote_nap.remote(x) for x in data])

        return measure(pool, engine_map, slots, items, repeats)
    finally:
        pool.close()


def zmq_rows(slots: int, items: int, repeats: int) -> dict[str, float]:
    import multiprocessing

    from glimpse.pools.zmq_cluster import MakePool

    with MakePool(workers=slots) as pool, multiprocessing.Pool(slots) as stdlib:

        def engine_map(data):
            return stdlib.map(nap, data)

        return measure(pool, engine_map, slots, items, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=tuple(_ROWS), action="append")
    parser.add_argument("--slots", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (for benchmarks/charts.py)")
    args = parser.parse_args()
    repeats = 1 if args.quick else 2
    record = JsonRecord("slots", {"task_seconds": SECONDS, "repeats": repeats})
    print(f"Efficiency with many slots ({SECONDS * 1000:.0f} ms sleep tasks), Python {sys.version.split()[0]}")
    print(f"{'engine':<6} {'slots':>5} {'items':>6}  " + "  ".join(f"{name:>22}" for name in _NAMES))
    for engine in args.engine or ["dask", "ray"]:
        rows = _ROWS[engine]
        for slots in args.slots:
            items = slots * (10 if args.quick else 50)
            efficiency = rows(slots, items, repeats)
            print(f"{engine:<6} {slots:>5} {items:>6}  " + "  ".join(f"{efficiency[n]:>22.2f}" for n in _NAMES))
            record.add(engine=engine, slots=slots, items=items, efficiency={n: efficiency[n] for n in _NAMES})
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    record.write(args.json)


_NAMES = ("engine's own", "glimpse map", "glimpse imap", "glimpse imap_unordered")
_ROWS = {"dask": dask_rows, "ray": ray_rows, "zmq": zmq_rows}

if __name__ == "__main__":
    main()
