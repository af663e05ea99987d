"""The gearman engine: glimpse workers run chunks as signed jobs of gearmand (face: ``gearman_cluster``).

``protocol.py`` is the gearman protocol (our own client); ``jobs.py`` what a job carries, signed;
``server.py`` runs gearmand; ``worker.py`` runs in the worker processes, ``backend.py`` in the caller.
"""
