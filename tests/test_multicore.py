"""What MulticorePool promises beyond the shared contract: its own workers, and none left behind."""

from __future__ import annotations

import ctypes
import os
import pickle
import time

import psutil
import pytest

from glimpse.pools import InitializerError, MulticorePool, WorkerLostError
from tests import helpers


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _segfault(x):
    ctypes.string_at(0)


def _add_offset(x):
    return x + int(os.environ["GLIMPSE_TEST_OFFSET"])


def _set_offset(value):
    os.environ["GLIMPSE_TEST_OFFSET"] = str(value)


def test_no_worker_outlives_a_closed_pool():
    before = _children()
    with MulticorePool(2) as pool:
        assert pool.map(helpers.worker_pid, range(8), chunksize=1)
        assert _children() - before, "the pool started no worker process"
    assert _children() - before == set(), "workers still run after the pool was closed and joined"


def test_terminate_kills_busy_workers():
    before = _children()
    pool = MulticorePool(2)
    results = pool.imap_unordered(helpers.sleep_then_return, [(0, "a"), (600, "b"), (600, "c")], chunksize=1)
    assert next(results) == "a"
    pool.terminate()
    pool.join()
    assert _children() - before == set()
    with pytest.raises(ValueError, match="terminated"):
        next(results)


def test_segfault_is_a_named_error_not_a_hang():
    with MulticorePool(1) as pool:
        with pytest.raises(WorkerLostError, match="SIGSEGV"):
            pool.map(_segfault, [1])
        assert pool.map(helpers.times_ten, [1]) == [10]


def test_a_worker_that_closes_its_pipes_and_lives_on_is_killed_and_named():
    with MulticorePool(1) as pool:
        with pytest.raises(WorkerLostError, match="closed its pipes but did not exit") as lost:
            pool.map(helpers.close_pipes_and_live_on, [1])
        assert not psutil.pid_exists(helpers.pid_named_in(str(lost.value))), "the worker was left running"
        assert pool.map(helpers.times_ten, [1]) == [10]


def test_initializer_runs_in_every_worker_and_survives_pickling():
    pool = MulticorePool(2, initializer=_set_offset, initargs=(5,))
    clone = pickle.loads(pickle.dumps(pool))
    for p in (pool, clone):
        assert p.map(_add_offset, range(4), chunksize=1) == [5, 6, 7, 8]
        p.close()
        p.join()


def test_failing_initializer_is_reported_not_retried_forever():
    with MulticorePool(1, initializer=helpers.fail_on_three, initargs=(3,)) as pool:
        with pytest.raises(InitializerError, match="fail_on_three raised in worker pid .*ValueError: bad item 3"):
            pool.map(helpers.times_ten, [1])


def test_maxtasksperchild_replaces_workers_without_losing_work():
    with MulticorePool(1, maxtasksperchild=2) as pool:
        pids = pool.map(helpers.worker_pid, range(6), chunksize=1)
    assert len(set(pids)) == 3


def test_cancelled_chunk_frees_its_worker_at_once():
    with MulticorePool(1) as pool:
        results = pool.imap(helpers.sleep_then_return, [(0, "a"), (600, "b")], chunksize=1)
        assert next(results) == "a"
        results.close()
        started = time.monotonic()
        assert pool.map(helpers.times_ten, [1]) == [10]
        assert time.monotonic() - started < 60


@pytest.mark.parametrize("processes", [0, -1])
def test_bad_process_count_is_rejected(processes):
    with pytest.raises(ValueError, match="processes"):
        MulticorePool(processes)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"processes": "2"}, TypeError),
        ({"processes": 1.5}, TypeError),
        ({"maxtasksperchild": "12"}, ValueError),
        ({"maxtasksperchild": 1.5}, ValueError),
        ({"maxtasksperchild": 0}, ValueError),
        ({"initializer": 1}, TypeError),
    ],
)
def test_arguments_are_checked_at_construction_as_multiprocessing_does(arguments, error):
    with pytest.raises(error):
        MulticorePool(**arguments)


def test_a_closed_pool_cannot_be_entered_again():
    pool = MulticorePool(1)
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        with pool:
            pass


def test_close_then_join_lets_a_call_in_flight_deliver_every_result():
    pool = MulticorePool(3, maxtasksperchild=2)
    results = pool.imap(helpers.sleep_then_return, [(0.05, i) for i in range(12)], chunksize=1)
    first = [next(results) for _ in range(3)]
    pool.close()
    pool.join()
    assert first + list(results) == list(range(12))


def test_a_call_in_flight_raises_a_clear_error_after_terminate():
    pool = MulticorePool(2)
    results = pool.imap(helpers.sleep_then_return, [(0.05, i) for i in range(50)], chunksize=1)
    next(results)
    pool.terminate()
    with pytest.raises(ValueError, match="terminated"):
        list(results)
    pool.join()


def _die_on_zero(x):
    if x == 0:
        os._exit(13)
    return x


def test_chunks_sent_behind_a_dying_chunk_are_not_blamed_for_it():
    # One worker holds the chunk it runs and the next ones; only the running chunk counts as lost.
    with MulticorePool(1) as pool:
        with pytest.raises(WorkerLostError, match=r"item #0 3 times"):
            pool.map(_die_on_zero, range(50), chunksize=1)
        assert pool.map(_die_on_zero, range(1, 50), chunksize=1) == list(range(1, 50))


def test_chunks_larger_than_the_pipe_do_not_hang_caller_and_workers():
    # Chunks of 100 KiB and more to busy workers whose outcomes are as large: neither end may
    # block writing while the other waits to write too.
    with MulticorePool(2) as pool:
        assert pool.map(abs, range(-400_000, 0)) == list(range(400_000, 0, -1))
        assert list(pool.imap(abs, range(300_000), chunksize=30_000)) == list(range(300_000))
        assert sorted(pool.imap_unordered(helpers.make_blob, [200_000] * 40, chunksize=2)) == [b"x" * 200_000] * 40


def test_a_chunk_waiting_behind_a_long_one_goes_to_an_idle_worker(tmp_path):
    release = str(tmp_path / "release")
    with MulticorePool(2) as pool:
        results = pool.imap_unordered(helpers.held_until_released, [("hold", release), *range(1, 40)], chunksize=1)
        early = [next(results) for _ in range(39)]
        assert sorted(early) == list(range(1, 40))
        open(release, "w").close()
        assert list(results) == ["released"]
