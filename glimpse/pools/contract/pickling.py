"""Pickling for the wire: cloudpickle's reach, at the standard pickle's speed when it is enough.

cloudpickle pickles what the standard pickle cannot (lambdas, closures, classes and functions
of ``__main__``) but costs a few microseconds more per call, which is much of the cost of a
chunk of small items. So the standard pickle goes first; its result is used unless it failed
or names ``__main__`` or a module registered with ``cloudpickle.register_pickle_by_value``
(things a worker cannot import, which cloudpickle sends by value). Either way the worker
unpickles the same objects. A small pickle is searched for those names; a large one (MiB items)
is pickled once more to nowhere, looking at the modules of what it holds, which costs less
than searching its bytes.

:func:`loads` unpickles on either side, and leaves alone a class this process already has.
"""

from __future__ import annotations

import io
import pickle
import types
from collections.abc import Callable

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle


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


def loads(data, buffers=None):
    """Unpickle what the caller or a worker pickled, keeping the classes this process already has.

    cloudpickle sends classes of ``__main__`` (and of modules registered by value) by value. When
    one arrives that this process already has (it sent the class, or received it before),
    cloudpickle reuses the class but sets its attributes to the sender's copy
    (cloudpipe/cloudpickle#439): results that are instances of a caller's class would reset the
    class's attributes and replace its methods, and each chunk would reset them on a worker while
    another chunk runs there. Here such a class keeps its own, as a class pickled by reference does.
    """
    if not _tracked_classes():
        return pickle.loads(data, buffers=buffers)
    return _KeepingUnpickler(_reader(data), buffers=buffers).load()


def _tracked_classes() -> bool:
    """Whether this process has pickled or unpickled a class by value (cloudpickle tracks each)."""
    return bool(getattr(_cloudpickle, "_DYNAMIC_CLASS_TRACKER_BY_ID", True))


class _KeepingUnpickler(pickle.Unpickler):
    """An unpickler that skips cloudpickle's class state for classes it did not make in this load."""

    def __init__(self, file, buffers=None):
        super().__init__(file, buffers=buffers)
        self._kept: set[type] = set()

    def find_class(self, module, name):
        found = super().find_class(module, name)
        if found is getattr(_cloudpickle, "_make_skeleton_class", None):
            return self._class_found_or_made(found, tracker_at=4)
        if found is getattr(_cloudpickle, "_make_skeleton_enum", None):
            return self._class_found_or_made(found, tracker_at=5)
        if found is getattr(_cloudpickle, "_class_setstate", None):
            return self._set_state_unless_kept(found)
        return found

    def _class_found_or_made(self, make: Callable, tracker_at: int) -> Callable:
        def found_or_made(*args):
            known = args[tracker_at] in getattr(_cloudpickle, "_DYNAMIC_CLASS_TRACKER_BY_ID", ())
            cls = make(*args)
            if known:
                self._kept.add(cls)
            return cls

        return found_or_made

    def _set_state_unless_kept(self, set_state: Callable) -> Callable:
        def set_state_unless_kept(cls, state):
            return cls if cls in self._kept else set_state(cls, state)

        return set_state_unless_kept


class _ViewReader(io.RawIOBase):
    """A file over a buffer that is not ``bytes``, read without copying it first."""

    def __init__(self, view):
        self._view, self._at = memoryview(view).cast("B"), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = min(len(buffer), len(self._view) - self._at)
        buffer[:size] = self._view[self._at : self._at + size]
        self._at += size
        return size


def _reader(data):
    # BytesIO shares a bytes object's memory; a memoryview it would copy whole.
    return io.BytesIO(data) if type(data) is bytes else io.BufferedReader(_ViewReader(data))
