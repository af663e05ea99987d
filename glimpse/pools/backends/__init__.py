"""One folder per engine, each with everything that engine needs.

``backends/<engine>/``:

- ``backend.py``: the :class:`~glimpse.pools.contract.Backend` (submit a chunk, wait for finished ones);
- ``pool.py``: the pool class and ``MakePool`` (where the cluster is: argument, environment, embedded);
- ``verbs.py``: ``RunMain`` and the ``glimpse-cluster --type <engine>`` verbs;
- ``embedded.py``: the cluster a pool starts on 127.0.0.1 and ends, when the engine needs one of ours;
- ``compat.py``: the only place that touches the engine's private internals, each use with the
  versions it was checked on (``tests/test_compat.py`` fails loudly when an upgrade removes one);
- modules whose names start with ``worker`` run on the workers, ``broker`` in a broker; the rest
  in the caller's process.

``inline`` and ``processes`` are the engines of ``SinglecorePool`` and ``MulticorePool``.
"""
