"""The cluster key and signed messages, without any transport: where keys come from, what verifies."""

from __future__ import annotations

import base64
import os
import pickle
import struct

import pytest

from glimpse.pools import AuthenticationError
from glimpse.pools.security import INSECURE, MessageSigner, Rejected, generate_key, key_for_broker, resolve_key, signing


@pytest.fixture
def no_key_sources(monkeypatch, tmp_path):
    for name in ("GLIMPSE_CLUSTER_KEY", "GLIMPSE_CLUSTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def _key_file(path, text: str, mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_sources_in_order_argument_environment_file_default(no_key_sources, monkeypatch):
    secret = os.urandom(32)
    file = _key_file(no_key_sources / "k", secret.hex())
    with pytest.raises(AuthenticationError, match="no cluster key.*LaunchBroker"):
        resolve_key()
    created = key_for_broker()
    assert created.source.startswith("the default key file") and resolve_key().secret == created.secret
    monkeypatch.setenv("GLIMPSE_CLUSTER_KEY_FILE", str(file))
    assert resolve_key().secret == secret and resolve_key().file == str(file)
    monkeypatch.setenv("GLIMPSE_CLUSTER_KEY", base64.b64encode(b"e" * 32).decode())
    assert resolve_key().secret == b"e" * 32
    assert resolve_key(key=(b"a" * 16).hex()).secret == b"a" * 16


def test_created_key_files_are_private(no_key_sources):
    key = key_for_broker()
    path = no_key_sources / "config" / "glimpse" / "cluster.key"
    assert key.file == str(path) and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "text, mode, message",
    [
        ("ab" * 32, 0o644, "can be read by other users.*chmod 600"),
        ("ab" * 8, 0o600, "has 64 bits"),
        ("not a key!", 0o600, "neither hex nor base64"),
    ],
)
def test_bad_key_files_are_refused_naming_the_file_never_the_key(tmp_path, text, mode, message):
    path = _key_file(tmp_path / "bad.key", text, mode)
    with pytest.raises(AuthenticationError, match=message) as caught:
        resolve_key(key_file=path)
    assert str(path) in str(caught.value) and text not in str(caught.value)


def test_a_key_shows_and_pickles_nothing_of_itself():
    key = generate_key()
    assert key.secret.hex() not in repr(key) and key.secret.hex() not in str(key)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(key)


def test_signed_frames_verify_once_and_large_frames_are_checked_end_to_end():
    key = generate_key()
    pool, broker, worker = MessageSigner(key, b"pool"), MessageSigner(key, b"broker"), MessageSigner(key, b"w")
    payload = os.urandom(signing.LARGE_FRAME + 1)
    signed = pool.sign(b"broker", [b"CHUNK", payload])
    forwarded = broker.verify(b"pool", signed, forwarding=True)
    assert isinstance(forwarded[1], signing.Tagged)
    assert worker.verify(b"broker", broker.sign(b"w", forwarded)) == [b"CHUNK", payload]
    with pytest.raises(Rejected, match="replay"):
        broker.verify(b"pool", signed)
    with pytest.raises(Rejected, match="does not match"):
        MessageSigner(key, b"other").verify(b"pool", pool.sign(b"broker", [b"x"]))
    tampered = broker.sign(b"w", forwarded)
    tampered[1] = payload[:-1] + bytes([payload[-1] ^ 1])
    with pytest.raises(Rejected, match="payload"):
        worker.verify(b"broker", tampered)
    with pytest.raises(Rejected, match="does not match"):
        MessageSigner(generate_key(), b"broker").verify(b"pool", pool.sign(b"broker", [b"x"]))


def test_unordered_receivers_take_messages_out_of_order_but_never_twice_or_late(monkeypatch):
    key = generate_key()
    pool, worker = MessageSigner(key, b"pool", ordered=False), MessageSigner(key, b"w", ordered=False)
    first, second = pool.sign(b"w", [b"1"]), pool.sign(b"w", [b"2"])
    assert worker.verify(b"pool", second) == [b"2"] and worker.verify(b"pool", first) == [b"1"]
    with pytest.raises(Rejected, match="replay"):
        worker.verify(b"pool", first)
    late = pool.sign(b"w", [b"3"])
    header = signing._HEADER.unpack(late[-1][: signing._HEADER.size])
    monkeypatch.setattr(signing.time, "time", lambda: header[2] / 1000 + signing.UNORDERED_WINDOW_SECONDS + 5)
    with pytest.raises(Rejected, match="ago"):
        worker.verify(b"pool", late)


def test_malformed_trailers_are_rejected_not_crashed_on():
    key = generate_key()
    receiver = MessageSigner(key, b"broker")
    for frames in ([b"only"], [b"x", b""], [b"x", os.urandom(64)], [b"x", struct.pack(">16sQq", b"s" * 16, 1, 0)]):
        with pytest.raises(Rejected):
            receiver.verify(b"pool", frames)


def test_insecure_and_signed_ends_refuse_each_other():
    signed, unsigned = MessageSigner(generate_key(), b"a"), MessageSigner(INSECURE, b"a")
    with pytest.raises(Rejected, match="--insecure"):
        MessageSigner(signed.key, b"b").verify(b"a", unsigned.sign(b"b", [b"x"]))
    with pytest.raises(Rejected, match="--insecure"):
        MessageSigner(INSECURE, b"b").verify(b"a", signed.sign(b"b", [b"x"]))
    assert MessageSigner(INSECURE, b"b").verify(b"a", unsigned.sign(b"b", [b"x"])) == [b"x"]


def test_failures_are_logged_once_per_peer(caplog):
    receiver = MessageSigner(generate_key(), b"broker")
    for _ in range(50):
        for peer in (b"p1", b"p2"):
            try:
                receiver.verify(peer, [b"junk"])
            except Rejected as reason:
                receiver.rejected(peer, reason)
    assert receiver.rejected_count == 100
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 2
