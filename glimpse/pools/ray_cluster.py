"""Pools on Ray: ``MakePool`` finds or starts Ray, ``RunMain`` runs ``glimpse-cluster --type ray``.

Where a pool runs, first that applies: an ``address``; ``$RAY_ADDRESS`` (``auto``,
``host:port``, ``ray://host:port``); a Ray already initialized in this process (used as it is);
else an embedded Ray on 127.0.0.1 that the pool starts and shuts down on ``close()``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from glimpse.pools.registry import require_extra

require_extra("ray")

import ray  # noqa: E402
import ray._raylet  # noqa: E402

from glimpse.pools.backends.pool import Pool  # noqa: E402
from glimpse.pools.backends.ray import RayBackend  # noqa: E402
from glimpse.pools.cluster_cli import Verb, run_verbs  # noqa: E402
from glimpse.pools.errors import ClusterConnectionError  # noqa: E402

ADDRESS_VARIABLE = "RAY_ADDRESS"
DEFAULT_PORT = 6379
#: How long an address may take to accept a TCP connection before it counts as not answering.
PROBE_SECONDS = 5.0
#: How long a Ray head node may take to answer once the connection is open.
GCS_SECONDS = 15.0
PROG = "glimpse-cluster --type ray"


def MakePool(address: str | None = None, **init_kwargs) -> RayPool:
    """Return a :class:`RayPool`; see it for the arguments."""
    return RayPool(address, **init_kwargs)


class RayPool(Pool):
    """A pool whose chunks run as Ray tasks.

    Args:
        address: A Ray cluster's address: ``host:port`` of its head node, ``ray://host:port``
            (Ray Client) or ``auto`` (the cluster ``ray start`` last started on this machine).
            Defaults to ``$RAY_ADDRESS``, then to the Ray this process already initialized; without
            any, the pool starts Ray here (one CPU per core, on 127.0.0.1, no dashboard, usage
            stats off) and shuts it down on :meth:`close`. An address never starts a new Ray.
        **init_kwargs: Passed to ``ray.init`` (``runtime_env``, ``namespace``, ``_temp_dir``, ...).

    Workers must be able to import ``glimpse.pools`` (install ``glimpse-pools`` on every node).
    A pool pickles to its cluster's address: a copy unpickled in a Ray task or in another
    process uses the Ray connected there, and never shuts down a Ray it did not start.
    """

    def __init__(self, address: str | None = None, **init_kwargs):
        self.address, owns_ray = _join_ray(address, init_kwargs)
        super().__init__(RayBackend(owns_ray=owns_ray))

    def __reduce__(self):
        return (RayPool, (self.address,))

    def __repr__(self) -> str:
        return f"<RayPool {self.address} {self._state}>"


def RunMain(argv: Sequence[str] | None = None) -> int:
    """Run ``glimpse-cluster --type ray VERB [options]``; return the exit code."""
    return run_verbs(PROG, "Run and inspect a Ray cluster.", VERBS, argv, _common_options)


def _join_ray(address: str | None, init_kwargs: dict) -> tuple[str, bool]:
    """Connect this process to Ray as the module docstring says; return its address and whether
    the pool owns the connection (and so shuts it down)."""
    address, source = _resolve_address(address)
    if ray.is_initialized():
        current = _current_address(address)
        if address is not None and not _same_cluster(address, current):
            raise ClusterConnectionError(
                f"this process is already connected to the Ray cluster at {current}, so it cannot connect "
                f"to {address} (from {source}): Ray allows one cluster per process. Call ray.shutdown() "
                "first, or make the pool without an address to use the connected cluster."
            )
        return current, False
    if address is None:
        _start_embedded(init_kwargs)
    else:
        _connect(address, source, init_kwargs)
    return _current_address(address), True


def _resolve_address(address: str | None) -> tuple[str | None, str]:
    """The address to connect to and where it came from (``None``: no address was given)."""
    if address:
        return address, "the address argument"
    if os.environ.get(ADDRESS_VARIABLE):
        return os.environ[ADDRESS_VARIABLE], f"${ADDRESS_VARIABLE}"
    return None, ""


def _start_embedded(init_kwargs: dict) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = {
        "num_cpus": os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": _modest_object_store(),
    }
    with _loopback_kept():
        ray.init(address="local", **{**options, **init_kwargs})


def _connect(address: str, source: str, init_kwargs: dict) -> None:
    # `auto` is the cluster `ray start` last started on this machine; ray.init finds its token itself.
    local = address == "auto" or _on_this_machine(_host_port(address)[0])
    if address != "auto":
        if local:
            _use_local_token()
        _probe(address, source)
    try:
        with _loopback_kept() if local else contextlib.nullcontext():
            ray.init(address=address, **init_kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ray.exceptions.RayError) as exc:
        raise ClusterConnectionError(
            f"could not connect to the Ray cluster at {address} (from {source}): {type(exc).__name__}: {exc}. "
            "If the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token in "
            "~/.ray/auth_token or $RAY_AUTH_TOKEN."
        ) from None


def _probe(address: str, source: str) -> None:
    """Check that a Ray head node answers at ``address`` (``ray.init`` can hang for minutes on an
    address that accepts connections but is not one)."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        raise ClusterConnectionError(
            f"no Ray cluster answered at {address} (from {source}) within {PROBE_SECONDS:g} s: {exc}. "
            f"Start one with `{PROG} LaunchBroker` (or `ray start --head`), or fix the address."
        ) from None
    if "://" not in address:
        _check_gcs(address, source)


