"""How many items the next chunk takes, and how many bytes a call may hold in flight.

The adaptive size follows joblib's auto-batching: start with one item so the first result
comes early, then size chunks so each takes about ``Backend.chunk_seconds`` of work (the
worker's compute plus the caller's pickling). Every size the pool picks by itself also keeps a
chunk under :data:`CHUNK_BYTES` pickled (one item at least), so large items travel one or a few
at a time; a ``chunksize`` the user gives is used as it is.
"""

from __future__ import annotations

import math
import os

#: The most pickled bytes an automatically sized chunk carries, unless one item is larger.
CHUNK_BYTES = 4 * 2**20
#: The default byte budget of one call's window (see :func:`window_bytes`).
DEFAULT_WINDOW_MB = 256
WINDOW_VARIABLE = "GLIMPSE_WINDOW_MB"
_MAX_CHUNK = 10_000
_SMOOTHING = 0.3


def window_bytes() -> int:
    """How many bytes one call keeps in flight: arguments sent but not finished, plus results held
    back to keep ``imap`` in order. ``$GLIMPSE_WINDOW_MB`` (MiB), default 256.

    256 MiB keeps a caller's memory modest on any machine that runs a cluster client while
    leaving room for dozens of multi-MiB items in flight; one chunk always runs, however large.
    """
    text = os.environ.get(WINDOW_VARIABLE, "").strip()
    if not text:
        return DEFAULT_WINDOW_MB * 2**20
    try:
        megabytes = float(text)
    except ValueError:
        raise ValueError(f"${WINDOW_VARIABLE} must be a number of MiB, not {text!r}") from None
    if megabytes <= 0:
        raise ValueError(f"${WINDOW_VARIABLE} must be positive, not {text!r}")
    return int(megabytes * 2**20)


class _Sizes:
    """What every size policy learns from the reader: how many pickled bytes an item takes."""

    def __init__(self, byte_capped: bool):
        self._byte_capped = byte_capped
        self.bytes_per_item: float | None = None
        self.pickle_seconds_per_item = 0.0

    def observe_payload(self, count: int, nbytes: int, seconds: float) -> None:
        """The reader pickled ``count`` items into ``nbytes`` bytes in ``seconds``."""
        per_item, pickle_seconds = nbytes / count, seconds / count
        if self.bytes_per_item is None:
            self.bytes_per_item, self.pickle_seconds_per_item = per_item, pickle_seconds
        else:
            self.bytes_per_item += _SMOOTHING * (per_item - self.bytes_per_item)
            self.pickle_seconds_per_item += _SMOOTHING * (pickle_seconds - self.pickle_seconds_per_item)

    def observe(self, count: int, seconds: float) -> None:
        """A worker computed ``count`` items in ``seconds``."""

    def _capped(self, size: int) -> int:
        if self._byte_capped and self.bytes_per_item:
            size = min(size, int(CHUNK_BYTES / self.bytes_per_item))
        return max(1, size)


class FixedSize(_Sizes):
    """Every chunk has ``size`` items (fewer if ``byte_capped`` and they are large)."""

    def __init__(self, size: int, byte_capped: bool = False):
        super().__init__(byte_capped)
        self.size = size

    def next_size(self, remaining: int | None) -> int:
        if self._byte_capped and self.bytes_per_item is None:
            return 1  # learn how large an item is before cutting a chunk of many
        return self._capped(self.size)


class AdaptiveSize(_Sizes):
    """Chunks grow until one takes about ``target`` seconds, and shrink if items get slower.

    When the input length is known, a chunk takes no more than a quarter of one worker's share
    of the remaining items (but at least a quarter of the ideal size), so the work stays
    balanced to the end without a tail of tiny chunks.
    """

    def __init__(self, target: float, workers: int):
        super().__init__(byte_capped=True)
        self.target = target
        self.workers = workers
        self.seconds_per_item: float | None = None

    def next_size(self, remaining: int | None) -> int:
        if self.seconds_per_item is None:
            return 1
        ideal = int(self.target / max(self.seconds_per_item + self.pickle_seconds_per_item, 1e-9))
        size = ideal
        if remaining is not None:
            # Near the end, shrink for balance, but never below a quarter of the ideal chunk.
            size = min(ideal, max(math.ceil(remaining / (4 * self.workers)), ideal // 4))
        return self._capped(min(size, _MAX_CHUNK))

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
