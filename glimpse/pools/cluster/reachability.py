"""Whether a cluster's scheduler, head node, controller or broker still accepts connections."""

from __future__ import annotations

import errno
import socket

#: How long a probe waits for a connection; a live server on a network answers far sooner.
PROBE_SECONDS = 2.0


def tcp_answers(address: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether something accepts TCP connections at ``address`` (``[scheme://]host:port``)."""
    location = address.split("://", 1)[-1].rstrip("/")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():
        return True  # not a host:port we can probe; let the engine say
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def head_silent(address: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether ``address`` is silent: a connection neither succeeds nor is refused within ``timeout``
    (a host whose network is down, or a machine that hangs). A refused connection is not silence:
    nothing listens there any more, which is a loss, not a blip."""
    location = address.split("://", 1)[-1].rstrip("/")
    host, _, port = location.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return False
    except TimeoutError:
        return True
    except OSError as exc:
        return exc.errno in _UNREACHABLE


# A host whose link is down: no route, or no answer to ARP.
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}
