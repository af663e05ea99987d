"""MulticorePool against multiprocessing.Pool, side by side in one run, reported as ratios.

    python benchmarks/bench_multicore.py [--quick] [--processes N] [--load N] [--repeats N] [--json PATH]

Rows: tiny tasks through ``map`` and ``imap`` with the chunk sizes users pass (ratio > 1 means
glimpse is faster; goal >= 1; of the best times, and of the median times: under load the best
time of a pool whose times swing is a lucky draw, the median what a call gets), CPU-bound
efficiency (serial time / (workers x wall time) over 30 tasks of ~20 ms per worker; goal >=
0.95), and the peak memory of ``imap`` over a 1,000,000-item generator, each pool measured in a
fresh process (goal: flat). ``--load 2`` runs two busy loops beside, as on a shared machine;
there a call's time swings by 2x from run to run, so give it ``--repeats 25`` for medians that hold.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import subprocess
import sys

from workloads import BusyLoops, JsonRecord, busy, interleaved, interleaved_times, tiny

from glimpse.pools import MulticorePool


def measure_tiny(processes: int, items: int, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    """Tiny tasks: the pools' own cost per item and per chunk, with the stdlib's chunk sizes; every
    time of each pool, the pools taking turns."""
    data = list(range(items))
    few = data[: max(1, items // 10)]
    size = max(1, items // (4 * processes))
    rows = [
        (f"tiny map ({items} items)", lambda pool: pool.map(tiny, data)),
        (f"tiny imap chunksize=64 ({items})", lambda pool: list(pool.imap(tiny, data, 64))),
        (f"tiny imap chunksize=1 ({len(few)})", lambda pool: list(pool.imap(tiny, few, 1))),
        (f"tiny imap_unordered chunksize=1 ({len(few)})", lambda pool: list(pool.imap_unordered(tiny, few, 1))),
        (f"tiny imap, default vs mp {size}", None),
    ]
    results = []
    with MulticorePool(processes) as ours, multiprocessing.Pool(processes) as theirs:
        ours.map(tiny, range(100))
        theirs.map(tiny, range(100))
        for name, run in rows:
            if run is None:  # glimpse picks its chunk size; multiprocessing is given the one its map picks
                theirs_time, ours_time = interleaved_times(
                    repeats, lambda: list(theirs.imap(tiny, data, size)), lambda: list(ours.imap(tiny, data))
                )
            else:
                theirs_time, ours_time = interleaved_times(
                    repeats, functools.partial(run, theirs), functools.partial(run, ours)
                )
            results.append((name, theirs_time, ours_time))
    return results


def measure_efficiency(processes: int, tasks: int, work: int, repeats: int) -> tuple[float, float]:
    """Serial time / (processes x wall time) on CPU-bound tasks, best of ``repeats``."""
    data = [work] * tasks
    with MulticorePool(processes) as ours, multiprocessing.Pool(processes) as theirs:
        ours.map(tiny, range(10))
        theirs.map(tiny, range(10))
        serial, mp_wall, our_wall = interleaved(
            repeats, lambda: [busy(n) for n in data], lambda: theirs.map(busy, data), lambda: ours.map(busy, data)
        )
    return serial / (processes * mp_wall), serial / (processes * our_wall)


def peak_memory_mb(which: str, items: int, processes: int, slow_consumer: bool) -> float:
    """Peak RSS of a fresh process that runs ``imap`` over a generator of ``items`` items.

    A slow consumer (a pause every 1,000 results) is where an unbounded pool piles up results.
    """
    code = f"""
import multiprocessing, time
from glimpse.pools import MulticorePool
def f(x):
    return x
if __name__ == "__main__":
    pool = MulticorePool({processes}) if {which!r} == "glimpse" else multiprocessing.Pool({processes})
    n = 0
    for _ in pool.imap(f, (i for i in range({items})), chunksize=64 if {which!r} == "multiprocessing" else None):
        n += 1
        if {slow_consumer} and n % 1000 == 0:
            time.sleep(0.002)
    assert n == {items}
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would count the parent's size.
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(peak_kb / 1024)
    pool.terminate()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--load", type=int, default=0, help="busy loops to run beside (a loaded machine)")
    parser.add_argument("--repeats", type=int, help="interleaved runs of each measure (default 5, 1 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (for benchmarks/charts.py)")
    args = parser.parse_args()
    items, repeats, memory_items = (20_000, 1, 200_000) if args.quick else (200_000, 5, 1_000_000)
    repeats = args.repeats or repeats
    work = 100_000 if args.quick else 300_000  # ~7 ms and ~20 ms of CPU per task here

    print(
        f"MulticorePool vs multiprocessing.Pool, {args.processes} processes, Python {sys.version.split()[0]}, "
        f"{args.load} busy loops beside, best and median of {repeats} interleaved"
    )
    print(f"{'measure':<44} {'multiprocessing':>16} {'glimpse':>10} {'ratio':>8} {'median ratio':>13}")
    record = JsonRecord("multicore", {"processes": args.processes, "load": args.load, "repeats": repeats})
    with BusyLoops(args.load):
        for name, theirs, ours in measure_tiny(args.processes, items, repeats):
            best = min(theirs) / min(ours)
            typical = statistics.median(theirs) / statistics.median(ours)
            print(f"{name:<44} {min(theirs):>15.3f}s {min(ours):>9.3f}s {best:>7.2f}x {typical:>12.2f}x")
            record.add(measure=name, unit="s", multiprocessing=min(theirs), glimpse=min(ours), ratio=best)
        mp_eff, our_eff = measure_efficiency(args.processes, 30 * args.processes, work, repeats)
        print(f"{'CPU-bound efficiency':<44} {mp_eff:>16.2f} {our_eff:>10.2f} {our_eff / mp_eff:>7.2f}x")
        record.add(
            measure="CPU-bound efficiency", unit="", multiprocessing=mp_eff, glimpse=our_eff, ratio=our_eff / mp_eff
        )
        for slow in (False, True):
            name = f"imap peak RSS MB, {'slow' if slow else 'fast'} consumer ({memory_items})"
            mp_mem = peak_memory_mb("multiprocessing", memory_items, args.processes, slow)
            our_mem = peak_memory_mb("glimpse", memory_items, args.processes, slow)
            print(f"{name:<44} {mp_mem:>16.0f} {our_mem:>10.0f} {mp_mem / our_mem:>7.2f}x")
            record.add(measure=name, unit="MB", multiprocessing=mp_mem, glimpse=our_mem, ratio=mp_mem / our_mem)
    print("(ratio = multiprocessing / glimpse for times and memory, glimpse / multiprocessing for efficiency;")
    print(" median ratio: of the median times, what one call gets under load, where a best time is a lucky draw)")
    record.write(args.json)


if __name__ == "__main__":
    main()
