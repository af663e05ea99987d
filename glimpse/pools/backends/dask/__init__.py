"""The Dask engine: chunks as futures of a ``distributed.Client`` (face: ``glimpse.pools.dask_cluster``)."""
