"""Worker pools with one interface, ``map``/``imap``/``imap_unordered``, from one core to a cluster.

>>> from glimpse.pools import MakePool
>>> with MakePool() as pool:                       # multicore; GLIMPSE_POOL=dask moves it to Dask
...     squares = pool.map(lambda x: x * x, range(10))

``import glimpse.pools`` imports no cluster engine; cluster modules load on first use.
"""

from importlib.metadata import PackageNotFoundError, version

from glimpse.pools.contract import Pool
from glimpse.pools.contract.worker_policy import Failure, worker_state
from glimpse.pools.errors import (
    AuthenticationError,
    ClusterConnectionError,
    ClusterLostError,
    InitializerError,
    JobSubmitError,
    JournalMismatchError,
    NoWorkersError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from glimpse.pools.local import MulticorePool, SinglecorePool
from glimpse.pools.registry import GetClusterPackage, MakePool

try:
    __version__ = version("glimpse-pools")  # set in pyproject.toml only
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AuthenticationError",
    "ClusterConnectionError",
    "ClusterLostError",
    "Failure",
    "GetClusterPackage",
    "InitializerError",
    "JobSubmitError",
    "JournalMismatchError",
    "MakePool",
    "MulticorePool",
    "NoWorkersError",
    "Pool",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SinglecorePool",
    "TaskTimeoutError",
    "WorkerLostError",
    "worker_state",
]
