"""A real SLURM cluster for tests, on the simulated machines of tests/multihost.py.

:func:`start_slurm_lab` makes a controller host ``ctl`` (munged and slurmctld) and node hosts
``node1..nodeN`` (munged and slurmd), all sharing one munge key, plus a munged of the test process's
own, so the test process (the caller, on the bridge) runs ``sbatch``, ``squeue``, ``scancel`` and
``srun`` against the cluster with :attr:`SlurmLab.env`. Every daemon runs inside a host, so
:meth:`SlurmLab.close` ends them all, job steps included, by ending the hosts.

Needs what the hosts need (root, namespaces) and Debian's SLURM 22.05:
``apt-get install slurmctld slurmd slurm-client munge``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import multihost
from tests.engines._processes import start_process, stop_process_group
from tests.multihost import HOST_HOME, Host, Hosts

_READY_SECONDS = 60.0
_DRAIN_SECONDS = 20.0
_PROGRAMS = ("slurmctld", "slurmd", "sbatch", "munged")
_INSTALL = "apt-get install slurmctld slurmd slurm-client munge"
#: Where the caller's munged puts its socket: munged wants every directory above it searchable by
#: all, which a pytest temporary directory (0700) is not.
_SOCKET_PARENT = "/run"
_SOCKET_PREFIX = "glimpse-slurm-"
_HOST_SOCKET = f"{HOST_HOME}/munge/munge.socket"


def missing_requirement() -> str | None:
    """Why a SLURM lab cannot run here (``None``: it can)."""
    missing = multihost.missing_requirement()
    if missing:
        return missing
    absent = [program for program in _PROGRAMS if shutil.which(program) is None]
    if absent:
        return f"needs {', '.join(absent)} ({_INSTALL})"
    return None


@dataclass
class SlurmLab:
    """A running SLURM cluster; the caller uses it through :meth:`run` (or :attr:`env`)."""

    hosts: Hosts
    controller: Host
    nodes: list[Host]
    #: The caller's slurm.conf (the hosts' copy, with the caller's munged socket).
    conf: Path
    #: What a process of the caller needs in its environment to use this cluster.
    env: dict[str, str]
    #: A directory every host sees at the same path (job logs, TLS files); a host's HOME is its own.
    shared: Path
    _munged: subprocess.Popen | None = None
    _socket_dir: Path | None = None
    _closed: bool = field(default=False, repr=False)

    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the SLURM client command ``args`` from the caller, in :attr:`shared`; its output, text."""
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            cwd=self.shared,
            start_new_session=True,
        )

    def jobs(self) -> list[tuple[str, str, str]]:
        """``(job id, state, reason)`` of every job in the queue, as ``squeue`` prints them (``%i %T %r``)."""
        result = self.run(["squeue", "-h", "-o", "%i|%T|%r"], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
        rows = [line.split("|", 2) for line in result.stdout.splitlines() if line.strip()]
        return [(job, state, reason) for job, state, reason in rows]

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the queue is empty; an AssertionError listing the jobs left otherwise."""
        deadline = time.monotonic() + timeout
        while (jobs := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not jobs, f"jobs still queued after {timeout} s: {jobs}"

    def close(self) -> None:
        """Cancel every job, wait (bounded) for the queue to empty, end the caller's munged and every
        host (with its daemons and job steps). Idempotent; safe after a failed start."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._munged is not None and self._munged.poll() is None:
                self._cancel_all()
        finally:
            if self._munged is not None:
                stop_process_group(self._munged, grace=3.0)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._terminate_daemons()
            self.hosts.close()

    def _terminate_daemons(self) -> None:
        """SIGTERM every daemon's process group at once, so that they wind down together while
        :meth:`Hosts.close` waits for each in turn."""
        for host in self.hosts.hosts:
            for process in host.processes:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _cancel_all(self) -> None:
        """scancel each job by id (never by user) and wait for the queue to empty, partitioned hosts
        healed first so that every slurmd hears of it; a dead controller only makes this give up,
        since ending the hosts ends every job step anyway."""
        for host in self.hosts.hosts:
            self.hosts.heal(host)
        deadline = time.monotonic() + _DRAIN_SECONDS
        try:
            ids = [job for job, _, _ in self.jobs()]
            if ids:
                self.run(["scancel", *ids], timeout=_DRAIN_SECONDS)
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass


def start_slurm_lab(base: Path, nodes: int = 1, cpus: int = 2, memory_mb: int = 4000) -> SlurmLab:
    """A SLURM cluster under ``base``: a controller host ``ctl`` and ``nodes`` node hosts ``node1..nodeN``,
    each with ``CPUs=cpus RealMemory=memory_mb``, in partitions ``debug`` (the default, MaxTime=60:00,
    jobs on the least loaded node first), ``batch`` (the same, the partition docs/slurm.md names) and
    ``short`` (MaxTime=1), plus a munged of the caller's own.
    Returns once ``sinfo`` shows every node idle; a RuntimeError with the daemons' logs if that takes more
    than a minute.

    ``cpus`` and ``memory_mb`` must not exceed the machine's (slurmd drains a node that has less than
    slurm.conf says). One lab at a time per process, and not alongside another :class:`Hosts`: the
    harness names its bridge after the process.
    """
    base.mkdir(parents=True, exist_ok=True)
    hosts = Hosts(base)
    try:
        controller = hosts.add("ctl")
        node_hosts = [hosts.add(f"node{number}") for number in range(1, nodes + 1)]
    except BaseException:
        hosts.close()
        raise
    shared = base / "shared"
    shared.mkdir(exist_ok=True)
    shared.chmod(0o755)
    caller_dir = base / "caller"
    caller_dir.mkdir(exist_ok=True)
    lab = SlurmLab(
        hosts=hosts,
        controller=controller,
        nodes=node_hosts,
        conf=caller_dir / "slurm.conf",
        env={"SLURM_CONF": str(caller_dir / "slurm.conf")},
        shared=shared,
    )
    try:
        _start(lab, caller_dir, cpus, memory_mb)
    except BaseException:
        lab.close()
        raise
    return lab


def cgroup_mounts() -> str:
    """The shell command that gives a node host the cgroup filesystem slurmd needs before it starts.

    slurmd 22.05 initialises its cgroup plugin even with proctrack/linuxproc and task/none (it has no
    ``CgroupPlugin=disabled``), and a host's /sys (remounted by ``ip netns exec``) has an empty
    /sys/fs/cgroup. On a machine with cgroup v1 hierarchies (a freezer one) the host gets a tmpfs with
    the freezer and name=systemd hierarchies, the two slurmd's autodetection looks at: a cgroup2 mount
    there would be refused as "Hybrid mode", since the host's processes still list v1 hierarchies.
    On a pure cgroup2 machine the host gets cgroup2.
    """
    if Path("/sys/fs/cgroup/freezer").is_dir():
        return (
            "mount -t tmpfs none /sys/fs/cgroup && mkdir /sys/fs/cgroup/freezer /sys/fs/cgroup/systemd"
            " && mount -t cgroup -o freezer none /sys/fs/cgroup/freezer"
            " && mount -t cgroup -o none,name=systemd none /sys/fs/cgroup/systemd"
        )
    return "mount -t cgroup2 none /sys/fs/cgroup"


def _start(lab: SlurmLab, caller_dir: Path, cpus: int, memory_mb: int) -> None:
    """Keys, configuration and daemons, in the order SLURM needs them; returns once every node is idle."""
    deadline = time.monotonic() + _READY_SECONDS
    key = os.urandom(1024)
    conf = _slurm_conf(lab.controller, lab.nodes, cpus, memory_mb)
    host_env = {"SLURM_CONF": f"{HOST_HOME}/slurm.conf"}
    logs = lab.hosts.base_dir
    for host in [lab.controller, *lab.nodes]:
        host.put("munge/munge.key", key, 0o400)
        (host.home / "munge").chmod(0o755)
        host.put("slurm.conf", conf, 0o644)
        for directory in ("state", "spool"):
            (host.home / directory).mkdir()
        host.start(_munged(HOST_HOME, _HOST_SOCKET), logs / f"{host.name}-munged.out")
    lab._socket_dir = _socket_dir()
    caller_socket = lab._socket_dir / "munge.socket"
    (caller_dir / "munge").mkdir(mode=0o755)
    (caller_dir / "munge" / "munge.key").write_bytes(key)
    (caller_dir / "munge" / "munge.key").chmod(0o400)
    lab.conf.write_text(conf.replace(f"AuthInfo=socket={_HOST_SOCKET}", f"AuthInfo=socket={caller_socket}"))
    lab._munged = start_process(_munged(str(caller_dir), str(caller_socket)), logs / "caller-munged.out")
    sockets = [host.home / "munge" / "munge.socket" for host in [lab.controller, *lab.nodes]] + [caller_socket]
    _wait(lambda: all(socket.exists() for socket in sockets), deadline, lab, "every munged listens")
    for node in lab.nodes:
        mounted = node.run(["sh", "-c", cgroup_mounts()])
        if mounted.returncode != 0:
            raise RuntimeError(f"cgroup mounts on {node.name} failed: {mounted.stderr.strip()}")
    lab.controller.start(["slurmctld", "-D", "-i"], logs / "ctl-slurmctld.out", env=host_env)
    _wait(lambda: lab.run(["scontrol", "ping"], timeout=15).returncode == 0, deadline, lab, "slurmctld answers")
    for node in lab.nodes:
        node.start(["slurmd", "-D"], logs / f"{node.name}-slurmd.out", env=host_env)
    _wait(lambda: _every_node_idle(lab), deadline, lab, "every node is idle")


def _slurm_conf(controller: Host, nodes: list[Host], cpus: int, memory_mb: int) -> str:
    names = ",".join(node.name for node in nodes)
    node_lines = "".join(
        f"NodeName={node.name} NodeAddr={node.address} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
        for node in nodes
    )
    return f"""ClusterName=lab
SlurmctldHost=ctl({controller.address})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={_HOST_SOCKET}
StateSaveLocation={HOST_HOME}/state
SlurmdSpoolDir={HOST_HOME}/spool
SlurmctldPidFile={HOST_HOME}/slurmctld.pid
SlurmdPidFile={HOST_HOME}/slurmd.pid
SlurmctldLogFile={HOST_HOME}/slurmctld.log
SlurmdLogFile={HOST_HOME}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
KillWait=5
MinJobAge=60
{node_lines}PartitionName=debug Nodes={names} Default=YES MaxTime=60:00 LLN=YES State=UP
PartitionName=batch Nodes={names} MaxTime=60:00 LLN=YES State=UP
PartitionName=short Nodes={names} MaxTime=1 State=UP
"""


def _munged(directory: str, socket: str) -> list[str]:
    return [
        "munged",
        "-F",
        f"--socket={socket}",
        f"--key-file={directory}/munge/munge.key",
        f"--pid-file={directory}/munged.pid",
        f"--seed-file={directory}/munged.seed",
        f"--log-file={directory}/munged.log",
    ]


def _socket_dir() -> Path:
    """A fresh directory for the caller's munge socket (0755, as munged wants); those of test sessions
    that are gone are deleted first."""
    for stale in Path(_SOCKET_PARENT).glob(f"{_SOCKET_PREFIX}*"):
        owner = stale.name[len(_SOCKET_PREFIX) :].split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{_SOCKET_PREFIX}{os.getpid()}-", dir=_SOCKET_PARENT))
    directory.chmod(0o755)
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _every_node_idle(lab: SlurmLab) -> bool:
    """Whether every node is idle; a node that SLURM set aside (drained, with a reason such as
    "Low socket*core*thread count") ends the wait at once."""
    result = lab.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N|%T|%E"], timeout=15)
    if result.returncode != 0:
        return False
    nodes = [line.split("|", 2) for line in result.stdout.splitlines() if line.strip()]
    set_aside = [f"{name} {state}: {reason}" for name, state, reason in nodes if reason != "none"]
    if set_aside:
        raise _NotStarting(f"SLURM set nodes aside: {'; '.join(set_aside)}")
    return len(nodes) == len(lab.nodes) and all(state == "idle" for _, state, _ in nodes)


class _NotStarting(Exception):
    """The lab will not start, whatever the wait."""


def _wait(ready, deadline: float, lab: SlurmLab, what: str) -> None:
    why = f"not true within {_READY_SECONDS} s that {what}"
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except subprocess.TimeoutExpired:
            pass
        except _NotStarting as error:
            why = str(error)
            break
        time.sleep(0.2)
    raise RuntimeError(f"the SLURM lab did not start: {why}\n{_report(lab)}")


def _report(lab: SlurmLab) -> str:
    """``sinfo -R`` (why nodes are down) and the tail of every daemon's output."""
    parts = []
    try:
        reasons = lab.run(["sinfo", "-R"], timeout=10)
        parts.append(f"--- sinfo -R\n{reasons.stdout}{reasons.stderr}")
    except subprocess.TimeoutExpired:
        parts.append("--- sinfo -R: timed out")
    for log in sorted(lab.hosts.base_dir.glob("*.out")):
        parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)
