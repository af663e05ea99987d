"""The gearman engine: glimpse workers running chunks as jobs of gearmand."""
