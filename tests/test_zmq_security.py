"""Nobody without the cluster key runs code on zmq workers: real brokers, workers and hostile peers."""

from __future__ import annotations

import os
import pickle
import random
import socket
import subprocess
import sys
import time

import pytest

from tests import helpers
from tests.engines._processes import free_port, start_process, stop_process_group
from tests.engines.zmq import start_zmq_cluster

zmq = pytest.importorskip("zmq")
psutil = pytest.importorskip("psutil")

from glimpse.pools import AuthenticationError  # noqa: E402
from glimpse.pools.backends.zmq import protocol as p  # noqa: E402
from glimpse.pools.backends.zmq.signed_socket import BROKER  # noqa: E402
from glimpse.pools.security import MessageSigner, generate_key, resolve_key  # noqa: E402
from glimpse.pools.zmq_cluster import MakePool  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _cli() -> list[str]:
    return [sys.executable, "-m", "glimpse.pools.cli", "--type", "zmq"]


def _wrong_key_file(tmp_path) -> str:
    path = tmp_path / "wrong.key"
    path.write_text(generate_key().secret.hex())
    path.chmod(0o600)
    return str(path)


def test_a_pool_with_the_wrong_key_fails_within_seconds_naming_the_key_source(zmq_external_cluster, tmp_path):
    wrong = _wrong_key_file(tmp_path)
    began = time.monotonic()
    with pytest.raises(AuthenticationError) as caught:
        MakePool(zmq_external_cluster.address, key_file=wrong)
    assert time.monotonic() - began < 10
    message = str(caught.value)
    assert wrong in message and zmq_external_cluster.address in message
    assert open(wrong).read().strip() not in message


