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
    # `auto` is the cluster `ray start` last started on this machine; ray.init finds its token itself.
    local = address == "auto" or on_this_machine(host_port(address)[0])
    if address != "auto":
        if local:
            try:
                use_local_token()
            except Exception as exc:  # Ray's AuthenticationError: a token file named but unreadable
                raise ClusterConnectionError(
                    f"cannot use a Ray token to reach {address} (from {source}): {exc}"
                ) from None
        probe(address, source)
    try:
        with compat.loopback_kept() if local else contextlib.nullcontext():
            ray.init(address=address, **init_kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ray.exceptions.RayError) as exc:
        raise ClusterConnectionError(
            f"could not connect to the Ray cluster at {address} (from {source}): {type(exc).__name__}: {exc}. "
            "If the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token in "
            "~/.ray/auth_token or $RAY_AUTH_TOKEN."
        ) from None


def probe(address: str, source: str) -> None:
    """Check that a Ray head node answers at ``address`` (``ray.init`` can hang for minutes on an
    address that accepts connections but is not one)."""
    host, port = host_port(address)
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
    answer = compat.ask_gcs(address, GCS_SECONDS, on_this_machine(host_port(address)[0]))
    if not answer:
        raise ClusterConnectionError(
            f"something accepts connections at {address} (from {source}), but no Ray head node answered there "
            f"within {GCS_SECONDS:g} s; give the port of the head node's GCS (`ray start --head --port`), and if "
            "the cluster uses token authentication, its token ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, "
            "~/.ray/auth_token)."
        )
    if answer[0] is not None:
        raise ClusterConnectionError(
            f"the Ray cluster at {address} (from {source}) refused this client: {answer[0]}. If the cluster uses "
            "token authentication, give its token in $RAY_AUTH_TOKEN, a file named by $RAY_AUTH_TOKEN_PATH, "
            "or ~/.ray/auth_token"
        )


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


def use_local_token() -> None:
    """Send the token of Ray's default authentication to a cluster on this machine.

    ``ray start --head`` turns token authentication on when this machine has a token
    (``~/.ray/auth_token``, ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH``), but
    ``ray.init(address=...)`` sends it only with ``RAY_AUTH_MODE=token``. For a cluster on
    this machine do what ``ray.init()`` does for a local cluster; elsewhere the user decides.
    """
    if not os.environ.get("RAY_AUTH_MODE"):
        compat.enable_token_if_this_machine_has_one()


def _modest_object_store() -> int:
    """A tenth of the memory, between 256 MiB and 2 GiB (Ray's default takes 30%)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 * 2**30
    return max(256 * 2**20, min(2 * 2**30, memory // 10))
