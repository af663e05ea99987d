"""The engine of ``MulticorePool``: worker processes of its own on this machine, over pipes
(:mod:`glimpse.pools.ipc`)."""
