"""The faces (``submit``, ``executor()``, asyncio) against the engines' own APIs, side by side in one run, as ratios.

    python benchmarks/bench_faces.py [--quick] [--ray | --no-ray]

Rows: 10,000 ``submit`` of a tiny function then every ``result()``, timed from the first submit
to the last result (a function pickled by value, as a script's own functions are, and one pickled
by reference), and ``executor().map``, on ``MulticorePool(2)`` against
``concurrent.futures.ProcessPoolExecutor(2)`` (goal >= 2x); ``pool.submit`` on a Dask pool
against ``client.submit(..., pure=False)`` + ``client.gather`` on the same ``LocalCluster`` of 2
single-threaded worker processes (goal >= 20x); with ``--ray`` (default in full mode), on an
embedded Ray against one ``@ray.remote`` task per call. Then asyncio: while ``aimap``/``amap``
stream 1,000,000 tiny items (100,000 with ``--quick``) from ``MulticorePool(2)``, a task sleeps
1 ms in a loop and records how late each wake-up is (goal: max <= 10 ms), beside what users write
without the faces: ``run_in_executor(None, lambda: list(pool.imap(...)))``, ``imap`` right in
the coroutine, and one ``run_in_executor(ProcessPoolExecutor)`` per item (10,000 items).
``--quick`` runs each once and sends 2,000 calls to Dask (one Dask future costs ~2 ms here).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import operator
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from workloads import best_of, interleaved_times, tiny

from glimpse.pools import MulticorePool

PROCESSES = 2
#: How long the ticker sleeps between wake-ups; its lateness is the event loop's.
TICK_SECONDS = 0.001
LATENESS_GOAL_MS = 10.0


@dataclass
class TimeRow:
    """A measure timed for the engine's own API (``theirs``) and for glimpse, every run of each."""

    name: str
    theirs: list[float]
    ours: list[float]


def submit_all(submit: Callable, count: int, func: Callable = tiny) -> list:
    """``count`` calls of ``func`` through ``submit``, then every result."""
    futures = [submit(func, i) for i in range(count)]
    return [future.result() for future in futures]


def measure_futures(count: int, repeats: int) -> list[TimeRow]:
    """``submit`` and ``executor().map`` on MulticorePool against ProcessPoolExecutor, taking turns.

    ``tiny`` is pickled by value (its module asks cloudpickle to), as a function of a script's
    ``__main__`` is; ``operator.neg`` is pickled by reference, as a function of an installed module is.
    """
    data = range(count)
    with MulticorePool(PROCESSES) as ours, ProcessPoolExecutor(PROCESSES) as theirs:
        executor = ours.executor()
        submit_all(ours.submit, 100)
        submit_all(theirs.submit, 100)
        rows = []
        for label, func in (("tiny (by value)", tiny), ("operator.neg (by ref)", operator.neg)):
            times = interleaved_times(
                repeats,
                functools.partial(submit_all, theirs.submit, count, func),
                functools.partial(submit_all, ours.submit, count, func),
            )
            rows.append(TimeRow(f"submit x{count} {label} vs ProcessPoolExecutor", *times))
        mapped = interleaved_times(
            repeats, lambda: list(theirs.map(tiny, data)), lambda: list(executor.map(tiny, data))
        )
    return [*rows, TimeRow(f"executor().map ({count}, tiny) vs ProcessPoolExecutor.map", *mapped)]