def _check_gcs(address: str, source: str) -> None:
    answer: list[BaseException | None] = []

    def ask() -> None:
        try:
            client = ray._raylet.GcsClient(address=address)
            client.internal_kv_get(b"glimpse-probe", namespace=None, timeout=GCS_SECONDS)
            answer.append(None)
        except BaseException as exc:
            answer.append(exc)

    # A daemon thread, because a GcsClient that gets no answer blocks for about 40 s.
    thread = threading.Thread(target=ask, name="glimpse-ray-probe", daemon=True)
    thread.start()
    thread.join(GCS_SECONDS)
    if not answer:
        raise ClusterConnectionError(
            f"something accepts connections at {address} (from {source}), but no Ray head node answered there "
            f"within {GCS_SECONDS:g} s; give the port of the head node's GCS (`ray start --head --port`)."
        )
    if answer[0] is not None:
        raise ClusterConnectionError(
            f"the Ray cluster at {address} (from {source}) refused this client: {type(answer[0]).__name__}: {answer[0]}"
        )


def _host_port(address: str) -> tuple[str, int]:
    location = address.split("://", 1)[-1].rstrip("/")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is HOST:PORT, ray://HOST:PORT or auto, not {address!r}")
    return host.strip("[]"), int(port)


def _current_address(fallback: str | None) -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        # Ray Client connections have no GCS address of their own.
        return fallback or "auto"


def _same_cluster(wanted: str, current: str) -> bool:
    if wanted == "auto" or "://" in wanted or "://" in current:
        return True
    (wanted_host, wanted_port), (current_host, current_port) = _host_port(wanted), _host_port(current)
    if wanted_port != current_port:
        return False
    return wanted_host == current_host or (_on_this_machine(wanted_host) and _on_this_machine(current_host))


