"""ZeroMQ sockets whose every message is signed with the cluster key (see ``security/signing.py``).

Nothing a peer receives is acted on, let alone unpickled, before it verifies. The broker answers
a peer whose message does not verify once, with an unsigned ``UNAUTHENTICATED reason`` notice, so
a pool or worker started with the wrong key fails at once with an ``AuthenticationError`` instead
of waiting; everything else that does not verify is dropped, counted and logged once per peer.
"""

from __future__ import annotations

import zmq

from glimpse.pools.errors import AuthenticationError
from glimpse.pools.security import MessageSigner, Rejected

BROKER = b"broker"
UNAUTHENTICATED = b"UNAUTHENTICATED"
#: Frames this large are sent without a copy (ZeroMQ holds on to them until sent).
_ZERO_COPY_BYTES = 64 * 1024
_MORE = int(zmq.SNDMORE)


def send_frames(socket: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one message, large ones without a copy.

    ``send_multipart`` does the same at several times the cost per small message, most of it in
    combining its flags as Python enums.
    """
    flags, send, last = int(flags), socket.send, len(frames) - 1
    for index, frame in enumerate(frames):
        send(frame, flags | _MORE if index < last else flags, copy=len(frame) < _ZERO_COPY_BYTES)


class PeerSocket:
    """The DEALER socket of a pool or worker slot named ``signer.name``, talking to the broker at ``address``."""

    def __init__(self, socket: zmq.Socket, signer: MessageSigner, address: str):
        self.socket, self.signer, self.address = socket, signer, address

    def send(self, kind: bytes, *frames, flags: int = 0) -> None:
        send_frames(self.socket, self.signer.sign(BROKER, [kind, *frames]), flags)

    def poll(self, milliseconds: float) -> bool:
        """Whether a message can be received, waiting up to ``milliseconds`` for one."""
        return bool(self.socket.poll(milliseconds))

    @property
    def rejected_count(self) -> int:
        """How many messages from the broker did not verify."""
        return self.signer.rejected_count

    def receive(self) -> list[bytes] | None:
        """The next message's frames (kind first) without blocking: ``zmq.Again`` if there is none,
        ``None`` if it did not verify; ``AuthenticationError`` if the broker refused our key."""
        frames = self.socket.recv_multipart(zmq.NOBLOCK)
        if frames[0] == UNAUTHENTICATED:
            reason = frames[1].decode(errors="replace") if len(frames) > 1 else "no reason given"
            raise AuthenticationError(
                f"the glimpse zmq broker at {self.address} rejected our messages ({reason[:200]}): "
                f"the key from {self.signer.key.source} is not the key of that broker. Use the broker's key file "
                "(it prints its path when it starts) with --key-file or $GLIMPSE_CLUSTER_KEY_FILE"
            )
        try:
            return self.signer.verify(BROKER, frames)
        except Rejected as reason:
            self.signer.rejected(f"the broker at {self.address}".encode(), reason)
            return None

    def close(self, linger: int | None = None) -> None:
        self.socket.close(linger=linger)


class BrokerSocket:
    """The broker's ROUTER socket: messages come with the name of the peer that sent them."""

    def __init__(self, socket: zmq.Socket, signer: MessageSigner):
        self.socket, self.signer = socket, signer

    def send(self, peer: bytes, kind: bytes, *frames) -> None:
        send_frames(self.socket, [peer, *self.signer.sign(peer, [kind, *frames])])

    def receive(self) -> tuple[bytes, list] | None:
        """The next message's sender and frames (kind first; large frames ``Tagged``, to forward only),
        without blocking: ``zmq.Again`` if there is none, ``None`` if it did not verify."""
        sender, *frames = self.socket.recv_multipart(zmq.NOBLOCK)
        try:
            return sender, self.signer.verify(sender, frames, forwarding=True)
        except Rejected as reason:
            if self.signer.rejected(sender, reason):
                self.socket.send_multipart([sender, UNAUTHENTICATED, str(reason).encode()], zmq.NOBLOCK)
            return None
