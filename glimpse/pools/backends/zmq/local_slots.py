"""Worker slots that run inside the broker's process (``LaunchBroker --nworkers N``; every embedded cluster).

A slot in the broker's process is the same :class:`~glimpse.pools.backends.zmq.worker.Slot` as
one of ``LaunchWorker``, with the same messages, but they travel through two in-process queues
instead of a socket: a chunk reaches the slot's task process with one hop fewer, and neither the
broker nor a worker process signs, sends, wakes for and verifies it on the way. Nothing leaves
the process, so these messages are not signed; a large frame the broker forwards from a pool
still has its tag checked here before the slot gets it, as a worker's socket would.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque

import zmq

from glimpse.pools.backends.zmq import protocol as p
from glimpse.pools.backends.zmq.worker import Slot, slot_name
from glimpse.pools.ipc.child_process import TaskProcesses
from glimpse.pools.security import MessageSigner

log = logging.getLogger(__name__)


class LocalLink:
    """What a slot in the broker's process sends with: its messages join the broker's inbox."""

    def __init__(self, inbox: deque, name: bytes):
        self.inbox, self.name = inbox, name

    def send(self, kind: bytes, *frames, flags: int = 0) -> None:
        self.inbox.append((self.name, [kind, *frames]))

    def close(self, linger: int | None = None) -> None:
        pass


class LocalSlots:
    """``count`` slots in this process, for a broker whose large frames are checked with ``signer``.

    The broker hands what it sends them to :meth:`deliver` and takes what they send from
    :attr:`inbox` (``(slot name, frames)``); its event loop waits on their task processes with
    :meth:`watch` and :meth:`serve`, and calls :meth:`heartbeat` once a heartbeat period.
    """

    def __init__(self, count: int, signer: MessageSigner, max_chunks: int | None = None):
        self.signer = signer
        self.inbox: deque[tuple[bytes, list]] = deque()
        self._outbox: deque[tuple[bytes, bytes, tuple]] = deque()
        functions: OrderedDict[bytes, bytes] = OrderedDict()
        processes = TaskProcesses(count, max_chunks)
        self.slots: dict[bytes, Slot] = {}
        for index in range(count):
            name = slot_name(index)
            self.slots[name] = Slot(name, LocalLink(self.inbox, name), functions, processes)

    def __contains__(self, name: bytes) -> bool:
        return name in self.slots

    @property
    def pending(self) -> bool:
        """Whether messages wait in either direction."""
        return bool(self.inbox or self._outbox)

    def deliver(self, name: bytes, kind: bytes, frames: tuple) -> None:
        """Queue a message of the broker's for the slot ``name`` (handed over by :meth:`hand_over`)."""
        self._outbox.append((name, kind, frames))

    def hand_over(self) -> None:
        """Let each slot act on the messages queued for it (what they answer joins :attr:`inbox`)."""
        while self._outbox:
            name, kind, frames = self._outbox.popleft()
            slot = self.slots.get(name)
            if slot is None:
                continue
            if kind == p.EXIT:
                slot.close("the broker told it to exit")
                del self.slots[name]
                continue
            opened = self.signer.all_opened(frames, b"a pool, through this broker")
            if opened is None:
                continue
            try:
                slot.handle(kind, opened)
            except (TypeError, ValueError, AttributeError):
                log.warning("ignoring a malformed %r message for %s", kind[:20], name, exc_info=True)

    def watch(self, poller: zmq.Poller) -> None:
        for slot in self.slots.values():
            slot.watch_child(poller)

    def serve(self, ready: dict) -> None:
        for slot in self.slots.values():
            slot.serve_child(ready)

    def heartbeat(self) -> None:
        for slot in self.slots.values():
            slot.send(p.HEARTBEAT, slot.info())

    def close(self, reason: str) -> None:
        """Stop every slot's task process."""
        for slot in self.slots.values():
            slot.close(reason)
        self.slots.clear()
