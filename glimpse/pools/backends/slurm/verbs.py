"""``glimpse-cluster --type slurm VERB``: a Dask scheduler on the login node, and worker jobs that join it."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from distributed import Security

from glimpse.pools.backends.dask import verbs as dask_verbs
from glimpse.pools.backends.dask.pool import ADDRESS_VARIABLE
from glimpse.pools.backends.slurm import queue
from glimpse.pools.backends.slurm.jobs import JobSpec
from glimpse.pools.backends.slurm.keeper import JobKeeper, worker_job_script
from glimpse.pools.backends.slurm.lifetime import lifetime_within
from glimpse.pools.backends.slurm.network import scheduler_host
from glimpse.pools.backends.slurm.pool import DEFAULT_WALLTIME
from glimpse.pools.cluster.verbs import Verb, run_verbs, until_stopped
from glimpse.pools.errors import JobSubmitError

PROG = "glimpse-cluster --type slurm"


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type slurm VERB [options]`` (verbs in ``VERBS``); return the exit code."""
    return run_verbs(PROG, "Run a Dask scheduler and Dask workers as SLURM jobs.", VERBS, argv, _address_option)


_address_option = dask_verbs._address_option


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=dask_verbs.DEFAULT_PORT, help="port to listen on (default 8786)")
    parser.add_argument(
        "--host",
        help="address to listen on (default: this machine's address on the interface that reaches the SLURM "
        "nodes, 127.0.0.1 when every node is this machine); beyond loopback, with --tls-ca-file, --tls-cert and "
        "--tls-key (files on a filesystem the nodes see) or --insecure",
    )
    parser.add_argument("--queue", help="the partition whose nodes the workers run on (default: every partition)")
    parser.add_argument("--insecure", action="store_true", help="listen beyond loopback without TLS")


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=1, help="worker jobs to keep (default 1)")
    parser.add_argument("--cores", type=int, default=1, help="threads and CPUs of each job (default 1)")
    parser.add_argument("--memory", help="memory of each job (default 2GB per core)")
    parser.add_argument(
        "--walltime", default=DEFAULT_WALLTIME, help=f"each job's time limit (default {DEFAULT_WALLTIME})"
    )
    parser.add_argument("--queue", help="partition (-p)")
    parser.add_argument("--account", help="account (-A)")
    parser.add_argument("--job-extra", action="append", default=[], help="one more #SBATCH option (repeatable)")
    parser.add_argument("--directory", help="where job logs go: a directory every node sees (default: cwd)")


def _launch_broker(args: argparse.Namespace) -> int:
    if args.host is None:
        args.host = scheduler_host(queue.node_addresses(args.queue))
    return dask_verbs._launch_broker(args)


def _launch_worker(args: argparse.Namespace) -> int:
    if args.jobs < 1 or args.cores < 1:
        raise ValueError("--jobs and --cores must be at least 1")
    address, _ = dask_verbs._required_address(args)
    directory = Path(args.directory or os.getcwd()).resolve()
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    spec = JobSpec(
        cores=args.cores,
        memory=args.memory or f"{2 * args.cores}GB",
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        job_extra=args.job_extra,
        lifetime=lifetime_within(queue.seconds_of(args.walltime)),
        directory=directory,
    )
    script = worker_job_script(spec, address, _security(args))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".glimpse-jobs-") as private:
        keeper = JobKeeper(script, args.jobs, Path(private))
        print(f"keeping {args.jobs} worker jobs for {address}; Ctrl-C or SIGTERM cancels them", flush=True)
        try:
            return until_stopped(keeper.keep)
        except JobSubmitError as refused:
            raise ValueError(" ".join(str(refused).split())) from None
        finally:
            keeper.stop()


def _worker_jobs(client) -> dict[str, str]:
    """Each worker's SLURM job id (workers outside SLURM have none)."""
    return {w: j for w, j in client.run(_job_id, on_error="ignore").items() if j}


def _job_id() -> str | None:
    """Run on a worker: the SLURM job it runs in."""
    return os.environ.get("SLURM_JOB_ID")


def _ping_workers(args: argparse.Namespace) -> int:
    with dask_verbs._cli_client(args) as client:
        address = client.scheduler.address
        workers = client.scheduler_info(n_workers=-1)["workers"]
        jobs = _worker_jobs(client)
    if not workers:
        print(f"no workers are connected to the Dask scheduler at {address}", file=sys.stderr)
        return 1
    states = queue.job_states(sorted(set(jobs.values())))
    for worker, info in sorted(workers.items()):
        job = jobs.get(worker)
        where = str(states.get(job, f"job {job}")) if job else "not a SLURM job"
        print(f"{worker} threads={info['nthreads']} {where}")
    return 0


def _kill_workers(args: argparse.Namespace) -> int:
    with dask_verbs._cli_client(args) as client:
        jobs = _worker_jobs(client)
        client.retire_workers(close_workers=True)
    queue.cancel(sorted(set(jobs.values())))
    print(f"retired {len(jobs)} workers and cancelled their SLURM jobs {', '.join(sorted(set(jobs.values())))}")
    return 0


def _security(args: argparse.Namespace) -> Security | None:
    if not dask_verbs._tls_arguments(args):
        return None
    return Security(
        tls_ca_file=args.tls_ca_file,
        tls_worker_cert=args.tls_cert,
        tls_worker_key=args.tls_key,
        require_encryption=True,
    )


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb(
        "run a Dask scheduler here (the login node) in the foreground until killed", _launch_broker, _broker_options
    ),
    "LaunchWorker": Verb(
        "submit --jobs worker jobs that join the scheduler, replace each that ends, cancel them all when killed",
        _launch_worker,
        _job_options,
    ),
    "PingWorkers": Verb("print one line per worker: address, threads, and its SLURM job's state", _ping_workers),
    "KillWorkers": Verb("retire every worker of the scheduler and cancel their SLURM jobs (by id)", _kill_workers),
    "RestartWorkers": Verb("restart every worker process of the scheduler", dask_verbs._restart_workers),
}

__all__ = ["ADDRESS_VARIABLE", "PROG", "VERBS", "RunMain"]
