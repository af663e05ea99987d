"""What every cluster type shares: the pool base (address, pickling, cleanup) and the verbs' plumbing.

``pool.py`` is every cluster pool's base; ``signed_pool.py`` adds the cluster key for the transports
glimpse signs itself (zmq, gearman), and ``embedded.py`` starts their broker and workers on 127.0.0.1.

A cluster type is a folder ``glimpse/pools/backends/<engine>/`` and a face
``glimpse/pools/<engine>_cluster.py`` that exports :data:`INTERFACE`; the registry checks it.
"""

#: The names every ``glimpse.pools.<type>_cluster`` module provides.
INTERFACE = ("MakePool", "RunMain", "VERBS", "ENVIRONMENT")
