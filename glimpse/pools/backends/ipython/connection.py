"""Where an IPython parallel controller is, and connecting to it with clear errors within seconds.

A :class:`Connection` is what a pool pickles to: a profile, a profile directory, a cluster id,
a connection file, or the connection info of a client passed in. :func:`connect` turns it into
an ``ipyparallel.Client`` with at least one engine, or raises ``ClusterConnectionError`` naming
the file it tried and what to start.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from glimpse.pools.backends.ipython import compat
from glimpse.pools.errors import ClusterConnectionError

log = logging.getLogger(__name__)

#: How long a controller may take to answer a connection request.
CONNECT_SECONDS = 10.0
#: Options of every controller glimpse starts: its hub keeps no record of tasks (by default it holds
#: every task's items and results, up to 1 GiB: 600 MiB more after streaming 600 items of 1 MiB).
CONTROLLER_OPTIONS = ("--nodb",)
#: How long to wait for the first engine of a controller that answered.
ENGINE_SECONDS = 15.0
ENVIRONMENT = {
    "profile": "GLIMPSE_IPYTHON_PROFILE",
    "profile_dir": "GLIMPSE_IPYTHON_PROFILE_DIR",
    "cluster_id": "GLIMPSE_IPYTHON_CLUSTER_ID",
}


@dataclass(frozen=True)
class Connection:
    """How to reach a controller, as ``ipyparallel.Client`` takes it."""

    profile: str | None = None
    profile_dir: str | None = None
    cluster_id: str | None = None
    url_file: str | None = None
    info: dict | None = None

    @classmethod
    def from_environment(cls) -> Connection | None:
        """The connection named by ``GLIMPSE_IPYTHON_PROFILE`` / ``_PROFILE_DIR`` / ``_CLUSTER_ID``, if any."""
        values = {field: os.environ.get(name) or None for field, name in ENVIRONMENT.items()}
        return cls(**values) if any(values.values()) else None

    def resolved_profile_dir(self) -> str:
        """The profile directory: ``profile_dir``, else ``profile_<profile>`` in the IPython directory."""
        if self.profile_dir:
            return os.path.abspath(os.path.expanduser(self.profile_dir))
        # IPython.paths.get_ipython_dir() would create ~/.ipython just by looking.
        ipython_dir = os.path.expanduser(os.environ.get("IPYTHONDIR") or "~/.ipython")
        return os.path.join(ipython_dir, f"profile_{self.profile or 'default'}")

    def client_file(self) -> str | None:
        """The controller's client connection file this connection reads (``None`` for ``info``)."""
        if self.info is not None:
            return None
        if self.url_file:
            return os.path.abspath(os.path.expanduser(self.url_file))
        name = f"ipcontroller-{self.cluster_id}-client.json" if self.cluster_id else "ipcontroller-client.json"
        return os.path.join(self.resolved_profile_dir(), "security", name)

    def engine_file(self) -> str | None:
        """The connection file engines read, beside the client file."""
        client_file = self.client_file()
        return client_file[: -len("client.json")] + "engine.json" if client_file else None

    def cli_options(self) -> list[str]:
        """The ``--profile``/``--profile-dir``/``--cluster-id`` options that name this cluster."""
        options = []
        if self.profile_dir:
            options.append(f"--profile-dir={self.resolved_profile_dir()}")
        elif self.profile:
            options.append(f"--profile={self.profile}")
        if self.cluster_id:
            options.append(f"--cluster-id={self.cluster_id}")
        return options

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """The file this connection reads, and the profile and cluster id it came from."""
        if self.info is not None:
            return f"the controller at {self.info.get('interface', '?')}"
        named = [] if self.url_file or self.profile_dir else [f"profile {self.profile or 'default'!r}"]
        named += [f"cluster id {self.cluster_id!r}"] if self.cluster_id and not self.url_file else []
        return f"connection file {self.client_file()}" + (f" ({', '.join(named)})" if named else "")


def connect(
    connection: Connection,
    connect_seconds: float = CONNECT_SECONDS,
    engine_seconds: float = ENGINE_SECONDS,
    **client_kwargs,
):
    """A client of the controller, once it has an engine (``engine_seconds=0``: do not wait for one)."""
    import ipyparallel

    target = connection.info if connection.info is not None else connection.client_file()
    if isinstance(target, str) and not os.path.exists(target):
        raise unreachable(connection, "the connection file does not exist, so no controller was started there")
    client_kwargs.setdefault("timeout", connect_seconds)
    try:
        client = ipyparallel.Client(target, **client_kwargs)
    except (OSError, TimeoutError) as exc:
        raise unreachable(connection, f"the controller did not answer ({exc}); it may have stopped") from exc
    if engine_seconds > 0:
        try:
            client.wait_for_engines(1, timeout=engine_seconds)
        except (TimeoutError, ipyparallel.error.EngineError) as exc:
            client.close()
            raise unreachable(
                connection,
                f"the controller answered but no engine registered within {engine_seconds:.0f}s",
                engines=True,
            ) from exc
    return client


def connection_of(client) -> Connection:
    """The connection a client was made with, so a pool made from it can pickle to it."""
    return Connection(info=compat.connection_info(client))


def unreachable(connection: Connection, reason: str, engines: bool = False) -> ClusterConnectionError:
    """The error for a controller that does not answer: what was tried and what to start."""
    options = " ".join(connection.cli_options())
    options = f" {options}" if options else ""
    engines_hint = f"start engines with `glimpse-cluster --type ipython LaunchWorker{options}`"
    cluster_hint = (
        f"start a controller with `glimpse-cluster --type ipython LaunchBroker{options}` and {engines_hint}, "
        f"or a whole cluster with `ipcluster start{options}`"
    )
    hint = f"{engines_hint} or `ipcluster engines{options}`" if engines else cluster_hint
    return ClusterConnectionError(f"no IPython parallel cluster at {connection.describe()}: {reason}; {hint}")
