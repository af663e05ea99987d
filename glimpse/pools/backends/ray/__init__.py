"""The Ray engine: chunks as Ray tasks (face: ``glimpse.pools.ray_cluster``)."""
