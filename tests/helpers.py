"""Functions the contract tests send to workers. Pickled by value (see conftest), so workers
of any engine can run them without importing the test package."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

WAIT_LIMIT = 60.0


def times_ten(x):
    return x * 10


def wait_for_file(path: str, limit: float = WAIT_LIMIT) -> bool:
    """Block until ``path`` exists (True) or ``limit`` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def held_until_released(item):
    """Item ``("hold", path)`` waits for ``path`` to exist; any other item returns at once."""
    if isinstance(item, tuple) and item[0] == "hold":
        return "released" if wait_for_file(item[1]) else "timed out"
    return item


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def sleep_then_return(item):
    seconds, value = item
    time.sleep(seconds)
    return value


class NeedsTwoArgsError(Exception):
    """An exception that cannot be unpickled (its __init__ wants two arguments)."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_unpicklable_exception(x):
    raise NeedsTwoArgsError("left", "right")


def die_once(item):
    """Kill this worker the first time ``item``'s marker file is missing; return the value after."""
    marker, value = item
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def die_always(x):
    os._exit(13)


def close_pipes_and_live_on(x):
    """Close every descriptor the worker talks through, then keep running as if nothing happened."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    time.sleep(600)


def pid_named_in(message: str) -> int:
    """The process id an error message names (``... process pid 123 ...``)."""
    return int(re.search(r"process pid (\d+)", message).group(1))


def return_lock(x):
    import threading

    return threading.Lock()


class RefusesToLoad:
    """A result that pickles on the worker and fails to unpickle in the caller."""

    def __reduce__(self):
        return _refuse_to_load, ()


def _refuse_to_load():
    raise ValueError("this object refuses to be unpickled")


def return_refuses_to_load(x):
    return RefusesToLoad()


def size_of(blob) -> int:
    return len(blob)


def make_blob(n: int) -> bytes:
    return b"x" * n


def worker_pid(x):
    return os.getpid()


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def sleep_then_index_and_pid(item):
    index, seconds = item
    time.sleep(seconds)
    return index, os.getpid()


def host_after(item):
    """Sleep ``item`` seconds (a number) and return the name of the host that ran it."""
    import socket

    time.sleep(item)
    return socket.gethostname()


def index_and_host_after(item):
    """``item`` is ``(index, seconds)``: sleep, then return the index and the host that ran it."""
    import socket

    index, seconds = item
    time.sleep(seconds)
    return index, socket.gethostname()


def hosts_of_a_map_inside(item):
    """``item`` is ``(pool, count)``: on a worker, map ``count`` short items over ``pool`` (a pool
    pickled into this task) and return the hosts that ran them."""
    pool, count = item
    try:
        return sorted(set(pool.map(host_after, [0.05] * count, chunksize=1)))
    finally:
        pool.close()


def host_variable_after(item):
    """Sleep ``item`` seconds; return ``$HOSTNAME`` as its test host set it (hosts that all renamed
    themselves to one hostname still differ here)."""
    time.sleep(item)
    return os.environ.get("HOSTNAME", "")


def stuck_at(item):
    """Item ``(x, stuck)`` sleeps for ever when ``x == stuck``; otherwise returns ``x * 10``."""
    x, stuck = item
    if x == stuck:
        time.sleep(10**9)
    return x * 10


def fails_first_attempts(item):
    """Item ``(x, directory, failures)`` raises ``OSError`` on its first ``failures`` attempts,
    counted in a file of ``directory`` (so attempts on any worker of this machine count)."""
    x, directory, failures = item
    with open(os.path.join(directory, str(x)), "a") as attempts:
        attempts.write(".")
        attempts.flush()
        count = os.fstat(attempts.fileno()).st_size
    if count <= failures:
        raise OSError(f"attempt {count} of item {x} failed")
    return x


def remember_setup(name, value):
    """An initializer: keeps ``value`` under ``name`` in this worker process's state."""
    from glimpse.pools import worker_state

    worker_state()[name] = (value, os.getpid())


def refuse_setup(name):
    """An initializer that raises."""
    raise LookupError(f"no model named {name}")


def setup_seen(name):
    """What :func:`remember_setup` kept under ``name``, if it ran in this process."""
    from glimpse.pools import worker_state

    value, pid = worker_state().get(name, (None, None))
    return value if pid == os.getpid() else None


def slurm_job_after(item):
    """``(index, SLURM job id, step id, host)`` of the worker that ran ``item = (index, seconds)``."""
    import os
    import socket
    import time

    index, seconds = item
    time.sleep(seconds)
    return index, os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID"), socket.gethostname()


class Tally:
    """A class with state of its own, sent by value like a class of ``__main__``."""

    where = "defined"

    def describe(self) -> str:
        return f"a tally {Tally.where}"


def tally_changed_on_the_worker(size: int):
    Tally.where = "changed on a worker"
    return Tally(), b"t" * size
