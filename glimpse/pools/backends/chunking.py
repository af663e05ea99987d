"""Cutting the input into chunks: lazily, of a size fixed or learned from how long items take.

The adaptive size follows joblib's auto-batching: start with one item so the first result
comes early, then size chunks so each takes about ``Backend.chunk_seconds`` of compute.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

import cloudpickle

from glimpse.pools.backends.base import ChunkTask
from glimpse.pools.errors import SerializationError

_MAX_CHUNK = 10_000
_SMOOTHING = 0.3


class FixedSize:
    """Every chunk has the same number of items."""

    def __init__(self, size: int):
        self.size = size

    def next_size(self, remaining: int | None) -> int:
        return self.size

    def observe(self, count: int, seconds: float) -> None:
        pass


class AdaptiveSize:
    """Chunks grow until one takes about ``target`` seconds, and shrink if items get slower.

    When the input length is known, a chunk takes no more than a quarter of one worker's share
    of the remaining items (but at least a quarter of the ideal size), so the work stays
    balanced to the end without a tail of tiny chunks.
    """

    def __init__(self, target: float, workers: int):
        self.target = target
        self.workers = workers
        self.seconds_per_item: float | None = None

    def next_size(self, remaining: int | None) -> int:
        if self.seconds_per_item is None:
            return 1
        ideal = int(self.target / max(self.seconds_per_item, 1e-9))
        size = ideal
        if remaining is not None:
            # Near the end, shrink for balance, but never below a quarter of the ideal chunk.
            size = min(ideal, max(math.ceil(remaining / (4 * self.workers)), ideal // 4))
        return max(1, min(size, _MAX_CHUNK))

    def observe(self, count: int, seconds: float) -> None:
        if count <= 0:
            return
        sample = seconds / count
        if self.seconds_per_item is None:
            self.seconds_per_item = sample
        else:
            self.seconds_per_item += _SMOOTHING * (sample - self.seconds_per_item)


def multiprocessing_chunksize(length: int, workers: int) -> int:
    """``multiprocessing.Pool.map``'s choice: about four chunks per worker."""
    size, extra = divmod(length, workers * 4)
    return max(1, size + bool(extra))


class ChunkReader:
    """Pulls items from an iterable only when a chunk is asked for, and pickles the chunk.

    An exception from the iterable, or an item that cannot be pickled, ends the chunk before
    it: the items read so far are still returned, and the error is raised on the next call.
    """

    def __init__(self, iterable: Iterable, sizes, serialize: bool, length: int | None):
        self._items: Iterator = iter(iterable)
        self._sizes = sizes
        self._serialize = serialize
        self._remaining = length
        self._next_start = 0
        self._next_seq = 0
        self._error: BaseException | None = None
        self.exhausted = False

    def read(self) -> ChunkTask | None:
        """The next chunk, or ``None`` when the input is used up."""
        if self._error is not None:
            error, self._error = self._error, None
            self.exhausted = True
            raise error
        if self.exhausted:
            return None
        items = self._take(self._sizes.next_size(self._remaining))
        payload = None
        if self._serialize and items:
            items, payload = self._pickle(items)
        if not items:
            return self.read() if self._error is not None else None
        task = ChunkTask(self._next_seq, self._next_start, items, payload)
        self._next_seq += 1
        self._next_start += len(items)
        if self._remaining is not None:
            self._remaining -= len(items)
        return task

    def _take(self, size: int) -> list:
        items = []
        try:
            items.extend(itertools.islice(self._items, size))
        except Exception as exc:
            self._error = exc
        if self._error is None and len(items) < size:
            self.exhausted = True
        return items

    def _pickle(self, items: list) -> tuple[list, bytes | None]:
        try:
            return items, cloudpickle.dumps(items)
        except Exception:
            pass
        for offset, item in enumerate(items):
            try:
                cloudpickle.dumps(item)
            except Exception as exc:
                self._error = _unpicklable_argument(self._next_start + offset, item, exc)
                good = items[:offset]
                return good, cloudpickle.dumps(good) if good else None
        return items, cloudpickle.dumps(items)


def _unpicklable_argument(index: int, item, exc: Exception) -> SerializationError:
    error = SerializationError(
        f"argument item #{index} could not be pickled to send it to a worker: "
        f"{type(exc).__name__}: {exc} (item type {type(item).__qualname__})"
    )
    error.__cause__ = exc
    return error
