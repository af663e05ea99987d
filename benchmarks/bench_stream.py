"""Streaming fresh large items through every engine: glimpse beside the engine's own best idiom,
beside multiprocessing, and beside the machine's physical limit, in one run.

    python benchmarks/bench_stream.py [--quick] [--sizes 64K,1M,16M] [--arrays] [--json PATH]
        [--engines multicore,dask,ray,ipython,zmq,gearman] [--volume MiB]

Each item is made fresh by a generator (``bytes([i % 256]) * size``; with ``--arrays``, a uint8
numpy array of ``size`` elements) and the function is ``len``: the work is moving bytes. Each size
streams a fixed volume (1 GiB; ``--quick``: 128 MiB). Each engine runs one cluster with 2 workers,
started once, and every contender on it runs in a fresh subprocess that connects to it, so its
memory figure is its own. Contenders:

- ``mp``: ``multiprocessing.Pool(2).imap(len, gen, 1)``, the baseline of the ``vs mp`` column.
- ``glimpse``: the engine's glimpse pool connected to the cluster, ``pool.imap(len, gen)``.
- Dask: ``scatter``: ``client.scatter(item, direct=True, hash=False)`` then ``client.submit(len,
  future)``, a bounded number in flight, taken back with ``distributed.as_completed``;
  ``submit``: ``client.submit(len, item)`` the same way (the item travels in the task); ``map
  batches``: ``client.map(len, batch)`` on batches of 4 items, a new batch each time 4 are done.
- Ray: ``ray.put(item)`` and a task on its reference, a bounded number in flight, ``ray.wait``.
- ipyparallel: ``LoadBalancedView.imap(len, gen, ordered=True, max_outstanding=...)``.
- zmq: a plain PUSH/PULL pipeline over TCP on 127.0.0.1: the caller is the ventilator (PUSH) and the
  sink (PULL), 2 worker processes of their own (PULL, ``len``, PUSH), a bounded number in flight,
  zero-copy frames; its workers are not glimpse's, so it is the only idiom on another cluster.
- gearman: the project uses no native Python gearman client: glimpse against multiprocessing only.
- multicore: its idiom is multiprocessing itself.
- zmq and gearman also: ``embedded``, glimpse on the cluster ``MakePool(workers=2)`` starts for itself
  (a zmq broker that runs its slots and talks to the pool through a socket pair; gearmand and a
  worker process), as a user without a cluster gets it: not the same cluster as the other rows.

The idioms take results back in any order; glimpse's ``imap`` keeps the order. The glimpse zmq and
gearman clusters sign every message (the default; ``--insecure`` to compare); the PUSH/PULL
pipeline signs nothing.

Columns: ``s``, wall seconds of the stream (the pool or client is made and warmed up before);
``MiB/s``, volume / seconds; ``growth``, the caller's peak resident memory (VmHWM, reset before the
stream) minus its resident memory before the stream, in MiB, shared memory it maps included (Ray's
object store); ``private``, the growth of its private memory (RssAnon, sampled every 5 ms, so a
peak shorter than that may be missed), in MiB (goal <= 256); ``vs idiom``, the best
idiom's seconds / glimpse's seconds (> 1 favours glimpse); ``vs mp``, multiprocessing's seconds /
the row's seconds (> 1: faster than multiprocessing). The limits printed first: loopback TCP (one
process sending 1 GiB in 1 MiB writes over 127.0.0.1, another receiving) and a memory copy of
256 MiB (``bytearray(x)``, fresh pages; into an existing buffer; ``numpy.copy`` if numpy is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from workloads import JsonRecord, PeriodicSampler

MIB = 1 << 20
WORKERS = 2
#: Items in flight for the idioms that bound them: a few per worker, as their docs suggest.
IN_FLIGHT = 4 * WORKERS
_ENGINES = "multicore,dask,ray,ipython,zmq,gearman"
#: Engine -> (module it needs, glimpse extra).
_EXTRAS = {
    "dask": ("distributed", "dask"),
    "ray": ("ray", "ray"),
    "ipython": ("ipyparallel", "ipython"),
    "zmq": ("zmq", "zmq"),
    "gearman": ("glimpse.pools.backends.gearman", "gearman"),
}
#: Engine -> its idioms (multicore's is the mp baseline, gearman has none).
IDIOMS = {
    "multicore": [],
    "dask": ["scatter", "submit", "map batches"],
    "ray": ["put+wait"],
    "ipython": ["view.imap"],
    "zmq": ["push/pull"],
    "gearman": [],
}
_LABELS = {
    "mp": "mp Pool.imap(len, gen, 1)",
    "glimpse": "glimpse pool.imap(len, gen)",
    "embedded": "glimpse, its own embedded cluster (not the same)",
    "scatter": f"scatter(direct)+submit, as_completed, {IN_FLIGHT} in flight",
    "submit": f"submit(len, item), as_completed, {IN_FLIGHT} in flight",
    "map batches": f"client.map, batches of {IN_FLIGHT // 2}, as_completed, {IN_FLIGHT} in flight",
    "put+wait": f"ray.put + task, ray.wait, {IN_FLIGHT} in flight",
    "view.imap": f"LoadBalancedView.imap, max_outstanding={IN_FLIGHT}",
    "push/pull": f"PUSH/PULL pipeline, {IN_FLIGHT} in flight",
}
_SETTINGS = "BENCH_STREAM_SETTINGS"


# ---- the parent: clusters, subprocesses, tables ------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 MiB per size instead of 1 GiB")
    parser.add_argument("--sizes", default="64K,1M,16M", help="item sizes, e.g. 64K,1M,16M")
    parser.add_argument("--engines", default=_ENGINES, help=f"engines to measure (default {_ENGINES})")
    parser.add_argument("--volume", type=int, help="MiB streamed per size (default 1024, --quick 128)")
    parser.add_argument("--arrays", action="store_true", help="stream uint8 numpy arrays instead of bytes")
    parser.add_argument("--insecure", action="store_true", help="zmq and gearman clusters sign nothing")
    parser.add_argument("--timeout", type=float, help="seconds before a run counts as hung (600, --quick 180)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (for benchmarks/charts.py)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(measure(json.loads(args.run))), flush=True)
        return
    volume = (args.volume or (128 if args.quick else 1024)) * MIB
    sizes = [_parse_size(text) for text in args.sizes.split(",") if text]
    engines = [engine for engine in args.engines.split(",") if engine]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")

    print(f"Streaming fresh {'uint8 arrays' if args.arrays else 'bytes'} through imap(len, ...), {WORKERS} workers, ")
    print(f"{volume // MIB} MiB per size, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"Limits of this machine: loopback TCP {loopback_mib_s(1 << 30):.0f} MiB/s, ", end="")
    print(", ".join(f"{name} {speed:.0f} MiB/s" for name, speed in copy_mib_s(256 * MIB).items()))
    print()
    header = f"{'size':>6} {'engine':<10} {'contender':<52} {'s':>7} {'MiB/s':>7} {'growth':>7} {'private':>7} "
    header += f"{'vs idiom':>9} {'vs mp':>6}"
    print(header)
    print("-" * len(header))
    run = Runner(volume, args.arrays, args.timeout or (180 if args.quick else 600))
    record = JsonRecord("stream", {"volume_mib": volume // MIB, "arrays": args.arrays, "workers": WORKERS})
    baseline = {}
    for size in sizes:
        baseline[size] = run.one("multicore", "mp", size, {})
        print(_row(size, "-", "mp", baseline[size], None, baseline[size], record), flush=True)
    for engine in engines:
        missing = _missing(engine)
        if missing:
            print(f"{'':>6} {engine:<10} skipped: {missing}", flush=True)
            continue
        try:
            with cluster(engine, args.insecure) as settings:
                for size in sizes:
                    ours = run.one(engine, "glimpse", size, settings)
                    theirs = {idiom: run.one(engine, idiom, size, settings) for idiom in IDIOMS[engine]}
                    own = run.one(engine, "embedded", size, settings) if engine in ("zmq", "gearman") else None
                    if engine == "multicore":
                        theirs = {"mp": baseline[size]}
                    timed = [result["seconds"] for result in theirs.values() if "seconds" in result]
                    best = min(timed) if timed else None
                    print(_row(size, engine, "glimpse", ours, best, baseline[size], record), flush=True)
                    for idiom, result in theirs.items():
                        if idiom != "mp":
                            print(_row(size, engine, idiom, result, None, baseline[size], record), flush=True)
                    if own is not None:
                        print(_row(size, engine, "embedded", own, best, baseline[size], record), flush=True)
                    if engine == "gearman" and size == sizes[-1]:
                        print(f"{'':>6} {engine:<10} (no native Python gearman client in the project: vs mp only)")
        except Exception as exc:  # a cluster that does not start is one line of the table, not the end
            print(f"{'':>6} {engine:<10} cluster failed: {type(exc).__name__}: {exc}", flush=True)
    print(
        "\n(s: wall seconds; growth, private: caller's peak RSS and private memory growth in MiB, goal <= 256; "
        "vs idiom: best idiom's s / glimpse's s; vs mp: multiprocessing's s / row's s; > 1 favours glimpse / the row)"
    )
    record.write(args.json)


class Runner:
    """Runs one contender's stream in a fresh subprocess (a session of its own, ended by group id)."""

    def __init__(self, volume: int, arrays: bool, timeout: float):
        self.volume, self.arrays, self.timeout = volume, arrays, timeout

    def one(self, engine: str, contender: str, size: int, settings: dict) -> dict:
        spec = {"engine": engine, "contender": contender, "size": size, "count": max(1, self.volume // size)}
        spec["arrays"] = self.arrays
        env = {**os.environ, _SETTINGS: json.dumps(settings)}
        env.update(settings.get("environment", {}))
        command = [sys.executable, os.path.abspath(__file__), "--run", json.dumps(spec)]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return {"error": f"hung: no result within {self.timeout:g} s ({' '.join(command)})"}
        _kill_group(process)
        if process.returncode != 0 or not out.strip():
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {process.returncode}"
            print(err, file=sys.stderr)
            return {"error": f"failed: {last}"}
        return json.loads(out.strip().splitlines()[-1])


def _row(
    size: int, engine: str, contender: str, result: dict, idiom_seconds: float | None, mp: dict, record: JsonRecord
) -> str:
    label = _LABELS[contender]
    if "error" in result:
        record.add(size=size, engine=engine, contender=contender, label=label, error=result["error"])
        return f"{_size_text(size):>6} {engine:<10} {label:<52} {result['error']}"
    seconds = result["seconds"]
    record.add(
        size=size,
        engine=engine,
        contender=contender,
        label=label,
        seconds=seconds,
        mib_s=result["mib"] / seconds,
        growth_mib=result["growth"],
        private_mib=result["private"],
        vs_idiom=idiom_seconds / seconds if idiom_seconds else None,
        vs_mp=mp["seconds"] / seconds if "seconds" in mp else None,
    )
    vs_idiom = f"{idiom_seconds / seconds:>8.2f}x" if idiom_seconds else f"{'-':>9}"
    vs_mp = f"{mp['seconds'] / seconds:>5.2f}x" if "seconds" in mp else f"{'-':>6}"
    return (
        f"{_size_text(size):>6} {engine:<10} {label:<52} {seconds:>7.2f} {result['mib'] / seconds:>7.0f} "
        f"{result['growth']:>7.0f} {result['private']:>7.0f} {vs_idiom} {vs_mp}"
    )


@contextlib.contextmanager
def cluster(engine: str, insecure: bool):
    """Start ``engine``'s cluster with 2 workers; yield the settings a subprocess needs to connect to it."""
    if engine == "multicore":
        yield {}
    elif engine == "dask":
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as local:
            yield {"address": local.scheduler_address}
    elif engine == "ray":
        import ray

        from glimpse.pools.ray_cluster import RayPool

        pool = RayPool(num_cpus=WORKERS, log_to_driver=False)
        try:
            yield {"address": ray.get_runtime_context().gcs_address}
        finally:
            pool.close()
    elif engine == "ipython":
        from glimpse.pools.backends.ipython.embedded import EmbeddedIPythonCluster

        embedded = EmbeddedIPythonCluster(WORKERS)
        try:
            embedded.start().close()
            yield {"profile_dir": embedded.profile_dir, "cluster_id": embedded.cluster_id}
        finally:
            embedded.stop()
    else:
        with _transport_cluster(engine, insecure) as settings:
            if engine == "zmq":
                with _push_pull_workers() as ports:
                    yield {**settings, **ports}
            else:
                yield settings


@contextlib.contextmanager
def _transport_cluster(engine: str, insecure: bool):
    """A glimpse zmq or gearman broker and a LaunchWorker process with 2 slots, over TCP."""
    from glimpse.pools.cluster.embedded import EmbeddedCluster
    from glimpse.pools.security import generate_key, insecure_key

    key = insecure_key("the benchmark's cluster") if insecure else generate_key("the benchmark's cluster key")
    embedded = EmbeddedCluster.start(engine, WORKERS, key)
    try:
        environment = {} if insecure else {"GLIMPSE_CLUSTER_KEY": key.secret.hex()}
        yield {"address": embedded.address, "insecure": insecure, "environment": environment}
    finally:
        embedded.stop()
        embedded.join()


_PUSH_PULL_WORKER = r"""
import sys, zmq
context = zmq.Context()
source, sink = context.socket(zmq.PULL), context.socket(zmq.PUSH)
source.connect(sys.argv[1])
sink.connect(sys.argv[2])
while True:
    frame = source.recv(copy=False)
    sink.send(len(frame.buffer).to_bytes(8, "little"))
"""


@contextlib.contextmanager
def _push_pull_workers():
    """2 plain zmq worker processes (PULL -> len -> PUSH), each in a session of its own; they connect
    to the ports each run binds, and reconnect to the next run."""
    ventilator, sink = _free_port(), _free_port()
    addresses = [f"tcp://127.0.0.1:{ventilator}", f"tcp://127.0.0.1:{sink}"]
    workers = [
        subprocess.Popen([sys.executable, "-c", _PUSH_PULL_WORKER, *addresses], start_new_session=True)
        for _ in range(WORKERS)
    ]
    try:
        yield {"ventilator": addresses[0], "sink": addresses[1]}
    finally:
        for worker in workers:
            _kill_group(worker)


def loopback_mib_s(volume: int) -> float:
    """MiB/s of one process sending ``volume`` bytes in 1 MiB writes over 127.0.0.1 to another."""
    receiver = r"""
import socket, sys
connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
buffer, total = bytearray(1 << 20), 0
while (n := connection.recv_into(buffer)):
    total += n
print(total, flush=True)
"""
    with socket.create_server(("127.0.0.1", 0)) as server:
        process = subprocess.Popen(
            [sys.executable, "-c", receiver, str(server.getsockname()[1])],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        connection, _ = server.accept()
        block = memoryview(bytes(MIB))
        started = time.perf_counter()
        with connection:
            for _ in range(volume // MIB):
                connection.sendall(block)
            connection.shutdown(socket.SHUT_WR)
            received = int(process.stdout.readline())
        seconds = time.perf_counter() - started
        _kill_group(process)
    assert received == volume // MIB * MIB, received
    return received / MIB / seconds


def copy_mib_s(size: int) -> dict[str, float]:
    """MiB/s of copying ``size`` bytes in memory, best of 3: ``bytearray(x)`` and ``numpy.copy``."""
    source = bytes(size)
    target = bytearray(size)
    speeds = {
        "memory copy bytearray(x)": size / MIB / _best_of(3, lambda: bytearray(source)),
        "into a buffer": size / MIB / _best_of(3, lambda: target.__setitem__(slice(None), source)),
    }
    if importlib.util.find_spec("numpy"):
        import numpy as np

        array = np.frombuffer(source, dtype=np.uint8)
        speeds["numpy.copy"] = size / MIB / _best_of(3, lambda: np.copy(array))
    return speeds


def _missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here (with the install command), or None."""
    if engine not in IDIOMS:
        return f"unknown engine (known: {_ENGINES})"
    if engine in _EXTRAS:
        module, extra = _EXTRAS[engine]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"pip install 'glimpse-pools[{extra}]'"
    if engine == "gearman" and not shutil.which("gearmand"):
        return "needs gearmand: apt-get install gearman-job-server"
    return None


# ---- a subprocess: one contender's stream ------------------------------------------------------


def measure(spec: dict) -> dict:
    """Stream ``spec['count']`` fresh items of ``spec['size']`` through one contender; its seconds,
    MiB and the growth of this process's peak resident memory."""
    settings = json.loads(os.environ.get(_SETTINGS, "{}"))
    stream, close = _contender(spec["engine"], spec["contender"], settings)
    try:
        assert sum(stream(_items(64, 2 * IN_FLIGHT, spec["arrays"]))) == 64 * 2 * IN_FLIGHT
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before, private_before = _status_mib("VmRSS"), _status_mib("RssAnon")
        with _PeakSampler("RssAnon") as private:
            started = time.perf_counter()
            total = sum(stream(_items(spec["size"], spec["count"], spec["arrays"])))
            seconds = time.perf_counter() - started
        growth = _status_mib("VmHWM") - before
    finally:
        close()
    assert total == spec["size"] * spec["count"], total
    return {"seconds": seconds, "mib": total / MIB, "growth": growth, "private": private.peak - private_before}


class _PeakSampler(PeriodicSampler):
    """The highest value of a /proc/self/status field, sampled every 5 ms by a thread."""

    every = 0.005

    def __init__(self, field: str):
        super().__init__()
        self.field, self.peak = field, _status_mib(field)

    def __exit__(self, *exc_info):
        super().__exit__(*exc_info)
        self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, _status_mib(self.field))


def _items(size: int, count: int, arrays: bool):
    if arrays:
        import numpy as np

        for i in range(count):
            yield np.full(size, i % 256, dtype=np.uint8)
    else:
        for i in range(count):
            yield bytes([i % 256]) * size


def _contender(engine: str, contender: str, settings: dict):
    """(stream: items -> iterable of lengths, close) of one contender on the cluster of ``settings``."""
    if contender == "mp":
        import multiprocessing

        pool = multiprocessing.Pool(WORKERS)
        return (lambda items: pool.imap(len, items, 1)), pool.terminate
    if contender in ("glimpse", "embedded"):
        pool = _glimpse_pool(engine, settings if contender == "glimpse" else {})
        return (lambda items: pool.imap(len, items)), pool.terminate
    return {
        "scatter": _dask_idiom,
        "submit": _dask_idiom,
        "map batches": _dask_batches,
        "put+wait": _ray_idiom,
        "view.imap": _ipython_idiom,
        "push/pull": _push_pull_idiom,
    }[contender](contender, settings)


def _glimpse_pool(engine: str, settings: dict):
    if engine == "multicore":
        from glimpse.pools import MulticorePool

        return MulticorePool(WORKERS)
    if engine == "dask":
        from glimpse.pools.dask_cluster import MakePool

        return MakePool(settings["address"])
    if engine == "ray":
        from glimpse.pools.ray_cluster import MakePool

        return MakePool(settings["address"], log_to_driver=False)
    if engine == "ipython":
        from glimpse.pools.ipython_cluster import MakePool

        return MakePool(profile_dir=settings["profile_dir"], cluster_id=settings["cluster_id"])
    if engine == "zmq":
        from glimpse.pools.zmq_cluster import MakePool
    else:
        from glimpse.pools.gearman_cluster import MakePool
    if not settings:
        return MakePool(workers=WORKERS)
    return MakePool(settings["address"], insecure=settings["insecure"])


def _dask_idiom(contender: str, settings: dict):
    from distributed import Client, as_completed

    client = Client(settings["address"])

    def submit(item):
        if contender == "scatter":
            item = client.scatter(item, direct=True, hash=False)
        return client.submit(len, item, pure=False)

    def stream(items):
        items = iter(items)
        running = as_completed([submit(item) for item in itertools.islice(items, IN_FLIGHT)])
        for future in running:
            yield future.result()
            for item in itertools.islice(items, 1):
                running.add(submit(item))

    return stream, client.close


def _dask_batches(contender: str, settings: dict):
    from distributed import Client, as_completed

    client = Client(settings["address"])
    batch = IN_FLIGHT // 2

    def stream(items):
        items, running = iter(items), as_completed()

        def submit_batch():
            running.update(client.map(len, list(itertools.islice(items, batch)), pure=False))

        submit_batch()
        submit_batch()
        for done, future in enumerate(running, 1):
            yield future.result()
            if done % batch == 0:
                submit_batch()

    return stream, client.close


def _ray_idiom(contender: str, settings: dict):
    import ray

    # Connected through glimpse, which finds this machine's token and keeps Ray on the loopback
    # address: a bare ray.init(address=...) waits forever for the GCS here.
    connection = _glimpse_pool("ray", settings)
    length = ray.remote(_length)

    def stream(items):
        items = iter(items)
        pending = [length.remote(ray.put(item)) for item in itertools.islice(items, IN_FLIGHT)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
            pending += [length.remote(ray.put(item)) for item in itertools.islice(items, 1)]

    return stream, connection.close


def _length(item) -> int:
    return len(item)


def _ipython_idiom(contender: str, settings: dict):
    import ipyparallel

    client = ipyparallel.Client(profile_dir=settings["profile_dir"], cluster_id=settings["cluster_id"])
    client.wait_for_engines(WORKERS, timeout=60)
    view = client.load_balanced_view()
    return (lambda items: view.imap(len, items, ordered=True, max_outstanding=IN_FLIGHT)), client.close


def _push_pull_idiom(contender: str, settings: dict):
    import zmq

    context = zmq.Context()
    ventilator, sink = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    ventilator.bind(settings["ventilator"])
    sink.bind(settings["sink"])

    def stream(items):
        items, in_flight = iter(items), 0
        for item in itertools.islice(items, IN_FLIGHT):
            ventilator.send(item, copy=False)
            in_flight += 1
        while in_flight:
            yield int.from_bytes(sink.recv(), "little")
            in_flight -= 1
            for item in itertools.islice(items, 1):
                ventilator.send(item, copy=False)
                in_flight += 1

    def close():
        ventilator.close(linger=0)
        sink.close(linger=0)
        context.term()

    return stream, close


# ---- helpers -----------------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _size_text(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


if __name__ == "__main__":
    main()
