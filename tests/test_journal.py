"""``journal=PATH``: a call run again after a crash, Ctrl-C, ``kill -9`` or an early stop skips the
items it recorded (their function does not run) and delivers their results where they belong."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

from glimpse.pools import JournalMismatchError

# Workers of external clusters cannot import the test package: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parent.parent


def _journaled_iter(pool, f, xs, path, *, ordered=True, chunksize=None, **options):
    """One journalled call's iterator: ``imap`` (``ordered``) or ``imap_unordered``."""
    face = pool.imap if ordered else pool.imap_unordered
    return face(f, xs, chunksize, journal=path, **options)


def _journaled_map(pool, f, xs, path, *, ordered=True, **options):
    """``map`` with a journal (``ordered=False``: every result of ``imap_unordered``, as a list)."""
    if ordered:
        return pool.map(f, xs, journal=path, **options)
    return list(_journaled_iter(pool, f, xs, path, ordered=False, **options))


def logged_square(item):
    """``(x, log)``: append one line to the file ``log`` per call, then return ``x * x``."""
    x, log, seconds = item
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return x * x


def logged_fail_on_three(item):
    x, log, _ = item
    logged_square(item)
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x * x


def square(x):
    return x * x


def cube(x):
    return x**3


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def recorded(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


def items(n: int, log: Path, seconds: float = 0.0) -> list[tuple[int, str, float]]:
    """``n`` items for :func:`logged_square`; only their ``x`` decides the result (the journal
    keys results by index), so each run may log to a file of its own."""
    return [(x, str(log), seconds) for x in range(n)]


_KILLED_RUN = """
import sys
from glimpse.pools import MulticorePool
from tests.test_journal import _journaled_map, items, logged_square
n, log, journal = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with MulticorePool(2) as pool:
    _journaled_map(pool, logged_square, items(n, log, 0.01), journal)
print("finished: the test meant to kill this run halfway", flush=True)
"""


def test_a_run_killed_halfway_resumes_running_only_the_unfinished_items(pool, tmp_path):
    n = 400
    journal, first_log, second_log = tmp_path / "run.journal", tmp_path / "first.log", tmp_path / "second.log"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(n), str(first_log), str(journal)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (journal.exists() and recorded(journal) >= n // 4):
            assert child.poll() is None, f"the first run ended before it was killed: {child.communicate()}"
            assert time.monotonic() < deadline, "the first run recorded nothing in 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    done = recorded(journal)
    assert n // 4 <= done < n, f"killed after {done} of {n} results were recorded: not halfway"

    results = _journaled_map(pool, logged_square, items(n, second_log), journal)

    assert results == [x * x for x in range(n)]
    assert calls(second_log) == n - done, "the resumed run ran other items than the unfinished ones"
    assert recorded(journal) == n


def test_unordered_resume_delivers_every_result_exactly_once(pool, tmp_path):
    n = 300
    journal, first_log, second_log = tmp_path / "run.journal", tmp_path / "first.log", tmp_path / "second.log"
    first = _journaled_iter(pool, logged_square, items(n, first_log), journal, ordered=False, chunksize=10)
    taken = [next(first) for _ in range(n // 3)]
    first.close()
    done = recorded(journal)
    assert len(taken) <= done < n

    results = _journaled_map(pool, logged_square, items(n, second_log), journal, ordered=False)

    assert sorted(results) == [x * x for x in range(n)], "a result is missing or delivered twice"
    assert calls(second_log) == n - done


def test_closing_the_iterator_early_keeps_what_was_recorded(pool, tmp_path):
    n = 200
    journal, first_log, second_log = tmp_path / "run.journal", tmp_path / "first.log", tmp_path / "second.log"
    first = _journaled_iter(pool, logged_square, items(n, first_log), journal, chunksize=10)
    taken = [next(first) for _ in range(50)]
    first.close()
    done = recorded(journal)
    assert taken == [x * x for x in range(50)]
    assert 50 <= done < n, "the results delivered before the iterator closed were not all recorded"

    assert _journaled_map(pool, logged_square, items(n, second_log), journal) == [x * x for x in range(n)]
    assert calls(second_log) == n - done


def test_a_generator_input_is_walked_once_and_a_finished_journal_runs_nothing(pool, tmp_path):
    n = 250
    journal = tmp_path / "run.journal"
    pulled = []

    def generated(log):
        for x in range(n):
            pulled.append(x)
            yield (x, str(log), 0.0)

    partial = _journaled_iter(pool, logged_square, generated(tmp_path / "first.log"), journal, chunksize=10)
    assert [next(partial) for _ in range(100)] == [x * x for x in range(100)]
    partial.close()
    pulled.clear()

    assert _journaled_map(pool, logged_square, generated(tmp_path / "second.log"), journal) == [x * x for x in range(n)]
    assert pulled == list(range(n)), "the input was not walked exactly once, in order"
    pulled.clear()
    assert _journaled_map(pool, logged_square, generated(tmp_path / "third.log"), journal) == [x * x for x in range(n)]
    assert calls(tmp_path / "third.log") == 0, "a run over a finished journal ran the function"


def test_a_journal_of_another_function_or_key_raises_and_is_left_untouched(pool, tmp_path):
    journal = tmp_path / "run.journal"
    assert _journaled_map(pool, square, range(20), journal, key="images v1") == [x * x for x in range(20)]
    before = journal.read_bytes()

    with pytest.raises(JournalMismatchError, match="belongs to another call") as other_function:
        _journaled_map(pool, cube, range(20), journal, key="images v1")
    with pytest.raises(JournalMismatchError, match="key=") as other_key:
        _journaled_map(pool, square, range(20), journal, key="images v2")

    for error in (other_function.value, other_key.value):
        message = str(error)
        assert str(journal) in message and "delete" in message and "another journal path" in message, message
    assert journal.read_bytes() == before, "a mismatched call changed the journal"
    assert _journaled_map(pool, square, range(20), journal, key="images v1") == [x * x for x in range(20)]


def test_a_file_that_is_not_a_journal_raises_and_is_left_untouched(pool, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    with pytest.raises(JournalMismatchError, match="not a glimpse journal"):
        _journaled_map(pool, square, range(5), notes)
    assert notes.read_text() == "not a database\n" * 100


def test_failures_are_not_recorded_and_run_again(pool, tmp_path):
    n = 20
    journal = tmp_path / "run.journal"
    first = _journaled_map(pool, logged_fail_on_three, items(n, tmp_path / "first.log"), journal, errors="return")
    failure = first[3]
    assert type(failure).__name__ == "Failure" and isinstance(failure.exception, ValueError), first
    assert (failure.index, failure.item[0]) == (3, 3), "the failure does not name its item in the input"
    assert first[:3] + first[4:] == [x * x for x in range(n) if x != 3]
    assert recorded(journal) == n - 1

    second_log = tmp_path / "second.log"
    second = _journaled_map(pool, logged_fail_on_three, items(n, second_log), journal, errors="return")
    assert calls(second_log) == 1, "only the failed item should run again"
    assert type(second[3]).__name__ == "Failure" and second[:3] + second[4:] == first[:3] + first[4:]


def test_an_error_in_a_resumed_run_is_noted_with_the_items_index_in_the_input(pool, tmp_path):
    journal = tmp_path / "run.journal"
    assert _journaled_map(pool, logged_fail_on_three, items(2, tmp_path / "first.log"), journal) == [0, 1]
    with pytest.raises(ValueError, match="bad item 3") as raised:
        _journaled_map(pool, logged_fail_on_three, items(6, tmp_path / "second.log"), journal)
    notes = getattr(raised.value, "__notes__", [])  # none where the function ran in the caller
    assert all("item #3 " in note for note in notes if "raised by item" in note), notes
    assert not hasattr(raised.value, "_glimpse_input_index")


def test_skipped_failures_name_their_item_in_the_input_and_run_again(pool, tmp_path):
    n = 12
    journal = tmp_path / "run.journal"
    for run in ("first", "second"):
        log = tmp_path / f"{run}.log"
        results = _journaled_map(pool, logged_fail_on_three, items(n, log), journal, errors="skip")
        assert results == [x * x for x in range(n) if x != 3], f"{run} run"
        failures = [(f.index, f.item[0]) for f in results.failures]
        assert failures == [(3, 3)], f"{run} run: the failure names another item"
    assert calls(tmp_path / "second.log") == 1, "only the skipped item should run again"


def test_two_calls_sharing_a_journal_at_once_both_deliver_every_result(pool, tmp_path):
    journal = tmp_path / "run.journal"
    outcomes: dict[int, object] = {}

    def run(which: int) -> None:
        try:
            outcomes[which] = _journaled_map(pool, square, range(500), journal)
        except BaseException as exc:
            outcomes[which] = exc

    threads = [threading.Thread(target=run, args=(which,)) for which in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert outcomes == {0: [x * x for x in range(500)], 1: [x * x for x in range(500)]}
    assert recorded(journal) == 500


def test_a_journal_written_by_another_process_resumes_with_a_function_pickled_by_value(tmp_path):
    """The fingerprint of a function pickled by value is the same in every process, even when
    the function holds a set of strings (whose order differs with each process's hash seed)."""
    code = textwrap.dedent(
        """
        import sys
        from glimpse.pools.contract.journal import call_fingerprint
        from tests.test_journal import in_a_set
        print(call_fingerprint(in_a_set, "k")[0])
        """
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout.strip()
        for seed in range(4)
    }
    assert len(seen) == 1, f"the fingerprint changed between processes: {seen}"


WORDS = {"alpha", "beta", "gamma", "delta", "epsilon"}


def in_a_set(word):
    return word in WORDS or word in {"zeta", "eta", "theta"}
