"""``MakePool(kind, initializer=f, initargs=...)`` on a pool of each kind made for the test.

A pool of each embedded kind (and the local ones) is made through ``MakePool`` with an initializer;
a pool of an external cluster is the same class given an address, and tests/test_long_runs.py runs
the contract's initializer on the session's pool of every kind.
"""

from __future__ import annotations

import time
import uuid

import pytest

from glimpse.pools import InitializerError, MakePool
from tests import helpers

#: The cluster type ``MakePool`` takes for each pool kind this file makes a pool of.
_TYPES = {
    "singlecore": "singlecore",
    "multicore": "multicore",
    "dask-embedded": "dask",
    "ray-embedded": "ray",
    "ipython-embedded": "ipython",
    "zmq-embedded": "zmq",
    "gearman-embedded": "gearman",
}


@pytest.fixture
def make_pool(pool_kind, pool, monkeypatch):
    """Make pools of the kind under test (the session's pool is up: its engine is there, and for Ray,
    connected), ended after the test."""
    if pool_kind not in _TYPES:
        pytest.skip(f"{pool_kind} is a cluster the tests start; tests/test_long_runs.py covers its initializer")
    for variable in ("DASK_SCHEDULER_ADDRESS", "GLIMPSE_ZMQ_ADDRESS", "GLIMPSE_GEARMAN_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    made = []

    def make(**kwargs):
        kind = _TYPES[pool_kind]
        extra = {"workers": 2} if kind in ("zmq", "gearman") else {"processes": 2} if kind == "multicore" else {}
        made.append(MakePool(kind, **extra, **kwargs))
        return made[-1]

    yield make
    for made_pool in made:
        made_pool.terminate()
        made_pool.join()


def test_the_initializer_runs_in_each_worker_process_before_its_first_item(make_pool):
    name = uuid.uuid4().hex[:8]
    pool = make_pool(initializer=helpers.remember_setup, initargs=(name, "model"))
    assert pool.map(helpers.setup_seen, [name] * 100, chunksize=1) == ["model"] * 100
    assert pool.submit(helpers.setup_seen, name).result(timeout=60) == "model"
    assert pool.apply(helpers.setup_seen, (name,)) == "model"


def test_an_initializer_that_raises_ends_the_call_within_30_seconds_naming_the_worker(make_pool):
    pool = make_pool(initializer=helpers.refuse_setup, initargs=("resnet",))
    began = time.monotonic()
    with pytest.raises(
        InitializerError, match=r"refuse_setup raised in worker pid \d+ on .*LookupError: no model named resnet"
    ):
        pool.map(helpers.times_ten, range(100))
    assert time.monotonic() - began < 30
