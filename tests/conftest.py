"""Test configuration: the ``pool`` fixture, parametrized over every pool kind the plugins offer.

``pytest --pools dask,ray`` runs the contract suite on those engines' pools only (or name kinds,
``--pools dask-external``); ``--pools all`` (the default) on every pool. Each engine plugin lives
in tests/engines/ and skips its pools when its engine is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import cloudpickle
import pytest

import tests.helpers

pytest.register_assert_rewrite("tests.engines")
_ENGINES = sorted(p.stem for p in (Path(__file__).parent / "engines").glob("*.py") if not p.stem.startswith("_"))
pytest_plugins = [f"tests.engines.{name}" for name in _ENGINES]

# Workers of external clusters cannot import the test package: send its functions by value.
cloudpickle.register_pickle_by_value(tests.helpers)


def _plugin_tables() -> tuple[dict[str, str], dict[str, set[str]], dict[str, list[str]]]:
    pools: dict[str, str] = {}
    limits: dict[str, set[str]] = {}
    kinds_of_engine: dict[str, list[str]] = {}
    for name in _ENGINES:
        module = importlib.import_module(f"tests.engines.{name}")
        pools.update(module.POOLS)
        limits.update(getattr(module, "LIMITS", {}))
        kinds_of_engine[name] = list(module.POOLS)
    return pools, limits, kinds_of_engine


POOL_FIXTURES, POOL_LIMITS, KINDS_OF_ENGINE = _plugin_tables()


def pytest_configure(config):
    """One cluster key for the session's zmq and gearman clusters, in a file of its own (never the user's)."""
    key_dir = Path(tempfile.mkdtemp(prefix="glimpse-test-key-"))
    key_file = key_dir / "cluster.key"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    os.environ["GLIMPSE_CLUSTER_KEY_FILE"] = str(key_file)
    os.environ.pop("GLIMPSE_CLUSTER_KEY", None)
    os.environ["XDG_CONFIG_HOME"] = str(key_dir / "config")
    config._glimpse_key_dir = key_dir


def pytest_unconfigure(config):
    key_dir = getattr(config, "_glimpse_key_dir", None)
    if key_dir is not None:
        shutil.rmtree(key_dir, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="also run the tests marked `full` (the longest partition scenarios, minutes each)",
    )
    parser.addoption(
        "--pools",
        default="all",
        help=(
            "comma-separated pool kinds or engine names (an engine means all its kinds) for the contract "
            f"suite, or 'all'; kinds: {', '.join(POOL_FIXTURES)}; engines: {', '.join(KINDS_OF_ENGINE)}"
        ),
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="a long scenario: run with --full (bash ci/matrix.sh --full multihost)")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Simulated machines on a bridge (see tests/multihost.py); every one is gone after the module."""
    from tests import multihost

    reason = multihost.missing_requirement()
    if reason:
        pytest.skip(f"multi-host tests {reason}")
    network = multihost.Hosts(tmp_path_factory.mktemp("hosts"))
    yield network
    network.close()


def pytest_generate_tests(metafunc):
    if "pool" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--pools")
        names = list(KINDS_OF_ENGINE) if chosen == "all" else [k.strip() for k in chosen.split(",") if k.strip()]
        kinds = [kind for name in names for kind in KINDS_OF_ENGINE.get(name, [name])]
        unknown = [k for k in kinds if k not in POOL_FIXTURES]
        if unknown:
            raise pytest.UsageError(f"unknown pool kinds {unknown}; known: {', '.join(POOL_FIXTURES)}")
        metafunc.parametrize("pool_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def pool(pool_kind, request):
    """A ready pool of the kind under test, shared by the whole session."""
    return request.getfixturevalue(POOL_FIXTURES[pool_kind])


@pytest.fixture
def limits(pool_kind) -> set[str]:
    """What the pool under test cannot do: ``in_process`` (runs in the caller, nothing is
    pickled), ``sequential`` (one item at a time), ``no_worker_replacement`` (a killed worker
    is not replaced, so worker-death tests would shrink the cluster), ``finishes_cancelled_chunks``
    (cancelled chunks already running are left to finish: a cluster the pool does not own),
    ``keeps_timed_out_threads`` (an item that timed out is left running in its worker process),
    ``workers_on_other_hosts`` (its worker processes are not this machine's to see)."""
    return POOL_LIMITS.get(pool_kind, set())
