"""IPython parallel pools against ipyparallel's own LoadBalancedView.map_sync, side by side in one run.

    python benchmarks/bench_ipython.py [--quick] [--engines N]

Both run on the same engines (one embedded cluster, or the one ``MakePool()`` finds; on the
embedded one glimpse books the engines and goes past the task scheduler, as on no other). Rows:
tiny items through glimpse ``map`` and ``imap_unordered(chunksize=None)`` against ``map_sync``
with its default chunking (goal: ratio >= 10) and with the best chunksize found by trying
several (goal: ratio >= 1); ratio = ipyparallel time / glimpse time. Against the best chunksize,
the calls then take turns, 20 runs per repeat, with ``DirectView.map_sync`` (one chunk per engine,
straight to each engine's queue, past the task scheduler that balances the load: the fastest way
ipyparallel offers, for items that all cost the same), and the ratio of their best times
and of their median times are printed: a call of ~10 ms varies by a few ms from run to run, so
the best of more runs would favour whichever had more, and the best time is a lucky draw, the
median what a call gets. Then CPU-bound efficiency, serial time / (engines x wall time) (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from workloads import best_of, interleaved_times

from glimpse.pools.ipython_cluster import MakePool

CHUNKSIZES = (100, 500, 1000, 2500, 5000, 10000)


# Not imported from workloads.py: ipyparallel's own map_sync pickles module functions by
# reference, and engines cannot import this folder; functions of __main__ travel by value.
def tiny(x):
    return x + 1


def busy(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def measure_tiny(pool, view, items: int, repeats: int) -> list[tuple[str, float, float, float | None]]:
    """Rows of (name, ipyparallel's best time, glimpse's best time, ratio of the median times or None)."""
    direct = pool.client.direct_view()
    data = list(range(items))
    expected = [x + 1 for x in data]
    assert pool.map(tiny, data) == expected and view.map_sync(tiny, data[:100]) == expected[:100]
    default = best_of(1, lambda: view.map_sync(tiny, data))
    tried = {size: best_of(repeats, lambda size=size: view.map_sync(tiny, data, chunksize=size)) for size in CHUNKSIZES}
    best_size = min(tried, key=tried.get)
    times = interleaved_times(
        repeats * 20,
        lambda: view.map_sync(tiny, data, chunksize=best_size),
        lambda: pool.map(tiny, data),
        lambda: list(pool.imap_unordered(tiny, data)),
        lambda: direct.map_sync(tiny, data),
    )
    (theirs, ours_map, ours_unordered, direct_time), medians = map(min, times), list(map(statistics.median, times))
    return [
        ("tiny map vs map_sync (default chunks)", default, ours_map, None),
        ("tiny imap_unordered vs map_sync (default)", default, ours_unordered, None),
        (f"tiny map vs map_sync (chunksize={best_size})", theirs, ours_map, medians[0] / medians[1]),
        (f"tiny imap_unordered vs map_sync ({best_size})", theirs, ours_unordered, medians[0] / medians[2]),
        ("tiny map vs DirectView map_sync (no balancing)", direct_time, ours_map, medians[3] / medians[1]),
    ]


def measure_efficiency(pool, view, engines: int, tasks: int, work: int) -> tuple[float, float]:
    data = [work] * tasks
    serial = best_of(1, lambda: [busy(n) for n in data])
    theirs = best_of(1, lambda: view.map_sync(busy, data))
    ours = best_of(1, lambda: pool.map(busy, data))
    return serial / (engines * theirs), serial / (engines * ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    args = parser.parse_args()
    items, repeats, tasks, work = (5_000, 1, 16, 1_000_000) if args.quick else (20_000, 3, 32, 2_000_000)

    pool = MakePool()
    try:
        view = pool.client.load_balanced_view()
        engines = len(pool.client.ids)
        print(f"glimpse IPythonPool vs ipyparallel LoadBalancedView, {engines} engines, {items} tiny items")
        print(f"Python {sys.version.split()[0]}")
        print(f"{'measure':<46} {'ipyparallel s':>13} {'glimpse s':>10} {'ratio':>8} {'median ratio':>13}")
        for name, theirs, ours, median_ratio in measure_tiny(pool, view, items, repeats):
            median = f"{median_ratio:>13.2f}" if median_ratio is not None else ""
            print(f"{name:<46} {theirs:>13.3f} {ours:>10.3f} {theirs / ours:>8.2f} {median}")
        theirs_eff, ours_eff = measure_efficiency(pool, view, engines, tasks, work)
        print(f"{'CPU-bound efficiency (goal >= 0.9)':<46} {theirs_eff:>13.2f} {ours_eff:>10.2f}")
    finally:
        pool.close()
        pool.join()


if __name__ == "__main__":
    main()
