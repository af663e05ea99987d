"""Pytest plugins, one per engine: each starts its engine and provides pools to the contract suite.

A plugin module defines ``POOLS``, a dict from pool kind (``"dask"``, ``"dask-external"``) to
the name of a session fixture that yields a ready pool, and ``LIMITS``, a dict from pool kind
to the set of contract traits the pool cannot honour (see ``tests/conftest.py``).
"""
