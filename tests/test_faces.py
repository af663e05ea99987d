"""The faces users know (multiprocessing's, concurrent.futures', asyncio's) on every pool kind.

CPython's own tests of these APIs are ported in tests/test_cpython_*.py; these test what glimpse
adds: single calls batched into chunks, a failing call failing only its own future, cancelling
queued work, several threads on one pool, and an event loop the pool never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time

import pytest

from glimpse.pools import RemoteTraceback, SerializationError
from tests import helpers

HANG_LIMIT = 120.0


def _skip_if(limits: set[str], *traits: str) -> None:
    hit = sorted(set(traits) & limits)
    if hit:
        pytest.skip(f"this pool is {', '.join(hit)}")


# -- single calls -------------------------------------------------------------------------------


def test_many_submits_travel_in_few_chunks(pool, monkeypatch, limits):
    _skip_if(limits, "in_process")  # nothing travels: chunks are whatever arrived while the last ran
    sent = []
    submit = pool._backend.submit
    monkeypatch.setattr(pool._backend, "submit", lambda call, chunk: sent.append(chunk.count) or submit(call, chunk))
    futures = [pool.submit(helpers.times_ten, x) for x in range(2000)]
    assert [future.result(HANG_LIMIT) for future in futures] == [x * 10 for x in range(2000)]
    assert sum(sent) >= 2000
    assert len(sent) <= 200, f"2000 submits took {len(sent)} chunks"


def test_a_call_that_raises_fails_only_its_own_future(pool):
    futures = [pool.submit(helpers.fail_on_three, x) for x in range(6)]
    concurrent.futures.wait(futures, HANG_LIMIT)
    assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5]
    error = futures[3].exception()
    assert isinstance(error, ValueError) and str(error) == "bad item 3"
    assert isinstance(error.__cause__, RemoteTraceback) and "fail_on_three" in error.__cause__.text


def test_keyword_arguments_and_lambdas_reach_the_worker(pool):
    offset = 5
    assert pool.submit(lambda x, *, y: x * y + offset, 3, y=4).result(HANG_LIMIT) == 17
    assert pool.apply(divmod, (17, 5)) == (3, 2)
    assert pool.apply(dict, (), {"a": 1}) == {"a": 1}


def test_an_argument_that_cannot_be_pickled_fails_its_future_at_once(pool):
    future = pool.submit(helpers.times_ten, threading.Lock())
    assert future.done()
    with pytest.raises(SerializationError, match="could not be pickled"):
        future.result()
    assert pool.submit(helpers.times_ten, 2).result(HANG_LIMIT) == 20


def test_a_result_that_cannot_be_pickled_fails_only_its_own_future(pool, limits):
    _skip_if(limits, "in_process")
    bad, good = pool.submit(helpers.return_lock, 1), pool.submit(helpers.times_ten, 2)
    with pytest.raises(SerializationError, match="result could not be pickled"):
        bad.result(HANG_LIMIT)
    assert good.result(HANG_LIMIT) == 20


def test_a_crashing_call_fails_its_future_and_the_pool_goes_on(pool, limits):
    _skip_if(limits, "in_process", "no_worker_replacement")
    from glimpse.pools import WorkerLostError

    crashing = pool.submit(helpers.die_always, 1)
    with pytest.raises(WorkerLostError):
        crashing.result(HANG_LIMIT)
    assert [pool.submit(helpers.times_ten, x).result(HANG_LIMIT) for x in range(3)] == [0, 10, 20]


def _fill_until_a_call_waits(pool, release: str) -> list[concurrent.futures.Future]:
    """Submit calls that hold their worker until ``release`` exists, until one stays queued."""
    held = []
    for _ in range(300):
        held.append(pool.submit(helpers.held_until_released, ("hold", release)))
        deadline = time.monotonic() + 1.0
        while not held[-1].running() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not held[-1].running():
            return held
    pytest.fail("300 held calls were all taken into chunks; none stayed queued")


def test_cancelling_a_queued_future_removes_its_work(pool, tmp_path):
    release = str(tmp_path / "release")
    held = _fill_until_a_call_waits(pool, release)
    markers = [str(tmp_path / f"ran-{n}") for n in range(20)]
    queued = [pool.submit(open, marker, "w") for marker in markers]
    assert all(future.cancel() for future in queued), "calls queued behind held ones could not be cancelled"
    open(release, "w").close()
    assert {future.result(HANG_LIMIT) for future in held} == {"released"}
    assert pool.submit(helpers.times_ten, 1).result(HANG_LIMIT) == 10
    assert [os.path.exists(marker) for marker in markers] == [False] * len(markers)
    assert all(future.cancelled() for future in queued)


# -- multiprocessing's API ----------------------------------------------------------------------


def test_starmap_and_its_lazy_forms(pool):
    pairs = [(2, x) for x in range(20)]
    assert pool.starmap(pow, pairs) == [2**x for x in range(20)]
    assert list(pool.istarmap(pow, iter(pairs), chunksize=3)) == [2**x for x in range(20)]
    assert sorted(pool.istarmap_unordered(pow, pairs)) == [2**x for x in range(20)]
    assert pool.starmap_async(pow, pairs).get(HANG_LIMIT) == [2**x for x in range(20)]


def test_callbacks_have_run_when_the_result_is_ready(pool):
    seen: list = []
    pool.map_async(helpers.times_ten, range(5), callback=seen.append).wait(HANG_LIMIT)
    assert seen == [[0, 10, 20, 30, 40]]
    failed = pool.apply_async(helpers.fail_on_three, (3,), error_callback=seen.append)
    failed.wait(HANG_LIMIT)
    assert failed.ready() and not failed.successful()
    assert isinstance(seen[-1], ValueError)
    with pytest.raises(ValueError, match="bad item 3"):
        failed.get()


def test_apply_async_from_a_callback_runs(pool):
    done = threading.Event()
    results: list = []

    def then(value):
        results.append(value)
        if len(results) < 3:
            pool.apply_async(helpers.times_ten, (value,), callback=then)
        else:
            done.set()

    pool.apply_async(helpers.times_ten, (1,), callback=then)
    assert done.wait(HANG_LIMIT)
    assert results == [10, 100, 1000]


# -- several threads ----------------------------------------------------------------------------


def test_threads_share_one_pool(pool):
    def work(n: int):
        items = range(n * 100, n * 100 + 50)
        expected = [x * 10 for x in items]
        assert pool.map(helpers.times_ten, items) == expected
        assert list(pool.imap(helpers.times_ten, items, chunksize=3)) == expected
        assert sorted(pool.imap_unordered(helpers.times_ten, items)) == expected
        assert [pool.submit(helpers.times_ten, x).result(HANG_LIMIT) for x in items[:5]] == expected[:5]
        return n

    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        assert sorted(threads.map(work, range(8), timeout=HANG_LIMIT * 4)) == list(range(8))


def test_a_thread_leaving_its_imap_does_not_disturb_another(pool):
    long_call = pool.imap(helpers.times_ten, range(3000), chunksize=7)
    first = next(long_call)
    short = threading.Thread(target=lambda: [c.close() for c in [pool.imap(helpers.times_ten, range(100))]])
    short.start()
    short.join(HANG_LIMIT)
    assert [first, *long_call] == [x * 10 for x in range(3000)]


# -- concurrent.futures' executor --------------------------------------------------------------


def test_the_executor_works_with_as_completed_and_wait(pool):
    with pool.executor() as executor:
        futures = {executor.submit(helpers.times_ten, x): x for x in range(30)}
        got = {futures[f]: f.result() for f in concurrent.futures.as_completed(futures, timeout=HANG_LIMIT)}
        assert got == {x: x * 10 for x in range(30)}
        done, not_done = concurrent.futures.wait(futures, HANG_LIMIT)
        assert len(done) == 30 and not not_done
        assert list(executor.map(pow, [2, 3, 4], [5, 2], timeout=HANG_LIMIT)) == [32, 9]
        assert list(executor.map(helpers.times_ten, range(100), buffersize=4)) == [x * 10 for x in range(100)]
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(helpers.times_ten, 1)
    assert pool.map(helpers.times_ten, [1]) == [10], "shutting the executor down closed the pool"


# -- asyncio ------------------------------------------------------------------------------------


def test_asyncio_faces(pool):
    async def main():
        assert await pool.amap(helpers.times_ten, range(50)) == [x * 10 for x in range(50)]
        assert [r async for r in pool.aimap(helpers.times_ten, iter(range(50)))] == [x * 10 for x in range(50)]
        assert sorted([r async for r in pool.aimap_unordered(helpers.times_ten, range(50))]) == [
            x * 10 for x in range(50)
        ]
        assert await asyncio.gather(*(pool.asubmit(helpers.times_ten, x) for x in range(20))) == [
            x * 10 for x in range(20)
        ]
        with pytest.raises(ValueError, match="bad item 3"):
            await pool.amap(helpers.fail_on_three, range(6))

    asyncio.run(asyncio.wait_for(main(), HANG_LIMIT))


def test_cancelling_an_awaiting_task_cancels_the_calls_pending_work(pool, limits):
    _skip_if(limits, "in_process")  # an item running in the caller's own process cannot be stopped
    slow, limit = (10, 30) if "finishes_cancelled_chunks" in limits else (600, 120)
    items = [(0, "first")] + [(slow, "slow")] * 8

    async def main():
        started = time.monotonic()
        call = asyncio.ensure_future(pool.amap(helpers.sleep_then_return, items, chunksize=1))
        await asyncio.sleep(1.0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        async for value in pool.aimap(helpers.sleep_then_return, items, chunksize=1):
            assert value == "first"
            break
        assert await pool.amap(helpers.times_ten, range(10)) == [x * 10 for x in range(10)]
        return time.monotonic() - started

    elapsed = asyncio.run(asyncio.wait_for(main(), limit * 2))
    assert elapsed < limit, f"workers were still busy with cancelled work after {elapsed:.0f}s"


def test_the_event_loop_keeps_running_while_results_stream(pool):
    async def main():
        lateness: list[float] = []
        streaming = True

        async def ticker():
            loop = asyncio.get_running_loop()
            while streaming:
                began = loop.time()
                await asyncio.sleep(0.001)
                lateness.append(loop.time() - began - 0.001)

        ticks = asyncio.ensure_future(ticker())
        count, began = 0, time.monotonic()
        async for _ in pool.aimap(helpers.times_ten, range(200_000)):
            count += 1
        elapsed = time.monotonic() - began
        streaming = False
        await ticks
        return count, lateness, elapsed

    count, lateness, elapsed = asyncio.run(asyncio.wait_for(main(), HANG_LIMIT * 2))
    assert count == 200_000
    assert len(lateness) >= elapsed / 0.1, f"the ticker ran {len(lateness)} times in {elapsed:.2f} s of streaming"
    assert max(lateness) < 1.0, f"the event loop was blocked for {max(lateness):.2f} s"
