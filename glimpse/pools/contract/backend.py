"""The one interface every engine implements: submit a chunk, wait for finished chunks.

:func:`glimpse.pools.contract.iteration.iterate` drives a backend; each hook's docstring says
when and how often it calls it, so a backend author knows what must be cheap. Everything
else (windowing, chunk sizes, ordering, errors, retries, cancellation, progress) is shared.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from glimpse.pools.contract import pickling

#: A pickled function up to this size travels inside each of its chunks, on engines that could also
#: store it once (Dask's scheduler, Ray's object store): that saves a call a round trip or two, and
#: each worker one on its first chunk, for a few KiB more per chunk.
INLINE_FUNCTION_BYTES = 16 * 1024


class ChunkLost(Exception):
    """Raised by :meth:`Backend.outcome` when the engine lost a chunk (its worker died, it was cancelled).

    The message says how, and ends up in the ``WorkerLostError`` the caller sees if the chunk
    is lost :attr:`Backend.max_attempts` times.
    """


class ClusterLost(Exception):
    """Raised by a backend's hooks when the cluster itself (scheduler, head, controller, broker) is
    gone; the message names it. The caller sees a ``ClusterLostError``."""


@dataclass
class Health:
    """What :meth:`Backend.health` found: the workers connected now, and why the cluster is gone, if it is.

    ``lost`` says the cluster is gone (its head refused a connection: nothing listens there); the call
    ends at once. ``silent`` says its head does not answer at all (a network down, a machine that
    hangs): that may be a blip, so the call ends only once the head has been silent for
    ``$GLIMPSE_SILENCE_TIMEOUT`` seconds (see :mod:`glimpse.pools.contract.watch`).
    """

    workers: int
    lost: str | None = None
    silent: str | None = None
    #: Where the cluster is and the command that starts a worker there, for the no-workers message.
    address: str = ""
    start_workers: str = ""
    #: Why no worker has connected yet, when the cluster knows (worker jobs pending in a queue, and why).
    waiting: str = ""


@dataclass
class Call:
    """One ``map``/``imap`` call: the function, pickled once (``blob``), and an id unique to the call."""

    func: Any
    blob: bytes | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Chunk:
    """``count`` consecutive items of a call from item ``start`` on, as sent to a worker.

    ``payload`` is the pickled items, of ``nbytes`` bytes; a backend that does not serialize
    gets the ``items`` themselves instead (a serializing one gets ``None``, so the caller does
    not hold every item twice, except for a probe's, kept to send again what the probe did not
    run). ``attempts`` counts how many times the engine lost the chunk.
    """

    seq: int
    start: int
    count: int
    items: list | None = None
    payload: Any = None
    nbytes: int = 0
    attempts: int = 0

    @property
    def stop(self) -> int:
        return self.start + self.count

    def describe(self) -> str:
        if self.count == 1:
            return f"item #{self.start}"
        return f"items #{self.start}..#{self.stop - 1}"


class TrackedChunk:
    """A handle for a backend that learns of a chunk's end itself: ``result`` bytes or ``lost`` reason."""

    __slots__ = ("result", "lost")

    def __init__(self):
        self.result: bytes | None = None
        self.lost: str | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.lost is not None

    def outcome(self) -> bytes:
        """The result, or :class:`ChunkLost` with the reason it was lost."""
        if self.lost is not None:
            raise ChunkLost(self.lost)
        return self.result

    @staticmethod
    def wait(handles: Collection[TrackedChunk], timeout: float, receive) -> list[TrackedChunk]:
        """:meth:`Backend.wait` for tracked handles: ``receive(seconds)`` waits up to that long for
        news from the engine and records it on the handles."""
        if not handles:
            return []
        deadline = time.monotonic() + timeout
        while True:
            done = [handle for handle in handles if handle.done]
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                return done
            receive(remaining)


