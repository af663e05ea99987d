"""The pools that need no engine: SinglecorePool and MulticorePool."""

import pytest

from glimpse.pools import MulticorePool, SinglecorePool

POOLS = {"singlecore": "singlecore_pool", "multicore": "multicore_pool"}
LIMITS = {"singlecore": {"in_process", "sequential", "keeps_timed_out_threads"}}


@pytest.fixture(scope="session")
def singlecore_pool():
    with SinglecorePool() as pool:
        yield pool


@pytest.fixture(scope="session")
def multicore_pool():
    pool = MulticorePool(2)
    yield pool
    pool.terminate()
    pool.join()
