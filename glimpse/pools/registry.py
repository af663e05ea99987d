"""The table of cluster types, and the functions that turn a name into a module or a pool.

Adding a cluster type is one line in ``CLUSTER_TYPES``: the module
``glimpse.pools.<name>_cluster``, the extra that installs its engine, and the engine's modules.
That module provides the names in :data:`glimpse.pools.cluster.INTERFACE`; ``GetClusterPackage``
checks it, so an engine that forgets one fails its first test, not a user.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from glimpse.pools.cluster import INTERFACE

if TYPE_CHECKING:
    from glimpse.pools.contract.pool import Pool


@dataclass(frozen=True)
class ClusterType:
    """A cluster module's pip extra, the modules that extra provides, the programs (outside pip)
    an embedded cluster of that type runs, and whether a pool can start one (``embedded``: SLURM
    pools need a SLURM that runs already)."""

    extra: str
    requires: tuple[str, ...]
    programs: tuple[str, ...] = ()
    embedded: bool = True


CLUSTER_TYPES: dict[str, ClusterType] = {
    "ipython": ClusterType("ipython", ("ipyparallel",)),
    "dask": ClusterType("dask", ("dask", "distributed")),
    "ray": ClusterType("ray", ("ray",)),
    # blake3 signs their messages.
    "zmq": ClusterType("zmq", ("zmq", "blake3")),
    # The protocol client is the package's own; gearmand (apt: gearman-job-server) runs the queue.
    "gearman": ClusterType("gearman", ("blake3",), programs=("gearmand",)),
    # Dask workers as SLURM jobs (dask-jobqueue); SLURM's commands come with the cluster (apt: slurm-client).
    "slurm": ClusterType(
        "slurm", ("dask", "distributed", "dask_jobqueue", "cryptography"), programs=("sbatch",), embedded=False
    ),
}
LOCAL_POOLS = ("singlecore", "multicore")
DEFAULT_CLUSTER_TYPE = "ipython"
DEFAULT_POOL = "multicore"


def GetClusterPackage(cluster_type: str | None = None) -> ModuleType:
    """Return the module ``glimpse.pools.<cluster_type>_cluster``, which has ``MakePool`` and ``RunMain``.

    ``cluster_type`` defaults to ``$GLIMPSE_CLUSTER_TYPE``, else ``"ipython"``. An unknown name is
    a ``ValueError`` listing the known ones; a known one whose engine is not installed is an
    ``ImportError`` with the ``pip install`` command that installs it.
    """
    if cluster_type is None:
        cluster_type = os.environ.get("GLIMPSE_CLUSTER_TYPE") or DEFAULT_CLUSTER_TYPE
    name = _known_cluster_type(cluster_type)
    require_extra(name)
    module = importlib.import_module(f"glimpse.pools.{name}_cluster")
    missing = [attribute for attribute in INTERFACE if not hasattr(module, attribute)]
    if missing:
        raise AttributeError(
            f"{module.__name__} lacks {', '.join(missing)}: every cluster module provides {', '.join(INTERFACE)}"
        )
    return module


def MakePool(kind: str | None = None, **kwargs: Any) -> Pool:
    """Return a new pool: ``multicore`` unless ``kind`` or ``$GLIMPSE_POOL`` names another.

    ``kind`` is ``singlecore``, ``multicore`` or a cluster type (``dask``, ``ray``, ``ipython``, ``zmq``, ``gearman``,
    ``slurm``),
    so a script moves from a laptop to a cluster by setting ``GLIMPSE_POOL``. Keyword arguments
    go to the pool's constructor (for a cluster type, to its module's ``MakePool``); every kind takes
    ``initializer=`` and ``initargs=`` (run once in each worker process before its first item, as
    multiprocessing's).
    """
    kind = (kind or os.environ.get("GLIMPSE_POOL") or DEFAULT_POOL).strip().lower()
    if kind == "singlecore":
        from glimpse.pools.local import SinglecorePool

        return SinglecorePool(**kwargs)
    if kind == "multicore":
        from glimpse.pools.local import MulticorePool

        return MulticorePool(**kwargs)
    if kind not in CLUSTER_TYPES:
        raise ValueError(f"unknown pool kind {kind!r}; known kinds: {', '.join(known_pool_kinds())}")
    pool: Pool = GetClusterPackage(kind).MakePool(**kwargs)
    return pool


def known_pool_kinds() -> list[str]:
    """Every name ``MakePool`` accepts."""
    return [*LOCAL_POOLS, *CLUSTER_TYPES]


def install_command(cluster_type: str) -> str:
    """The pip command that installs a cluster type's engine."""
    return f'pip install "glimpse-pools[{CLUSTER_TYPES[cluster_type].extra}]"'


def extra_installed(cluster_type: str) -> bool:
    """Whether every module a cluster type needs can be imported."""
    return all(importlib.util.find_spec(module) is not None for module in CLUSTER_TYPES[cluster_type].requires)


def embedded_runs_here(cluster_type: str) -> bool:
    """Whether an embedded cluster of this type can start here: its extra and its programs are installed."""
    if not CLUSTER_TYPES[cluster_type].embedded:
        return False
    programs = CLUSTER_TYPES[cluster_type].programs
    found = (shutil.which(p) or any(os.access(f"{d}/{p}", os.X_OK) for d in _SBIN) for p in programs)
    return extra_installed(cluster_type) and all(found)


_SBIN = ("/usr/sbin", "/usr/local/sbin")


def require_extra(cluster_type: str) -> None:
    """Raise an ``ImportError`` with the install command if a cluster type's engine is missing."""
    missing = [m for m in CLUSTER_TYPES[cluster_type].requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"the {cluster_type} cluster type needs {', '.join(missing)}, which is not installed; "
            f"run: {install_command(cluster_type)}",
            name=missing[0],
        )


def _known_cluster_type(cluster_type: str) -> str:
    name = cluster_type.strip().lower() if isinstance(cluster_type, str) else cluster_type
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name not in CLUSTER_TYPES:
        raise ValueError(
            f"unknown cluster type {cluster_type!r}; known types: {', '.join(CLUSTER_TYPES)} "
            "(set GLIMPSE_CLUSTER_TYPE or pass one of these)"
        )
    return name
