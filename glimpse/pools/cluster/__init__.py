"""What every cluster type shares: the pool base (address, pickling, cleanup) and the verbs' plumbing.

A cluster type is a folder ``glimpse/pools/backends/<engine>/`` and a face
``glimpse/pools/<engine>_cluster.py`` that exports :data:`INTERFACE`; the registry checks it.
"""

#: The names every ``glimpse.pools.<type>_cluster`` module provides.
INTERFACE = ("MakePool", "RunMain", "VERBS", "ENVIRONMENT")
