"""The zmq broker's message handling, driven directly over real ZeroMQ sockets in this process.

No worker process and no event loop: the test sends a message, lets the broker handle what
arrived, and reads what it sent back, so each protocol rule is checked in milliseconds.
"""

from __future__ import annotations

import socket as stdlib_socket
import time

import pytest

zmq = pytest.importorskip("zmq")

from glimpse.pools.backends.zmq import protocol as p  # noqa: E402
from glimpse.pools.backends.zmq.broker import Broker  # noqa: E402
from glimpse.pools.backends.zmq.pool_pipe import PIPE_POOL, PoolPipe  # noqa: E402
from glimpse.pools.backends.zmq.signed_socket import BROKER, UNAUTHENTICATED, BrokerSocket  # noqa: E402
from glimpse.pools.security import MessageSigner, Rejected, generate_key  # noqa: E402

KEY = generate_key()

_ENDPOINT = "inproc://glimpse-broker-test"


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def broker(context):
    socket = context.socket(zmq.ROUTER)
    socket.linger = 0
    socket.bind(_ENDPOINT)
    yield Broker(BrokerSocket(socket, MessageSigner(KEY, BROKER)))
    socket.close()


class _Peer:
    """A pool's or worker's socket that signs what it sends and verifies what it receives, with ``key``."""

    def __init__(self, context, name: bytes, key=KEY):
        self.socket = p.dealer(context, _ENDPOINT, name)
        self.signer = MessageSigner(key, name)

    def send_multipart(self, frames):
        self.socket.send_multipart(self.signer.sign(BROKER, frames))

    def poll(self, timeout):
        return self.socket.poll(timeout)

    def recv_multipart(self):
        frames = self.socket.recv_multipart()
        if frames[0] == UNAUTHENTICATED:
            return frames
        return self.signer.verify(BROKER, frames)


def _peer(context, name: bytes, key=KEY):
    return _Peer(context, name, key)


def _deliver(broker: Broker) -> None:
    """Let the broker handle everything its peers sent so far."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and broker.socket.socket.poll(50):
        broker.receive_available()
    broker.dispatch()


def _receive(socket, kind: bytes) -> list[bytes]:
    """The frames of the next message of ``kind`` the peer gets (other kinds are skipped)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if socket.poll(100):
            got, *frames = socket.recv_multipart()
            if got == kind:
                return frames
    raise AssertionError(f"no {kind.decode()} message arrived")


def _nothing(socket, kind: bytes) -> bool:
    while socket.poll(100):
        got, *_ = socket.recv_multipart()
        if got == kind:
            return False
    return True


def _all(socket, kind: bytes) -> list[list[bytes]]:
    """The frames of every message of ``kind`` the peer got (until it gets nothing for 100 ms)."""
    messages = []
    while socket.poll(100):
        got, *frames = socket.recv_multipart()
        if got == kind:
            messages.append(frames)
    return messages


def _ready_worker(context, broker, name=b"w1"):
    worker = _peer(context, name)
    worker.send_multipart([p.READY, p.VERSION, p.to_json({"pid": 1, "host": "here"})])
    _deliver(broker)
    _receive(worker, p.WELCOME)
    return worker


def _chunk_on_a_worker(context, broker, task: bytes = b"1"):
    """A ready worker, and a pool whose chunk ``task`` the broker handed to it; the worker's job number."""
    worker = _ready_worker(context, broker)
    pool = _peer(context, b"pool-1")
    pool.send_multipart([p.FUNC, b"call", b"function-bytes"])
    pool.send_multipart([p.CHUNK, task, b"call", b"payload", b"0"])
    _deliver(broker)
    job, call, payload, start, function = _receive(worker, p.TASK)
    assert (call, payload, start, function) == (b"call", b"payload", b"0", b"function-bytes")
    return worker, pool, job


def _chunks(pool, *tasks: bytes) -> None:
    pool.send_multipart([p.FUNC, b"call", b"function-bytes"])
    for task in tasks:
        pool.send_multipart([p.CHUNK, task, b"call", b"payload-" + task, b"0"])


