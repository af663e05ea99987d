"""A glimpse gearman cluster across hosts, as docs/machines/gearman.md sets it up (scenarios in
tests/multihost_signed.py), and a worker host back mid-call, whose late results are dropped."""

from __future__ import annotations

import logging

import pytest

from tests.engines.gearman import gearmand_or_skip
from tests.multihost import Hosts
from tests.multihost_signed import (
    ITEMS,
    SECONDS,
    SignedTransportAcrossHosts,
    Transport,
    results_with_blip,
    start_cluster,
)

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(300)

GEARMAN = Transport(
    type="gearman",
    port=4730,
    head="gearmand",
    address_form="{host}:{port}",
    slot_of=lambda line: line,
    require=gearmand_or_skip,
)


@pytest.fixture(scope="module")
def cluster(hosts: Hosts):
    yield from start_cluster(hosts, GEARMAN)


class TestGearmanAcrossHosts(SignedTransportAcrossHosts):
    transport = GEARMAN

    @pytest.mark.full
    def test_a_worker_host_back_mid_call_has_its_late_results_dropped_and_takes_work_again(self, cluster, hosts):
        """w2 is silent for 15 s in a call of about 40 s: the chunks it ran are sent again after 10 s
        without heartbeats, their first results arrive once the link is back and are dropped (every
        index once), and w2's slots take work again in the same call."""
        w2 = cluster.w2
        items = [(i, SECONDS) for i in range(3 * ITEMS)]
        results, arrivals = results_with_blip(cluster.pool, items, hosts, w2, after=12, seconds=15)
        assert [index for index, _ in results] == list(range(3 * ITEMS))
        cut_at = arrivals[12]
        back = [at for at, (_, host) in zip(arrivals, results, strict=True) if host == w2.name and at > cut_at + 16]
        log.info("gearman, w2 silent 15 s mid-call: call %.1f s", arrivals[-1])
        assert back, "w2 took no work in the rest of the call after its link came back"
