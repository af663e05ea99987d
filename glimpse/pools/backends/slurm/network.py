"""Where the scheduler listens: on the interface the compute nodes reach, and on loopback only when
every node is this machine (other users of the cluster share its network)."""

from __future__ import annotations

import socket

from glimpse.pools.backends.dask.launch import address_reaching, is_loopback


def is_this_machine(host: str) -> bool:
    """Whether ``host`` (a name or an address) is an address of this machine."""
    if is_loopback(host):
        return True
    try:
        address = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))  # only an address of one of this machine's interfaces binds
        return True
    except OSError:
        return False


def scheduler_host(nodes: list[str]) -> str:
    """The address a scheduler for workers on ``nodes`` listens on: 127.0.0.1 when every node is this
    machine, else this machine's address on the interface that reaches the first node."""
    if not nodes or all(is_this_machine(node) for node in nodes):
        return "127.0.0.1"
    return address_reaching(f"tcp://{nodes[0]}:1")
