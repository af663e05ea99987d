"""The one interface every backend implements: submit a chunk, wait for finished chunks.

Everything else (windowing, chunk sizes, ordering, errors, retries, cancellation, progress)
lives in :mod:`glimpse.pools.backends.iteration` and is shared by every pool.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any


class WorkerLost(Exception):
    """Raised by :meth:`Backend.outcome` when the engine lost a chunk with its worker."""


@dataclass
class Call:
    """One ``map``/``imap`` call: the function, and the backend's shared reference to it."""

    func: Any
    blob: bytes | None = None
    ref: Any = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class ChunkTask:
    """Consecutive items ``start .. start + len(items) - 1`` of a call, as sent to a worker."""

    seq: int
    start: int
    items: list
    payload: bytes | None = None
    attempts: int = 0

    @property
    def stop(self) -> int:
        return self.start + len(self.items)

    def describe(self) -> str:
        if len(self.items) == 1:
            return f"item #{self.start}"
        return f"items #{self.start}..#{self.stop - 1}"


class Backend(ABC):
    """How one engine runs chunks. Subclasses implement the abstract methods only.

    ``outcome`` returns the bytes made by ``chunks.run_pickled_chunk`` (or, when
    ``serializes`` is false, a ``ChunkOutcome`` computed in the caller's process).
    """

    #: Whether functions, arguments and results cross a process boundary (pickled).
    serializes: bool = True
    #: How many times a chunk is sent before its loss is an error (engine retries are extra).
    max_attempts: int = 3
    #: The compute time adaptive chunking aims for per chunk: well above the engine's per-task cost.
    chunk_seconds: float = 0.05

    @abstractmethod
    def workers(self) -> int:
        """How many chunks the engine can run at once now (at least 1)."""

    def window(self) -> int:
        """How many chunks one call keeps in flight: enough to keep every worker busy."""
        return 2 * self.workers() + 2

    def share(self, call: Call) -> Any:
        """Make ``call.blob`` (the pickled function) available to workers once per call."""
        return call.blob

    def release(self, call: Call) -> None:
        """Forget what :meth:`share` made available for this call."""

    @abstractmethod
    def submit(self, call: Call, task: ChunkTask) -> Any:
        """Start running a chunk; return a handle (future) for it."""

    @abstractmethod
    def wait(self, handles: Collection[Any], timeout: float) -> list[Any]:
        """Return the handles among ``handles`` that finished, waiting up to ``timeout`` seconds."""

    @abstractmethod
    def outcome(self, handle: Any) -> Any:
        """The finished chunk's outcome bytes; raise :class:`WorkerLost` if the engine lost it."""

    @abstractmethod
    def cancel(self, handles: Collection[Any]) -> None:
        """Stop the given chunks (queued or running) so workers are free for other work."""

    def close(self) -> None:
        """Accept no more work; release what this backend owns once running work finishes."""

    def terminate(self) -> None:
        """Stop at once, killing running work."""
        self.close()

    def join(self) -> None:
        """Wait until everything this backend owns has stopped (after close or terminate)."""


def task_args(call: Call, task: ChunkTask) -> tuple:
    """The arguments of ``chunks.run_pickled_chunk`` for this chunk."""
    return (call.id, call.ref, task.payload, task.start)
