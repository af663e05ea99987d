"""The link between a pool and the embedded broker it started: a socket pair instead of TCP.

The pool and its embedded broker are parent and child on one machine, so their messages (the
same as over ZeroMQ, see ``protocol.py``) go through a socket pair the broker inherits: one
``writev`` and one ``read`` a message, with no ZeroMQ I/O thread to wake on either side, which
makes a round trip many times shorter than over TCP. Nobody else holds the socket, so its
messages are not signed; large frames the broker forwards from elsewhere have their tags
checked before they enter it. Copies of the pool in other processes connect over TCP as usual.

A message travels as a frame holding its number of parts, then its parts, each a frame of
``frames.py`` (small ones joined into one write buffer, large ones written from where they are).
"""

from __future__ import annotations

import math
import select
import socket

import zmq

from glimpse.pools.backends.zmq import protocol as p
from glimpse.pools.contract.backend import ClusterLost
from glimpse.pools.ipc.frames import FrameReader, frame_views, send_available, write_frames
from glimpse.pools.security import MessageSigner

#: The name the broker gives the pool at the other end of its socket pair.
PIPE_POOL = b"pool-pipe"


class _Messages:
    """Whole messages out of the frames that arrived on ``fd``."""

    def __init__(self, fd: int):
        self._reader = FrameReader(fd)
        self._frames: list = []
        self.messages: list[list] = []

    def read(self) -> None:
        """Read what has arrived (waiting for the rest of a frame begun); ``EOFError`` at the end."""
        self._frames += self._reader.read_frames()
        while self._frames:
            count = int(self._frames[0])
            if len(self._frames) <= count:
                return
            self.messages.append(self._frames[1 : count + 1])
            del self._frames[: count + 1]


def _message_frames(parts) -> list:
    return [p.number(len(parts)), *parts]


class PoolPipe:
    """The pool's end: what ``ZmqBackend`` sends and receives with instead of a signed ZeroMQ socket."""

    rejected_count = 0  # nothing is signed, so nothing is rejected

    def __init__(self, end: socket.socket, address: str):
        self._end, self.address = end, address
        self._messages = _Messages(end.fileno())
        self._poller = select.poll()  # not select(): a process may hold more than 1024 descriptors
        self._poller.register(end, select.POLLIN)

    def send(self, kind: bytes, *frames, flags: int = 0) -> None:
        """Send a message; to a broker that is gone, nothing (as ZeroMQ would queue it): :meth:`receive` says so."""
        try:
            write_frames(self._end.fileno(), _message_frames([kind, *frames]))
        except OSError:
            pass

    def poll(self, milliseconds: float) -> bool:
        """Whether a message can be received, waiting up to ``milliseconds`` for one."""
        if self._messages.messages:
            return True
        return bool(self._poller.poll(max(0, math.ceil(milliseconds))))

    def receive(self) -> list:
        """The next message's frames (kind first) without waiting for one to begin: ``zmq.Again`` if
        none has; ``ClusterLost`` once the broker is gone."""
        if not self._messages.messages:
            if not self._poller.poll(0):
                raise zmq.Again()
            try:
                self._messages.read()
            except (EOFError, OSError):
                raise ClusterLost(
                    f"the embedded glimpse zmq broker at {self.address} exited (it was killed, or crashed)"
                ) from None
            if not self._messages.messages:
                raise zmq.Again()
        return self._messages.messages.pop(0)

    def close(self, linger: int | None = None) -> None:
        self._end.close()


class PipeClient:
    """The broker's end: one pool, named :data:`PIPE_POOL`, whose large forwarded frames ``signer`` checks.

    Sending never blocks the broker: what the socket does not take now waits here until
    :meth:`serve` finds it writable. Reading waits only for the rest of a message the pool is writing.
    """

    def __init__(self, fd: int, signer: MessageSigner):
        self.socket, self.signer = socket.socket(fileno=fd), signer
        self.fd = fd
        self._messages = _Messages(fd)
        self._unsent: list[memoryview] = []
        self.closed = False

    def send(self, kind: bytes, frames) -> None:
        """Send a message; one whose forwarded frame does not match its tag is dropped (the pool's next
        PING finds its chunk lost, as a pool's signed socket would)."""
        if self.closed:
            return
        parts = self.signer.all_opened(frames, b"a worker, through this broker")
        if parts is None:
            return
        self._unsent += frame_views(_message_frames([kind, *parts]))
        self._send()

    def watch(self, poller: zmq.Poller) -> None:
        if not self.closed:
            poller.register(self.fd, zmq.POLLIN | (zmq.POLLOUT if self._unsent else 0))

    def serve(self, ready: dict) -> list[list]:
        """Send what waited and read the messages that came, as ``ready`` allows; at the pool's end, a BYE."""
        events = ready.get(self.fd, 0)
        if events & zmq.POLLOUT:
            self._send()
        if self.closed or not events & (zmq.POLLIN | zmq.POLLERR):
            return []
        try:
            self._messages.read()
        except (EOFError, OSError):
            self.close()
            return [*self._take(), [p.BYE]]
        return self._take()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._unsent.clear()
            self.socket.close()

    def _take(self) -> list[list]:
        messages, self._messages.messages = self._messages.messages, []
        return messages

    def _send(self) -> None:
        try:
            send_available(self.socket, self._unsent)
        except OSError:  # the pool is gone: its end of the pair is read as closed next
            self._unsent.clear()
