"""Several machines on one machine, for tests of clusters that span hosts.

A :class:`Host` is a set of Linux namespaces: a network namespace with its own address on a bridge
that exists only on this machine, and PID, UTS (its own hostname) and mount namespaces: its own
``HOME`` and ``TMPDIR`` (under :data:`HOST_ROOT`, where each host mounts a directory of its own) and
its own ``/etc/hosts`` naming every host. Everything else (the Python installation, the checkout
under test, wherever they are) is the machine's, as an admin's identical installs would be. The test process
itself stays in the root namespaces and has an address on the bridge too: it is a host of its own,
the caller's. :meth:`Hosts.partition` sets a host's link down (its processes live on, but no packet
crosses, and no connection is refused or reset: a pulled cable) and :meth:`Hosts.heal` sets it up.

Every process a host runs is started in its own process group and ended by that group's id; each
host's namespaces hang on one holder process (the init of its PID namespace, which reaps the host's
orphans: when it ends, the kernel ends everything in the host). :meth:`Hosts.close` ends them all and deletes every
namespace, veth and bridge; namespaces that a killed test session left behind are deleted by the
next one (their names carry the session's pid).

Needs root, ``ip`` (iproute2), ``unshare`` and ``nsenter`` (util-linux).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.engines._processes import start_process, stop_process_group

#: Where each host mounts its own directory; what its processes see as their HOME and TMPDIR.
HOST_ROOT = "/run/glimpse-host"
HOST_HOME = f"{HOST_ROOT}/home"
HOST_TMP = f"{HOST_ROOT}/tmp"
_PREFIX = "glimpse-"
#: The host's init (its PID namespace's first process): it reaps every orphan of the host, so a
#: process group that was ended leaves no zombie behind that would look alive to killpg(pgid, 0).
_INIT = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""
_INIT_NAME = "glimpse-host-init"
_SETTLE_SECONDS = 10.0


def missing_requirement() -> str | None:
    """Why hosts cannot be made here (``None``: they can)."""
    if os.geteuid() != 0:
        return "needs root (network, PID, UTS and mount namespaces); CI runs as root"
    for program in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(program) is None:
            return f"needs `{program}` (apt-get install iproute2 util-linux)"
    return None


@dataclass
class Host:
    """One simulated machine. ``address`` is its address on the bridge; ``root`` the directory
    outside that is its :data:`HOST_ROOT` inside (so ``root / "home"`` is its HOME)."""

    name: str
    address: str
    netns: str
    root: Path
    bridge_side: str
    holder: subprocess.Popen | None = None
    entry_pid: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def home(self) -> Path:
        """The host's HOME, seen from outside (write files here as an admin would copy them)."""
        return self.root / "home"

    def command(self, args: list[str]) -> list[str]:
        """``args`` as a command that runs inside this host, with its HOME and TMPDIR and none of the
        test process's environment (a machine of its own); ``env`` of :meth:`start` adds to it."""
        return [
            "nsenter",
            f"--target={self.entry_pid}",
            "--net",
            "--pid",
            "--uts",
            "--mount",
            f"--wd={os.getcwd()}",
            "--",
            "env",
            "-i",
            f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG=C.UTF-8",
            f"HOME={HOST_HOME}",
            f"TMPDIR={HOST_TMP}",
            f"XDG_CONFIG_HOME={HOST_HOME}/.config",
            f"HOSTNAME={self.name}",
            *args,
        ]

    def start(self, args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
        """Start ``args`` inside the host, in a process group of its own, output to ``log_path``."""
        process = start_process(self.command(_with_env(args, env)), log_path, cwd=str(Path.cwd()))
        self.processes.append(process)
        return process

    def run(self, args: list[str], timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``args`` inside the host to its end; its output, text."""
        return subprocess.run(
            self.command(_with_env(args, env)), capture_output=True, text=True, timeout=timeout, start_new_session=True
        )

    def put(self, relative: str, data: bytes | str, mode: int = 0o600) -> str:
        """Write a file into the host's HOME (as an admin copies a key); its path as the host sees it."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        path.chmod(mode)
        return f"{HOST_HOME}/{relative}"

    def stop(self, process: subprocess.Popen, grace: float = 5.0) -> None:
        """End one process this host started (its whole group)."""
        stop_process_group(process, grace)
        if process in self.processes:
            self.processes.remove(process)


class Hosts:
    """A bridge with hosts on it; the test process is on it too, at :attr:`caller_address`."""

    def __init__(self, base_dir: Path):
        missing = missing_requirement()
        if missing:
            raise RuntimeError(missing)
        _delete_stale()
        os.makedirs(HOST_ROOT, exist_ok=True)
        self.base_dir = base_dir
        self.tag = str(os.getpid())
        self.bridge = f"gpb{self.tag}"
        pid = os.getpid()
        self.subnet = f"10.{100 + pid % 100}.{(pid // 100) % 250 + 1}"
        self.caller_address = f"{self.subnet}.254"
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.caller_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        """A new host named ``name`` (its hostname too), up and reachable from every other."""
        number = len(self.hosts) + 1
        host = Host(
            name=name,
            address=f"{self.subnet}.{number}",
            netns=f"{_PREFIX}{self.tag}-{name}",
            root=self.base_dir / name,
            bridge_side=f"gp{self.tag}b{number}",
        )
        self.hosts.append(host)
        inside = f"gp{self.tag}h{number}"
        host.home.mkdir(parents=True)
        (host.root / "tmp").mkdir()
        _ip("netns", "add", host.netns)
        _ip("link", "add", inside, "type", "veth", "peer", "name", host.bridge_side)
        _ip("link", "set", host.bridge_side, "master", self.bridge, "up")
        _ip("link", "set", inside, "netns", host.netns)
        in_ns = ("-n", host.netns)
        _ip(*in_ns, "link", "set", "lo", "up")
        _ip(*in_ns, "link", "set", inside, "name", "eth0")
        _ip(*in_ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip(*in_ns, "link", "set", "eth0", "up")
        _ip(*in_ns, "route", "add", "default", "via", self.caller_address)
        self._write_hosts_files()
        host.holder, host.entry_pid = self._start_holder(host)
        return host

    def partition(self, host: Host) -> None:
        """Make ``host`` silent: its link goes down, its processes live on."""
        _ip("link", "set", host.bridge_side, "down")

    def heal(self, host: Host) -> None:
        """Bring ``host``'s link back up."""
        _ip("link", "set", host.bridge_side, "up")

    def close(self) -> None:
        """End every process of every host and delete every namespace, veth and the bridge."""
        for host in self.hosts:
            for process in list(host.processes):
                host.stop(process, grace=3.0)
            if host.holder is not None:
                # The holder's sleep is its PID namespace's init, which ignores SIGTERM; ending it ends the host.
                _kill_group(host.holder)
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.bridge_side, check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()

    def _write_hosts_files(self) -> None:
        lines = ["127.0.0.1 localhost", f"{self.caller_address} caller"]
        lines += [f"{host.address} {host.name}" for host in self.hosts]
        for host in self.hosts:
            (host.root / ".hosts").write_text("\n".join(lines) + "\n")

    def _start_holder(self, host: Host) -> tuple[subprocess.Popen, int]:
        """The init of the host's PID namespace, inside its network namespace, with its hostname and mounts."""
        setup = (
            f"hostname {host.name} && mount --bind {host.root} {HOST_ROOT} "
            f"&& mount --bind {HOST_ROOT}/.hosts /etc/hosts "
            f"&& exec {sys.executable} -c '{_INIT}' {_INIT_NAME}"
        )
        holder = start_process(
            ["ip", "netns", "exec", host.netns, "unshare", "--pid", "--uts", "--mount", "--fork", "--mount-proc"]
            + ["--propagation", "private", "sh", "-c", setup],
            self.base_dir / f"{host.name}-holder.log",
        )
        # nsenter enters the namespaces of a process inside them: the child that unshare forked.
        deadline = time.monotonic() + _SETTLE_SECONDS
        while time.monotonic() < deadline and holder.poll() is None:
            inside = _init_of(holder.pid)
            if inside is not None:
                return holder, inside
            time.sleep(0.05)
        stop_process_group(holder, grace=1.0)
        log = (self.base_dir / f"{host.name}-holder.log").read_text(errors="replace")
        raise RuntimeError(f"host {host.name} did not start: {log}")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
    stop_process_group(process, grace=1.0)


def _with_env(args: list[str], env: dict | None) -> list[str]:
    return [f"{name}={value}" for name, value in (env or {}).items()] + list(args)


def _init_of(pid: int) -> int | None:
    """The pid of the host's init under ``pid`` (unshare's forked child, after its exec)."""
    import psutil

    try:
        for child in psutil.Process(pid).children(recursive=True):
            if child.cmdline()[-1:] == [_INIT_NAME]:
                return child.pid
    except psutil.Error:
        return None
    return None


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _delete_stale() -> None:
    """Delete the namespaces, veths and bridges of test sessions whose process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({_PREFIX}(\d+)-\S+)", listing, re.MULTILINE):
        if not _alive(int(name[1])):
            _ip("netns", "del", name[0], check=False)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for link, owner in re.findall(r"^\d+: (gpb?(\d+)(?:[bh]\d+)?)[@:]", links, re.MULTILINE):
        if not _alive(int(owner)):
            _ip("link", "del", link, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