def test_a_chunk_goes_to_an_idle_worker_and_its_result_back_to_its_pool(context, broker):
    worker, pool, job = _chunk_on_a_worker(context, broker, task=b"7")
    worker.send_multipart([p.RESULT, job, b"outcome"])
    _deliver(broker)
    assert _receive(pool, p.DONE) == [b"7", b"outcome"]


def test_a_worker_gets_a_second_chunk_to_start_when_its_first_ends_but_only_when_none_is_idle(context, broker):
    first, second = _ready_worker(context, broker, b"w1"), _ready_worker(context, broker, b"w2")
    pool = _peer(context, b"pool-1")
    _chunks(pool, b"1", b"2", b"3", b"4", b"5")
    _deliver(broker)
    held = {name: [frames[2] for frames in _all(worker, p.TASK)] for name, worker in ((b"w1", first), (b"w2", second))}
    assert sorted(held[b"w1"] + held[b"w2"]) == [b"payload-1", b"payload-2", b"payload-3", b"payload-4"]
    assert len(held[b"w1"]) == len(held[b"w2"]) == p.HELD_PER_WORKER
    assert [job.task for job in broker.queue] == [b"5"]


def test_a_function_travels_with_a_workers_first_chunk_of_the_call_only(context, broker):
    worker = _ready_worker(context, broker)
    pool = _peer(context, b"pool-1")
    _chunks(pool, b"1", b"2")
    _deliver(broker)
    assert [frames[4] for frames in _all(worker, p.TASK)] == [b"function-bytes", b""]


def _two_chunks_on_one_worker(context, broker):
    """A worker holding a pool's chunks 1 and 2 (their job numbers: the running one, the waiting one)."""
    busy = _ready_worker(context, broker, b"w1")
    pool = _peer(context, b"pool-1")
    _chunks(pool, b"1", b"2")
    _deliver(broker)
    running, waiting = (frames[0] for frames in _all(busy, p.TASK))
    return busy, pool, running, waiting


def test_a_calls_function_travels_with_its_first_chunk_and_stays_for_the_others(context, broker):
    worker = _ready_worker(context, broker)
    pool = _peer(context, b"pool-1")
    pool.send_multipart([p.CHUNK, b"1", b"call", b"payload-1", b"0", b"function-bytes"])
    pool.send_multipart([p.CHUNK, b"2", b"call", b"payload-2", b"1", b""])
    _deliver(broker)
    assert _receive(worker, p.TASK)[1:] == [b"call", b"payload-1", b"0", b"function-bytes"]
    assert _receive(worker, p.TASK)[1:] == [b"call", b"payload-2", b"1", b""]
    assert not _all(pool, p.NOFUNC)


def test_a_chunk_waiting_behind_another_is_taken_back_for_an_idle_worker(context, broker):
    busy, pool, running, waiting = _two_chunks_on_one_worker(context, broker)
    idle = _ready_worker(context, broker, b"w2")
    assert _receive(busy, p.TAKEBACK) == [waiting]
    busy.send_multipart([p.GAVEBACK, waiting])
    _deliver(broker)
    job, _call, payload, _start, function = _receive(idle, p.TASK)
    assert (payload, function) == (b"payload-2", b"function-bytes")
    idle.send_multipart([p.RESULT, job, b"second"])
    busy.send_multipart([p.RESULT, running, b"first"])
    _deliver(broker)
    assert sorted(_receive(pool, p.DONE) for _ in range(2)) == [[b"1", b"first"], [b"2", b"second"]]


def test_a_chunk_asked_back_that_had_started_finishes_where_it_runs(context, broker):
    busy, pool, running, waiting = _two_chunks_on_one_worker(context, broker)
    _ready_worker(context, broker, b"w2")
    _receive(busy, p.TAKEBACK)
    busy.send_multipart([p.RESULT, running, b"first"])
    busy.send_multipart([p.RESULT, waiting, b"second"])
    _deliver(broker)
    assert sorted(_receive(pool, p.DONE) for _ in range(2)) == [[b"1", b"first"], [b"2", b"second"]]
    assert not broker.running and not broker.queue


