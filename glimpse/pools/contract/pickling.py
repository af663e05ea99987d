"""Pickling for the wire: cloudpickle's reach, at the standard pickle's speed when it is enough.

cloudpickle pickles what the standard pickle cannot (lambdas, closures, classes and functions
of ``__main__``) but costs a few microseconds more per call, which is much of the cost of a
chunk of small items. So the standard pickle goes first; its result is used unless it failed
or names ``__main__`` or a module registered with ``cloudpickle.register_pickle_by_value``
(things a worker cannot import, which cloudpickle sends by value). Either way the worker
unpickles the same objects. A small pickle is searched for those names; a large one (MiB items)
is pickled once more to nowhere, looking at the modules of what it holds, which costs less
than searching its bytes.
"""

from __future__ import annotations

import pickle
import types
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
        if not _names_what_workers_cannot_import(data, obj):
            return data
    except Exception:
        pass
    if buffers:
        buffers.clear()  # those of the standard pickle's attempt
    return cloudpickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)


#: Pickles this large, of items this large on average, are not searched for module names: their
#: objects' modules are looked at (a pickle of many small objects is searched faster).
_SEARCHED_BYTES = 64 * 1024
_LARGE_ITEM_BYTES = 16 * 1024


def _names_what_workers_cannot_import(data: bytes, obj) -> bool:
    by_value = cloudpickle.list_registry_pickle_by_value()
    if len(data) >= _SEARCHED_BYTES and len(data) >= _LARGE_ITEM_BYTES * _item_count(obj):
        return _holds_unimportable(obj, by_value)
    if b"__main__" in data:
        return True
    return bool(by_value) and any(module.encode() in data for module in by_value)


def _item_count(obj) -> float:
    """How many items ``obj`` holds: a chunk's, or an outcome's (a tuple that holds the list)."""
    if type(obj) is tuple:
        return len(obj) + sum(len(part) for part in obj if type(part) in (list, tuple))
    if isinstance(obj, list):
        return len(obj)
    return float("inf")  # not a chunk: searched


def _holds_unimportable(obj, by_value: set[str]) -> bool:
    checker = _ModuleChecker(by_value)
    try:
        checker.dump(obj)
    except _Unimportable:
        return True
    return False


class _Unimportable(Exception):
    pass


class _Nowhere:
    def write(self, data) -> None:
        pass


_BY_REFERENCE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _ModuleChecker(pickle.Pickler):
    """Pickles to nowhere, raising :class:`_Unimportable` at the first object whose module (or
    whose type's) a worker cannot import. The pickler skips exact ints, floats, strings, bytes
    and containers without a call, so MiB of bytes or of numbers cost next to nothing."""

    def __init__(self, by_value: set[str]):
        super().__init__(_Nowhere(), protocol=5, buffer_callback=lambda buffer: None)
        self._by_value = by_value

    def reducer_override(self, obj):
        self._check(type(obj).__module__)
        if isinstance(obj, _BY_REFERENCE):
            self._check(getattr(obj, "__module__", None))
        return NotImplemented

    def _check(self, module) -> None:
        if not isinstance(module, str):
            return
        if module == "__main__" or any(module == name or module.startswith(name + ".") for name in self._by_value):
            raise _Unimportable
