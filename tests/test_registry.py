"""The cluster-type registry, MakePool's choice of pool, and what ``import glimpse.pools`` loads."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import glimpse.pools
from glimpse.pools import GetClusterPackage, MakePool, MulticorePool, SinglecorePool
from glimpse.pools.cluster import INTERFACE
from glimpse.pools.registry import CLUSTER_TYPES, require_extra


@pytest.mark.parametrize("name", ["nope", "", "../os", "os.path", "Dask/../x", None, 3])
def test_unknown_cluster_type_is_a_value_error_listing_known_types(name, monkeypatch):
    monkeypatch.delenv("GLIMPSE_CLUSTER_TYPE", raising=False)
    if name is None:
        monkeypatch.setenv("GLIMPSE_CLUSTER_TYPE", "nope")
    with pytest.raises(ValueError) as caught:
        GetClusterPackage(name)
    for known in CLUSTER_TYPES:
        assert known in str(caught.value), f"{known} missing from: {caught.value}"


def test_cluster_type_defaults_to_environment_variable(monkeypatch):
    monkeypatch.setenv("GLIMPSE_CLUSTER_TYPE", "nope-from-env")
    with pytest.raises(ValueError, match="nope-from-env"):
        GetClusterPackage()


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(CLUSTER_TYPES, "dask", glimpse.pools.registry.ClusterType("dask", ("glimpse_no_such_engine",)))
    with pytest.raises(ImportError, match=r'pip install "glimpse-pools\[dask\]"'):
        GetClusterPackage("dask")
    with pytest.raises(ImportError, match="glimpse_no_such_engine"):
        require_extra("dask")


def test_make_pool_defaults_to_multicore(monkeypatch):
    monkeypatch.delenv("GLIMPSE_POOL", raising=False)
    with MakePool() as pool:
        assert isinstance(pool, MulticorePool)


def test_make_pool_follows_glimpse_pool(monkeypatch):
    monkeypatch.setenv("GLIMPSE_POOL", "singlecore")
    with MakePool() as pool:
        assert isinstance(pool, SinglecorePool)
    with MakePool("multicore", processes=1) as pool:
        assert pool.map(abs, [-1]) == [1]


def test_make_pool_rejects_unknown_kind_listing_known_ones():
    with pytest.raises(ValueError, match="singlecore, multicore"):
        MakePool("laptop")


def test_import_loads_no_engine():
    engines = ["dask", "distributed", "dask_jobqueue", "ray", "ipyparallel", "zmq", "gearman", "tqdm"]
    code = f"import sys, glimpse.pools; print(','.join(m for m in {engines!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"import glimpse.pools imported {loaded}"


@pytest.mark.parametrize("name", sorted(CLUSTER_TYPES))
def test_every_installed_cluster_module_provides_the_interface(name):
    if not glimpse.pools.registry.extra_installed(name):
        pytest.skip(f"{name} is not installed")
    module = GetClusterPackage(name)
    for attribute in INTERFACE:
        assert hasattr(module, attribute), f"{module.__name__} lacks {attribute}"
    assert set(module.VERBS) >= {"LaunchBroker", "LaunchWorker", "PingWorkers", "KillWorkers", "RestartWorkers"}


def test_a_cluster_module_that_lacks_a_name_fails_when_looked_up(monkeypatch):
    incomplete = types.ModuleType("glimpse.pools.incomplete_cluster")
    incomplete.MakePool = incomplete.RunMain = lambda *args: None
    monkeypatch.setitem(sys.modules, incomplete.__name__, incomplete)
    monkeypatch.setitem(CLUSTER_TYPES, "incomplete", glimpse.pools.registry.ClusterType("incomplete", ("json",)))
    with pytest.raises(AttributeError, match="lacks VERBS, ENVIRONMENT"):
        GetClusterPackage("incomplete")
