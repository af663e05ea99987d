"""Reaching a Ray cluster from here: addresses, a quick probe, and loopback-only Ray on this machine."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket

import ray

from glimpse.pools.backends.ray import compat
from glimpse.pools.errors import ClusterConnectionError

#: How long an address may take to accept a TCP connection before it counts as not answering.
PROBE_SECONDS = 5.0
#: How long a Ray head node may take to answer once the connection is open.
GCS_SECONDS = 15.0
PROG = "glimpse-cluster --type ray"
#: Where a head node serves Ray Client (``ray://``) unless told otherwise.
CLIENT_PORT = 10001
#: How many more times to connect when a head's Ray Client server could not start our session.
CLIENT_INIT_RETRIES = 2
_TOKEN_HINT = (
    "If the cluster uses token authentication, copy the head node's ~/.ray/auth_token (`ray get-auth-token` "
    "on the head prints it) to ~/.ray/auth_token on this machine, or set $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH."
)


def start_embedded(init_kwargs: dict) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = {
        "num_cpus": os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": _modest_object_store(),
    }
    with compat.loopback_kept():
        ray.init(address="local", **{**options, **init_kwargs})


def connect(address: str, source: str, init_kwargs: dict) -> None:
    """``ray.init(address)`` after checking that a Ray head answers there and, for ``host:port``,
    that this machine is one of its nodes (a driver must be)."""
    # `auto` is the cluster `ray start` last started on this machine; ray.init finds its token itself.
    local = address == "auto" or on_this_machine(host_port(address)[0])
    if address != "auto":
        use_this_machines_token(address, source)
        probe(address, source, as_driver=True)
    try:
        with compat.loopback_kept() if local else contextlib.nullcontext():
            _init(address, init_kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ray.exceptions.RayError) as exc:
        raise ClusterConnectionError(
            f"could not connect to the Ray cluster at {address} (from {source}): {type(exc).__name__}: {exc}. "
            f"{_TOKEN_HINT}"
        ) from None


def _init(address: str, init_kwargs: dict) -> None:
    """``ray.init``, tried again when a head's Ray Client server lost the process it started for us:
    it sometimes dies as it starts (ray-project/ray#63202), and a second one starts cleanly."""
    for attempt in range(1 + CLIENT_INIT_RETRIES):
        try:
            ray.init(address=address, **init_kwargs)
            return
        except ConnectionAbortedError as exc:
            started_badly = address.startswith("ray://") and "Initialization failure from server" in str(exc)
            if not started_badly or attempt == CLIENT_INIT_RETRIES:
                raise


def probe(address: str, source: str, as_driver: bool = False) -> None:
    """Check that a Ray head node answers at ``address`` (``ray.init`` can hang for minutes on an
    address that accepts connections but is not one); ``as_driver``: that this machine runs one of
    its nodes too (``ray.init("host:port")`` elsewhere waits a minute for a node that never comes)."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        client = (
            " A head node serves Ray Client only where `ray[client]` is installed (pip install 'ray[client]')."
            if address.startswith("ray://")
            else ""
        )
        raise ClusterConnectionError(
            f"no Ray cluster answered at {address} (from {source}) within {PROBE_SECONDS:g} s: {exc}. "
            f"Start one with `{PROG} LaunchBroker` (or `ray start --head`), or fix the address.{client}"
        ) from None
    if "://" not in address:
        nodes = _check_gcs(address, source)
        if as_driver and not any(on_this_machine(node) for node in nodes):
            raise ClusterConnectionError(
                f"this machine is not a node of the Ray cluster at {address} (from {source}; its nodes: "
                f"{', '.join(nodes) or 'none'}), and a Ray driver given host:port must run on one. Connect "
                f"through Ray Client instead: ray://{host}:{CLIENT_PORT} (the head node serves it on port "
                f"{CLIENT_PORT} unless `ray start --ray-client-server-port` says otherwise), or run this on a node."
            )


def _check_gcs(address: str, source: str) -> list[str]:
    """The addresses of the live nodes of the Ray cluster whose GCS is at ``address``."""
    answer = compat.ask_gcs(address, GCS_SECONDS)
    if answer.silent:
        raise ClusterConnectionError(
            f"something accepts connections at {address} (from {source}), but no Ray head node answered there "
            f"within {GCS_SECONDS:g} s; give the port of the head node's GCS (`ray start --head --port`). "
            f"{_TOKEN_HINT}"
        )
    if answer.refused:
        raise ClusterConnectionError(
            f"the Ray cluster at {address} (from {source}) refused this client: {answer.refused}. {_token_remedy()}"
        )
    return answer.nodes


def host_port(address: str) -> tuple[str, int]:
    location = address.split("://", 1)[-1].rstrip("/")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is HOST:PORT, ray://HOST:PORT or auto, not {address!r}")
    return host.strip("[]"), int(port)


def current_address(fallback: str | None) -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        # Ray Client connections have no GCS address of their own.
        return fallback or "auto"


def same_cluster(wanted: str, current: str) -> bool:
    if wanted == "auto" or "://" in wanted or "://" in current:
        return True
    (wanted_host, wanted_port), (current_host, current_port) = host_port(wanted), host_port(current)
    if wanted_port != current_port:
        return False
    return wanted_host == current_host or (on_this_machine(wanted_host) and on_this_machine(current_host))


def on_this_machine(host: str) -> bool:
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


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def use_this_machines_token(address: str, source: str) -> None:
    """Send this machine's Ray token (``~/.ray/auth_token``, ``$RAY_AUTH_TOKEN`` or
    ``$RAY_AUTH_TOKEN_PATH``) to the cluster, unless ``$RAY_AUTH_MODE`` says otherwise.

    ``ray start --head`` turns token authentication on when its machine has a token, but
    ``ray start --address`` and ``ray.init(address=...)`` send one only with ``RAY_AUTH_MODE=token``:
    without this a token copied to a worker node or a caller's machine would be ignored.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        compat.enable_token_if_this_machine_has_one()
    except Exception as exc:  # Ray's AuthenticationError: a token file named but unreadable
        raise ClusterConnectionError(f"cannot use a Ray token to reach {address} (from {source}): {exc}") from None


def _token_remedy() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return f"$RAY_AUTH_MODE=disabled here: unset it to send the token. {_TOKEN_HINT}"
    if compat.has_token():
        return (
            "This machine's token is not the cluster's: copy the head node's ~/.ray/auth_token "
            "(`ray get-auth-token` on the head prints it) over this machine's ~/.ray/auth_token, "
            "or set $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH."
        )
    return _TOKEN_HINT


def _modest_object_store() -> int:
    """A tenth of the memory, between 256 MiB and 2 GiB (Ray's default takes 30%)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 * 2**30
    return max(256 * 2**20, min(2 * 2**30, memory // 10))
