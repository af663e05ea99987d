"""Reading the input lazily into chunks, pickled on the way, in the caller's process."""

from __future__ import annotations

import itertools
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle

from glimpse.pools.contract.backend import Chunk
from glimpse.pools.contract.feed import Feed
from glimpse.pools.contract.out_of_band import pickle_out_of_band
from glimpse.pools.contract.worker_runner import ProbeItems
from glimpse.pools.errors import SerializationError

#: How long a probe may spend reading the input, and how many items it reads between checks.
_PROBE_READ_SECONDS = 0.01
_PROBE_READ_BLOCK = 4096


class ChunkReader:
    """Pulls items from an iterable only when a chunk is asked for, and pickles the chunk.

    It tells the sizes how large and how slow to pickle the items were, so chunks of large
    items stay small in bytes.

    An exception from the iterable, or an item that cannot be pickled, ends the chunk before
    it: the items read so far are still returned, and the error is raised on the next call.

    A :class:`~glimpse.pools.contract.feed.Feed` is read as it fills: a chunk takes the items
    that have arrived, and :meth:`read` returns ``None`` when none have, until the feed is done.
    """

    def __init__(self, iterable: Iterable, sizes, encode: Callable[[list], Any] | None, length: int | None):
        # A list, tuple or range is read by slicing: the items its iterator would give, in a
        # fraction of the time (islice moves items one at a time, ~8 ns each).
        self._sequence = iterable if type(iterable) in (list, tuple, range) else None
        self._position = 0
        self.feed = iterable if isinstance(iterable, Feed) else None
        self._items: Iterator = iter(()) if self._sequence is not None or self.feed else iter(iterable)
        self._sizes = sizes
        self._encode = encode
        self._remaining = length
        self._next_start = 0
        self._next_seq = 0
        self._error: BaseException | None = None
        self._input_done = False
        self._first_give_back = True
        #: Items probes gave back: (first index, items, the most items a chunk of them takes).
        self._returned: deque[tuple[int, list, int]] = deque()

    @property
    def exhausted(self) -> bool:
        """Whether every item has been read and no item was given back."""
        return self._input_done and not self._returned

    @property
    def gave_back(self) -> bool:
        """Whether items given back wait to be read again (before an error from the input)."""
        return bool(self._returned)

    def give_back(self, start: int, items: list) -> None:
        """Items from ``start`` on that a probe did not run: the next chunks take them first.

        The call's first items given back (the first probe's: it runs shortest) are shared out
        among the workers (:meth:`~glimpse.pools.contract.sizing.AdaptiveSize.shared_out`): while
        every other worker runs a probe, they wait for the next worker that frees up, which, when
        the probes hold the rest of the input, is at the very end of the call.
        """
        most = self._sizes.shared_out(len(items)) if self._first_give_back else len(items)
        self._first_give_back = False
        self._returned.append((start, items, most))

    def read(self) -> Chunk | None:
        """The next chunk, or ``None`` when the input is used up (or a feed has nothing now)."""
        if self._returned:
            return self._read_given_back()
        if self._error is not None:
            error, self._error = self._error, None
            self._input_done = True
            raise error
        if self._input_done:
            return None
        if self.feed is not None and not self.feed.available():
            self._input_done = self.feed.done
            return None
        if self._sizes.probing and self.feed is not None:
            self._sizes.next_size(None)
            items = self._take(1)  # calls arrive one by one: a probe of one keeps the rest cancellable
        elif self._sizes.probing:
            items = self._take_probe(self._sizes.next_size(self._remaining))
            if len(items) > 1:
                items = ProbeItems(items, self._sizes.probe_seconds)
        else:
            items = self._take(self._sizes.next_size(self._remaining))
        chunk = self._chunk(self._next_start, items)
        if chunk is None:
            return self.read() if self._error is not None else None
        self._next_start += chunk.count
        if self._remaining is not None:
            self._remaining -= chunk.count
        return chunk

    def _read_given_back(self) -> Chunk:
        start, items, most = self._returned[0]
        remaining = None if self._remaining is None else self._remaining + sum(len(i) for _, i, _ in self._returned)
        size = min(self._sizes.next_size(remaining), most)
        if size < len(items):
            self._returned[0] = (start + size, items[size:], most)
        else:
            self._returned.popleft()
        return self._chunk(start, items[:size])

    def _chunk(self, start: int, items: list) -> Chunk | None:
        """The items as a chunk (pickled if the backend serializes), or ``None`` if there are none."""
        chunk = Chunk(self._next_seq, start, len(items))
        if self._encode is not None and items:
            began = time.perf_counter()
            items, chunk.payload = self._pickle(items, start)
            chunk.count, chunk.nbytes = len(items), len(chunk.payload or b"")
            if items:
                self._sizes.observe_payload(chunk.count, chunk.nbytes, time.perf_counter() - began)
            if type(items) is ProbeItems:
                chunk.items = items  # kept, to send again what the probe does not run
        elif items:
            chunk.items = items
            # Nothing is pickled, so estimate (shallowly: bytes and arrays count, containers do not).
            self._sizes.observe_payload(chunk.count, sum(map(sys.getsizeof, items)), 0.0)
        if not items:
            return None
        self._next_seq += 1
        return chunk

    def _take_probe(self, size: int) -> list:
        """Up to ``size`` items for a probe, also within :data:`CHUNK_BYTES` and a few ms of reading
        (a slow generator must not hold the first chunk back): read in blocks that double."""
        deadline = time.perf_counter() + _PROBE_READ_SECONDS
        items = self._take(1)
        if not items or size <= 1:
            return items
        if self._sizes.bytes_per_item is None:
            try:
                skeleton, buffers = pickle_out_of_band(items)
            except Exception:
                return items  # unpicklable: reported when the chunk is pickled
            self._sizes.observe_payload(1, len(skeleton) + sum(b.nbytes for b in buffers), 0.0)
            size = self._sizes.capped(size)
        if self._sequence is not None:  # in memory already: no reading time to bound
            items.extend(self._take(size - len(items)))
        while len(items) < size and not self._input_done and self._error is None and time.perf_counter() < deadline:
            items.extend(self._take(min(len(items), _PROBE_READ_BLOCK, size - len(items))))
        return items

    def _take(self, size: int) -> list:
        if self.feed is not None:
            items = self.feed.take(size)
            if not items and self.feed.done:
                self._input_done = True
            return items
        if self._sequence is not None:
            items = self._sequence[self._position : self._position + size]
            if type(items) is not list:
                items = list(items)
            self._position += len(items)
            if len(items) < size:
                self._input_done = True
            return items
        items = []
        try:
            items.extend(itertools.islice(self._items, size))
        except Exception as exc:
            self._error = exc
        if self._error is None and len(items) < size:
            self._input_done = True
        return items

    def _pickle(self, items: list, start: int) -> tuple[list, Any]:
        try:
            return items, self._encode(items)
        except Exception:
            pass
        for offset, item in enumerate(items):
            try:
                cloudpickle.dumps(item)
            except Exception as exc:
                self._error = _unpicklable_argument(start + offset, item, exc)
                good = type(items)(items[:offset], items.budget) if type(items) is ProbeItems else items[:offset]
                return good, self._encode(good) if good else None
        return items, self._encode(items)


def _unpicklable_argument(index: int, item, exc: Exception) -> SerializationError:
    error = SerializationError(
        f"argument item #{index} could not be pickled to send it to a worker: "
        f"{type(exc).__name__}: {exc} (item type {type(item).__qualname__})"
    )
    error.__cause__ = exc
    return error
