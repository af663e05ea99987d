"""An embedded cluster of a glimpse transport (zmq, gearman): a broker and workers on 127.0.0.1
that one pool starts and ends, through the cluster type's own ``LaunchBroker`` and ``LaunchWorker``.

The pool makes a random cluster key and hands it to both in their environment (never on a
command line, which other users can read). The broker and the worker process each run in a
process group of their own (their task processes join the worker's group), ended by group id;
both also exit when the pool's process is gone, so a crashed program leaves nothing behind.
A zmq broker runs the worker slots itself (``LaunchBroker --nworkers``) and talks to its pool
through a socket pair: one process, and one hop, fewer on the way of every chunk, and no TCP.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from glimpse.pools.security import ClusterKey
from glimpse.pools.security.keys import key_environment
from glimpse.pools.subprocesses import child_environment, signal_group

STARTUP_SECONDS = 60.0
_STOP_GRACE_SECONDS = 5.0


class EmbeddedCluster:
    """A broker process and a worker process with ``nworkers`` slots (or a broker that runs them), started by
    :meth:`start`."""

    def __init__(self, address: str, broker: subprocess.Popen, workers: subprocess.Popen | None, pool_end=None):
        self.address, self.broker, self.workers = address, broker, workers
        #: The pool's end of the socket pair it talks to the broker through, if it asked for one.
        self.pool_end: socket.socket | None = pool_end
        self._processes = [process for process in (workers, broker) if process is not None]

    @classmethod
    def start(
        cls,
        cluster_type: str,
        nworkers: int,
        key: ClusterKey,
        in_broker: bool = False,
        max_chunks: int | None = None,
        broker_signs: bool = True,
    ) -> EmbeddedCluster:
        """Start a ``cluster_type`` broker on a free port of 127.0.0.1 (it writes its address to a pipe
        given as ``--ready-fd``) and ``nworkers`` workers connected to it, sharing ``key``, each task
        process running at most ``max_chunks`` chunks; with ``in_broker``, the broker runs the workers
        itself (``LaunchBroker --nworkers``), and the pool talks to it through a socket pair
        (:attr:`pool_end`; the broker's end is ``--pool-fd``). A broker that does not ``broker_signs``
        (gearmand relays jobs as they are) takes no key options."""
        ready_r, ready_w = os.pipe()
        slots = ["--nworkers", str(nworkers), *(["--maxtasksperchild", str(max_chunks)] if max_chunks else [])]
        broker_args = ["LaunchBroker", "--host", "127.0.0.1", "--port", "0", "--ready-fd", str(ready_w)]
        pool_end = broker_end = None
        passed = [ready_w]
        if in_broker:
            pool_end, broker_end = socket.socketpair()
            broker_args += [*slots, "--pool-fd", str(broker_end.fileno())]
            passed.append(broker_end.fileno())
        try:
            broker = _launch(cluster_type, broker_args, key if broker_signs else None, passed)
        except BaseException:
            if pool_end is not None:
                pool_end.close()
            raise
        finally:
            os.close(ready_w)
            if broker_end is not None:
                broker_end.close()
        try:
            address = _read_address(ready_r, broker, cluster_type)
            workers = None if in_broker else _launch(cluster_type, ["LaunchWorker", "--address", address, *slots], key)
        except BaseException:
            signal_group(broker.pid, signal.SIGKILL)
            broker.wait()
            if pool_end is not None:
                pool_end.close()
            raise
        return cls(address, broker, workers, pool_end)

    def pids(self) -> list[int]:
        """The process ids of the broker and the worker process, if any (the leaders of their groups)."""
        return [process.pid for process in reversed(self._processes)]

    def stop(self) -> None:
        """Ask the broker and the workers to exit (SIGTERM to their process groups)."""
        for process in self._processes:
            signal_group(process.pid, signal.SIGTERM)

    def join(self, grace: float = _STOP_GRACE_SECONDS) -> None:
        """Wait up to ``grace`` seconds for the processes to exit, then kill whatever is left of their groups."""
        deadline = time.monotonic() + grace
        for process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """Kill the broker, the workers and their task processes at once."""
        for process in self._processes:
            signal_group(process.pid, signal.SIGKILL)
            process.wait()
        if self.pool_end is not None:
            self.pool_end.close()


def _launch(
    cluster_type: str, verb_args: list[str], key: ClusterKey | None, passed: list[int] = ()
) -> subprocess.Popen:
    """Run a verb in a session of its own; the first of the ``passed`` descriptors, if any, is its ``--ready-fd``.
    ``key`` is ``None`` for a verb that takes no key."""
    command = [sys.executable, "-m", "glimpse.pools.cli", "--type", cluster_type, *verb_args]
    command += ["--exit-with-parent", "--quiet"]
    if key is not None and not key.secret:
        command.append("--insecure")
    return subprocess.Popen(
        command,
        env={**child_environment(), **(key_environment(key) if key is not None else {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if passed else None,
        pass_fds=tuple(passed),
        start_new_session=True,
    )


def _read_address(ready_fd: int, broker: subprocess.Popen, cluster_type: str) -> str:
    """The address the broker writes to ``ready_fd`` once it listens."""
    text = b""
    deadline = time.monotonic() + STARTUP_SECONDS
    with os.fdopen(ready_fd, "rb") as ready, selectors.DefaultSelector() as selector:
        selector.register(ready, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(ready.fileno(), 4096)
                if not chunk:
                    break
                text += chunk
    address = text.decode().strip()
    if address:
        return address
    code = broker.poll()
    if code is None:
        raise RuntimeError(f"the embedded {cluster_type} broker did not start listening within {STARTUP_SECONDS:g} s")
    raise RuntimeError(
        f"the embedded {cluster_type} broker exited with code {code} before it listened (see its messages above)"
    )


class OwnsEmbeddedCluster:
    """For a backend that may own an :class:`EmbeddedCluster` (``self.cluster``): the cluster ends with it.

    The backend implements :meth:`release` (its own connections) and :meth:`count_workers`.
    """

    cluster: EmbeddedCluster | None = None

    def release(self) -> None:
        """Close what the backend itself holds (connections); called by :meth:`close`."""

    def count_workers(self) -> int:
        """Ask the cluster how many workers can take chunks now."""
        raise NotImplementedError

    def close(self) -> None:
        self.release()
        if self.cluster is not None:
            self.cluster.stop()

    def terminate(self) -> None:
        self.close()
        if self.cluster is not None:
            self.cluster.kill()

    def join(self) -> None:
        if self.cluster is not None:
            self.cluster.join()

    def wait_for_workers(self, count: int, timeout: float) -> int:
        """Wait until at least ``count`` workers can take chunks (or ``timeout`` passes); return how many can."""
        deadline = time.monotonic() + timeout
        while True:
            counted = self.count_workers()
            if counted >= count or time.monotonic() >= deadline:
                return counted
            time.sleep(0.1)
