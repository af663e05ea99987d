"""The contract machinery on its own: ``iterate`` driving a scripted in-memory backend.

The backend runs each chunk with the real worker runner in this process, but the test decides
in which order chunks finish, which are lost and how often, so ordering, retries, early exit
and error delivery are checked in milliseconds, before any engine starts.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from glimpse.pools import ClusterLostError, NoWorkersError, Pool, RemoteTraceback, SerializationError, WorkerLostError
from glimpse.pools.contract import Backend, ChunkLost, Health, watch
from glimpse.pools.contract.worker_runner import run_chunk


class _Submitted:
    def __init__(self, call, chunk):
        self.call, self.chunk = call, chunk


class ScriptedBackend(Backend):
    """Chunks finish last-submitted first (``reverse``) or in order; ``losses[start]`` loses a chunk that often."""

    def __init__(
        self,
        workers: int = 2,
        reverse: bool = True,
        losses: dict[int, int] | None = None,
        health=None,
        stall_after=None,
    ):
        self._workers = workers
        self._health = health
        self.stall_after = stall_after
        self.finished = 0
        self.reverse = reverse
        self.losses = dict(losses or {})
        self.submitted: list[tuple[int, int]] = []
        self.cancelled: list[int] = []
        self.opened: list[str] = []
        self.closed: list[str] = []

    def workers(self) -> int:
        return self._workers

    def open_call(self, call) -> None:
        self.opened.append(call.id)

    def close_call(self, call) -> None:
        self.closed.append(call.id)

    def submit(self, call, chunk):
        self.submitted.append((chunk.start, chunk.count))
        return _Submitted(call, chunk)

    def wait(self, handles, timeout):
        if self.stall_after is not None and self.finished >= self.stall_after:
            time.sleep(min(timeout, 0.01))
            return []
        self.finished += 1
        handles = list(handles)
        return [handles[-1] if self.reverse else handles[0]]

    def health(self):
        return self._health

    def outcome(self, handle):
        chunk = handle.chunk
        if self.losses.get(chunk.start, 0) > 0:
            self.losses[chunk.start] -= 1
            raise ChunkLost(f"scripted loss of {chunk.describe()}")
        return run_chunk(handle.call.id, handle.call.blob, chunk.payload, chunk.start)

    def cancel(self, handles) -> None:
        self.cancelled.extend(handle.chunk.start for handle in handles)


def _fail_on_three(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def test_imap_keeps_input_order_when_chunks_finish_in_reverse():
    pool = Pool(ScriptedBackend(reverse=True))
    assert list(pool.imap(abs, range(-50, 0), chunksize=3)) == list(range(50, 0, -1))


def test_imap_unordered_yields_in_completion_order():
    pool = Pool(ScriptedBackend(workers=1, reverse=True))  # window of 4 chunks
    results = list(pool.imap_unordered(abs, range(8), chunksize=1))
    assert sorted(results) == list(range(8))
    assert results[0] == 3, f"the last submitted chunk finished first, but {results[0]} came first: {results}"


def test_a_lost_chunk_is_sent_again_and_delivered_once():
    backend = ScriptedBackend(losses={4: 2})
    assert Pool(backend).map(abs, range(10), chunksize=2) == list(range(10))
    assert backend.submitted.count((4, 2)) == 3, backend.submitted


def test_a_chunk_lost_max_attempts_times_is_a_worker_lost_error_naming_the_items():
    backend = ScriptedBackend(losses={4: 99})
    with pytest.raises(WorkerLostError, match=r"lost items #4\.\.#5 3 times.*scripted loss"):
        Pool(backend).map(abs, range(10), chunksize=2)
    assert backend.submitted.count((4, 2)) == backend.max_attempts


def test_breaking_out_of_imap_cancels_pending_chunks_and_closes_the_call():
    backend = ScriptedBackend(workers=2, reverse=False)
    results = Pool(backend).imap(abs, itertools.count(), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    assert backend.cancelled, "no pending chunk was cancelled"
    assert all(start >= 3 for start in backend.cancelled)
    assert backend.opened == backend.closed and len(backend.opened) == 1


def test_an_error_comes_after_every_earlier_result_with_the_remote_traceback():
    results = Pool(ScriptedBackend(reverse=True)).imap(_fail_on_three, range(6), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3") as caught:
        next(results)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert "_fail_on_three" in caught.value.__cause__.text
    assert any("item #3" in note for note in getattr(caught.value, "__notes__", []))


def test_an_unpicklable_item_is_named_after_the_items_before_it():
    items = [1, 2, threading.Lock(), 4]
    results = Pool(ScriptedBackend()).imap(abs, items, chunksize=1)
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(SerializationError, match=r"argument item #2 could not be pickled"):
        next(results)


def test_an_error_from_the_input_is_raised_unchanged_after_earlier_results():
    error = KeyError("from the input")

    def items():
        yield from range(3)
        raise error

    results = Pool(ScriptedBackend()).imap(abs, items(), chunksize=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError) as caught:
        next(results)
    assert caught.value is error


def test_input_is_read_at_most_one_window_ahead():
    pulled = []

    def items():
        for x in itertools.count():
            pulled.append(x)
            yield x

    backend = ScriptedBackend(workers=1, reverse=False)
    results = Pool(backend).imap(abs, items(), chunksize=1)
    next(results)
    assert len(pulled) <= backend.window() + 1, f"read {len(pulled)} items for one result"
    results.close()


class _FinishedAtSubmit(ScriptedBackend):
    """Records, for each chunk, how many chunks had finished when it was sent."""

    def submit(self, call, chunk):
        self.submitted.append((chunk.count, self.finished))
        return _Submitted(call, chunk)


def test_each_worker_first_gets_a_probe_with_an_equal_share_and_tiny_items_need_nothing_more():
    backend = _FinishedAtSubmit(workers=2, reverse=False)
    assert Pool(backend).map(abs, range(-1000, 0)) == list(range(1000, 0, -1))
    assert backend.submitted == [(500, 0), (500, 0)], backend.submitted


def _slow_abs(x):
    time.sleep(0.002)
    return abs(x)


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_a_probe_out_of_time_returns_what_it_ran_and_the_rest_follows_in_order(reverse, method):
    backend = ScriptedBackend(workers=2, reverse=reverse)
    backend.chunk_seconds = 0.02  # the probes' budget: about ten items of 2 ms
    results = list(getattr(Pool(backend), method)(_slow_abs, range(-200, 0)))
    assert (results if method == "imap" else sorted(results, reverse=True)) == list(range(200, 0, -1))
    assert backend.submitted[:2] == [(0, 100), (100, 100)], backend.submitted
    later = backend.submitted[2:]
    assert later and all(count < 100 for _, count in later), backend.submitted
    assert sum(count for _, count in later) < 200, "items a probe ran were sent again"


def test_a_probe_reads_a_slow_input_only_for_a_few_milliseconds():
    def slow_items():
        for x in range(100):
            time.sleep(0.02)
            yield x

    backend = ScriptedBackend(workers=2, reverse=False)
    assert Pool(backend).map(abs, slow_items()) == list(range(100))
    assert [count for _, count in backend.submitted[:2]] == [1, 1], backend.submitted


def test_items_a_probe_gave_back_come_before_an_error_from_the_input():
    error = KeyError("from the input")

    def items():
        yield from range(60)
        raise error

    backend = ScriptedBackend(workers=2, reverse=False)
    backend.chunk_seconds = 0.01
    delivered = []
    with pytest.raises(KeyError) as caught:
        delivered.extend(Pool(backend).imap(_slow_abs, items()))
    assert caught.value is error and delivered == list(range(60))


def test_chunks_grow_with_the_engines_cost_per_chunk_and_the_number_of_workers():
    from glimpse.pools.contract.sizing import AdaptiveSize

    few, many = AdaptiveSize(0.05, 2e-3, workers=2), AdaptiveSize(0.05, 2e-3, workers=256)
    for sizes in (few, many):
        sizes.observe_payload(10, 300, 0.0)  # small items
        sizes.observe(10, 0.5)  # of 50 ms each
    assert (few.next_size(None), many.next_size(None)) == (1, 102)
    assert many.next_size(remaining=1024) == 25  # near the end: a quarter of the ideal, not one item


def test_probes_run_for_times_spread_up_to_the_target_so_they_return_one_after_another():
    from glimpse.pools.contract.sizing import AdaptiveSize

    sizes = AdaptiveSize(0.05, 4e-3, workers=5)  # target: 5 workers x 4 ms / 10% = 0.2 s
    budgets = []
    for _ in range(5):
        sizes.next_size(remaining=1000)
        budgets.append(sizes.probe_seconds)
    # The first probe reports the item cost early; the others end evenly apart, between half the
    # target and the target, so the workers they free do not all wait for new chunks at the same moment.
    assert budgets == pytest.approx([0.05, 0.125, 0.15, 0.175, 0.2])


def test_the_first_items_given_back_are_shared_out_among_the_workers():
    from glimpse.pools.contract.reader import ChunkReader
    from glimpse.pools.contract.sizing import AdaptiveSize

    sizes = AdaptiveSize(0.05, 2e-3, workers=16)  # target 0.32 s
    reader = ChunkReader(range(800), sizes, None, 800)
    assert [reader.read().count for _ in range(16)] == [50] * 16  # the probes hold the whole input
    sizes.observe(4, 0.05)  # the first probe ran 4 items of 12.5 ms: chunks of 25, 6 near the end
    reader.give_back(4, list(range(4, 50)))
    reader.give_back(120, list(range(120, 140)))  # a later probe's: sized as usual
    counts = [reader.read().count for _ in range(20)]
    # The first probe's 46 items wait for workers to free up, at the end of the call: in chunks of
    # 6 they would make a tail of 75 ms while most workers are done; shared out, 3 at most each.
    assert counts[:16] == [3] * 15 + [1] and counts[16:] == [6, 6, 6, 2], counts
    assert reader.read() is None


@pytest.mark.parametrize("kind", [list, tuple, range])
def test_a_sequence_is_read_into_the_same_chunks_as_its_iterator(kind):
    from glimpse.pools.contract.reader import ChunkReader
    from glimpse.pools.contract.sizing import AdaptiveSize, FixedSize

    def chunks(iterable, sizes):
        reader = ChunkReader(iterable, sizes, None, 1000)
        read = [reader.read() for _ in range(3)]  # the probes hold the whole input
        sizes.observe(10, 0.05)
        reader.give_back(10, read[0].items[10:])
        read += iter(reader.read, None)
        return [(chunk.start, list(chunk.items), type(chunk.items)) for chunk in read]

    sequence = kind(range(1000)) if kind is not range else range(1000)
    for sizes in (lambda: AdaptiveSize(0.05, 1e-3, workers=3), lambda: FixedSize(64)):
        assert chunks(sequence, sizes()) == chunks(iter(range(1000)), sizes())


def test_every_call_is_opened_and_closed_once_even_when_it_fails():
    backend = ScriptedBackend()
    with pytest.raises(ValueError):
        Pool(backend).map(_fail_on_three, range(10), chunksize=1)
    Pool(backend).map(abs, range(3))
    assert len(backend.opened) == 2 and backend.opened == backend.closed


@pytest.fixture
def quick_health_checks(monkeypatch):
    monkeypatch.setattr(watch, "HEALTH_SECONDS", 0.02)
    monkeypatch.setattr(watch, "NO_WORKERS_WARNING_SECONDS", 0.05)
    monkeypatch.setenv(watch.NO_WORKERS_VARIABLE, "0.2")


def test_a_lost_cluster_is_a_cluster_lost_error_saying_what_was_delivered(quick_health_checks):
    backend = ScriptedBackend(reverse=False, stall_after=3, health=Health(2, lost="the scheduler at tcp://x:1 is gone"))
    results = Pool(backend).imap(abs, range(10), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ClusterLostError, match=r"scheduler at tcp://x:1 is gone; the call had delivered 3 results"):
        next(results)


@pytest.fixture
def quick_silence(quick_health_checks, monkeypatch):
    monkeypatch.setattr(watch, "SILENT_RECHECK_SECONDS", 0.02)
    monkeypatch.setenv(watch.SILENCE_VARIABLE, "0.5")


def test_a_head_silent_past_the_silence_timeout_is_a_cluster_lost_error(quick_silence):
    silent = Health(2, silent="the scheduler at tcp://x:1 does not answer")
    backend = ScriptedBackend(reverse=False, stall_after=3, health=silent)
    results = Pool(backend).imap(abs, range(10), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    started = time.monotonic()
    with pytest.raises(ClusterLostError, match=r"does not answer for \d+ s \(\$GLIMPSE_SILENCE_TIMEOUT=0.5\)"):
        next(results)
    assert time.monotonic() - started >= 0.5


def test_a_head_silent_for_less_than_the_silence_timeout_is_a_blip_the_call_rides_out(quick_silence):
    silent = Health(2, silent="the scheduler at tcp://x:1 does not answer")
    backend = ScriptedBackend(reverse=False, stall_after=3, health=silent)
    results = Pool(backend).imap(abs, range(10), chunksize=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    heal = threading.Timer(0.25, lambda: setattr(backend, "stall_after", None))
    heal.start()
    assert list(results) == list(range(3, 10))
    heal.join()


def test_no_workers_is_a_no_workers_error_naming_the_address_and_the_command(quick_health_checks, caplog):
    health = Health(0, address="tcp://x:1", start_workers="glimpse-cluster LaunchWorker")
    backend = ScriptedBackend(stall_after=0, health=health)
    with pytest.raises(
        NoWorkersError, match=r"tcp://x:1 .*GLIMPSE_NO_WORKERS_TIMEOUT=0.2.*glimpse-cluster LaunchWorker"
    ):
        Pool(backend).map(abs, range(4))
    assert "no worker is connected to the cluster at tcp://x:1" in caplog.text


def test_a_call_with_workers_keeps_waiting_however_long_nothing_finishes(quick_health_checks):
    backend = ScriptedBackend(stall_after=0, health=Health(2))
    results = Pool(backend).imap(abs, range(4))
    thread = threading.Thread(target=lambda: list(results), daemon=True)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "a call on a healthy cluster gave up while its chunks were still running"
    backend.stall_after = None
    thread.join(5)
    assert not thread.is_alive()


def test_the_window_follows_workers_that_join_during_a_call(monkeypatch):
    monkeypatch.setattr(watch, "RESIZE_SECONDS", 0.0)
    backend = ScriptedBackend(workers=1, reverse=False)
    results = Pool(backend).imap(abs, itertools.count(), chunksize=1)
    next(results)
    backend._workers = 10
    for _ in range(30):
        next(results)
    in_flight = len(backend.submitted) - backend.finished
    results.close()
    assert in_flight > 2 * 1 + 2, f"only {in_flight} chunks in flight after the cluster grew to 10 workers"
