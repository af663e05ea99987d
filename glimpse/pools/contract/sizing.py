"""How many items the next chunk takes: a fixed number, or learned from how long items take.

The adaptive size follows joblib's auto-batching: start with one item so the first result
comes early, then size chunks so each takes about ``Backend.chunk_seconds`` of compute.
"""

from __future__ import annotations

import math

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
