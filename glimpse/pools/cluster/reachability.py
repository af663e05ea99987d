"""Whether a cluster's scheduler, head node, controller or broker still accepts connections."""

from __future__ import annotations

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
