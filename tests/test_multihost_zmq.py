"""A glimpse ZeroMQ cluster across hosts, as docs/machines/zmq.md sets it up (scenarios in
tests/multihost_signed.py)."""

from __future__ import annotations

import pytest

from tests.multihost import Hosts
from tests.multihost_signed import SignedTransportAcrossHosts, Transport, start_cluster

pytestmark = pytest.mark.timeout(300)

ZMQ = Transport(
    type="zmq",
    port=5555,
    head="broker",
    address_form="tcp://{host}:{port}",
    slot_of=lambda line: line.split()[0],
    require=lambda: pytest.importorskip("zmq"),
)


@pytest.fixture(scope="module")
def cluster(hosts: Hosts):
    yield from start_cluster(hosts, ZMQ)


class TestZmqAcrossHosts(SignedTransportAcrossHosts):
    transport = ZMQ
