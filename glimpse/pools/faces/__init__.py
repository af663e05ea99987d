"""The APIs users already know, each a thin layer over the pool contract's calls.

``multiprocessing_face``: starmap, apply and the ``*_async`` calls of ``multiprocessing.Pool``;
``futures_face``: ``submit`` and a ``concurrent.futures.Executor``; ``asyncio_face``: ``amap``,
``aimap``, ``asubmit``; :mod:`glimpse.pools.joblib`: a joblib backend named ``glimpse``.
"""
