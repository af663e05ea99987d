"""Long runs on every pool kind: per-item timeouts, retries, the failure policy and worker setup.

Journals (``journal=``) have their own suite, tests/test_journal.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid

import pytest

from glimpse.pools import Failure, InitializerError, TaskTimeoutError
from glimpse.pools.contract.worker_policy import WorkerSetup, parse_where
from tests import helpers

TIMEOUT = 3.0
#: A bound that only catches hangs: a stuck item must not hold the call much past its timeout.
HANG_BOUND = TIMEOUT + 10 + 30


def test_a_stuck_item_among_a_thousand_is_a_timeout_and_every_other_result_arrives(pool):
    items = [(x, 500) for x in range(1000)]
    began = time.monotonic()
    results = pool.map(helpers.stuck_at, items, timeout=TIMEOUT, errors="return")
    # Every item but the stuck one takes microseconds: the call lasts the timeout and a few round trips.
    assert time.monotonic() - began < TIMEOUT + 10
    failure = results[500]
    assert isinstance(failure, Failure), failure
    assert isinstance(failure.exception, TaskTimeoutError)
    assert failure.index == 500 and failure.item == (500, 500)
    assert "item #500" in str(failure.exception) and f"timeout={TIMEOUT:g}" in str(failure.exception)
    assert results[:500] + results[501:] == [x * 10 for x in range(1000) if x != 500]


def test_a_stuck_item_raises_task_timeout_error_naming_it_after_every_earlier_result(pool):
    seen = []
    began = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"item #7 ran longer than timeout=3 s"):
        for value in pool.imap(helpers.stuck_at, [(x, 7) for x in range(20)], timeout=TIMEOUT):
            seen.append(value)
    assert time.monotonic() - began < HANG_BOUND
    assert seen == [x * 10 for x in range(7)]


def test_the_worker_process_an_item_timed_out_in_is_replaced_where_glimpse_may(pool, limits):
    if "keeps_timed_out_threads" in limits:
        pytest.skip("this pool leaves an item that timed out running: glimpse does not own its workers")
    results = pool.map(helpers.stuck_at, [(x, 2) for x in range(4)], chunksize=1, timeout=TIMEOUT, errors="return")
    pid, host = parse_where(results[2].where)
    assert pid is not None
    if "workers_on_other_hosts" not in limits:
        assert host == socket.gethostname()
        deadline = time.monotonic() + 60
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(pid), f"worker process {pid} still runs the item that timed out"
    assert pool.map(helpers.times_ten, range(40), chunksize=1) == [x * 10 for x in range(40)]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_timeout_counts_running_time_not_time_queued(pool, limits):
    # Items queue behind each other on few workers; each runs well within its timeout.
    count = 4 * pool.workers() + 4
    results = pool.map(helpers.sleep_then_return, [(0.5, x) for x in range(count)], chunksize=1, timeout=1.5)
    assert results == list(range(count))


def test_an_item_that_fails_its_first_two_attempts_succeeds_with_two_retries(pool, tmp_path):
    items = [(x, str(tmp_path), 2) for x in range(30)]
    assert pool.map(helpers.fails_first_attempts, items, retries=2, retry_on=OSError) == list(range(30))
    assert all((tmp_path / str(x)).read_text() == "..." for x in range(30))


def test_retries_run_out_and_only_retry_on_types_are_retried(pool, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(OSError, match="attempt 2 of item 0 failed"):
        pool.map(helpers.fails_first_attempts, [(0, str(tmp_path / "a"), 2)], retries=1, retry_on=OSError)
    with pytest.raises(OSError, match="attempt 1 of item 0 failed"):
        pool.map(helpers.fails_first_attempts, [(0, str(tmp_path / "b"), 2)], retries=2, retry_on=ValueError)


def test_errors_return_puts_a_failure_with_the_item_and_the_remote_traceback_in_its_place(pool):
    results = pool.map(helpers.fail_on_three, range(8), errors="return")
    failure = results[3]
    assert isinstance(failure, Failure)
    assert (failure.index, failure.item, failure.attempts) == (3, 3, 1)
    assert isinstance(failure.exception, ValueError) and str(failure.exception) == "bad item 3"
    assert "fail_on_three" in failure.traceback and failure.where
    assert results[:3] + results[4:] == [0, 1, 2, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="bad item 3"):
        failure.reraise()


def test_errors_skip_leaves_failures_out_and_lists_them(pool):
    results = pool.map(helpers.fail_on_three, range(8), errors="skip")
    assert results == [0, 1, 2, 4, 5, 6, 7]
    assert [(f.index, type(f.exception)) for f in results.failures] == [(3, ValueError)]
    unordered = pool.imap_unordered(helpers.fail_on_three, range(8), errors="skip")
    assert sorted(unordered) == [0, 1, 2, 4, 5, 6, 7]
    assert [f.index for f in unordered.failures] == [3]


def test_the_faces_take_the_same_options(pool):
    starred = pool.starmap(pow, [(2, 3), (2, -1), ("x", 2)], errors="skip")
    assert starred == [8, 0.5] and [f.index for f in starred.failures] == [2]
    results = pool.map_async(helpers.fail_on_three, range(5), errors="return").get(timeout=60)
    assert isinstance(results[3], Failure)
    skipped = pool.map_async(helpers.fail_on_three, range(5), errors="skip").get(timeout=60)
    assert skipped == [0, 1, 2, 4] and [f.index for f in skipped.failures] == [3]
    awaited = asyncio.run(pool.amap(helpers.fail_on_three, range(5), errors="skip", timeout=60))
    assert awaited == [0, 1, 2, 4] and [f.index for f in awaited.failures] == [3]


def test_bad_options_are_clear_errors_before_anything_runs(pool):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        pool.map(abs, [1], timeout=0)
    with pytest.raises(ValueError, match="errors must be one of 'raise', 'return', 'skip'"):
        pool.map(abs, [1], errors="ignore")
    with pytest.raises(ValueError, match="retries=2 needs retry_on="):
        pool.map(abs, [1], retries=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'timout'"):
        pool.map(abs, [1], timout=3)


@contextlib.contextmanager
def _with_initializer(pool, initializer, *initargs):
    """The session's pool as one made with ``initializer=``: the contract runs it in each worker
    process before its first item (tests/test_initializer.py makes such pools of each kind)."""
    saved = pool._setup
    pool._setup = WorkerSetup(initializer, initargs, uuid.uuid4().hex)
    try:
        yield pool
    finally:
        pool._setup = saved


def test_the_initializer_runs_in_every_worker_process_before_its_first_item(pool):
    name = uuid.uuid4().hex[:8]
    with _with_initializer(pool, helpers.remember_setup, name, "model"):
        seen = pool.map(helpers.setup_seen, [name] * 200, chunksize=1)
        assert seen == ["model"] * 200


def test_an_initializer_that_raises_is_a_clear_error_naming_the_worker(pool):
    began = time.monotonic()
    with _with_initializer(pool, helpers.refuse_setup, "resnet"):
        with pytest.raises(InitializerError, match=r"refuse_setup raised in worker pid \d+ on .*LookupError: no model"):
            pool.map(helpers.times_ten, range(50))
    assert time.monotonic() - began < 30
    assert pool.map(helpers.times_ten, range(5)) == [0, 10, 20, 30, 40]  # the pool goes on without it
