"""How many items the next chunk takes, and how many bytes a call may hold in flight.

The adaptive size follows joblib's auto-batching, without its first round trip: each worker's
first chunk is a probe (:class:`~glimpse.pools.contract.worker_runner.ProbeItems`) with a share
of the input that it runs only for a time budget (the call's first probe for
``Backend.chunk_seconds``, so the first results come early; the others for times up to the
target time, spread so they do not all end at once), so tiny items need no chunk just to learn
their cost; later chunks are sized so each takes about the target time of work (the worker's
compute plus the caller's pickling). The target knows the engine: at least
``Backend.chunk_seconds``, and long enough that the engine's own cost per chunk
(``Backend.task_seconds``, paid one chunk after another by its scheduler and by the caller)
stays a tenth of the time every worker has, so a cluster of hundreds of workers gets chunks its
scheduler can keep up with. Every size the pool picks by itself also keeps a chunk under
:data:`CHUNK_BYTES` pickled (one item at least), so large items travel one or a few at a time; a
``chunksize`` the user gives is used as it is.
"""

from __future__ import annotations

import math
import os

#: The most pickled bytes an automatically sized chunk carries, unless one item is larger.
CHUNK_BYTES = 4 * 2**20
#: The default byte budget of one call's window (see :func:`window_bytes`).
DEFAULT_WINDOW_MB = 256
WINDOW_VARIABLE = "GLIMPSE_WINDOW_MB"
_SMOOTHING = 0.3
#: The share of the time the engine's cost per chunk may take, one chunk after another.
_OVERHEAD_SHARE = 0.1


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

    def learning(self, in_flight: int) -> bool:
        """Whether to send no more chunks until one finishes (to learn what an item costs)."""
        return False

    @property
    def probing(self) -> bool:
        """Whether the next chunk is a probe: run for a time budget, since no item cost is known."""
        return False

    def shared_out(self, count: int) -> int:
        """The most items a chunk takes of ``count`` that are to be shared out among the workers."""
        return count

    def capped(self, size: int) -> int:
        """``size`` cut to keep a chunk under :data:`CHUNK_BYTES` pickled (one item at least)."""
        if self._byte_capped and self.bytes_per_item:
            size = min(size, int(CHUNK_BYTES / self.bytes_per_item))
        return max(1, size)


class FixedSize(_Sizes):
    """Every chunk has ``size`` items: the ``chunksize`` the user gave."""

    def __init__(self, size: int):
        super().__init__(byte_capped=False)
        self.size = size

    def next_size(self, remaining: int | None) -> int:
        return self.size

    def observe_payload(self, count: int, nbytes: int, seconds: float) -> None:
        pass  # the size is the user's: nothing to learn


class AdaptiveSize(_Sizes):
    """Chunks grow until one takes about the target time, and shrink if items get slower.

    The first chunks are probes, one per worker, each with an equal share of the input when
    its length is known (else :attr:`max_items`; the reader also caps a probe in bytes and in
    reading time), and no more are sent until one of them finishes. Later, when the input length
    is known, a chunk takes no more than a quarter of one worker's share of the remaining items
    (but at least a quarter of the ideal size), so the work stays balanced to the end without a
    tail of tiny chunks.
    """

    def __init__(self, chunk_seconds: float, task_seconds: float, workers: int, max_items: int = 10_000):
        super().__init__(byte_capped=True)
        self.chunk_seconds, self.task_seconds, self.max_items = chunk_seconds, task_seconds, max_items
        self.workers = workers
        self.seconds_per_item: float | None = None
        self._probes = 0

    @property
    def target(self) -> float:
        """The seconds of work a chunk aims for with this many workers."""
        return max(self.chunk_seconds, self.workers * self.task_seconds / _OVERHEAD_SHARE)

    def learning(self, in_flight: int) -> bool:
        return self.seconds_per_item is None and in_flight >= self.workers

    @property
    def probing(self) -> bool:
        return self.seconds_per_item is None

    @property
    def probe_seconds(self) -> float:
        """How long the probe just sized runs: the call's first for the engine's chunk time, so the
        first results and the item cost come early; the others for times spread evenly between
        half the target time and the target time. Probes that all ran out of time together would
        free every worker at once, each waiting while the caller cuts new chunks; spread, they
        return one after another, and each freed worker takes a chunk of what earlier probes gave
        back, queued already. (Not spread down to the first probe's short time: on a cluster of
        hundreds of workers, probes that stopped that early would flood its scheduler with the
        chunks of what they gave back.)"""
        if self._probes <= 1:
            return self.chunk_seconds
        share = min(1.0, (self._probes - 1) / max(1, self.workers - 1))
        return max(self.chunk_seconds, self.target * (1 + share) / 2)

    def next_size(self, remaining: int | None) -> int:
        if self.seconds_per_item is None:
            self._probes += 1
            if remaining is None:
                return self.capped(self.max_items)
            return self.capped(min(self.max_items, math.ceil(remaining / max(1, self.workers - self._probes + 1))))
        ideal = int(self.target / max(self.seconds_per_item + self.pickle_seconds_per_item, 1e-9))
        size = ideal
        if remaining is not None:
            # Near the end, shrink for balance, but never below a quarter of the ideal chunk.
            size = min(ideal, max(math.ceil(remaining / (4 * self.workers)), ideal // 4))
        return self.capped(min(size, self.max_items))

    def shared_out(self, count: int) -> int:
        # One chunk per worker at most: never a flood, however small the chunks.
        return math.ceil(count / self.workers)

    def observe(self, count: int, seconds: float) -> None:
        if count <= 0:
            return
        sample = seconds / count
        if self.seconds_per_item is None:
            self.seconds_per_item = sample
        else:
            self.seconds_per_item += _SMOOTHING * (sample - self.seconds_per_item)