def _on_this_machine(host: str) -> bool:
    """Whether ``host`` is one of this machine's addresses (only those can be bound here)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        if ipaddress.ip_address(sockaddr[0]).is_loopback:
            return True
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((sockaddr[0], 0))
                return True
            except OSError:
                continue
    return False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _loopback_kept():
    """Keep 127.0.0.1 as Ray's node address while starting or connecting to Ray here.

    On Linux Ray replaces 127.0.0.1 with the machine's network address, both as the node
    address of a new Ray and in an address to connect to (ray-project/ray#26293, #59110),
    so its servers would listen on every interface and a head on 127.0.0.1 could not be
    reached. In its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) it keeps it.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _use_local_token() -> None:
    """Send the token of Ray's default authentication to a cluster on this machine.

    ``ray start --head`` turns token authentication on when this machine has a token
    (``~/.ray/auth_token``, ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH``), but
    ``ray.init(address=...)`` sends it only with ``RAY_AUTH_MODE=token``. For a cluster on
    this machine do what ``ray.init()`` does for a local cluster; elsewhere the user decides.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # a Ray without token authentication
        return
    if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        _enable_token_auth()


def _modest_object_store() -> int:
    """A tenth of the memory, between 256 MiB and 2 GiB (Ray's default takes 30%)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 * 2**30
    return max(256 * 2**20, min(2 * 2**30, memory // 10))


# -- RunMain's verbs ----------------------------------------------------------------------------------

# `ray start` replaces 127.0.0.1 in --address with the machine's network address
# (ray-project/ray#59110): run it with that replacement off so a node can join a head on loopback.
_RAY_START_KEEPING_LOOPBACK = (
    "import sys, ray._private.services as services; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=f"the head node's address, HOST:PORT (default: ${ADDRESS_VARIABLE})")


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="the node's address to listen on (default 127.0.0.1)")
    parser.add_argument("--num-cpus", type=int, help="CPUs the head node offers to tasks (default: its cores)")
    parser.add_argument("--temp-dir", help="where Ray keeps its session files (default /tmp/ray)")


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=int, help="CPUs this node offers to tasks (default: its cores)")
    parser.add_argument("--temp-dir", help="where Ray keeps its session files (default /tmp/ray)")


def _launch_broker(args: argparse.Namespace) -> int:
    command = [f"--node-ip-address={args.host}", f"--port={args.port}", "--include-dashboard=false"]
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if _is_loopback(args.host):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # see _loopback_kept
    return _run_ray_start(["--head", *command, *_node_options(args)], env)


def _launch_worker(args: argparse.Namespace) -> int:
    address, source = _required_address(args)
    if _on_this_machine(_host_port(address)[0]):
        _use_local_token()
    _probe(address, source)
    command = [f"--address={address}", *_node_options(args)]
    return _run_ray_start(command, {"RAY_USAGE_STATS_ENABLED": "0"}, keep_loopback=True)


def _ping_workers(args: argparse.Namespace) -> int:
    address, source = _required_address(args)
    _connect(address, source, {"log_to_driver": False})
    try:
        nodes = ray.nodes()
    finally:
        ray.shutdown()
    for node in sorted(nodes, key=lambda n: (not n.get("Alive"), n["NodeManagerAddress"], n["NodeManagerPort"])):
        cpus = node.get("Resources", {}).get("CPU", 0)
        role = " head" if node.get("Resources", {}).get("node:__internal_head__") else ""
        state = "alive" if node.get("Alive") else "dead"
        print(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']} cpus={cpus:g} {state}{role}")
    return 0 if any(node.get("Alive") for node in nodes) else 1


def _kill_workers(args: argparse.Namespace) -> int:
    return _cannot(
        "KillWorkers",
        "Ray has no API to stop a node from a client. Stop a node by ending its `ray start` process "
        f"(the `{PROG} LaunchWorker` you started) on its machine; Ray replaces crashed worker processes itself.",
    )


def _restart_workers(args: argparse.Namespace) -> int:
    return _cannot(
        "RestartWorkers",
        "Ray has no API to restart a node's worker processes from a client; it starts fresh ones itself "
        "when one dies. To restart a node, end its `ray start` process and run LaunchWorker again.",
    )


VERBS: dict[str, Verb] = {
    "LaunchBroker": Verb("run a Ray head node in the foreground until killed", _launch_broker, _broker_options),
    "LaunchWorker": Verb("run a Ray node that joins the cluster, in the foreground", _launch_worker, _worker_options),
    "PingWorkers": Verb("print one line per node: address, CPUs, alive or dead", _ping_workers),
    "KillWorkers": Verb("not possible with Ray (says why and exits with code 1)", _kill_workers),
    "RestartWorkers": Verb("not possible with Ray (says why and exits with code 1)", _restart_workers),
}


def _node_options(args: argparse.Namespace) -> list[str]:
    options = [f"--temp-dir={args.temp_dir}"] if args.temp_dir else []
    if args.num_cpus is None:
        return options
    if args.num_cpus < 1:
        raise ValueError(f"--num-cpus must be at least 1, not {args.num_cpus}")
    return [*options, f"--num-cpus={args.num_cpus}"]


def _required_address(args: argparse.Namespace) -> tuple[str, str]:
    if args.address:
        return args.address, "--address"
    if os.environ.get(ADDRESS_VARIABLE):
        return os.environ[ADDRESS_VARIABLE], f"${ADDRESS_VARIABLE}"
    raise ValueError(f"no cluster address: pass --address HOST:PORT or set ${ADDRESS_VARIABLE}")


def _run_ray_start(options: list[str], env: dict, keep_loopback: bool = False) -> int:
    launcher = ["-c", _RAY_START_KEEPING_LOOPBACK] if keep_loopback else ["-m", "ray.scripts.scripts"]
    command = [sys.executable, *launcher, "start", "--block", "--disable-usage-stats", *options]
    try:
        return subprocess.call(command, env={**os.environ, **env})
    except KeyboardInterrupt:
        return 130


def _cannot(verb: str, reason: str) -> int:
    print(f"{PROG} {verb}: error: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(RunMain())
