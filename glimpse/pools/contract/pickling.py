"""Pickling for the wire: cloudpickle's reach, at the standard pickle's speed for plain data.

cloudpickle pickles what the standard pickle cannot (lambdas, closures, classes defined in
``__main__``) but costs a few microseconds more per call, which is most of the cost of a chunk
of a few small items. A short list of numbers and strings (or of tuples of them) pickles the
same either way, so it takes the fast path; anything else goes through cloudpickle, whose
extra cost does not grow with the number of plain items.
"""

from __future__ import annotations

import pickle

import cloudpickle

#: Longer lists are not worth looking through: cloudpickle's fixed cost is small beside them.
_SHORT = 16
_ATOMIC = frozenset({int, float, complex, str, bytes, bool, type(None)})


def dumps(obj, buffer_callback=None) -> bytes:
    """``obj`` pickled with protocol 5, as ``cloudpickle.dumps`` would pickle it."""
    fast = plain(obj) if type(obj) is list else getattr(obj, "holds_plain_data", _no)()
    pickler = pickle.dumps if fast else cloudpickle.dumps
    return pickler(obj, protocol=5, buffer_callback=buffer_callback)


def plain(values: list) -> bool:
    """Whether the list is short and every value is a number, string, bytes or ``None``, or a tuple of them."""
    if len(values) > _SHORT:
        return False
    for value in values:
        kind = type(value)
        if kind not in _ATOMIC and not (kind is tuple and all(type(part) in _ATOMIC for part in value)):
            return False
    return True


def _no() -> bool:
    return False
