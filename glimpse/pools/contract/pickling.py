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
    return dumps_out_of_band(obj, None)[0]


def dumps_out_of_band(obj, in_band: Callable[[memoryview], bool] | None) -> tuple[bytes, list[memoryview]]:
    """``obj`` pickled with protocol 5, and the raw buffers ``in_band`` kept out of the pickle
    (``None``: every buffer stays in it)."""
    try:
        data, buffers = _pickle(pickle.dumps, obj, in_band)
        if not _names_what_workers_cannot_import(data):
            return data, buffers
    except Exception:
        pass
    return _pickle(cloudpickle.dumps, obj, in_band)


def _pickle(dumps, obj, in_band) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []
    if in_band is None:
        return dumps(obj, protocol=5), buffers

    def keep(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if in_band(raw):
            return True
        buffers.append(raw)
        return False

    return dumps(obj, protocol=5, buffer_callback=keep), buffers


def _names_what_workers_cannot_import(data: bytes) -> bool:
    if b"__main__" in data:
        return True
    by_value = cloudpickle.list_registry_pickle_by_value()
    return bool(by_value) and any(module.encode() in data for module in by_value)
