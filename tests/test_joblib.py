"""The joblib backend "glimpse" on every pool kind: ``joblib.Parallel`` and scikit-learn's ``n_jobs`` on a pool."""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings
from pathlib import Path

import cloudpickle
import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from joblib.parallel import get_active_backend

import glimpse.pools.joblib as glimpse_joblib
from glimpse.pools import RemoteTraceback, SinglecorePool
from tests import helpers

# Workers of external clusters cannot import the test package: send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

HANG_LIMIT = 120.0
#: Pool kinds the scikit-learn workloads run on; the simple joblib tests run on every kind.
SKLEARN_KINDS = ("singlecore", "multicore", "dask", "ray")


def test_parallel_runs_a_lambda_on_the_pools_workers(pool, limits):
    offset = 7
    with parallel_config(backend="glimpse", pool=pool):
        results = Parallel()(delayed(lambda x: x * x + offset)(i) for i in range(50))
        pids = set(Parallel()(delayed(os.getpid)() for _ in range(20)))
    assert results == [i * i + offset for i in range(50)]
    if "in_process" in limits:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids, "some batches ran in the caller, not on the pool"


def test_an_error_is_the_original_exception_with_the_items_traceback(pool):
    with parallel_config(backend="glimpse", pool=pool), pytest.raises(ValueError, match="bad item 3") as info:
        Parallel(n_jobs=2)(delayed(helpers.fail_on_three)(i) for i in range(8))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback), f"the worker's traceback is not chained: {cause!r}"
    assert "fail_on_three" in cause.text


def test_a_generator_consumer_that_stops_early_cancels_the_rest(pool, tmp_path):
    count = 200  # 0.1 s each: were they not cancelled, the pool would still be running them for seconds
    with parallel_config(backend="glimpse", pool=pool):
        results = Parallel(n_jobs=2, return_as="generator", batch_size=1)(
            delayed(_record_run)(str(tmp_path), i) for i in range(count)
        )
        first = next(results)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joblib warns that results were left unused
            results.close()
    assert first == 0
    ran = _runs_once_quiet(tmp_path)
    assert count - 1 not in ran and len(ran) < count // 2, f"{len(ran)} of {count} items ran after the consumer left"


def test_a_parallel_call_inside_a_task_uses_joblibs_nested_backend(pool):
    with parallel_config(backend="glimpse", pool=pool):
        results = Parallel(n_jobs=2)(delayed(_nested_powers)(i) for i in range(4))
    assert results == [("ThreadingBackend", [1, i, i * i]) for i in range(4)]


def test_n_jobs_counts_the_pools_workers_and_1_runs_in_the_caller(pool):
    with parallel_config(backend="glimpse", pool=pool):
        every_worker = joblib.effective_n_jobs(-1)
        assert every_worker >= 2
        assert joblib.effective_n_jobs(None) == every_worker
        assert 2 <= joblib.effective_n_jobs(-2) <= every_worker
        assert joblib.effective_n_jobs(3) == 3
        assert joblib.effective_n_jobs(1) == 1
        assert Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3
        with pytest.raises(ValueError, match="n_jobs == 0"):
            Parallel(n_jobs=0)(delayed(abs)(i) for i in range(3))


def test_a_pool_given_is_left_open(pool):
    for _ in range(2):
        with parallel_config(backend="glimpse", pool=pool):
            assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(5)) == list(range(5))
    assert pool.submit(abs, -3).result(HANG_LIMIT) == 3


def test_without_a_pool_every_call_shares_one_default_pool(monkeypatch):
    monkeypatch.setenv("GLIMPSE_POOL", "singlecore")
    glimpse_joblib.close_default_pool()
    try:
        pools = []
        for _ in range(2):
            with parallel_config(backend="glimpse"):
                assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(5)) == list(range(5))
                pools.append(glimpse_joblib.default_pool())
        assert isinstance(pools[0], SinglecorePool) and pools[1] is pools[0]
        glimpse_joblib.close_default_pool()
        assert glimpse_joblib.default_pool() is not pools[0]
    finally:
        glimpse_joblib.close_default_pool()


def test_without_joblib_the_import_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "joblib", None)
    monkeypatch.setitem(sys.modules, "joblib.parallel", None)
    monkeypatch.delitem(sys.modules, "glimpse.pools.joblib")
    with pytest.raises(ImportError, match="pip install joblib"):
        importlib.import_module("glimpse.pools.joblib")


