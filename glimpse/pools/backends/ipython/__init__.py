"""The IPython parallel engine: chunks as tasks of a load-balanced view (face: ``glimpse.pools.ipython_cluster``).

``guard.py`` is the program that wraps the controller and engines of an embedded cluster.
"""
