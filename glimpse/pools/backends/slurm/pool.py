"""``SlurmPool`` and ``MakePool``: a Dask scheduler in the caller's process, and Dask workers as SLURM
jobs (dask-jobqueue), or as an ``srun`` step inside the allocation the caller runs in."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster, Security

from glimpse.pools.backends.dask.pool import DaskPool, connect
from glimpse.pools.backends.slurm import queue, tls
from glimpse.pools.backends.slurm.allocation import AllocationWorkers, allocation_nodes, in_allocation
from glimpse.pools.backends.slurm.backend import SlurmBackend
from glimpse.pools.backends.slurm.jobs import JobLedger, JobSpec, check_job_script, start_job_cluster
from glimpse.pools.backends.slurm.keeper import JobKeeper, worker_job_script
from glimpse.pools.backends.slurm.lifetime import lifetime_within
from glimpse.pools.backends.slurm.network import scheduler_host
from glimpse.pools.backends.slurm.relay import Relay
from glimpse.pools.cluster.pool import ClusterPool, remade

DIRECTORY_VARIABLE = "GLIMPSE_SLURM_DIRECTORY"
ENVIRONMENT = (DIRECTORY_VARIABLE,)
DEFAULT_WALLTIME = "00:30:00"
DEFAULT_MAX_JOBS = 4
#: How long the queued work may take on the workers adaptive scaling asks for (Dask's default is 5 s).
ADAPT_TARGET = "1s"


class SlurmPool(ClusterPool):
    """A pool whose chunks run on Dask workers that are SLURM jobs; the scheduler runs in this process.

    Args:
        cores: Threads (and ``--cpus-per-task``) of each worker job.
        memory: Memory of each job, as Dask writes it (``"4GB"``); default 2 GB per core.
        walltime: Each job's time limit (SLURM's format: ``"01:00:00"``). A worker stops taking chunks
            ``lifetime_margin`` seconds before it (a tenth of it, 20 s to 5 min, by default); a chunk it
            was running runs again elsewhere, and a new job replaces it.
        queue, account: The partition (``-p``) and account (``-A``) of the jobs.
        jobs: Keep this many worker jobs while the pool is open.
        max_jobs: Adapt instead: submit jobs (up to this many) while a call has work, and end them when
            it has none. The default, without ``jobs``, adapts up to 4 jobs.
        job_extra: More ``#SBATCH`` options (``["--qos=long", "--constraint=avx2"]``).
        address: A scheduler already running (``glimpse-cluster --type slurm LaunchBroker`` on the login
            node) instead of one in this process: the pool keeps ``jobs`` worker jobs for it (default 1),
            replacing each that ends; no adapting. Its TLS certificates go in ``security`` (files every
            node sees).
        security: TLS between the scheduler and the workers: ``True`` (default) makes temporary
            credentials for this pool (other users share the cluster's network); a
            ``distributed.Security`` uses yours; ``False`` turns TLS off.
        interface: The network interface the compute nodes reach this machine on (``"ib0"``); by
            default the one that routes to the partition's first node, or loopback when every node is
            this machine.
        directory: Where job logs and TLS files go: a directory every node sees (a pool makes its own
            subdirectory, removed on close). Default ``$GLIMPSE_SLURM_DIRECTORY``, else ``~/.glimpse/slurm``.
        allocation: Run the workers inside the SLURM allocation this process runs in (``salloc``, or an
            ``sbatch`` script): one ``srun`` step of one worker per task, no new jobs. Default: when
            ``$SLURM_JOB_ID`` is set. Then only ``security``, ``interface`` and ``directory`` apply.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process before its
            first item, as multiprocessing's.

    A pool pickles to its scheduler: a copy unpickled elsewhere is a ``DaskPool`` of the same workers.
    ``close()`` cancels every job the pool submitted.
    """

    def __init__(
        self,
        cores: int = 1,
        memory: str | None = None,
        walltime: str = DEFAULT_WALLTIME,
        queue: str | None = None,
        account: str | None = None,
        jobs: int | None = None,
        max_jobs: int | None = None,
        job_extra: Iterable[str] = (),
        address: str | None = None,
        security: Security | bool = True,
        interface: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        lifetime_margin: float | None = None,
        allocation: bool | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ):
        if jobs is not None and max_jobs is not None:
            raise ValueError("pass jobs= (keep that many worker jobs) or max_jobs= (adapt up to that many), not both")
        for name, value in (("cores", cores), ("jobs", jobs), ("max_jobs", max_jobs)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        if address is not None and max_jobs is not None:
            raise ValueError(
                "with address=, the pool keeps jobs= worker jobs; adapting (max_jobs=) needs its own scheduler"
            )
        work_dir = _pool_directory(directory)
        try:
            self.security = _security(security, work_dir) if address is None else _given_security(security, address)
            if address is None and (in_allocation() if allocation is None else allocation):
                backend = _allocation_backend(self.security, interface, work_dir)
            else:
                spec = JobSpec(
                    cores=cores,
                    memory=memory or f"{2 * cores}GB",
                    walltime=walltime,
                    queue=queue,
                    account=account,
                    job_extra=list(job_extra),
                    lifetime=lifetime_within(_walltime_seconds(walltime), lifetime_margin),
                    directory=work_dir,
                )
                if address is None:
                    backend = _job_backend(spec, self.security, interface, jobs, max_jobs)
                else:
                    backend = _address_backend(address, spec, self.security, jobs or 1)
        except BaseException:
            _remove(work_dir)
            raise
        self.cluster = backend.cluster
        super().__init__(backend, backend.address, initializer=initializer, initargs=initargs)

    @property
    def job_ids(self) -> list[str]:
        """Every SLURM job this pool submitted, oldest first."""
        assert isinstance(self._backend, SlurmBackend)
        return self._backend.ledger.ids()

    def __reduce__(self):
        return remade, (DaskPool, (self.address,), {**self._setup_arguments(), "security": self.security})


def _walltime_seconds(walltime: str) -> int:
    return queue.seconds_of(walltime)  # the module, which the argument ``queue`` hides in SlurmPool


def _job_backend(
    spec: JobSpec, security: Security | None, interface: str | None, jobs: int | None, max_jobs: int | None
) -> SlurmBackend:
    host = scheduler_host(queue.node_addresses(spec.queue)) if interface is None else _interface_address(interface)
    ledger = JobLedger()
    cluster = start_job_cluster(spec, host, security, ledger)
    try:
        client = Client(cluster, security=security, set_as_default=False)
        if jobs is None:
            most = max_jobs or DEFAULT_MAX_JOBS
            cluster.adapt(minimum=0, maximum=most, target_duration=ADAPT_TARGET)
            return SlurmBackend(client, cluster, ledger, spec.directory, capacity=most * spec.cores)
        adaptive = cluster.adapt(minimum=jobs, maximum=jobs)  # adapt, not scale: a job that ends is replaced
        relay = Relay(client, cluster, adaptive, jobs, spec.lifetime)
    except BaseException:
        cluster.close()
        raise
    return SlurmBackend(client, cluster, ledger, spec.directory, on_close=relay.stop)


def _address_backend(address: str, spec: JobSpec, security: Security | None, jobs: int) -> SlurmBackend:
    client = connect(address, "the address argument", security=security)
    try:
        script = worker_job_script(spec, client.scheduler.address, security)
        check_job_script(script, spec.directory)
        ledger = JobLedger()
        keeper = JobKeeper(script, jobs, spec.directory, ledger)
        keeper.keep_in_background()
    except BaseException:
        client.close()
        raise
    return SlurmBackend(client, None, ledger, spec.directory, on_close=keeper.stop)


def _given_security(security: Security | bool, address: str) -> Security | None:
    """The TLS of a scheduler the pool did not start: yours (``True`` cannot make it up)."""
    if isinstance(security, Security):
        return security
    if address.startswith("tls://"):
        raise ValueError(
            f"the scheduler at {address} uses TLS: pass security=distributed.Security(tls_ca_file=..., "
            "tls_client_cert=..., tls_client_key=..., tls_worker_cert=..., tls_worker_key=...) with the files it "
            "was started with, on a filesystem every node sees"
        )
    return None


def _allocation_backend(security: Security | None, interface: str | None, work_dir: Path) -> SlurmBackend:
    host = scheduler_host(allocation_nodes()) if interface is None else _interface_address(interface)
    options: dict[str, Any] = {"n_workers": 0, "host": host, "dashboard_address": f"{host}:0"}
    if security is not None:
        options.update(security=security, protocol="tls://")
    cluster = LocalCluster(**options)
    try:
        client = Client(cluster, security=security, set_as_default=False)
        workers = AllocationWorkers(cluster.scheduler_address, tls.worker_options(security), work_dir / "workers.log")
    except BaseException:
        cluster.close()
        raise
    return SlurmBackend(
        client,
        cluster,
        JobLedger(),
        work_dir,
        on_close=workers.stop,
        step_failure=workers.failure,
        no_jobs=f"the srun step's {workers.tasks} workers have not connected yet (their log: {workers.log_path})",
    )


def _security(security: Security | bool, work_dir: Path) -> Security | None:
    if security is True:
        try:
            return tls.on_files(Security.temporary(), work_dir)
        except ImportError:
            raise ImportError(
                "TLS between the scheduler and the worker jobs needs the cryptography package: "
                'pip install "glimpse-pools[slurm]" (or pass security=False on a network only you use)'
            ) from None
    if security is False or security is None:
        return None
    return security


def _interface_address(interface: str) -> str:
    from distributed.utils import get_ip_interface

    return get_ip_interface(interface)


def _pool_directory(directory: str | os.PathLike[str] | None) -> Path:
    base = Path(directory or os.environ.get(DIRECTORY_VARIABLE) or Path.home() / ".glimpse" / "slurm").expanduser()
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"pool-{uuid.uuid4().hex[:8]}-", dir=base))  # mode 0700
    (path / "logs").mkdir()
    return path


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


#: ``MakePool(...)`` is ``SlurmPool(...)``: the same arguments.
MakePool = SlurmPool
