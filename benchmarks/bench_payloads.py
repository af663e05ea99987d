"""Large items (MiB-sized arrays and bytes) through glimpse, side by side with the engine's own API.

    python benchmarks/bench_payloads.py [--quick] [--pools multicore,dask,ray,zmq,ipython]

1. Streaming N fresh 1 MiB items from a generator through ``imap(len, ...)``: each pool in a
   fresh process; the caller's peak memory growth (goal <= 256 MiB) and the time beside
   ``multiprocessing.Pool.imap(len, gen, 1)``.
2. 200 float64 arrays of 4 MiB, ``a.sum()`` (small results) and ``a * 2`` (large results), with
   ``map`` and ``imap``: MulticorePool beside ``multiprocessing.Pool`` (``map``, and ``imap``
   with chunksize 1); Dask beside ``client.scatter`` + ``client.map``; Ray beside ``ray.put`` +
   one task per array. Ratios > 1 favour glimpse.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from workloads import array_double, array_sum, arrays, best_of

_STREAM = r"""
import json, multiprocessing, sys, time
def items(n):
    for i in range(n):
        yield bytes([i % 256]) * (1 << 20)
def peak_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
if __name__ == "__main__":
    kind, n = sys.argv[1], int(sys.argv[2])
    if kind == "multiprocessing":
        pool = multiprocessing.Pool(2)
        run = lambda: pool.imap(len, items(n), 1)
    else:
        from glimpse.pools import MakePool
        pool = MakePool(kind)
        run = lambda: pool.imap(len, items(n))
    assert sum(pool.map(len, [b"warm"] * 4)) == 16
    open("/proc/self/clear_refs", "w").write("5")
    before = rss_mib()
    started = time.perf_counter()
    total = sum(run())
    seconds = time.perf_counter() - started
    assert total == n << 20, total
    print(json.dumps({"seconds": seconds, "growth": peak_mib() - before}))
    pool.terminate()
"""


def stream(kind: str, items: int) -> dict:
    """Time and peak memory growth of streaming ``items`` fresh 1 MiB items, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _STREAM, kind, str(items)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def multicore_rows(data, repeats: int) -> list[tuple[str, float, float]]:
    import multiprocessing

    from glimpse.pools import MulticorePool

    rows = []
    with MulticorePool(2) as ours, multiprocessing.Pool(2) as theirs:
        ours.map(array_sum, data[:4])
        theirs.map(array_sum, data[:4])
        for func in (array_sum, array_double):
            name = func.__name__
            rows.append(
                (f"{name} map", best_of(repeats, theirs.map, func, data), best_of(repeats, ours.map, func, data))
            )
            rows.append(
                (
                    f"{name} imap (mp chunksize 1)",
                    best_of(repeats, lambda f=func: list(theirs.imap(f, data, 1))),
                    best_of(repeats, lambda f=func: list(ours.imap(f, data))),
                )
            )
    return rows


def dask_rows(data, repeats: int) -> list[tuple[str, float, float]]:
    from distributed import Client, LocalCluster

    from glimpse.pools.dask_cluster import DaskPool

    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            pool = DaskPool(client=client)

            def native(func):
                futures = client.map(func, client.scatter(data), pure=False)
                return client.gather(futures)

            for func in (array_sum, array_double):
                name = func.__name__
                native(func)
                rows.append(
                    (f"dask {name} map", best_of(repeats, native, func), best_of(repeats, pool.map, func, data))
                )
            pool.close()
    return rows


def ray_rows(data, repeats: int) -> list[tuple[str, float, float]]:
    import ray

    from glimpse.pools.ray_cluster import RayPool

    pool = RayPool()
    rows = []
    for func in (array_sum, array_double):
        remote = ray.remote(func)

        def native(f=remote):
            return ray.get([f.remote(ray.put(a)) for a in data])

        native()
        rows.append((f"ray {func.__name__} map", best_of(repeats, native), best_of(repeats, pool.map, func, data)))
    pool.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    parser.add_argument("--pools", default="multicore,dask,ray,zmq,ipython", help="pools to stream through")
    args = parser.parse_args()
    items, count, repeats = (300, 60, 1) if args.quick else (2000, 200, 3)
    kinds = [k for k in args.pools.split(",") if k]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    print(f"1. streaming {items} fresh 1 MiB items through imap(len, ...), 2 workers")
    print(f"{'pool':<16} {'seconds':>8} {'growth MiB':>11} {'time ratio vs mp':>17}")
    baseline = stream("multiprocessing", items)
    print(f"{'multiprocessing':<16} {baseline['seconds']:>8.2f} {baseline['growth']:>11.0f} {'1.00x':>17}")
    for kind in kinds:
        try:
            result = stream(kind, items)
        except subprocess.CalledProcessError as exc:
            print(f"{kind:<16} failed: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}")
            continue
        ratio = baseline["seconds"] / result["seconds"]
        print(f"{kind:<16} {result['seconds']:>8.2f} {result['growth']:>11.0f} {ratio:>16.2f}x")

    data = arrays(count)
    print(f"\n2. {count} float64 arrays of 4 MiB (ratio = theirs / glimpse; > 1 favours glimpse)")
    print(f"{'measure':<36} {'theirs':>9} {'glimpse':>9} {'ratio':>7}")
    rows = multicore_rows(data, repeats)
    if "dask" in kinds:
        rows += dask_rows(data, repeats)
    if "ray" in kinds:
        rows += ray_rows(data, repeats)
    for name, theirs, ours in rows:
        print(f"{name:<36} {theirs:>8.3f}s {ours:>8.3f}s {theirs / ours:>6.2f}x")


if __name__ == "__main__":
    main()