def measure_dask(count: int, repeats: int) -> list[TimeRow]:
    """``pool.submit`` on a Dask pool against ``client.submit`` + ``gather``, on one LocalCluster."""
    from distributed import Client, LocalCluster

    from glimpse.pools.dask_cluster import MakePool

    options = {"n_workers": PROCESSES, "threads_per_worker": 1, "processes": True}
    with (
        LocalCluster(host="127.0.0.1", dashboard_address="127.0.0.1:0", **options) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        pool = MakePool(address=cluster.scheduler_address)
        try:

            def dask_submit() -> list:
                return client.gather([client.submit(tiny, i, pure=False) for i in range(count)])

            client.gather([client.submit(tiny, i, pure=False) for i in range(100)])
            submit_all(pool.submit, 100)
            # One future per call costs milliseconds each: one run of Dask's side is long enough to time.
            theirs = [best_of(1, dask_submit)]
            ours = [best_of(1, submit_all, pool.submit, count) for _ in range(repeats)]
        finally:
            pool.close()
            pool.join()
    return [TimeRow(f"Dask: submit x{count} vs client.submit+gather", theirs, ours)]


def measure_ray(count: int, repeats: int) -> list[TimeRow]:
    """``pool.submit`` on an embedded Ray against one ``@ray.remote`` task per call + ``ray.get``."""
    import ray

    from glimpse.pools.ray_cluster import RayPool

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    pool = RayPool(log_to_driver=False)
    try:
        remote_tiny = ray.remote(num_cpus=1)(tiny)

        def ray_tasks() -> list:
            return ray.get([remote_tiny.remote(i) for i in range(count)])

        ray.get([remote_tiny.remote(i) for i in range(100)])
        submit_all(pool.submit, 100)
        theirs, ours = interleaved_times(repeats, ray_tasks, lambda: submit_all(pool.submit, count))
    finally:
        pool.close()
    return [TimeRow(f"Ray: submit x{count} vs remote task per call+ray.get", theirs, ours)]


@dataclass
class LatenessRow:
    """A way to get ``items`` results in a coroutine: its runs' wall times, and the loop's lateness."""

    name: str
    items: int
    seconds: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.items / min(self.seconds)

    def lateness_ms(self, share: float) -> float:
        """The lateness below which ``share`` of the wake-ups fall (1.0: the latest), in ms."""
        ordered = sorted(self.lateness)
        return 1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def ticker(lateness: list[float]) -> None:
    """Sleep :data:`TICK_SECONDS` in a loop, recording how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(TICK_SECONDS)
        lateness.append(loop.time() - started - TICK_SECONDS)


async def timed_beside_ticker(row: LatenessRow, consume: Callable[[], Awaitable[list | int]]) -> None:
    """Run ``consume`` once while the ticker runs, adding its time and the ticker's lateness to ``row``.

    ``consume`` returns the results, or their sum if it takes them one by one; checked once the
    ticker has stopped, so that summing a million results does not count as the call's lateness.
    """
    lateness: list[float] = []
    tick = asyncio.create_task(ticker(lateness))
    await asyncio.sleep(0)
    started = time.perf_counter()
    results = await consume()
    row.seconds.append(time.perf_counter() - started)
    # The wake-up due while the call ran counts too: a call that blocks the loop delays it to the end.
    recorded = len(lateness)
    while len(lateness) == recorded:
        await asyncio.sleep(0)
    tick.cancel()
    total = results if isinstance(results, int) else sum(results)
    expected = row.items * (row.items + 1) // 2
    assert total == expected, f"{row.name}: results sum to {total}, not {expected}"
    row.lateness.extend(lateness)


async def measure_asyncio(items: int, per_item_items: int, repeats: int) -> list[LatenessRow]:
    """The ticker's lateness and the items/s of each way, the ways taking turns ``repeats`` times."""
    loop = asyncio.get_running_loop()
    with MulticorePool(PROCESSES) as pool, ProcessPoolExecutor(PROCESSES) as executor:

        async def aimap() -> int:
            total = 0
            async for value in pool.aimap(tiny, range(items)):
                total += value
            return total

        async def amap() -> list:
            return await pool.amap(tiny, range(items))

        async def imap_in_a_thread() -> list:
            return await loop.run_in_executor(None, lambda: list(pool.imap(tiny, range(items))))

        async def imap_in_the_coroutine() -> list:
            return list(pool.imap(tiny, range(items)))

        async def executor_per_item() -> list:
            return await asyncio.gather(*(loop.run_in_executor(executor, tiny, i) for i in range(per_item_items)))

        async def ticker_alone() -> list:
            await asyncio.sleep(0.2)
            return []

        ways = [
            (LatenessRow("glimpse: async for in pool.aimap", items), aimap),
            (LatenessRow("glimpse: await pool.amap", items), amap),
            (LatenessRow("run_in_executor(None, list(pool.imap))", items), imap_in_a_thread),
            (LatenessRow("for in pool.imap in the coroutine", items), imap_in_the_coroutine),
            (LatenessRow("run_in_executor(ProcessPoolExecutor) per item", per_item_items), executor_per_item),
            (LatenessRow("nothing (the ticker alone, 0.2 s)", 0), ticker_alone),
        ]
        pool.map(tiny, range(1000))
        await amap()
        await executor_per_item()
        for round_ in range(repeats):
            for offset in range(len(ways)):
                row, consume = ways[(round_ + offset) % len(ways)]
                await timed_beside_ticker(row, consume)
    return [row for row, _ in ways]


def print_time_rows(rows: list[TimeRow]) -> None:
    for row in rows:
        best = min(row.theirs) / min(row.ours)
        typical = statistics.median(row.theirs) / statistics.median(row.ours)
        print(f"{row.name:<60} {min(row.theirs):>8.3f}s {min(row.ours):>8.3f}s {best:>7.2f}x {typical:>12.2f}x")


def print_lateness_rows(rows: list[LatenessRow]) -> None:
    aimap = rows[0]
    print(f"{'way':<50} {'items':>9} {'items/s':>10} {'max late':>9} {'p99 late':>9} {'aimap ratio':>12}")
    for row in rows:
        speed = f"{row.items_per_second:>10,.0f}" if row.items else f"{'-':>10}"
        late = (
            f"{row.lateness_ms(1.0):>7.2f}ms {row.lateness_ms(0.99):>7.2f}ms" if row.lateness else f"{'-':>9} {'-':>9}"
        )
        ratio = f"{aimap.items_per_second / row.items_per_second:>11.2f}x" if row.items and row is not aimap else ""
        print(f"{row.name:<50} {row.items:>9} {speed} {late} {ratio}")
    for row in rows[:2]:
        verdict = "met" if row.lateness_ms(1.0) <= LATENESS_GOAL_MS else "MISSED"
        print(f"(goal max lateness <= {LATENESS_GOAL_MS:g} ms, {row.name}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of each, fewer items")
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, help="include Ray (default: in full mode)")
    args = parser.parse_args()
    repeats, dask_calls, async_items = (1, 2_000, 100_000) if args.quick else (3, 10_000, 1_000_000)
    calls, per_item_items = 10_000, 10_000
    with_ray = not args.quick if args.ray is None else args.ray

    print(f"The faces vs the engines' own APIs, {PROCESSES} processes, on {os.cpu_count()} cores, ", end="")
    print(f"Python {sys.version.split()[0]}, best and median of {repeats}")
    print(f"{'measure':<60} {'theirs':>9} {'glimpse':>9} {'ratio':>8} {'median ratio':>13}")
    print_time_rows(measure_futures(calls, repeats))
    print_time_rows(measure_dask(dask_calls, repeats))
    if with_ray:
        print_time_rows(measure_ray(calls, repeats))
    print("(ratio = theirs / glimpse; goals: >= 2x against ProcessPoolExecutor, >= 20x against Dask)")
    print()
    print(
        f"asyncio on MulticorePool({PROCESSES}), a task sleeping {TICK_SECONDS * 1000:g} ms in a loop beside, ", end=""
    )
    print(f"its lateness over {repeats} run(s), items/s of the best run")
    print_lateness_rows(asyncio.run(measure_asyncio(async_items, per_item_items, repeats)))
    print("(aimap ratio = aimap's items/s / the way's items/s; > 1 means aimap is faster)")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
