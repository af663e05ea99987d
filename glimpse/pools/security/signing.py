"""Messages signed with the cluster key: keyed BLAKE3 over every frame, with protection against replay.

A signed message is its frames plus one trailer frame::

    session (16 bytes) | counter (8) | time in ms (8) | MAC (32) | one tag (32) per large frame

The MAC covers who sends it to whom, the session, counter and time, and every frame; a frame of
:data:`LARGE_FRAME` bytes or more enters the MAC through its own tag (a keyed hash of the frame alone),
so a broker that only forwards a large payload checks and re-signs the small frames and passes the
payload's tag on: the payload is hashed once where it is made and once where it is unpickled.
Message MACs and frame tags use two keys derived from the cluster key (BLAKE3's key derivation,
one context each), so a tag is never a message's MAC. BLAKE3 (the ``blake3`` package) hashes
faster than HMAC-SHA256, which made signing a large share of the cost of moving MiB payloads.

Replay: each sender signs with a random session id and a counter that only grows, and the time.
Over an ordered transport (one ZeroMQ connection) a receiver accepts a session's message only if
its counter is above the last one it accepted; the first message of a session it does not know
must be at most :data:`REPLAY_WINDOW_SECONDS` old (so a session it has forgotten cannot be
replayed). Where messages may arrive out of order (gearman jobs, re-queued after a worker dies),
a receiver accepts a message at most :data:`UNORDERED_WINDOW_SECONDS` old whose MAC it has not
seen in that time (a bounded history, as ipyparallel keeps). Only messages that verify enter a history.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import secrets
import struct
import time
from collections import OrderedDict
from typing import NamedTuple

from glimpse.pools.security.keys import ClusterKey

log = logging.getLogger(__name__)

#: Frames this large are signed once end to end (their tag travels with them); smaller ones per hop.
LARGE_FRAME = 16 * 1024
#: How old the first message of an unknown session may be (clocks of different machines must agree this well).
REPLAY_WINDOW_SECONDS = 300.0
#: How old a message of an unordered transport may be (a gearman job may wait in the queue this long).
UNORDERED_WINDOW_SECONDS = 3600.0
_UNORDERED_HISTORY = 1_000_000
_HEADER = struct.Struct(">16sQq")
_DIGEST = 32
_MESSAGE_CONTEXT = "glimpse-pools 2026-12 signed message MAC"
_FRAME_CONTEXT = "glimpse-pools 2026-12 large frame tag"
_TRAILER = _HEADER.size + _DIGEST
_PEERS_REMEMBERED = 1024


class Tagged(NamedTuple):
    """A large frame as a forwarding receiver gets it: the bytes and the tag its signer made (unchecked)."""

    data: bytes
    tag: bytes


class Rejected(Exception):
    """A message that does not verify; the message says why (never anything of the key)."""


class MessageSigner:
    """Signs what one endpoint sends and verifies what it receives, with one key.

    Args:
        key: The cluster key.
        name: This endpoint's name in the route a MAC covers (its ZeroMQ routing id, ``b"broker"``...).
        ordered: Whether each sender's messages arrive in the order they were sent.
    """

    def __init__(self, key: ClusterKey, name: bytes, ordered: bool = True):
        self.key = key
        self.name = name
        self._secret = key.secret
        if self._secret:
            from blake3 import blake3  # here: the core imports this module, the zmq and gearman extras install it

            self._blake3 = blake3
            self._message_key = blake3(self._secret, derive_key_context=_MESSAGE_CONTEXT).digest()
            self._frame_key = blake3(self._secret, derive_key_context=_FRAME_CONTEXT).digest()
        self._session = secrets.token_bytes(16)
        self._counter = itertools.count(1)
        self._history: OrderedDict[bytes, int] = OrderedDict()
        self._seen_at: dict[bytes, float] = {}
        self._ordered = ordered
        self._macs: OrderedDict[bytes, float] = OrderedDict()
        self._failures = _FailureLog()

    # -- sending --------------------------------------------------------------------------------

    def sign(self, recipient: bytes, frames: list) -> list:
        """``frames`` (bytes, or :class:`Tagged` frames being forwarded) plus their trailer, ready to send."""
        if not self._secret:  # --insecure: an empty trailer
            return [frame.data if isinstance(frame, Tagged) else frame for frame in frames] + [b""]
        header = _HEADER.pack(self._session, next(self._counter), int(time.time() * 1000))
        data, tags = [], []
        for frame in frames:
            if isinstance(frame, Tagged):
                data.append(frame.data)
                tags.append(frame.tag)
            else:
                data.append(frame)
                if len(frame) >= LARGE_FRAME:
                    tags.append(self.tag(frame))
        mac = self._mac(self.name, recipient, header, data, iter(tags))
        return [*data, header + mac + b"".join(tags)]

    def tag(self, frame) -> bytes:
        """The end-to-end tag of one large frame (its own domain: never equal to a message's MAC)."""
        return self._blake3(frame, key=self._frame_key).digest()

    # -- receiving ------------------------------------------------------------------------------

    def verify(self, sender: bytes, frames: list, forwarding: bool = False) -> list:
        """The frames of a signed message from ``sender`` to this endpoint, trailer removed.

        Raises :class:`Rejected` unless the MAC, every large frame's tag and the replay check
        hold. With ``forwarding``, large frames come back as :class:`Tagged` with their tags
        unchecked: the endpoint must not unpickle them, only pass them on to one that checks.
        """
        if len(frames) < 2:
            raise Rejected("an unsigned message")
        *data, trailer = frames
        trailer = bytes(trailer)
        if not self._secret or not trailer:
            if self._secret or trailer:
                raise Rejected(
                    "an unsigned message (from a peer started with --insecure)"
                    if self._secret
                    else "a signed message (this end was started with --insecure)"
                )
            return data
        large = [index for index, frame in enumerate(data) if len(frame) >= LARGE_FRAME]
        if len(trailer) != _TRAILER + _DIGEST * len(large):
            raise Rejected("a message whose signature has the wrong length")
        header, mac = trailer[: _HEADER.size], trailer[_HEADER.size : _TRAILER]
        tags = [trailer[_TRAILER + _DIGEST * i : _TRAILER + _DIGEST * (i + 1)] for i in range(len(large))]
        expected = self._mac(sender, self.name, header, data, iter(tags))
        if not hmac.compare_digest(mac, expected):
            raise Rejected("a message whose signature does not match the cluster key")
        for index, tag in zip(large, tags, strict=True):
            data[index] = Tagged(bytes(data[index]), tag) if forwarding else self.opened(Tagged(data[index], tag))
        if self._ordered:
            self._check_fresh(*_HEADER.unpack(header))
        else:
            self._check_unseen(mac, _HEADER.unpack(header)[2])
        return data

    def opened(self, frame: Tagged):
        """The bytes of a large frame, once they match its tag; :class:`Rejected` if they do not."""
        if not hmac.compare_digest(frame.tag, self.tag(frame.data)):
            raise Rejected("a message whose payload does not match its signature")
        return frame.data

    def all_opened(self, frames, source: bytes) -> list | None:
        """``frames`` with every :class:`Tagged` one :meth:`opened`, for a peer that trusts this
        endpoint; ``None`` if one does not match its tag (counted, and logged once for ``source``)."""
        try:
            return [self.opened(frame) if isinstance(frame, Tagged) else frame for frame in frames]
        except Rejected as reason:
            self.rejected(source, reason)
            return None

    def rejected(self, peer: bytes, reason: Rejected) -> bool:
        """Count a message from ``peer`` that did not verify; log it the first time for that peer.

        Returns ``True`` the first time (so the caller can tell the peer once)."""
        return self._failures.record(peer, str(reason))

    @property
    def rejected_count(self) -> int:
        """How many messages did not verify."""
        return self._failures.total

    def _check_fresh(self, session: bytes, counter: int, millis: int) -> None:
        now = time.time()
        last = self._history.get(session)
        if last is None:
            if abs(now - millis / 1000) > REPLAY_WINDOW_SECONDS:
                raise Rejected(
                    f"a message signed {now - millis / 1000:.0f} s ago by an unknown sender (a replay, "
                    f"or clocks that differ by more than {REPLAY_WINDOW_SECONDS:g} s)"
                )
        elif counter <= last:
            raise Rejected("a message received before (a replay)")
        self._history[session] = counter
        self._history.move_to_end(session)
        self._seen_at[session] = now
        self._forget_old_sessions(now)

    def _check_unseen(self, mac: bytes, millis: int) -> None:
        now = time.time()
        age = now - millis / 1000
        if abs(age) > UNORDERED_WINDOW_SECONDS:
            raise Rejected(
                f"a message signed {age:.0f} s ago (a replay, or clocks that differ by more than "
                f"{UNORDERED_WINDOW_SECONDS:g} s)"
            )
        if mac in self._macs:
            raise Rejected("a message received before (a replay)")
        self._macs[mac] = now
        while self._macs:
            oldest, seen = next(iter(self._macs.items()))
            if now - seen <= UNORDERED_WINDOW_SECONDS and len(self._macs) <= _UNORDERED_HISTORY:
                break
            del self._macs[oldest]

    def _forget_old_sessions(self, now: float) -> None:
        # A session silent for twice the window is forgotten: any replay of it is too old to pass.
        while self._history:
            session = next(iter(self._history))
            if now - self._seen_at[session] <= 2 * REPLAY_WINDOW_SECONDS:
                return
            del self._history[session], self._seen_at[session]

    def _mac(self, sender: bytes, recipient: bytes, header: bytes, frames: list, tags) -> bytes:
        mac = self._blake3(key=self._message_key)
        mac.update(struct.pack(">II", len(sender), len(recipient)) + sender + recipient + header)
        for frame in frames:
            size = len(frame)
            mac.update(struct.pack(">Q", size))
            mac.update(next(tags) if size >= LARGE_FRAME else frame)
        return mac.digest()


class _FailureLog:
    """Messages that did not verify: counted, and logged once per peer (a flood must not fill a disk)."""

    def __init__(self):
        self.total = 0
        self._peers: OrderedDict[bytes, int] = OrderedDict()
        self._overflow_logged = False

    def record(self, peer: bytes, reason: str) -> bool:
        self.total += 1
        if peer in self._peers:
            self._peers[peer] += 1
            return False
        if len(self._peers) >= _PEERS_REMEMBERED:
            self._peers.popitem(last=False)
            if not self._overflow_logged:
                self._overflow_logged = True
                log.warning("messages that do not verify come from more than %d peers", _PEERS_REMEMBERED)
            self._peers[peer] = 1
            return True
        self._peers[peer] = 1
        log.warning(
            "dropped %s from %s; further ones from it are dropped without a word",
            reason,
            peer[:64].decode(errors="replace") or "an unnamed peer",
        )
        return True
