"""Every use of Ray's private internals, in one place. Checked on Ray 2.9 to 2.60.

``tests/test_compat.py`` calls :func:`missing` so an upgrade that removes one fails loudly there.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass, field

from glimpse.pools.subprocesses import child_environment


@contextlib.contextmanager
def loopback_kept():
    """Keep 127.0.0.1 as Ray's node address while starting or connecting to Ray here.

    On Linux Ray replaces 127.0.0.1 with the machine's network address, both as the node
    address of a new Ray and in an address to connect to (ray-project/ray#26293, #59110),
    so its servers would listen on every interface and a head on 127.0.0.1 could not be
    reached. In its single-machine mode it keeps it. Private:
    ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` (what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
    sets when Ray is imported, too late for a process that imported it already).
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


#: ``ray start`` that keeps 127.0.0.1 in ``--address`` (it replaces it with the machine's network
#: address, ray-project/ray#59110), so a node can join a head on loopback. Private:
#: ``ray._private.services.resolve_ip_for_localhost``.
RAY_START_KEEPING_LOOPBACK = (
    "import sys, ray._private.services as services; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)


_GCS_PROBE = """
import json, os, sys
from glimpse.pools.backends.ray import compat
if not os.environ.get("RAY_AUTH_MODE"):
    compat.enable_token_if_this_machine_has_one()
import ray._raylet
try:
    client = ray._raylet.GcsClient(address=sys.argv[1])
    client.internal_kv_get(b"glimpse-probe", namespace=None, timeout=float(sys.argv[2]))
    nodes = client.get_all_node_info(timeout=float(sys.argv[2]))
    alive = sorted({info.node_manager_address for info in nodes.values() if info.state == 0})
    print("answered", json.dumps(alive), flush=True)
except BaseException as exc:
    print(f"refused {type(exc).__name__}: {exc}".replace("\\n", " "), flush=True)
"""


@dataclass
class GcsAnswer:
    """What the GCS at an address said: ``silent`` (no answer), ``refused`` (why), or the addresses
    of its live nodes."""

    silent: bool = False
    refused: str = ""
    nodes: list[str] = field(default_factory=list)


def ask_gcs(address: str, timeout: float) -> GcsAnswer:
    """Ask the GCS at ``address`` for a key and its live nodes, sending this machine's token if it has one.

    ``ray.init`` can hang for minutes on an address that accepts connections but is not a Ray
    head, and has no probe of its own. Private: ``ray._raylet.GcsClient.internal_kv_get`` and
    ``get_all_node_info``. Runs in a process of its own: a GcsClient that gets no answer blocks for
    about 40 s, and one that is refused (no token) can abort its process from Ray's C++ core.
    """
    command = [sys.executable, "-c", _GCS_PROBE, address, str(timeout)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            env=child_environment(),
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return GcsAnswer(silent=True)
    lines = done.stdout.strip().splitlines()
    if lines and lines[-1].startswith("answered "):
        return GcsAnswer(nodes=json.loads(lines[-1].removeprefix("answered ")))
    if lines and lines[-1].startswith("refused "):
        return GcsAnswer(refused=lines[-1].removeprefix("refused "))
    if done.returncode != 0:
        last = next(
            (line for line in reversed(done.stderr.splitlines()) if "Check failed" in line or "FATAL" in line), ""
        )
        return GcsAnswer(refused=f"Ray's client aborted while connecting ({last.strip()[:300] or 'no message'})")
    return GcsAnswer(silent=True)


def enable_token_if_this_machine_has_one() -> bool:
    """Turn on token authentication when this machine has a Ray token, as ``ray.init()`` does locally;
    return whether it has one.

    ``ray start --head`` turns token authentication on when this machine has a token
    (``~/.ray/auth_token``, ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH``), but ``ray start
    --address`` and ``ray.init(address=...)`` send it only with ``RAY_AUTH_MODE=token``. Private:
    ``AuthenticationTokenLoader`` and ``_enable_token_auth`` (Ray >= 2.50; older Rays have no tokens).
    """
    if not has_token():
        return False
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()
    return True


def has_token() -> bool:
    """Whether this machine has a Ray token (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``); false on a Ray without token authentication."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return False
    return AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)


def create_token() -> None:
    """Write a new Ray token to ``~/.ray/auth_token`` (what ``ray get-auth-token --generate`` does).
    Private: ``generate_and_save_token``."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    generate_and_save_token()
    AuthenticationTokenLoader.instance().reset_cache()


def missing() -> list[str]:
    """The private names this module relies on that the installed Ray lacks."""
    import importlib

    wanted = [
        ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
        ("ray._private.services", "resolve_ip_for_localhost"),
        ("ray._raylet", "GcsClient"),
        ("ray._raylet", "AuthenticationTokenLoader"),
        ("ray._private.authentication.authentication_token_setup", "_enable_token_auth"),
        ("ray._private.authentication.authentication_token_setup", "generate_and_save_token"),
    ]
    gone = []
    for module_name, name in wanted:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            gone.append(f"{module_name} (module)")
            continue
        if not hasattr(module, name):
            gone.append(f"{module_name}.{name}")
    import ray._raylet

    # GcsClient hands its methods over from the inner client it wraps.
    inner = getattr(ray._raylet, "InnerGcsClient", ray._raylet.GcsClient)
    for method in ("internal_kv_get", "get_all_node_info"):
        if not hasattr(inner, method):
            gone.append(f"ray._raylet.GcsClient.{method}")
    return gone
