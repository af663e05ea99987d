"""CPython's own tests of ``multiprocessing.Pool`` (``_TestPool`` and ``_TestPoolWorkerErrors`` in
Lib/test/_test_multiprocessing.py, 3.11), run against every glimpse pool.

Each test keeps CPython's name and assertions where glimpse promises the same behaviour; where
glimpse deliberately differs, the test says why in one line. Lifecycle tests close or terminate a
copy of the session pool (a pickled pool is a new pool of the same kind, on the same cluster).
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import pickle
import sys
import threading
import time
import weakref

import cloudpickle
import pytest

from glimpse.pools import MulticorePool, SerializationError
from glimpse.pools.contract.tasks import IDLE_SECONDS
from tests import checks, helpers

# Workers of external clusters cannot import the test package: send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: A bound on waits that only catches hangs.
HANG_SECONDS = 60.0


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def raise_large_valuerror(wait):
    time.sleep(wait)
    raise ValueError("x" * 1024**2)


def identity(x):
    return x


def raising():
    raise KeyError("key")


def raise_with_comment():
    raise RuntimeError(123)  # some comment


def raise_foo():
    raise RuntimeError("foo")


class CountedObject:
    n_instances = 0

    def __new__(cls):
        cls.n_instances += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).n_instances -= 1


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


class CannotPickle:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def _skip_if(limits: set[str], *traits: str) -> None:
    hit = sorted(set(traits) & limits)
    if hit:
        pytest.skip(f"this pool is {', '.join(hit)}")


def _copy(pool):
    """A new pool of the same kind (on the same cluster), for tests that close or terminate it."""
    return pickle.loads(pickle.dumps(pool))


# -- _TestPool -------------------------------------------------------------------------------------


def test_apply(pool):
    assert pool.apply(sqr, (5,)) == sqr(5)
    assert pool.apply(sqr, (), {"x": 3}) == sqr(x=3)


def test_map(pool):
    assert pool.map(sqr, list(range(10))) == list(map(sqr, range(10)))
    assert pool.map(sqr, list(range(100)), chunksize=20) == list(map(sqr, range(100)))


def test_starmap(pool):
    tuples = list(zip(range(10), range(9, -1, -1), strict=True))
    assert pool.starmap(mul, tuples) == list(itertools.starmap(mul, tuples))
    tuples = list(zip(range(100), range(99, -1, -1), strict=True))
    assert pool.starmap(mul, tuples, chunksize=20) == list(itertools.starmap(mul, tuples))


def test_starmap_async(pool):
    tuples = list(zip(range(100), range(99, -1, -1), strict=True))
    assert pool.starmap_async(mul, tuples).get(HANG_SECONDS) == list(itertools.starmap(mul, tuples))


def test_map_async(pool):
    assert pool.map_async(sqr, list(range(10))).get(HANG_SECONDS) == list(map(sqr, range(10)))


def test_map_async_callbacks(pool):
    call_args = []
    pool.map_async(int, ["1"], callback=call_args.append, error_callback=call_args.append).wait(HANG_SECONDS)
    assert len(call_args) == 1
    assert call_args[0] == [1]
    pool.map_async(int, ["a"], callback=call_args.append, error_callback=call_args.append).wait(HANG_SECONDS)
    assert len(call_args) == 2
    assert isinstance(call_args[1], ValueError)


def test_map_unplicklable(pool, limits):
    # Issue #19425: a failure to pickle must not hang. glimpse wraps it in SerializationError (a
    # pickle.PicklingError) naming the item, with the pickler's own error as its cause.
    _skip_if(limits, "in_process")
    with pytest.raises(SerializationError) as caught:
        pool.map(sqr, [CannotPickle()] * 10)
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(SerializationError):
        pool.map(sqr, [threading.Lock()] * 10)


def test_map_chunksize(pool):
    try:
        pool.map_async(sqr, [], chunksize=1).get(timeout=HANG_SECONDS)
    except multiprocessing.TimeoutError:
        pytest.fail("pool.map_async with chunksize stalled on null list")


def test_map_handle_iterable_exception(pool):
    # SayWhenError seen at the very first of the iterable
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    # again, make sure it's reentrant
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(10, 3), 1)

    class SpecialIterable:
        def __iter__(self):
            return self

        def __next__(self):
            raise SayWhenError

        def __len__(self):
            return 1

    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)


def test_async(pool):
    # CPython also checks the call took about the task's sleep; glimpse tests bound hangs only.
    assert pool.apply_async(sqr, (7, 0.1)).get(HANG_SECONDS) == 49


def test_async_timeout(pool, tmp_path):
    release = tmp_path / "release"
    result = pool.apply_async(helpers.held_until_released, (("hold", str(release)),))
    try:
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.2)
    finally:
        release.touch()
    assert result.get(HANG_SECONDS) == "released"


def test_imap(pool):
    it = pool.imap(sqr, list(range(10)))
    assert list(it) == list(map(sqr, range(10)))

    it = pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)

    it = pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)


def test_imap_handle_iterable_exception(pool):
    # SayWhenError seen at the very first of the iterable
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    # again, make sure it's reentrant
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)

    it = pool.imap(sqr, exception_throwing_generator(10, 3), 1)
    for i in range(3):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        next(it)

    # CPython's pool loses the whole chunk the input broke in (results 6 of chunks of 2, 4 of 4);
    # glimpse delivers every result before the failing item, whatever the chunk size.
    for chunksize in (2, 4):
        it = pool.imap(sqr, exception_throwing_generator(20, 7), chunksize)
        for i in range(7):
            assert next(it) == i * i
        with pytest.raises(SayWhenError):
            next(it)


def test_imap_unordered(pool):
    it = pool.imap_unordered(sqr, list(range(10)))
    assert sorted(it) == list(map(sqr, range(10)))

    it = pool.imap_unordered(sqr, list(range(1000)), chunksize=100)
    assert sorted(it) == list(map(sqr, range(1000)))


def test_imap_unordered_handle_iterable_exception(pool):
    # SayWhenError seen at the very first of the iterable
    it = pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    # again, make sure it's reentrant
    it = pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)

    for total, when, chunksize in ((10, 3, 1), (20, 7, 2)):
        it = pool.imap_unordered(sqr, exception_throwing_generator(total, when), chunksize)
        expected_values = list(map(sqr, range(total)))
        with pytest.raises(SayWhenError):
            # imap_unordered makes it difficult to anticipate the SayWhenError
            for _ in range(total):
                value = next(it)
                assert value in expected_values
                expected_values.remove(value)


def test_make_pool():
    with pytest.raises(ValueError):
        MulticorePool(-1)
    with pytest.raises(ValueError):
        MulticorePool(0)

    # CPython counts ``len(p._pool)``; glimpse starts workers on first use, so count those that ran.
    p = MulticorePool(3)
    try:
        pids = p.map(helpers.sleep_then_pid, [0.5] * 3, chunksize=1)
        assert len(set(pids)) == 3, f"three items of half a second each ran on workers {pids}"
    finally:
        p.close()
        p.join()


def test_terminate(pool, tmp_path):
    # Tasks that would run "forever" wait for a file instead, created a second later, so nothing
    # outlives the test on a cluster the pool does not own. glimpse promises more than CPython:
    # the call in flight fails instead of waiting forever.
    release = tmp_path / "release"
    releaser = threading.Timer(1.0, release.touch)
    releaser.start()
    p = _copy(pool)
    try:
        result = p.map_async(helpers.held_until_released, [("hold", str(release))] * 100, chunksize=1)
        time.sleep(0.2)
        p.terminate()
        joining = threading.Thread(target=p.join, daemon=True)
        joining.start()
        joining.join(JOIN_SECONDS)
        assert not joining.is_alive(), f"join() after terminate() still waited after {JOIN_SECONDS} s"
        assert result.ready(), "join() returned before the call in flight had ended"
        assert not result.successful(), "the call in flight ran all its items after terminate()"
    finally:
        releaser.join()


#: How long join() may take after terminate() (the tasks it would wait for end in a second).
JOIN_SECONDS = 15.0


def test_empty_iterable(pool):
    # See Issue 12157
    p = _copy(pool)
    assert p.map(sqr, []) == []
    assert list(p.imap(sqr, [])) == []
    assert list(p.imap_unordered(sqr, [])) == []
    assert p.map_async(sqr, []).get(HANG_SECONDS) == []
    p.close()
    p.join()


def test_context(pool):
    values = list(range(10))
    expected = [sqr(i) for i in values]
    with _copy(pool) as p:
        r = p.map_async(sqr, values)
        assert r.get(HANG_SECONDS) == expected
    p.join()
    with pytest.raises(ValueError):
        p.map_async(sqr, values)


def test_traceback(pool):
    # We want ensure that the traceback from the child process is
    # contained in the traceback raised in the main process.
    with _copy(pool) as p:
        with pytest.raises(RuntimeError) as caught:
            p.apply(raise_with_comment)
    p.join()
    exc = caught.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    checks.assert_worker_traceback_names_the_raise(exc, raise_with_comment)

    # an error of the input iterable is raised as it is, not as a remote exception
    with _copy(pool) as p:
        with pytest.raises(SayWhenError) as caught:
            p.map(sqr, exception_throwing_generator(1, -1), 1)
        assert type(caught.value) is SayWhenError
        assert caught.value.__cause__ is None
    p.join()


def test_wrapped_exception(pool):
    # Issue #20980: Should not wrap exception when using thread pool
    with _copy(pool) as p:
        with pytest.raises(RuntimeError):
            p.apply(raise_foo)
    p.join()


def test_map_no_failfast(pool):
    # Issue #23992: an exception raised during map() must not make join() deadlock.
    # CPython also checks that join() waited for the other job; glimpse cancels the rest of a
    # call that failed, so only the absence of a deadlock is common ground.
    with pytest.raises(ValueError):
        with _copy(pool) as p:
            try:
                p.map(raise_large_valuerror, [0, 1])
            finally:
                time.sleep(0.5)
                p.close()
                p.join()


def test_release_task_refs(pool):
    # Issue #29861: task arguments and results should not be kept
    # alive after we are done with them.
    objs = [CountedObject() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    pool.map(identity, objs)

    del objs
    deadline = time.monotonic() + RELEASE_SECONDS
    while (CountedObject.n_instances or any(wr() for wr in refs)) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)  # let threaded cleanup code run
    assert {wr() for wr in refs} == {None}
    # With a process pool, copies of the objects are returned, check
    # they were released too.
    assert CountedObject.n_instances == 0


#: How long the pool may hold what a finished call sent or returned (the thread that runs single
#: calls holds its last chunk until it ends, IDLE_SECONDS after the last call).
RELEASE_SECONDS = 5 * IDLE_SECONDS
#: A known gap: the IPython pool's engine booking keeps its last chunks, results and all, until
#: it next sends one.


def test_enter(pool):
    p = _copy(pool)
    with p:
        pass
    # bpo-35477: pool.__enter__() fails if the pool is not running
    with pytest.raises(ValueError):
        with p:
            pass
    p.join()


# -- _TestPoolWorkerErrors -------------------------------------------------------------------------


def test_async_error_callback(pool):
    scratchpad = [None]

    def errback(exc):
        scratchpad[0] = exc

    res = pool.apply_async(raising, error_callback=errback)
    with pytest.raises(KeyError):
        res.get(HANG_SECONDS)
    assert scratchpad[0]
    assert isinstance(scratchpad[0], KeyError)


def test_unpickleable_result(pool, limits):
    # cloudpickle pickles CPython's ``lambda: 42``, so the result is a lock; glimpse's error for a
    # result that cannot be pickled is SerializationError (multiprocessing's is MaybeEncodingError).
    _skip_if(limits, "in_process")
    # Make sure we don't lose pool processes because of encoding errors.
    for _ in range(20):
        scratchpad = [None]

        def errback(exc, scratchpad=scratchpad):
            scratchpad[0] = exc

        res = pool.apply_async(helpers.return_lock, (0,), error_callback=errback)
        with pytest.raises(SerializationError):
            res.get(HANG_SECONDS)
        wrapped = scratchpad[0]
        assert wrapped
        assert isinstance(wrapped, SerializationError)
        assert "could not be pickled" in str(wrapped)