def test_a_silent_worker_loses_the_chunk_it_ran_and_the_one_waiting_goes_to_another(context, broker):
    _, pool, _, _ = _two_chunks_on_one_worker(context, broker)
    other = _ready_worker(context, broker, b"w2")
    broker.workers[b"w1"].seen -= p.WORKER_TIMEOUT_SECONDS + 1
    broker.expire_silent_workers()
    broker.dispatch()
    task, reason = _receive(pool, p.LOST)
    assert task == b"1" and b"heartbeat" in reason
    assert _receive(other, p.TASK)[2] == b"payload-2"
    assert _nothing(pool, p.LOST), "the chunk that waited was reported lost"


def test_a_chunk_of_an_unknown_call_asks_for_the_function_and_is_lost(context, broker):
    pool = _peer(context, b"pool-1")
    pool.send_multipart([p.CHUNK, b"1", b"unknown-call", b"payload", b"0"])
    _deliver(broker)
    assert _receive(pool, p.NOFUNC) == [b"unknown-call"]
    task, reason = _receive(pool, p.LOST)
    assert task == b"1" and b"function" in reason


def test_a_cancelled_running_chunk_stops_on_its_worker_and_its_late_result_is_dropped(context, broker):
    worker, pool, job = _chunk_on_a_worker(context, broker)
    pool.send_multipart([p.CANCEL, b"1"])
    _deliver(broker)
    assert _receive(worker, p.CANCEL) == [job]
    worker.send_multipart([p.RESULT, job, b"late"])
    _deliver(broker)
    assert _nothing(pool, p.DONE), "the pool got the result of a chunk it cancelled"


def test_a_silent_worker_is_dropped_and_its_chunk_reported_lost(context, broker):
    _, pool, _ = _chunk_on_a_worker(context, broker)
    broker.workers[b"w1"].seen -= p.WORKER_TIMEOUT_SECONDS + 1
    broker.expire_silent_workers()
    task, reason = _receive(pool, p.LOST)
    assert task == b"1" and b"heartbeat" in reason
    assert not broker.workers


def test_a_burst_of_heartbeats_from_an_unknown_worker_gets_one_reset(context, broker):
    """After a blip a dropped worker's heartbeats arrive together: one RESET, or it starts over once per
    heartbeat and loses each chunk it was handed in between."""
    worker = _peer(context, b"w1")
    for _ in range(5):
        worker.send_multipart([p.HEARTBEAT, p.to_json({"pid": 1, "host": "here"})])
    _deliver(broker)
    assert len(_all(worker, p.RESET)) == 1
    broker.resets[b"w1"] -= p.WORKER_TIMEOUT_SECONDS
    worker.send_multipart([p.HEARTBEAT, p.to_json({"pid": 1, "host": "here"})])
    _deliver(broker)
    assert len(_all(worker, p.RESET)) == 1, "a worker still unknown later was not told again"


def test_a_ping_lists_the_chunks_the_broker_holds_for_that_pool(context, broker):
    pool, other = _peer(context, b"pool-1"), _peer(context, b"pool-2")
    for sender, task in ((pool, b"1"), (pool, b"2"), (other, b"9")):
        sender.send_multipart([p.FUNC, b"call", b"f"])
        sender.send_multipart([p.CHUNK, task, b"call", b"payload", b"0"])
    pool.send_multipart([p.PING, b"2"])
    _deliver(broker)
    _broker_id, workers, last, *held = _receive(pool, p.PONG)
    assert (workers, last, sorted(held)) == (b"0", b"2", [b"1", b"2"])


