"""MulticorePool's large buffers through shared memory: correct, writable, and never left behind.

Buffers travel in anonymous memfds, so nothing may appear in /dev/shm and no descriptor may stay
open in the caller, whatever ends the call: normal use, an early exit, a killed worker,
``terminate()``, or the caller itself killed.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from glimpse.pools import MulticorePool
from glimpse.pools.contract.out_of_band import Unpickled, unpickled_if_large
from glimpse.pools.contract.worker_runner import ChunkOutcome, ProbeItems
from glimpse.pools.ipc import shared_memory
from tests import helpers

np = pytest.importorskip("numpy")

MIB = 2**20


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _shared_memory_descriptors() -> list[str]:
    """The caller's open descriptors of glimpse's memfds (shown as ``/memfd:glimpse-payload``)."""
    gc.collect()
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "glimpse-payload" in target:
            found.append(target)
    return found


def _double_in_place(a):
    a *= 2  # arrays arrive writable, as they do through a pipe
    return a


def test_arrays_arrive_writable_and_come_back_correct_and_writable():
    arrays = [np.full(MIB // 2, float(i)) for i in range(6)]
    with MulticorePool(2) as pool:
        results = pool.map(_double_in_place, arrays)
    for i, result in enumerate(results):
        assert result.shape == (MIB // 2,) and float(result[0]) == 2.0 * i and float(result[-1]) == 2.0 * i
        assert result.flags.writeable, "a result array came back read-only"
        result += 1
    assert float(arrays[1][0]) == 1.0, "the caller's own array was changed by the worker"


def test_large_bytes_and_bytearray_items_and_results_round_trip():
    items = [b"a" * (2 * MIB), bytearray(b"b" * MIB), b"small", memoryview(b"c" * MIB).tobytes()]
    with MulticorePool(2) as pool:
        assert pool.map(helpers.size_of, items) == [2 * MIB, MIB, 5, MIB]
        blobs = pool.map(helpers.make_blob, [3 * MIB, 4])
    assert [type(b) for b in blobs] == [bytes, bytes] and [len(b) for b in blobs] == [3 * MIB, 4]


def test_large_bytes_items_and_results_travel_out_of_band():
    outcome = ChunkOutcome([b"r" * (2 * MIB), b"small"], None, 0.1)
    long_chunk = [*range(100), b"l" * (2 * MIB)]  # longer than the lists searched before pickling
    probe = ProbeItems([b"p" * (2 * MIB), 1], 0.5)
    for value in ([b"a" * (2 * MIB), b"small"], outcome.wire(), long_chunk, probe):
        payload = shared_memory.dumps(value)
        assert isinstance(payload, shared_memory.SharedPayload) and sum(payload.sizes) == 2 * MIB
        assert len(payload.skeleton) < 4096  # the bytes were not copied into the pickle
        loaded = payload.load()
        assert loaded == value and type(loaded) is type(value)
    assert payload.load().budget == 0.5


def test_large_bytes_stay_out_of_band_when_an_engine_pickles_a_payload_with_protocol_5():
    # Dask and Ray pickle the payloads glimpse hands them (Unpickled) with protocol 5 and a buffer
    # callback: large bytes items must reach that callback, not be copied into the pickle.
    items = [b"a" * (2 * MIB), b"small", np.ones(MIB // 8)]
    payload = unpickled_if_large(items)
    assert isinstance(payload, Unpickled)
    buffers: list = []
    skeleton = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    assert len(skeleton) < 4096 and sorted(b.raw().nbytes for b in buffers) == [MIB, 2 * MIB]
    loaded = pickle.loads(skeleton, buffers=buffers).load()
    assert loaded[:2] == items[:2] and [type(item) for item in loaded[:2]] == [bytes, bytes]
    assert (loaded[2] == items[2]).all()
    for protocol in (4, 5):  # Dask pickles some messages with protocol 4
        in_band = pickle.loads(pickle.dumps(payload, protocol=protocol)).load()
        assert in_band[:2] == items[:2] and type(in_band[0]) is bytes


def test_small_items_do_not_use_shared_memory():
    assert isinstance(shared_memory.dumps([1, 2, b"x" * 1000]), bytes)
    assert isinstance(shared_memory.dumps([np.zeros(MIB // 8)]), shared_memory.SharedPayload)


def test_nothing_is_left_open_or_in_dev_shm_after_normal_use_early_exit_a_killed_worker_and_terminate(tmp_path):
    shm = _dev_shm()
    arrays = [np.ones(MIB // 2) for _ in range(20)]
    pool = MulticorePool(2)
    assert len(pool.map(_double_in_place, arrays)) == 20
    results = pool.imap(_double_in_place, iter(arrays))
    next(results)
    assert _shared_memory_descriptors(), "no shared buffer was in flight during an imap of 4 MiB arrays"
    results.close()
    marker = str(tmp_path / "died")
    assert pool.map(helpers.die_once, [(marker, np.ones(MIB // 2))])[0].sum() == MIB // 2
    running = pool.imap(helpers.sleep_then_return, [(30, np.ones(MIB))] * 4, chunksize=1)
    pool.terminate()
    pool.join()
    del running, results
    assert _dev_shm() == shm, f"left in /dev/shm: {_dev_shm() - shm}"
    assert _shared_memory_descriptors() == [], "the caller kept descriptors of shared buffers open"


def test_a_caller_killed_mid_call_leaves_nothing_in_dev_shm_and_no_worker():
    shm = _dev_shm()
    code = textwrap.dedent(
        """
        import os, signal, numpy as np
        from glimpse.pools import MulticorePool
        if __name__ == "__main__":
            pool = MulticorePool(2)
            results = pool.imap(lambda a: a * 2, (np.ones(1 << 19) for _ in range(10_000)))
            for i, _ in enumerate(results):
                if i == 50:
                    print(*[w.pid for w in pool._backend._workers], flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr
    workers = [int(pid) for pid in process.stdout.split()]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived their killed caller"
    assert _dev_shm() == shm, f"left in /dev/shm: {_dev_shm() - shm}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
