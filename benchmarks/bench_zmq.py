"""ZmqPool against MulticorePool, side by side in one run.

    python benchmarks/bench_zmq.py [--quick] [--workers N]

One message per item would only measure ZeroMQ, so the reference is MulticorePool on the same
cores, beside two zmq clusters: the embedded one (a broker that runs the worker slots itself, as
``LaunchBroker --nworkers``) and, in the "+worker" columns, a broker with a ``LaunchWorker``
process (the layout of a worker machine: one more hop each way). Rows: the time of a one-item
call (what every call pays to cross the broker, and a worker process, and back); tiny-task
throughput through ``map``, ``imap`` and ``imap_unordered`` with automatic chunk sizes, on calls
of 20k items (a few milliseconds: mostly the latency of a call, which crosses two more hops than
MulticorePool's: to the broker and back) and of 200k and 1M items (a stream: the cost per item);
ratio = glimpse zmq throughput / MulticorePool throughput, of the best runs and of the median
runs, the pools taking turns (calls of 20k items take turns ten times as often: a call of ~2 ms
swings by a third from run to run). Then CPU-bound efficiency (serial time / (workers x wall
time), best of three rounds; goal >= 0.9) of each pool.

Then the cost of signing every message with the cluster key: a cluster with a LaunchWorker process
with signing (the default) and with ``insecure=True``, on tiny items and on 4 MiB arrays one way
(``array_sum``), both ways (``array_double``), and both ways with ~50 ms of FFTs
between (``array_filtered``, closer to real work); ratio = signed / unsigned throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

from workloads import (
    array_double,
    array_filtered,
    array_sum,
    arrays,
    efficiencies,
    interleaved,
    interleaved_times,
    tiny,
)

from glimpse.pools import MulticorePool
from glimpse.pools.cluster.embedded import EmbeddedCluster
from glimpse.pools.security import generate_key, insecure_key
from glimpse.pools.zmq_cluster import ADDRESS_VARIABLE, MakePool


@contextlib.contextmanager
def worker_process_pool(workers: int, insecure: bool = False):
    """A pool on a broker whose ``workers`` slots run in a ``LaunchWorker`` process of their own, all
    talking over TCP (signed unless ``insecure``)."""
    key = insecure_key("the benchmark's cluster") if insecure else generate_key("the key of the benchmark's cluster")
    cluster = EmbeddedCluster.start("zmq", workers, key)
    try:
        with MakePool(cluster.address, key=None if insecure else key.secret.hex(), insecure=insecure) as pool:
            if pool._backend.wait_for_workers(workers, 60) < workers:
                raise RuntimeError("the LaunchWorker process did not connect its slots within 60 s")
            yield pool
    finally:
        cluster.stop()
        cluster.join()


def measure_tiny(pools: list, items: int, repeats: int) -> list[tuple[str, list[list[float]]]]:
    """(call, every time of each pool) of each call on ``items`` tiny items, ``repeats`` runs taken
    in turns."""
    data = list(range(items))
    runs = {
        "map": lambda pool: pool.map(tiny, data),
        "imap": lambda pool: list(pool.imap(tiny, data)),
        "imap_unordered": lambda pool: list(pool.imap_unordered(tiny, data)),
    }
    return [
        (name, interleaved_times(repeats, *[lambda run=run, pool=pool: run(pool) for pool in pools]))
        for name, run in runs.items()
    ]


def signing_cost(workers: int, items: int, count: int, repeats: int) -> None:
    """Throughput of a signed and an unsigned cluster with a LaunchWorker process (the embedded one signs
    nothing: its messages stay between the pool and the broker it started), interleaved, as ratios."""
    data, large = list(range(items)), arrays(count)
    runs = {
        f"tiny map items/s ({items} items)": (lambda pool: pool.map(tiny, data), items),
        f"4 MiB arrays in, MiB/s ({count})": (lambda pool: list(pool.imap(array_sum, large)), 4 * count),
        f"4 MiB arrays in and out, MiB/s ({count})": (lambda pool: list(pool.imap(array_double, large)), 4 * count),
        f"4 MiB arrays filtered (~50 ms), MiB/s ({count})": (
            lambda pool: list(pool.imap(array_filtered, large)),
            4 * count,
        ),
    }
    with worker_process_pool(workers) as signed, worker_process_pool(workers, insecure=True) as unsigned:
        for pool in (signed, unsigned):
            pool.map(tiny, range(100))
        print(f"\n{'signing cost':<40} {'unsigned':>10} {'signed':>10} {'ratio':>8}")
        for label, (run, amount) in runs.items():
            plain, signed_time = interleaved(repeats, lambda run=run: run(unsigned), lambda run=run: run(signed))
            ours, theirs = amount / signed_time, amount / plain
            print(f"{label:<40} {theirs:>10.0f} {ours:>10.0f} {ours / theirs:>7.2f}x")
    print("(ratio = signed / unsigned throughput: 1.00 means signing costs nothing measurable)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, shorter CPU-bound tasks")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    sizes, repeats, work = ([20_000], 1, 1_000_000) if args.quick else ([20_000, 200_000, 1_000_000], 5, 4_000_000)
    os.environ.pop(ADDRESS_VARIABLE, None)

    started = time.perf_counter()
    with MakePool(workers=args.workers) as zmq_pool, MulticorePool(args.workers) as multicore:
        startup = time.perf_counter() - started
        with worker_process_pool(args.workers) as remote_pool:
            pools = [multicore, zmq_pool, remote_pool]
            for pool in pools:
                pool.map(tiny, range(100))
            print(f"ZmqPool vs MulticorePool, {args.workers} workers, Python {sys.version.split()[0]}")
            print(f"(embedded zmq cluster and MulticorePool started in {startup:.2f}s)")
            print(
                f"{'measure':<40} {'multicore':>10} {'zmq':>10} {'ratio':>8} {'median':>7} {'+worker':>10} {'ratio':>8}"
            )
            mc, embedded, remote = interleaved(20 * repeats, *[lambda pool=pool: pool.map(tiny, [1]) for pool in pools])
            print(
                f"{'one-item call, ms':<40} {mc * 1e3:>10.2f} {embedded * 1e3:>10.2f} {mc / embedded:>7.2f}x "
                f"{'':>7} {remote * 1e3:>10.2f} {mc / remote:>7.2f}x"
            )
            for items in sizes:
                turns = repeats * (10 if items <= 20_000 else 1)
                for name, times in measure_tiny(pools, items, turns):
                    mc, embedded, remote = map(min, times)
                    median = statistics.median(times[0]) / statistics.median(times[1])
                    label = f"tiny {name} items/s ({items} items)"
                    print(
                        f"{label:<40} {items / mc:>10.0f} {items / embedded:>10.0f} {mc / embedded:>7.2f}x "
                        f"{median:>6.2f}x {items / remote:>10.0f} {mc / remote:>7.2f}x"
                    )
            mc, embedded, remote = efficiencies(pools, args.workers, work, rounds=3)
            label = "CPU-bound efficiency (goal >= 0.9)"
            print(
                f"{label:<40} {mc:>10.2f} {embedded:>10.2f} {embedded / mc:>7.2f}x {remote:>10.2f} {remote / mc:>7.2f}x"
            )
    print(
        "(ratio = zmq / multicore: above 1 means the zmq pool is faster or more efficient; "
        "+worker: a broker with a LaunchWorker process)"
    )
    signing_cost(args.workers, sizes[0], 16 if args.quick else 64, repeats)


if __name__ == "__main__":
    main()
