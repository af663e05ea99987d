"""``maxtasksperchild`` where glimpse owns the task processes: MulticorePool, and embedded zmq and gearman clusters."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from glimpse.pools import MulticorePool
from glimpse.pools.registry import embedded_runs_here

CHUNKS = 40
LIMIT = 5

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def task_pid(item: int) -> tuple[int, int]:
    return item, os.getpid()


def _new_pool(kind: str, monkeypatch):
    if kind == "multicore":
        return MulticorePool(1, maxtasksperchild=LIMIT)
    if not embedded_runs_here(kind):
        pytest.skip(f"an embedded {kind} cluster cannot start here")
    module = pytest.importorskip(f"glimpse.pools.{kind}_cluster")
    monkeypatch.delenv(module.ADDRESS_VARIABLE, raising=False)
    return module.MakePool(workers=1, maxtasksperchild=LIMIT)


@pytest.mark.parametrize("kind", ["multicore", "zmq", "gearman"])
def test_a_task_process_runs_at_most_maxtasksperchild_chunks(kind, monkeypatch):
    with _new_pool(kind, monkeypatch) as pool:
        results = pool.map(task_pid, range(CHUNKS), chunksize=1)
    assert [item for item, _ in results] == list(range(CHUNKS)), "every result, in order"
    chunks_per_pid: dict[int, int] = {}
    for _, pid in results:
        chunks_per_pid[pid] = chunks_per_pid.get(pid, 0) + 1
    assert max(chunks_per_pid.values()) <= LIMIT, f"{kind}: chunks run by each task process: {chunks_per_pid}"


@pytest.mark.parametrize("kind", ["zmq", "gearman"])
def test_maxtasksperchild_with_an_address_is_refused(kind):
    module = pytest.importorskip(f"glimpse.pools.{kind}_cluster")
    address = "tcp://127.0.0.1:1" if kind == "zmq" else "127.0.0.1:1"
    with pytest.raises(TypeError, match="LaunchWorker"):
        module.MakePool(address, maxtasksperchild=3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_maxtasksperchild_must_be_a_positive_int(bad):
    pytest.importorskip("zmq")
    from glimpse.pools.zmq_cluster import MakePool

    with pytest.raises(ValueError, match="maxtasksperchild"):
        MakePool("tcp://127.0.0.1:1", maxtasksperchild=bad)
