"""The iteration contract every pool honours, run against every pool kind (see conftest)."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
import traceback

import cloudpickle
import pytest

from glimpse.pools import SerializationError, WorkerLostError
from tests import helpers

MIB = 2**20


def _reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _resident_mib() -> float:
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    return _status_mib("VmHWM")


def _skip_if(limits: set[str], *traits: str) -> None:
    hit = sorted(set(traits) & limits)
    if hit:
        pytest.skip(f"this pool is {', '.join(hit)}")


# -- results and order ---------------------------------------------------------------------------


def test_map_returns_results_in_input_order(pool):
    assert pool.map(helpers.times_ten, range(200)) == [x * 10 for x in range(200)]


def test_map_accepts_empty_input_and_generators(pool):
    assert pool.map(helpers.times_ten, []) == []
    assert pool.map(helpers.times_ten, (x for x in range(7))) == [x * 10 for x in range(7)]


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_imap_keeps_input_order_for_every_chunksize(pool, chunksize):
    assert list(pool.imap(helpers.times_ten, range(100), chunksize=chunksize)) == [x * 10 for x in range(100)]


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_imap_unordered_delivers_every_result_once(pool, chunksize):
    results = list(pool.imap_unordered(helpers.times_ten, range(100), chunksize=chunksize))
    assert sorted(results) == [x * 10 for x in range(100)]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_items_a_probe_had_no_time_for_are_sent_again_and_delivered_once(pool, method, monkeypatch):
    # Each worker's first chunk (a probe) takes an equal share of the 120 items of 10 ms and runs
    # them for one chunk's target time only (at most 0.3 s), then gives the rest back.
    sent = []
    submit = pool._backend.submit
    monkeypatch.setattr(pool._backend, "submit", lambda call, chunk: sent.append(chunk.count) or submit(call, chunk))
    results = list(getattr(pool, method)(helpers.sleep_then_return, [(0.01, x) for x in range(120)]))
    assert (results if method == "imap" else sorted(results)) == list(range(120))
    assert sum(sent) > 120, f"no probe gave items back: chunks of {sent}"


def test_imap_streams_results_before_later_items_finish(pool, tmp_path, limits):
    _skip_if(limits, "sequential")
    release = str(tmp_path / "release")
    items = [0, 1, ("hold", release), 3]
    results = pool.imap(helpers.held_until_released, items, chunksize=1)
    assert next(results) == 0, "imap did not yield item 0 while item 2 was still running"
    assert next(results) == 1
    open(release, "w").close()
    assert list(results) == ["released", 3]


def test_imap_unordered_is_not_held_back_by_a_slow_first_item(pool, tmp_path, limits):
    _skip_if(limits, "sequential")
    release = str(tmp_path / "release")
    items = [("hold", release), *range(1, 6)]
    results = pool.imap_unordered(helpers.held_until_released, items, chunksize=1)
    early = [next(results) for _ in range(3)]
    assert "released" not in early and "timed out" not in early, f"unordered results waited: {early}"
    open(release, "w").close()
    rest = list(results)
    assert sorted(map(str, early + rest)) == sorted(map(str, ["released", *range(1, 6)]))


# -- lazy, bounded input --------------------------------------------------------------------------


class _CountingInput:
    """An endless input that counts what the pool pulled: integers, or fresh items of ``size`` bytes."""

    def __init__(self, size: int | None = None):
        self.pulled = 0
        self.size = size

    def __iter__(self):
        for x in itertools.count():
            self.pulled += 1
            yield x if self.size is None else bytes([x % 256]) * self.size


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_pulls_input_lazily_from_an_endless_generator(pool, method):
    source = _CountingInput()
    results = getattr(pool, method)(helpers.times_ten, source, chunksize=1)
    first = list(itertools.islice(results, 50))
    results.close()
    assert len(first) == 50
    window = pool._backend.window()  # chunks in flight: a pool of short chunks keeps many
    assert source.pulled < 50 + max(200, window + 2), f"pulled {source.pulled} items to deliver 50 with chunksize=1"


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_large_items_are_read_a_bounded_number_of_megabytes_ahead(pool, method):
    source = _CountingInput(size=MIB)
    results = getattr(pool, method)(len, source)
    assert list(itertools.islice(results, 20)) == [MIB] * 20
    results.close()
    ahead = source.pulled - 20
    assert ahead < 280, f"read {ahead} MiB of 1 MiB items ahead to deliver 20 (window budget 256 MiB)"


def test_streaming_gigabytes_of_large_items_keeps_the_callers_memory_flat(pool):
    source = _CountingInput(size=MIB)
    _reset_peak_memory()
    before = _resident_mib()
    total = sum(itertools.islice(pool.imap(len, source), 1536))
    growth = _peak_mib() - before
    assert total == 1536 * MIB
    assert growth < 512, f"streaming 1.5 GiB of 1 MiB items grew the caller's peak memory by {growth:.0f} MiB"


def test_adaptive_chunks_handle_an_endless_generator(pool):
    source = _CountingInput()
    results = pool.imap(helpers.times_ten, source)
    assert list(itertools.islice(results, 5000)) == [x * 10 for x in range(5000)]
    results.close()
    assert source.pulled < 2_000_000


# -- errors ----------------------------------------------------------------------------------------


def test_error_keeps_type_message_and_remote_traceback(pool):
    with pytest.raises(ValueError, match="bad item 3") as caught:
        pool.map(helpers.fail_on_three, range(10))
    story = "".join(traceback.format_exception(caught.value))
    assert "fail_on_three" in story, f"the traceback does not name the failing function:\n{story}"


def test_imap_delivers_every_result_before_the_failing_item(pool):
    delivered = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in pool.imap(helpers.fail_on_three, range(10), chunksize=2):
            delivered.append(value)
    assert delivered == [0, 1, 2]


def test_exception_that_cannot_be_unpickled_still_reports_its_type_and_message(pool, limits):
    _skip_if(limits, "in_process")
    with pytest.raises(Exception, match="NeedsTwoArgsError.*left/right"):
        pool.map(helpers.raise_unpicklable_exception, [1])


def test_error_from_the_input_iterable_propagates_unchanged_after_earlier_results(pool):
    failure = KeyError("input broke")

    def source():
        yield from range(5)
        raise failure

    delivered = []
    with pytest.raises(KeyError) as caught:
        for value in pool.imap(helpers.times_ten, source(), chunksize=2):
            delivered.append(value)
    assert caught.value is failure
    assert delivered == [0, 10, 20, 30, 40]


def test_pool_is_usable_after_an_error(pool):
    with pytest.raises(ValueError):
        pool.map(helpers.fail_on_three, range(10))
    assert pool.map(helpers.times_ten, range(5)) == [0, 10, 20, 30, 40]


def test_bad_arguments_are_rejected_before_any_work(pool):
    with pytest.raises(TypeError, match="callable"):
        pool.map(42, range(3))
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(helpers.times_ten, range(3), chunksize=0)


# -- early exit ------------------------------------------------------------------------------------


def test_breaking_out_of_imap_cancels_pending_work(pool, limits):
    # Where running chunks are left to finish, they are short; the queued ones must still be cancelled.
    slow, limit = (10, 30) if "finishes_cancelled_chunks" in limits else (600, 120)
    items = [(0, "first")] + [(slow, "slow")] * 8
    started = time.monotonic()
    for value in pool.imap(helpers.sleep_then_return, items, chunksize=1):
        assert value == "first"
        break
    assert pool.map(helpers.times_ten, range(10)) == [x * 10 for x in range(10)]
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"workers were still busy with cancelled work after {elapsed:.0f}s"


# -- serialization ---------------------------------------------------------------------------------


def test_lambdas_and_closures_run(pool):
    offset = 7
    assert pool.map(lambda x: x + offset, range(5)) == [7, 8, 9, 10, 11]

    def local_function(x):
        return x * offset

    assert list(pool.imap_unordered(local_function, [1])) == [7]


def test_a_function_holding_a_large_object_runs(pool):
    table = bytes(range(256)) * 1024  # 256 KiB pickled with the function: engines may store it apart from the chunks
    assert pool.map(lambda i: table[i], range(0, 256 * 1024, 4099), chunksize=3) == list(table[::4099])


def test_unpicklable_argument_names_the_item(pool, limits):
    _skip_if(limits, "in_process")
    items = [1, 2, threading.Lock(), 4]
    delivered = []
    with pytest.raises(SerializationError, match=r"argument item #2 could not be pickled"):
        for value in pool.imap(helpers.times_ten, items, chunksize=4):
            delivered.append(value)
    assert delivered == [10, 20]


def test_unpicklable_result_names_the_item(pool, limits):
    _skip_if(limits, "in_process")
    with pytest.raises(SerializationError, match=r"result of item #0 could not be pickled"):
        pool.map(helpers.return_lock, [1])


def test_a_result_that_cannot_be_unpickled_in_the_caller_names_its_items_and_the_reason(pool, limits):
    _skip_if(limits, "in_process")
    with pytest.raises(
        SerializationError,
        match=r"results of items #0..#1 could not be unpickled in the caller: ValueError: this object refuses",
    ):
        pool.map(helpers.return_refuses_to_load, [1, 2], chunksize=2)


def test_unpicklable_function_is_a_clear_error(pool, limits):
    _skip_if(limits, "in_process")
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="function .* could not be pickled"):
        pool.map(lambda x: lock, [1])


def test_results_of_a_class_sent_by_value_leave_the_callers_class_as_it_is(pool, limits):
    # cloudpickle would set the caller's class to the worker's copy (cloudpipe/cloudpickle#439).
    _skip_if(limits, "in_process")
    helpers.Tally.where = "changed in the caller"
    describe = helpers.Tally.describe
    results = pool.map(helpers.tally_changed_on_the_worker, [0, 2 * MIB], chunksize=1)  # small, and out of band
    assert [type(tally) for tally, _ in results] == [helpers.Tally] * 2
    assert helpers.Tally.where == "changed in the caller" and helpers.Tally.describe is describe
    assert results[1][0].describe() == "a tally changed in the caller"


def test_arguments_and_results_of_tens_of_megabytes(pool):
    size = 20 * MIB
    assert pool.map(helpers.size_of, [b"a" * size, b"b"]) == [size, 1]
    assert [len(b) for b in pool.imap(helpers.make_blob, [size, 3])] == [size, 3]


def test_numpy_arrays_of_megabytes_come_back_intact(pool):
    np = pytest.importorskip("numpy")
    arrays = [np.full(MIB // 2, float(i)) for i in range(6)]  # 4 MiB each
    assert pool.map(np.sum, arrays) == [MIB // 2 * float(i) for i in range(6)]
    assert [float(a[-1]) for a in pool.imap(np.negative, arrays)] == [-float(i) for i in range(6)]


def test_an_argument_and_a_result_of_over_100_megabytes(pool):
    size = 120 * MIB
    assert pool.map(helpers.size_of, [b"a" * size]) == [size]
    assert [len(b) for b in pool.imap(helpers.make_blob, [size])] == [size]


# -- progress and lifecycle -------------------------------------------------------------------------


def test_progress_bar_counts_every_item(pool, capsys):
    assert pool.map(helpers.times_ten, range(30), progress=True) == [x * 10 for x in range(30)]
    assert "30/30" in capsys.readouterr().err


def test_pool_pickles_to_a_working_pool(pool):
    clone = pickle.loads(cloudpickle.dumps(pool))
    try:
        assert clone.map(helpers.times_ten, [1, 2]) == [10, 20]
    finally:
        clone.close()
        clone.join()
    assert pool.map(helpers.times_ten, [3]) == [30], "closing the copy closed the original"


def test_close_then_join_lets_a_call_in_flight_deliver_every_result(pool):
    copy = pickle.loads(pickle.dumps(pool))  # closing the shared pool would end the session's engine
    results = copy.imap(helpers.times_ten, range(40), chunksize=1)
    first = [next(results) for _ in range(3)]
    copy.close()
    copy.join()
    assert first + list(results) == [x * 10 for x in range(40)]


def test_a_closed_pool_cannot_be_entered_or_given_new_calls(pool):
    copy = pickle.loads(pickle.dumps(pool))
    copy.close()
    copy.join()
    with pytest.raises(ValueError, match="closed"):
        copy.map(helpers.times_ten, [1])
    with pytest.raises(ValueError, match="closed"):
        with copy:
            pass


# -- lost workers ----------------------------------------------------------------------------------


def test_killed_worker_is_replaced_and_its_chunk_rerun(pool, tmp_path, limits):
    _skip_if(limits, "in_process", "no_worker_replacement")
    items = [(str(tmp_path / f"marker{i}"), i) for i in range(4)]
    assert pool.map(helpers.die_once, items, chunksize=1) == [0, 1, 2, 3]


def test_worker_deaths_during_a_long_imap_lose_and_reorder_nothing(pool, tmp_path, limits):
    _skip_if(limits, "in_process", "no_worker_replacement")
    # Six items kill their worker (SIGKILL) the first time they run; every other item names a marker that exists.
    items = [(str(tmp_path / f"died-{i}") if i % 100 == 50 else str(tmp_path), i) for i in range(600)]
    assert list(pool.imap(helpers.die_once, items, chunksize=1)) == list(range(600))


def test_function_that_always_kills_its_worker_is_a_named_error(pool, limits):
    _skip_if(limits, "in_process", "no_worker_replacement")
    started = time.monotonic()
    with pytest.raises(WorkerLostError, match=r"item #0\b"):
        pool.map(helpers.die_always, [1], chunksize=1)
    assert time.monotonic() - started < 120
    assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]
