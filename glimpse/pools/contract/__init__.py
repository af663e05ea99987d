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

Glossary (the words the code and the docs use, and what the engines call the same things):

call
    One ``map``/``imap``/``starmap``... of one function over one input (:class:`Call`).
item
    One element of a call's input; its *index* is its position there.
chunk
    Consecutive items of one call sent to a worker together (:class:`Chunk`); Dask and Ray run
    each as a *task*, gearman as a *job*, IPython as a task of a view.
outcome
    What a worker sends back for a chunk: the values, and the failure that stopped it if any
    (``worker_runner.ChunkOutcome``).
handle
    A backend's object for one chunk in flight.
window
    The chunks of a call in flight at once, bounded in number and in bytes.
worker
    A process (or a thread of one, on Dask) that runs chunks: a Dask worker thread, a Ray
    worker, an IPython engine, a task process behind a zmq or gearman *slot*.
slot
    A zmq or gearman worker's connection to the cluster: it takes chunks and hands each to its
    task process.
head
    The cluster's central process: Dask's scheduler, Ray's head node, IPython's controller, the
    zmq broker, gearmand.
task
    One single call of the faces (``submit``, ``apply_async``, joblib): the faces queue tasks
    and run them as the items of one call (``tasks.TaskQueue``).
job
    A SLURM job: the allocation one Dask worker runs in.
"""

from glimpse.pools.contract.backend import Backend, Call, Chunk, ChunkLost, ClusterLost, Health
from glimpse.pools.contract.pool import Pool

__all__ = ["Backend", "Call", "Chunk", "ChunkLost", "ClusterLost", "Health", "Pool"]