def test_malformed_and_unknown_messages_are_ignored_and_the_broker_keeps_serving(context, broker):
    stranger = _peer(context, b"stranger")
    stranger.send_multipart([p.CHUNK, b"only-one-frame"])
    stranger.send_multipart([b"NONSENSE", b"x"])
    stranger.send_multipart([p.RESULT, b"not-a-number", b"x"])
    _deliver(broker)
    pool = _peer(context, b"pool-1")
    pool.send_multipart([p.HELLO, p.VERSION])
    _deliver(broker)
    assert _receive(pool, p.WELCOME)[1] == b"0"


def test_a_pool_of_another_protocol_version_is_refused(context, broker):
    pool = _peer(context, b"pool-1")
    pool.send_multipart([p.HELLO, b"glimpse-zmq-0"])
    _deliver(broker)
    assert b"glimpse-zmq-0" in _receive(pool, p.REFUSED)[0]


def test_a_pool_that_says_bye_loses_its_chunks_and_functions(context, broker):
    pool = _peer(context, b"pool-1")
    pool.send_multipart([p.FUNC, b"call", b"f"])
    pool.send_multipart([p.CHUNK, b"1", b"call", b"payload", b"0"])
    pool.send_multipart([p.BYE])
    _deliver(broker)
    assert not broker.queue and not broker.chunks and not broker.functions


def test_an_unsigned_message_is_dropped_and_its_sender_told_once(context, broker):
    stranger = p.dealer(context, _ENDPOINT, b"stranger")
    for _ in range(3):
        stranger.send_multipart([p.KILL])
    _deliver(broker)
    assert stranger.poll(2000)
    assert stranger.recv_multipart()[0] == UNAUTHENTICATED
    assert not stranger.poll(300), "the broker answered a flood message by message"
    assert broker.socket.signer.rejected_count == 3


def test_a_peer_with_another_key_is_refused_and_nothing_it_sends_is_acted_on(context, broker):
    _ready_worker(context, broker)
    intruder = _peer(context, b"pool-intruder", key=generate_key())
    intruder.send_multipart([p.KILL])
    _deliver(broker)
    assert _receive(intruder, UNAUTHENTICATED)
    assert list(broker.workers) == [b"w1"]


def test_a_replayed_message_is_dropped(context, broker):
    pool = _peer(context, b"pool-1")
    signed = pool.signer.sign(BROKER, [p.FUNC, b"call", b"f"])
    pool.socket.send_multipart(signed)
    _deliver(broker)
    broker.functions.clear()
    pool.socket.send_multipart(signed)
    _deliver(broker)
    assert not broker.functions


_LARGE = bytes(range(256)) * 1024


def _tampered_chunk(pool) -> None:
    """The function of ``call``, then its chunk 1 with a large payload changed after it was signed."""
    pool.send_multipart([p.FUNC, b"call", b"f"])
    signed = pool.signer.sign(BROKER, [p.CHUNK, b"1", b"call", _LARGE, b"0"])
    signed[3] = _LARGE[:-1] + b"!"
    pool.socket.send_multipart(signed)


def _intact_chunk_instead(pool) -> None:
    pool.send_multipart([p.CANCEL, b"1"])
    pool.send_multipart([p.CHUNK, b"2", b"call", _LARGE, b"0"])


def test_a_large_payload_is_checked_where_it_is_unpickled_and_a_tampered_one_refused(context, broker):
    worker = _ready_worker(context, broker)
    pool = _peer(context, b"pool-1")
    _tampered_chunk(pool)
    _deliver(broker)
    assert worker.poll(2000)
    with pytest.raises(Rejected, match="payload"):
        worker.recv_multipart()
    _intact_chunk_instead(pool)
    _deliver(broker)
    assert _receive(worker, p.TASK)[2] == _LARGE


@pytest.fixture
def broker_with_a_slot(context):
    """A broker that runs one worker slot (and its task process) in this process."""
    socket = context.socket(zmq.ROUTER)
    socket.linger = 0
    socket.bind(_ENDPOINT)
    broker = Broker(BrokerSocket(socket, MessageSigner(KEY, BROKER)), local_workers=1)
    yield broker
    broker.close()
    socket.close()


