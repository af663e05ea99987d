"""Each engine's private internals that glimpse uses (its ``compat.py``) still exist in the installed engine.

An engine upgrade that removes one fails here, by name, instead of somewhere in a pool.
"""

from __future__ import annotations

import importlib

import pytest

from glimpse.pools.registry import extra_installed


@pytest.mark.parametrize("engine", ["dask", "ray", "ipython"])
def test_the_engine_internals_glimpse_uses_still_exist(engine):
    if not extra_installed(engine):
        pytest.skip(f"{engine} is not installed")
    compat = importlib.import_module(f"glimpse.pools.backends.{engine}.compat")
    assert compat.missing() == [], f"the installed {engine} lacks internals glimpse relies on (see {compat.__file__})"
