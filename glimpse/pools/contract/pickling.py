"""Pickling for the wire: cloudpickle's reach, at the standard pickle's speed when it is enough.

cloudpickle pickles what the standard pickle cannot (lambdas, closures, classes and functions
of ``__main__``) but costs a few microseconds more per call, which is much of the cost of a
chunk of small items. So the standard pickle goes first; its result is used unless it failed
or names ``__main__`` or a module registered with ``cloudpickle.register_pickle_by_value``
(things a worker cannot import, which cloudpickle sends by value). Either way the worker
unpickles the same objects.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import cloudpickle


def dumps(obj) -> bytes:
    """``obj`` pickled with protocol 5, as ``cloudpickle.dumps`` would pickle it."""
    return _standard_pickle_if_enough(obj, None)


def dumps_out_of_band(obj, in_band: Callable[[memoryview], bool]) -> tuple[bytes, list[memoryview]]:
    """``obj`` pickled with protocol 5, and the raw buffers ``in_band`` keeps out of the pickle."""
    buffers: list[memoryview] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if in_band(raw):
            return True
        buffers.append(raw)
        return False

    return _standard_pickle_if_enough(obj, keep, buffers), buffers


def by_reference(data: bytes) -> bool:
    """Whether ``data``, a pickled function, names it rather than holding its code (cloudpickle's
    pickles of functions by value start by importing cloudpickle)."""
    return b"cloudpickle" not in data


def _standard_pickle_if_enough(obj, buffer_callback, buffers: list | None = None) -> bytes:
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)
        if not _names_what_workers_cannot_import(data):
            return data
    except Exception:
        pass
    if buffers:
        buffers.clear()  # those of the standard pickle's attempt
    return cloudpickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)


def _names_what_workers_cannot_import(data: bytes) -> bool:
    if b"__main__" in data:
        return True
    by_value = cloudpickle.list_registry_pickle_by_value()
    return bool(by_value) and any(module.encode() in data for module in by_value)
