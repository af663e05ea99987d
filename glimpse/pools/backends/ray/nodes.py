"""Which node runs each chunk, and which nodes are gone: Ray does not fail the tasks of a node that
went silent (their owner waits for replies that never come, even after the GCS declared the node
dead), so on a cluster of several nodes the pool places each chunk on a node itself and re-sends
the chunks of a node that is dead or silent.

A daemon thread reads the node table every :data:`READ_SECONDS` and, for a driver on a node,
probes the raylet port of every node that runs chunks; a node counts as gone once the GCS says
it is dead, or its port has been silent for ``$GLIMPSE_SILENCE_TIMEOUT`` seconds. A Ray Client
caller may not reach the nodes at all, so it trusts the GCS only (its health checks).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import ray

from glimpse.pools.cluster.reachability import head_silent, tcp_answers
from glimpse.pools.contract.watch import silence_timeout

#: How often the node table is read and the busy nodes probed.
READ_SECONDS = 2.0
_PROBE_SECONDS = 1.0
#: A node silent this long may have lost the replies of the chunks it ran: they are sent again.
BLIP_SECONDS = 5.0


@dataclass
class Node:
    id: str
    address: str
    raylet: str
    cpus: float
    running: int = 0


class NodeWatch:
    """The cluster's live nodes and the chunks placed on each (see the module docstring)."""

    def __init__(self, head: str, probe_nodes: bool):
        self._head = head
        self._probe_nodes = probe_nodes
        self._lock = threading.Lock()
        self._nodes: dict[str, Node] = {}
        self._gone: dict[str, str] = {}
        self._heard_at: dict[str, float] = {}
        self._dead: set[str] = set()
        #: The last silence of each node that came back: (last heard before it, heard again).
        self._silences: dict[str, tuple[float, float]] = {}
        self._stopped = threading.Event()
        self._read()
        self._thread = threading.Thread(target=self._watch, name="glimpse-ray-nodes", daemon=True)
        self._thread.start()

    def several(self) -> bool:
        """Whether more than one node offers CPUs (else there is nothing to choose or re-send)."""
        return len(self._usable()) > 1

    def place(self) -> str | None:
        """The id of the usable node with the fewest chunks per CPU, now counted as running one more
        (and from now on probed, if this caller probes nodes)."""
        with self._lock:
            usable = self._usable()
            if not usable:
                return None
            node = min(usable, key=lambda n: n.running / n.cpus)
            if not node.running:
                self._heard_at[node.id] = time.monotonic()
            node.running += 1
            return node.id

    def release(self, node_id: str) -> None:
        """A chunk placed on ``node_id`` ended (or was given up)."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is not None and node.running > 0:
                node.running -= 1

    def gone(self, node_id: str) -> str | None:
        """Why the node is gone (dead, or silent too long), or ``None``."""
        return self._gone.get(node_id)

    def stop(self) -> None:
        self._stopped.set()

    def _usable(self) -> list[Node]:
        return [node for node in self._nodes.values() if node.cpus > 0 and node.id not in self._gone]

    def _watch(self) -> None:
        while not self._stopped.wait(READ_SECONDS):
            # Not while the head is down: a driver's read would wait for it, and Ray ends a process
            # whose read of the node table waited too long (gcs_rpc_server_reconnect_timeout_s).
            if not tcp_answers(self._head, timeout=_PROBE_SECONDS):
                continue
            try:
                self._read()
                if self._probe_nodes:
                    self._probe()
            except Exception:  # Ray disconnected, or the head is silent: the pool's health says so
                continue

    def _read(self) -> None:
        nodes = ray.nodes()
        with self._lock:
            for info in nodes:
                node_id = info["NodeID"]
                if not info.get("Alive"):
                    if node_id in self._nodes and node_id not in self._dead:
                        self._dead.add(node_id)
                        self._gone[node_id] = "was declared dead by Ray (its health checks)"
                    continue
                node = self._nodes.get(node_id)
                cpus = float(info.get("Resources", {}).get("CPU", 0))
                if node is None:
                    raylet = f"{info['NodeManagerAddress']}:{info['NodeManagerPort']}"
                    self._nodes[node_id] = Node(node_id, info["NodeManagerAddress"], raylet, cpus)
                else:
                    node.cpus = cpus

    def _probe(self) -> None:
        limit = silence_timeout()
        for node in [node for node in self._nodes.values() if node.running or node.id in self._gone]:
            if node.id in self._dead:
                continue
            if not head_silent(node.raylet, timeout=_PROBE_SECONDS):
                now = time.monotonic()
                heard_at = self._heard_at.get(node.id, now)
                if now - heard_at >= BLIP_SECONDS + READ_SECONDS:
                    self._silences[node.id] = (heard_at, now)
                self._heard_at[node.id] = now
                self._gone.pop(node.id, None)  # back from a silence Ray did not call death
                continue
            heard_at = self._heard_at.setdefault(node.id, time.monotonic())
            if time.monotonic() - heard_at >= limit:
                self._gone.setdefault(node.id, f"did not answer at {node.raylet} for {limit:g} s")

    def address(self, node_id: str) -> str:
        node = self._nodes.get(node_id)
        return node.address if node is not None else node_id

    def went_silent_after(self, node_id: str, placed_at: float) -> str | None:
        """Why a chunk placed on the node at ``placed_at`` is lost though the node is back: it was
        silent for :data:`BLIP_SECONDS` or more since (Ray's connection to it does not recover the
        replies of the tasks it was running then), or ``None``."""
        silence = self._silences.get(node_id)
        if silence is None or silence[1] < placed_at:
            return None
        return f"did not answer for {silence[1] - silence[0]:.0f} s while running the chunk"