def test_a_worker_with_the_wrong_key_exits_with_a_clear_error(zmq_external_cluster, tmp_path):
    done = subprocess.run(
        [*_cli(), "LaunchWorker", "--address", zmq_external_cluster.address, "--nworkers", "1"],
        env={**os.environ, "GLIMPSE_CLUSTER_KEY_FILE": _wrong_key_file(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert done.returncode == 1
    assert "rejected our messages" in done.stderr and "wrong.key" in done.stderr


def test_launch_broker_without_a_key_creates_a_private_key_file_that_workers_and_pools_find(tmp_path):
    config = tmp_path / "config"
    env = {"XDG_CONFIG_HOME": str(config), "GLIMPSE_CLUSTER_KEY_FILE": "", "GLIMPSE_CLUSTER_KEY": ""}
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    broker = start_process([*_cli(), "LaunchBroker", "--port", str(port)], tmp_path / "broker.log", env=env)
    workers = None
    try:
        key_file = config / "glimpse" / "cluster.key"
        assert helpers.wait_for_file(str(key_file))
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.parent.stat().st_mode & 0o077 == 0
        workers = start_process(
            [*_cli(), "LaunchWorker", "--address", address, "--nworkers", "1"], tmp_path / "w.log", env=env
        )
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            with MakePool(address) as pool:
                assert pool.map(helpers.times_ten, range(5)) == [0, 10, 20, 30, 40]
        assert str(key_file) in (tmp_path / "broker.log").read_text()
    finally:
        for process in (workers, broker):
            if process is not None:
                stop_process_group(process)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "open.key"
    path.write_text(generate_key().secret.hex())
    path.chmod(0o644)
    with pytest.raises(AuthenticationError, match="chmod 600"):
        resolve_key(key_file=path)


def test_the_embedded_key_is_nowhere_in_the_open(tmp_path):
    with MakePool(workers=1) as pool:
        secret = pool.key.secret
        assert pool.map(helpers.times_ten, [1]) == [10]
        processes = [psutil.Process(pid) for pid in pool.cluster.pids()]
        processes += [child for process in processes for child in process.children(recursive=True)]
        for process in processes:
            command_line = " ".join(process.cmdline())
            assert secret.hex() not in command_line
        texts = [repr(pool), repr(pool.key), str(pickle.dumps(pool))]
        assert not any(secret.hex() in text or secret.hex().encode() in text.encode() for text in texts)
        assert secret not in pickle.dumps(pool)
        with pytest.raises(TypeError, match="not pickled"):
            pickle.dumps(pool.key)


def test_a_pool_pickles_to_its_key_file_not_its_key(zmq_external_cluster, tmp_path):
    key_file = os.environ["GLIMPSE_CLUSTER_KEY_FILE"]
    with MakePool(zmq_external_cluster.address, key_file=key_file) as pool:
        blob = pickle.dumps(pool)
        assert key_file.encode() in blob and pool.key.secret not in blob
        with pickle.loads(blob) as copy:
            assert copy.key.file == key_file
            assert copy.map(helpers.times_ten, [2]) == [20]


def test_a_pool_whose_key_came_from_the_environment_finds_it_again_where_it_is_unpickled(zmq_external_cluster):
    with MakePool(zmq_external_cluster.address) as pool:  # the key of $GLIMPSE_CLUSTER_KEY_FILE (conftest)
        blob = pickle.dumps(pool)
        assert os.environ["GLIMPSE_CLUSTER_KEY_FILE"].encode() not in blob and pool.key.secret not in blob
        with pickle.loads(blob) as copy:
            assert copy.key.source.startswith("$GLIMPSE_CLUSTER_KEY_FILE")
            assert copy.map(helpers.times_ten, [3]) == [30]


# -- hostile peers -----------------------------------------------------------------------------------


def _mutations(signed: list[bytes], rng: random.Random):
    """Variants of a validly signed message (never sent as it is) that must all be refused."""
    for _ in range(200):
        frames = list(signed)
        choice = rng.randrange(5)
        index = rng.randrange(len(frames))
        if choice == 0:
            frame = bytearray(frames[index] or b"\0")
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            frames[index] = bytes(frame)
        elif choice == 1 and frames[index]:
            frames[index] = frames[index][: rng.randrange(len(frames[index]))]
        elif choice == 2 and len(frames) > 1:
            del frames[index]
        elif choice == 3:
            frames.insert(index, rng.randbytes(rng.randrange(64)))
        else:
            frames = frames[:-1]
        assert frames != signed
        yield frames


def _random_messages(rng: random.Random, count: int):
    kinds = [p.HELLO, p.FUNC, p.CHUNK, p.CANCEL, p.KILL, p.RESTART, p.READY, p.RESULT, p.TASK, p.EXIT, b""]
    for _ in range(count):
        frames = [rng.choice(kinds)] + [rng.randbytes(rng.randrange(200)) for _ in range(rng.randrange(6))]
        yield frames if frames[0] or len(frames) > 1 else [b"x"]


def test_a_broker_under_random_and_mutated_messages_keeps_serving_the_key_holders(tmp_path):
    cluster = start_zmq_cluster(tmp_path / "cluster", nworkers=2, broker_env={"GLIMPSE_ZMQ_MAX_FRAME_MB": "1"})
    context = zmq.Context()
    silent = socket.create_connection(("127.0.0.1", int(cluster.address.rsplit(":", 1)[1])))
    try:
        rng = random.Random(7)
        key = resolve_key()
        peers = [p.dealer(context, cluster.address, f"fuzz-{i}".encode()) for i in range(4)]
        for number, frames in enumerate(_random_messages(rng, 3000)):
            peers[number % 4].send_multipart(frames)
        signer = MessageSigner(key, b"fuzz-0")
        for kind_frames in ([p.KILL], [p.RESTART], [p.CHUNK, b"1", b"call", b"x" * 70000, b"0"]):
            for frames in _mutations(signer.sign(BROKER, kind_frames), rng):
                peers[0].send_multipart(frames)
        ping = signer.sign(BROKER, [p.PING, b"0"])
        for _ in range(2):  # the second is a replay
            peers[0].send_multipart(ping)
        huge = p.dealer(context, cluster.address, b"fuzz-huge")
        huge.send_multipart([p.FUNC, b"call", b"x" * (2 * 2**20)])
        time.sleep(1.0)
        with MakePool(cluster.address) as pool:
            assert pool.map(helpers.times_ten, range(100)) == [10 * i for i in range(100)]
            assert len(pool.map(helpers.size_of, [helpers.make_blob(2**17)] * 4)) == 4
        assert cluster.broker.poll() is None and all(w.poll() is None for w in cluster.workers)
        log_lines = (tmp_path / "cluster" / "broker.log").read_text().splitlines()
        assert len([line for line in log_lines if "dropped" in line]) <= 6, "a flood filled the broker's log"
    finally:
        silent.close()
        context.destroy(linger=0)
        cluster.stop()


def test_a_worker_under_random_and_mutated_messages_from_a_false_broker_survives(tmp_path):
    """A worker's only input is its broker: one that listens in the broker's place sends it garbage."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    key = resolve_key()
    worker = start_process(
        [*_cli(), "LaunchWorker", "--address", f"tcp://127.0.0.1:{port}", "--nworkers", "1"], tmp_path / "worker.log"
    )
    try:
        signer = MessageSigner(key, BROKER)
        name = _next_verified(router, signer, p.READY)
        rng = random.Random(11)
        for frames in _random_messages(rng, 2000):
            router.send_multipart([name, *frames])
        for kind_frames in ([p.EXIT], [p.TASK, b"1", b"call", b"x" * 70000, b"0"]):
            for frames in _mutations(signer.sign(name, kind_frames), rng):
                router.send_multipart([name, *frames])
        assert _next_verified(router, signer, p.HEARTBEAT) == name
        assert worker.poll() is None, "the worker died of a message that did not verify"
        router.send_multipart([name, *signer.sign(name, [p.EXIT])])
        assert worker.wait(timeout=30) == 0
    finally:
        context.destroy(linger=0)
        stop_process_group(worker)


def _next_verified(router, signer: MessageSigner, kind: bytes) -> bytes:
    """The sender of the next message of ``kind`` that verifies (others are skipped)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if router.poll(500):
            sender, *frames = router.recv_multipart()
            try:
                got = signer.verify(sender, frames)
            except Exception:
                continue
            if got[0] == kind:
                return sender
    raise AssertionError(f"no verified {kind.decode()} message arrived")


def test_insecure_is_all_or_nothing(caplog):
    with MakePool(workers=1, insecure=True) as pool:
        assert "insecure" in caplog.text
        assert pool.map(helpers.times_ten, [3]) == [30]
        with pytest.raises(AuthenticationError, match="insecure"):
            MakePool(pool.address, key_file=os.environ["GLIMPSE_CLUSTER_KEY_FILE"])
