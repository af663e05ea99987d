"""MulticorePool against multiprocessing.Pool, side by side in one run, reported as ratios.

    python benchmarks/bench_multicore.py [--quick] [--processes N]

Rows: tiny tasks through ``map`` and ``imap`` (ratio > 1 means glimpse is faster), CPU-bound
efficiency (serial time / (workers x wall time); goal >= 0.95), and the peak memory of ``imap``
over a 1,000,000-item generator, each pool measured in a fresh process (goal: flat).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys

from workloads import best_of, busy, tiny

from glimpse.pools import MulticorePool


def measure_tiny(processes: int, items: int, repeats: int) -> list[tuple[str, float, float]]:
    data = list(range(items))
    rows = []
    with MulticorePool(processes) as ours, multiprocessing.Pool(processes) as theirs:
        ours.map(tiny, range(100))
        theirs.map(tiny, range(100))
        rows.append(
            (
                "tiny map",
                best_of(repeats, lambda: theirs.map(tiny, data)),
                best_of(repeats, lambda: ours.map(tiny, data)),
            )
        )
        rows.append(
            (
                "tiny imap (default chunksize)",
                best_of(repeats, lambda: list(theirs.imap(tiny, data))),
                best_of(repeats, lambda: list(ours.imap(tiny, data))),
            )
        )
        size = max(1, items // (4 * processes))
        rows.append(
            (
                f"tiny imap (mp chunksize={size})",
                best_of(repeats, lambda: list(theirs.imap(tiny, data, chunksize=size))),
                best_of(repeats, lambda: list(ours.imap(tiny, data))),
            )
        )
        rows.append(
            (
                "tiny imap_unordered (default)",
                best_of(repeats, lambda: list(theirs.imap_unordered(tiny, data))),
                best_of(repeats, lambda: list(ours.imap_unordered(tiny, data))),
            )
        )
    return rows


def measure_efficiency(processes: int, tasks: int, work: int) -> tuple[float, float]:
    data = [work] * tasks
    serial = best_of(1, lambda: [busy(n) for n in data])
    with MulticorePool(processes) as ours, multiprocessing.Pool(processes) as theirs:
        ours.map(tiny, range(10))
        theirs.map(tiny, range(10))
        mp_wall = best_of(1, lambda: theirs.map(busy, data))
        our_wall = best_of(1, lambda: ours.map(busy, data))
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
    args = parser.parse_args()
    items, repeats, memory_items = (20_000, 1, 200_000) if args.quick else (200_000, 3, 1_000_000)

    print(f"MulticorePool vs multiprocessing.Pool, {args.processes} processes, Python {sys.version.split()[0]}")
    print(f"{'measure':<36} {'multiprocessing':>16} {'glimpse':>10} {'ratio':>8}")
    for name, theirs, ours in measure_tiny(args.processes, items, repeats):
        print(f"{name + f' ({items} items)':<36} {theirs:>15.3f}s {ours:>9.3f}s {theirs / ours:>7.2f}x")
    mp_eff, our_eff = measure_efficiency(args.processes, 8 * args.processes, 2_000_000 if not args.quick else 500_000)
    print(f"{'CPU-bound efficiency':<36} {mp_eff:>16.2f} {our_eff:>10.2f} {our_eff / mp_eff:>7.2f}x")
    for slow in (False, True):
        name = f"imap peak RSS MB, {'slow' if slow else 'fast'} consumer ({memory_items} items)"
        mp_mem = peak_memory_mb("multiprocessing", memory_items, args.processes, slow)
        our_mem = peak_memory_mb("glimpse", memory_items, args.processes, slow)
        print(f"{name:<36} {mp_mem:>16.0f} {our_mem:>10.0f} {mp_mem / our_mem:>7.2f}x")
    print("(ratio = multiprocessing / glimpse for times and memory, glimpse / multiprocessing for efficiency)")


if __name__ == "__main__":
    main()
