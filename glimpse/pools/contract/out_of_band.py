"""Large buffers kept out of a pickle, so an engine can move them without copying them into it.

Used on both sides. :func:`pickle_out_of_band` pickles with protocol 5 and hands back the large
buffers (numpy arrays, ``bytearray``, and ``bytes`` items or results of 256 KiB or more)
instead of copying them into the pickle; MulticorePool then moves them through shared memory,
Ray and Dask through their own zero-copy serialization (:class:`Unpickled`).
"""

from __future__ import annotations

import pickle

from glimpse.pools.contract import pickling
from glimpse.pools.contract.worker_runner import ProbeItems

#: Buffers at least this large travel out of band; smaller ones cost less inside the pickle.
OUT_OF_BAND_BYTES = 256 * 1024


def pickle_out_of_band(obj) -> tuple[bytes, list[memoryview]]:
    """``obj`` pickled without its large buffers, and those buffers (raw, in order)."""
    # A short list that starts with a bytes item is searched for large ones before it is pickled:
    # pickling large bytes in band, then again marked, would copy and scan each. Any other list only
    # if its pickle turns out large (searching every chunk would cost calls of tiny items dearly).
    marked = _with_large_bytes_marked(obj, likely_only=True)
    skeleton, buffers = pickling.dumps_out_of_band(marked, _small)
    if marked is obj and len(skeleton) >= OUT_OF_BAND_BYTES:
        marked = _with_large_bytes_marked(obj)
        if marked is not obj:
            skeleton, buffers = pickling.dumps_out_of_band(marked, _small)
    return skeleton, buffers


def _small(raw: memoryview) -> bool:
    return raw.nbytes < OUT_OF_BAND_BYTES  # pickled in band


class Unpickled:
    """A chunk's items or outcome handed to an engine that pickles them itself, zero-copy.

    ``load()`` returns the value and ``len()`` its size in bytes, as the contract expects of a
    payload or an outcome that is not plain bytes.
    """

    __slots__ = ("value", "nbytes", "_pickled")

    def __init__(self, value, nbytes: int, pickled: tuple[bytes, list[memoryview]] | None = None):
        self.value, self.nbytes, self._pickled = value, nbytes, pickled

    def __len__(self) -> int:
        return self.nbytes

    def load(self):
        return self.value

    def __reduce_ex__(self, protocol):
        # The engine pickles a skeleton and the large buffers, which go out of band with protocol 5
        # (Dask, Ray): pickled whole, large bytes would be copied into the pickle, which Dask scans.
        # The receiver unpickles the skeleton with pickling.loads, which keeps the classes it has.
        skeleton, buffers = self._pickled or pickle_out_of_band(self.value)
        wrap = bytes if protocol < 5 else pickle.PickleBuffer  # a peer that takes no buffers: in band
        return _loaded, (skeleton, self.nbytes, *map(wrap, buffers))


def _loaded(skeleton: bytes, nbytes: int, *buffers) -> Unpickled:
    return Unpickled(pickling.loads(skeleton, buffers=buffers), nbytes)


def unpickled_if_large(value):
    """``value`` pickled (bytes) if it holds no large buffer, else :class:`Unpickled` for the engine.

    Pickling the skeleton checks that ``value`` can be pickled at all without copying its buffers.
    """
    skeleton, buffers = pickle_out_of_band(value)
    if not buffers:
        return skeleton
    return Unpickled(value, len(skeleton) + sum(buffer.nbytes for buffer in buffers), (skeleton, buffers))


class _LargeBytes:
    """A ``bytes`` item pickled out of band (pickle keeps ``bytes`` in band unless wrapped)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes):
        self.value = value

    def __reduce__(self):
        # Pickled only by glimpse's own picklers, with protocol 5 (Unpickled hands engines the result).
        return bytes, (pickle.PickleBuffer(self.value),)


#: A list this long or shorter may hold large bytes items (a chunk sized by bytes holds 16 at most).
_LIKELY_ITEMS = 64


def _with_large_bytes_marked(obj, likely_only: bool = False):
    """``obj`` with each large ``bytes`` item of a chunk (a list) or of an outcome's values (the
    list in its wire tuple) marked to go out of band; with ``likely_only``, only in lists of up to
    :data:`_LIKELY_ITEMS` items whose first item is bytes."""
    if type(obj) is tuple:
        marked = tuple(_with_large_bytes_marked(item, likely_only) for item in obj)
        return obj if all(new is old for new, old in zip(marked, obj, strict=True)) else marked
    if type(obj) not in (list, ProbeItems):
        return obj
    if likely_only and not (0 < len(obj) <= _LIKELY_ITEMS and type(obj[0]) is bytes):
        return obj
    if not _has_large_bytes(obj):
        return obj
    items = [_marked(item) for item in obj]
    return ProbeItems(items, obj.budget) if type(obj) is ProbeItems else items


def _has_large_bytes(items: list) -> bool:
    try:
        if max(map(len, items)) < OUT_OF_BAND_BYTES:  # in C: a fifth of the loop below
            return False
    except Exception:  # an item without a length
        pass
    return any(type(item) is bytes and len(item) >= OUT_OF_BAND_BYTES for item in items)


def _marked(item):
    return _LargeBytes(item) if type(item) is bytes and len(item) >= OUT_OF_BAND_BYTES else item