# -- scikit-learn -------------------------------------------------------------------------------


def test_cross_val_score_on_the_pool_equals_n_jobs_1(pool, pool_kind, limits, tmp_path):
    _skip_unless_sklearn_kind(pool_kind)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    features, labels = _dataset()
    model = LogisticRegression(max_iter=1000)
    scorer = _PidRecordingScorer(str(tmp_path))
    with parallel_config(backend="glimpse", pool=pool):
        on_pool = cross_val_score(model, features, labels, cv=5, n_jobs=-1, scoring=scorer)
    _assert_ran_on_the_pool(tmp_path, limits)
    in_caller = cross_val_score(model, features, labels, cv=5, n_jobs=1, scoring=scorer)
    np.testing.assert_array_equal(on_pool, in_caller)


def test_grid_search_on_the_pool_equals_n_jobs_1(pool, pool_kind, limits, tmp_path):
    _skip_unless_sklearn_kind(pool_kind)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    features, labels = _dataset()
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    scorer = _PidRecordingScorer(str(tmp_path))
    with parallel_config(backend="glimpse", pool=pool):
        on_pool = GridSearchCV(LogisticRegression(max_iter=1000), grid, cv=3, n_jobs=-1, scoring=scorer)
        on_pool.fit(features, labels)
    _assert_ran_on_the_pool(tmp_path, limits)
    in_caller = GridSearchCV(LogisticRegression(max_iter=1000), grid, cv=3, n_jobs=1, scoring=scorer)
    in_caller.fit(features, labels)
    assert on_pool.best_params_ == in_caller.best_params_
    np.testing.assert_array_equal(on_pool.cv_results_["mean_test_score"], in_caller.cv_results_["mean_test_score"])


# -- helpers (run on the workers) ---------------------------------------------------------------


def _record_run(directory: str, index: int) -> int:
    Path(directory, f"started-{index}").touch()
    time.sleep(0.1)
    Path(directory, f"done-{index}").touch()
    return index


def _nested_powers(base: int) -> tuple[str, list[int]]:
    backend = type(get_active_backend()[0]).__name__
    return backend, Parallel(n_jobs=2)(delayed(pow)(base, k) for k in range(3))


class _PidRecordingScorer:
    """Accuracy, leaving a file named for the process that scored."""

    def __init__(self, directory: str):
        self.directory = directory

    def __call__(self, estimator, features, labels) -> float:
        Path(self.directory, f"pid-{os.getpid()}").touch()
        return estimator.score(features, labels)


# -- helpers (run in the test) ------------------------------------------------------------------


def _runs_once_quiet(directory: Path, quiet_seconds: float = 2.0) -> set[int]:
    """The items that ran, once every item started has finished and none has started for a while."""
    deadline = time.monotonic() + HANG_LIMIT
    seen: set[int] = set()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        started = _indices(directory, "started-")
        if started != seen:
            seen, quiet_since = started, time.monotonic()
        elif started == _indices(directory, "done-") and time.monotonic() - quiet_since >= quiet_seconds:
            return started
        time.sleep(0.1)
    pytest.fail(f"items kept running for {HANG_LIMIT} s after the consumer left: {len(seen)} so far")


def _indices(directory: Path, prefix: str) -> set[int]:
    return {int(path.name[len(prefix) :]) for path in directory.glob(f"{prefix}*")}


def _dataset():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=300, n_features=10, n_informative=5, random_state=0)


def _assert_ran_on_the_pool(directory: Path, limits: set[str]) -> None:
    pids = {int(path.name[len("pid-") :]) for path in directory.glob("pid-*")}
    if "in_process" in limits:
        assert pids == {os.getpid()}
    else:
        assert pids and os.getpid() not in pids, f"scored in the caller ({os.getpid()}), not only on the pool: {pids}"
    for path in directory.glob("pid-*"):
        path.unlink()


def _skip_unless_sklearn_kind(pool_kind: str) -> None:
    if pool_kind.split("-")[0] not in SKLEARN_KINDS:
        pytest.skip(
            f"scikit-learn workloads run on {', '.join(SKLEARN_KINDS)} pools only, to keep CI time; "
            "the joblib tests above cover this kind"
        )
