"""Reading the input lazily into chunks, pickled on the way, in the caller's process."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle

from glimpse.pools.contract.backend import Chunk
from glimpse.pools.errors import SerializationError


class ChunkReader:
    """Pulls items from an iterable only when a chunk is asked for, and pickles the chunk.

    It tells the sizes how large and how slow to pickle the items were, so chunks of large
    items stay small in bytes.

    An exception from the iterable, or an item that cannot be pickled, ends the chunk before
    it: the items read so far are still returned, and the error is raised on the next call.
    """

    def __init__(self, iterable: Iterable, sizes, encode: Callable[[list], Any] | None, length: int | None):
        self._items: Iterator = iter(iterable)
        self._sizes = sizes
        self._encode = encode
        self._remaining = length
        self._next_start = 0
        self._next_seq = 0
        self._error: BaseException | None = None
        self.exhausted = False

    def read(self) -> Chunk | None:
        """The next chunk, or ``None`` when the input is used up."""
        if self._error is not None:
            error, self._error = self._error, None
            self.exhausted = True
            raise error
        if self.exhausted:
            return None
        items = self._take(self._sizes.next_size(self._remaining))
        chunk = Chunk(self._next_seq, self._next_start, len(items))
        if self._encode is not None and items:
            began = time.perf_counter()
            items, chunk.payload = self._pickle(items)
            chunk.count, chunk.nbytes = len(items), len(chunk.payload or b"")
            if items:
                self._sizes.observe_payload(chunk.count, chunk.nbytes, time.perf_counter() - began)
        elif items:
            chunk.items = items
            # Nothing is pickled, so estimate (shallowly: bytes and arrays count, containers do not).
            self._sizes.observe_payload(chunk.count, sum(map(sys.getsizeof, items)), 0.0)
        if not items:
            return self.read() if self._error is not None else None
        self._next_seq += 1
        self._next_start += chunk.count
        if self._remaining is not None:
            self._remaining -= chunk.count
        return chunk

    def _take(self, size: int) -> list:
        items = []
        try:
            items.extend(itertools.islice(self._items, size))
        except Exception as exc:
            self._error = exc
        if self._error is None and len(items) < size:
            self.exhausted = True
        return items

    def _pickle(self, items: list) -> tuple[list, Any]:
        try:
            return items, self._encode(items)
        except Exception:
            pass
        for offset, item in enumerate(items):
            try:
                cloudpickle.dumps(item)
            except Exception as exc:
                self._error = _unpicklable_argument(self._next_start + offset, item, exc)
                good = items[:offset]
                return good, self._encode(good) if good else None
        return items, self._encode(items)


def _unpicklable_argument(index: int, item, exc: Exception) -> SerializationError:
    error = SerializationError(
        f"argument item #{index} could not be pickled to send it to a worker: "
        f"{type(exc).__name__}: {exc} (item type {type(item).__qualname__})"
    )
    error.__cause__ = exc
    return error
