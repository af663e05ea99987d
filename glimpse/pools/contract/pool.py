"""The pool interface users call: the contract's calls and the faces built on them."""

from glimpse.pools.faces.asyncio_face import AsyncioFace
from glimpse.pools.faces.multiprocessing_face import MultiprocessingFace


class Pool(MultiprocessingFace, AsyncioFace):
    """A worker pool over one backend. Every pool in glimpse has exactly these methods.

    ``map`` and ``imap`` keep input order; ``imap_unordered`` yields in completion order.
    ``imap``/``imap_unordered`` read the input lazily, so it may be an endless generator.
    ``chunksize=None`` picks a size automatically. ``progress=True`` shows a tqdm bar. For long
    runs, every ``map``-like call also takes ``timeout=``, ``retries=``, ``retry_on=``, ``errors=``,
    ``journal=`` and ``key=`` (see :class:`~glimpse.pools.contract.policy.CallOptions`).
    ``initializer(*initargs)`` runs once in each worker process before its first item.

    The faces users know sit on these three calls: ``multiprocessing.Pool``'s (``starmap``,
    ``apply_async``, ``map_async`` ...), ``concurrent.futures`` (``submit``, ``executor()``) and
    asyncio (``amap``, ``aimap``, ``asubmit``); see their classes. Threads may share a pool:
    each call belongs to the thread that iterates it, and calls from several threads run side by
    side on the same workers. ``close``/``terminate``/``join`` are for one thread, once.
    """
