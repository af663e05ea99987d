"""The shared machinery under every pool: the backend interface and the iteration contract.

A new engine is one module here that subclasses :class:`Backend` (submit a chunk, wait for
finished chunks, fetch an outcome, cancel) and a pool class that wraps it in :class:`Pool`.
"""

from glimpse.pools.backends.base import Backend, Call, ChunkTask, WorkerLost, task_args
from glimpse.pools.backends.pool import Pool

__all__ = ["Backend", "Call", "ChunkTask", "Pool", "WorkerLost", "task_args"]