class Backend(ABC):
    """How one engine runs chunks. Subclasses implement the abstract methods; the rest is optional.

    A backend runs one call at a time (a pool is used from one thread at a time), but a call
    may end early, so several calls' chunks can still be on the workers. On the workers, a chunk
    runs :func:`glimpse.pools.contract.worker_runner.run_chunk`, which returns the pickled
    outcome; :meth:`outcome` hands those bytes back unchanged.
    """

    #: Whether functions, arguments and results cross a process boundary (pickled).
    serializes: bool = True
    #: How many times a chunk is sent before its loss is an error (engine retries are extra).
    max_attempts: int = 3
    #: The compute time adaptive chunking aims for per chunk, at least.
    chunk_seconds: float = 0.05
    #: What one chunk costs beyond its compute (submitting, scheduling, returning the outcome),
    #: paid one chunk after another by the engine's scheduler and the caller. Chunks are made
    #: long enough that this stays a small share of the time every worker has (see ``sizing``).
    task_seconds: float = 0.001
    #: The most items a chunk the pool sizes itself takes, however fast they are.
    max_chunk_items: int = 10_000

    def encode(self, items: list):
        """Pickle a chunk's items for the workers: bytes, or a payload object with ``__len__`` (its
        size in bytes) that the engine's workers know how to load. Called once per chunk."""
        return pickling.dumps(items)

    @abstractmethod
    def workers(self) -> int:
        """How many chunks the engine can run at once now (at least 1).

        Read once when a call starts, to size its chunks and (through :meth:`window`) how many
        it keeps in flight. It may ask the cluster, but should cache the answer for a second.
        """

    def window(self) -> int:
        """How many chunks one call keeps in flight: enough to keep every worker busy.

        Read when a call starts and after every :meth:`wait` that returned finished chunks, so
        it must be cheap (ask the cluster at most once a second).
        """
        return 2 * self.workers() + 2

    def open_call(self, call: Call) -> None:
        """Make ``call.blob`` (the pickled function) available to the workers.

        Called once per call, before its first :meth:`submit`. What the backend shares (an
        object ref, a published name) stays inside the backend, keyed by ``call.id``.
        """

    def close_call(self, call: Call) -> None:
        """Forget what :meth:`open_call` shared. Called once per call when it ends, however it ends."""

    @abstractmethod
    def submit(self, call: Call, chunk: Chunk) -> Any:
        """Start running ``chunk``; return a handle for it. Called once per chunk and per re-send.

        Must not block on the chunk's work: the caller keeps a window of chunks in flight.
        """

    @abstractmethod
    def wait(self, handles: Collection[Any], timeout: float) -> list[Any]:
        """Return the handles among ``handles`` that finished, waiting up to ``timeout`` seconds.

        Called in a loop while a call has chunks in flight, with a timeout under a second; it
        returns as soon as one chunk finished and must not busy-poll.
        """

    @abstractmethod
    def outcome(self, handle: Any) -> Any:
        """The finished chunk's outcome bytes, as ``run_chunk`` returned them; raise
        :class:`ChunkLost` if the engine lost it.

        Called once per handle that :meth:`wait` returned. It may also be an object whose
        ``load()`` returns the unpickled outcome (its ``wire()`` tuple) and whose ``len()`` is its
        size; without ``serializes``, the :class:`~glimpse.pools.contract.worker_runner.ChunkOutcome`
        itself.
        """

    @abstractmethod
    def cancel(self, handles: Collection[Any]) -> None:
        """Stop the given chunks (queued or running) so workers are free for other work.

        Called at most once per call, when it ends with chunks still in flight (the consumer
        left the loop, or an error ended the call). Their outcomes are never asked for.
        """

    def health(self) -> Health | None:
        """Whether the cluster is still there and how many workers it has (``None``: nothing to check).

        Called only while a call waits and no chunk has finished for a few seconds, then every few
        seconds while that lasts; it may take a second or two (a connection probe), never more.
        """
        return None

    def reclaim(self, where: str) -> None:
        """An item timed out in the worker process ``where`` (``"pid N on host"``) and its thread runs
        on there. A backend that owns that process replaces it (restarts its worker); one that
        does not leaves it. Called once per item that timed out, after its chunk's outcome arrived;
        it must not wait for the replacement."""

    def close(self) -> None:
        """Accept no more work; release what this backend owns once running work finishes."""

    def terminate(self) -> None:
        """Stop at once, killing running work."""
        self.close()

    def join(self) -> None:
        """Wait until everything this backend owns has stopped (after close or terminate)."""
