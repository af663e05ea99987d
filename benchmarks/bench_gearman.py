"""GearmanPool (embedded gearmand and workers) beside MulticorePool and beside plain gearman jobs, in one run.

    python benchmarks/bench_gearman.py [--quick] [--workers N]

Rows: tiny-task throughput of ``map`` (ratio = gearman pool / MulticorePool), the same items as
one plain gearman job each (unsigned, pipelined, on raw workers of the same gearmand: what using
gearman directly gives; ratio = gearman pool / plain jobs), and CPU-bound efficiency (serial time /
(workers x wall time), best of three rounds; goal >= 0.9). Needs gearmand (apt: gearman-job-server).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from workloads import best_of, efficiencies, tiny

from glimpse.pools import MulticorePool
from glimpse.pools.backends.gearman import protocol as g
from glimpse.pools.gearman_cluster import ADDRESS_VARIABLE, MakePool

_RAW_WORKER = r"""
import sys
from glimpse.pools.backends.gearman import protocol as g
host, port = sys.argv[1].rsplit(":", 1)
connection = g.Connection((host, int(port)))
connection.send(g.CAN_DO, b"bench-tiny")
connection.send(g.GRAB_JOB_UNIQ)
while True:
    for packet in connection.receive():
        if packet.kind == g.JOB_ASSIGN_UNIQ:
            handle, _, _, data = packet.arguments
            connection.send(g.WORK_COMPLETE, handle, str(int(data) + 1).encode())
            connection.send(g.GRAB_JOB_UNIQ)
        elif packet.kind == g.NO_JOB:
            connection.send(g.PRE_SLEEP)
        elif packet.kind == g.NOOP:
            connection.send(g.GRAB_JOB_UNIQ)
"""


def plain_jobs(address: str, items: int, in_flight: int) -> float:
    """Seconds to run ``items`` tiny jobs, one per item, ``in_flight`` at a time, on one connection."""
    host, port = address.rsplit(":", 1)
    connection = g.Connection((host, int(port)))
    started = time.perf_counter()
    sent = done = 0
    while done < items:
        while sent < items and sent - done < in_flight:
            connection.send(g.SUBMIT_JOB, b"bench-tiny", b"", str(sent).encode())
            sent += 1
        for packet in connection.receive():
            if packet.kind == g.WORK_COMPLETE:
                done += 1
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, shorter CPU-bound tasks")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    items, repeats, work = (20_000, 1, 1_000_000) if args.quick else (20_000, 5, 4_000_000)
    os.environ.pop(ADDRESS_VARIABLE, None)

    with MakePool(workers=args.workers) as pool, MulticorePool(args.workers) as multicore:
        raw_workers = [
            subprocess.Popen([sys.executable, "-c", _RAW_WORKER, pool.address], start_new_session=True)
            for _ in range(args.workers)
        ]
        try:
            data = list(range(items))
            pool.map(tiny, range(100))
            multicore.map(tiny, range(100))
            plain_jobs(pool.address, 100, 2 * args.workers)
            print(f"GearmanPool vs MulticorePool and plain gearman jobs, {args.workers} workers")
            rows = [("measure", "reference", "gearman", "ratio")]
            ours = best_of(repeats, pool.map, tiny, data)
            theirs = best_of(repeats, multicore.map, tiny, data)
            plain = min(plain_jobs(pool.address, items, 64) for _ in range(repeats))
            rows.append(("tiny map items/s vs MulticorePool", items / theirs, items / ours, theirs / ours))
            rows.append(("tiny map items/s vs one plain job per item", items / plain, items / ours, plain / ours))
            mc_eff, gm_eff = efficiencies([multicore, pool], args.workers, work, rounds=3)
            rows.append(("CPU-bound efficiency (goal >= 0.9)", mc_eff, gm_eff, gm_eff / mc_eff))
            for label, reference, gearman, ratio in rows:
                if isinstance(ratio, str):
                    print(f"{label:<44} {reference:>10} {gearman:>10} {ratio:>8}")
                else:
                    print(f"{label:<44} {reference:>10.2f} {gearman:>10.2f} {ratio:>7.2f}x")
            print(f"plain gearman job, 64 in flight: {plain / items * 1e6:.1f} us per job")
        finally:
            for worker in raw_workers:
                os.killpg(worker.pid, 15)
                worker.wait()
    print("(ratio above 1: the gearman pool is faster or more efficient than the reference)")


if __name__ == "__main__":
    main()
