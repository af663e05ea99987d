"""The pool contract, written once for every pool: how one ``map``/``imap`` call travels.

::

    caller's process                                           a worker (any engine)
    ----------------                                           ---------------------
    Pool.imap(func, items)                                     contract.worker_runner
      |                                                          run_chunk(call id, function,
      v                                                                    payload, start)
    iteration.iterate  --- one generator per call ---                 |  unpickles the function
      |  reader.ChunkReader: pulls items lazily, pickles a chunk     |  (cached per call) and
      |  sizing.*Size: how many items the next chunk takes           |  the items, applies func,
      |  Backend.submit(call, chunk) ------- engine ---------------> |  never raises: returns
      |  Backend.wait(handles, timeout) <--- engine ---------------- |  the pickled ChunkOutcome
      |                                                              |  as a plain tuple
      |  Backend.outcome(handle): the outcome bytes, or ChunkLost
      |     ChunkLost: the chunk is sent again, up to Backend.max_attempts
      v
    results in input order (imap) or completion order (imap_unordered);
    the first error re-raised with the worker's traceback after every earlier result;
    Backend.cancel(pending) when the consumer stops early.

Only :class:`Backend` differs between engines: it says how to submit a chunk and how to wait
for finished ones (``glimpse/pools/backends/<engine>/backend.py``). Everything above it, the
window of chunks in flight, chunk sizes, ordering, retries, errors, cancellation and progress,
lives here. Modules whose names start with ``worker_`` run on the workers; the rest run in the
caller's process.
"""

from glimpse.pools.contract.backend import Backend, Call, Chunk, ChunkLost, ClusterLost, Health
from glimpse.pools.contract.pool import Pool

__all__ = ["Backend", "Call", "Chunk", "ChunkLost", "ClusterLost", "Health", "Pool"]