def test_a_slot_in_the_brokers_process_gets_a_large_payload_only_if_it_matches_its_tag(context, broker_with_a_slot):
    broker = broker_with_a_slot
    broker.pass_local_messages()
    (slot,) = broker.local.slots.values()
    assert slot.welcomed and list(broker.workers) == [slot.id]
    pool = _peer(context, b"pool-1")
    _tampered_chunk(pool)
    _deliver(broker)
    broker.pass_local_messages()
    assert not slot.held and broker.socket.signer.rejected_count == 1
    _intact_chunk_instead(pool)
    _deliver(broker)
    broker.pass_local_messages()
    assert [job.payload for job in slot.held] == [_LARGE]


def test_a_pool_on_the_brokers_socket_pair_gets_a_workers_large_outcome_only_if_it_matches_its_tag(context):
    socket = context.socket(zmq.ROUTER)
    socket.linger = 0
    socket.bind(_ENDPOINT)
    pool_end, broker_end = stdlib_socket.socketpair()
    broker = Broker(BrokerSocket(socket, MessageSigner(KEY, BROKER)), pool_fd=broker_end.detach())
    pool = PoolPipe(pool_end, "tcp://127.0.0.1:1")
    try:
        worker = _ready_worker(context, broker)
        pool.send(p.CHUNK, b"1", b"call", b"payload-1", b"0", b"function-bytes")
        pool.send(p.CHUNK, b"2", b"call", b"payload-2", b"1", b"")
        _deliver_with_pipe(broker)
        first, second = _receive(worker, p.TASK)[0], _receive(worker, p.TASK)[0]
        signed = worker.signer.sign(BROKER, [p.RESULT, first, _LARGE])
        signed[2] = _LARGE[:-1] + b"!"
        worker.socket.send_multipart(signed)
        worker.send_multipart([p.RESULT, second, _LARGE])
        assert _received_through_pipe(broker, pool) == [p.DONE, b"2", _LARGE]
        assert broker.socket.signer.rejected_count == 1
    finally:
        broker.close()
        pool.close()
        socket.close()


def test_a_zmq_peer_that_takes_the_name_of_a_peer_in_the_brokers_process_is_not_listened_to(context):
    socket = context.socket(zmq.ROUTER)
    socket.linger = 0
    socket.bind(_ENDPOINT)
    pool_end, broker_end = stdlib_socket.socketpair()
    broker = Broker(BrokerSocket(socket, MessageSigner(KEY, BROKER)), local_workers=1, pool_fd=broker_end.detach())
    try:
        broker.pass_local_messages()
        (slot_name,) = broker.local.slots
        for name in (PIPE_POOL, slot_name):
            impostor = _peer(context, name)
            impostor.send_multipart([p.HELLO, p.VERSION])
            impostor.send_multipart([p.READY, p.VERSION, p.to_json({"pid": 1, "host": "elsewhere"})])
            _deliver(broker)
            assert _nothing(impostor, p.WELCOME)
        assert list(broker.workers) == [slot_name] and broker.workers[slot_name].info["host"] != "elsewhere"
    finally:
        broker.close()
        pool_end.close()
        socket.close()


def _deliver_with_pipe(broker: Broker) -> None:
    """Let the broker handle what its ZeroMQ peers and the pool on its socket pair sent so far."""
    for _ in range(5):
        poller = zmq.Poller()
        broker.pipe.watch(poller)
        for message in broker.pipe.serve(dict(poller.poll(20))):
            broker.act_on(PIPE_POOL, message)
        _deliver(broker)


def _received_through_pipe(broker: Broker, pool: PoolPipe) -> list:
    """The next message the pool on the broker's socket pair receives, the broker serving meanwhile."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _deliver_with_pipe(broker)
        try:
            return pool.receive()
        except zmq.Again:
            continue
    raise AssertionError("no message reached the pool on the socket pair")
