"""The backend of IPython parallel pools: chunks are tasks of an ipyparallel load-balanced view,
or, on a cluster the pool started itself, tasks the pool books on the engines (``booking``).

The pickled function is pushed to every engine (and to an engine that joins later) under a name
made from its content, and each chunk refers to it with ``ipyparallel.Reference``; the last few
functions stay there, so calling one again sends it nowhere. As ipyparallel's own ``map`` does,
the chunk runner is pickled once, and a chunk's outcome is unpickled in the client's IO thread the
moment it arrives, while the caller waits for the others. An engine
that died (``EngineError``) loses the chunks it held, running or queued, and so does one the
controller unregistered (silent for its heartbeat limit: see ``heartbeat``), at once; a cancelled
chunk is aborted if queued, and the engine running it gets SIGUSR2 (through the engine's nanny),
which ends it. A controller that does not answer at all is ``silent`` to the call, not lost: the
call waits ``$GLIMPSE_SILENCE_TIMEOUT`` for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import re
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import ipyparallel
from ipyparallel import error as ipp_error

from glimpse.pools.backends.ipython import compat
from glimpse.pools.backends.ipython.sending import BookedEngines, ThroughScheduler
from glimpse.pools.cluster.reachability import head_silent, tcp_answers
from glimpse.pools.contract import Backend, Call, Chunk, ChunkLost, Health, pickling
from glimpse.pools.contract.out_of_band import Unpickled
from glimpse.pools.contract.worker_policy import parse_where
from glimpse.pools.contract.worker_runner import run_chunk
from glimpse.pools.errors import RemoteError, RemoteTraceback
from glimpse.pools.subprocesses import kill_worker_here

log = logging.getLogger(__name__)

#: The signal that interrupts a cancelled chunk on its engine (ignored by engines outside chunks).
INTERRUPT_SIGNAL = "SIGUSR2"
#: How long cancel() waits to learn which engines run the chunks it interrupts.
LOCATE_SECONDS = 2.0
_MAX_RESENDS = 5
#: Functions kept on the engines after their call, for the next call of the same function.
_KEPT_FUNCTIONS = 4


@dataclass
class _Shared:
    """A call's function as pushed to engines: its name there, and the engines that have it."""

    name: str
    blob: bytes
    engines: set[int] = field(default_factory=set)


class IPythonBackend(Backend):
    """Runs chunks on the engines of an ipyparallel ``Client``.

    Closing it closes ``client`` if it ``owns_client``, and stops ``cluster``, an embedded
    cluster the pool owns, whose dead engines it also replaces while it waits, and whose engines
    it books itself: no one else sends them work.
    """

    chunk_seconds = 0.1
    task_seconds = 5e-3  # the hub and the scheduler, each a Python process

    def __init__(self, client, owns_client: bool = True, cluster=None):
        self._client = client
        self._owns_client = owns_client
        self.cluster = cluster
        self._heal = cluster.replace_lost_engines if cluster is not None else None
        # Functions pushed to the engines, by content, kept for the next calls of the same function.
        self._kept: OrderedDict[str, _Shared] = OrderedDict()
        self._shared: dict[str, _Shared] = {}  # by call id, while the call runs
        self._cancelled: set = set()
        self._engine_ids: dict[str, int] = {}
        self._controller_silent = False  # as the last health() found it
        runner = compat.prepickled(_run_interruptibly)
        if cluster is None:
            self._sending: ThroughScheduler | BookedEngines = ThroughScheduler(client, runner, self._started)
        else:
            self._sending = BookedEngines(client, runner, self._started, self._before_sending)

    def workers(self) -> int:
        return max(1, len(self._client.ids))

    def health(self) -> Health:
        address = compat.controller_address(self._client)
        self._controller_silent = bool(address) and head_silent(address)
        if self._controller_silent:
            return Health(0, silent=f"the IPython controller at {address} does not answer (its machine is unreachable)")
        if address and not tcp_answers(address):
            return Health(0, lost=f"the IPython controller at {address} does not answer (it stopped)")
        return Health(
            len(self._client.ids),
            address=address or "the IPython controller",
            start_workers="glimpse-cluster --type ipython LaunchWorker (with the cluster's --profile or --profile-dir)",
        )

    def open_call(self, call: Call) -> None:
        digest = hashlib.blake2b(call.blob, digest_size=16).hexdigest()
        shared = self._kept.get(digest)
        if shared is None:
            shared = self._kept[digest] = _Shared(f"_glimpse_function_{digest}", call.blob)
        self._kept.move_to_end(digest)
        self._shared[call.id] = shared
        self._remember_engines()
        self._push(shared, set(self._client.ids))
        self._drop_old_functions()

    def close_call(self, call: Call) -> None:
        self._shared.pop(call.id, None)

    def submit(self, call: Call, chunk: Chunk) -> _Task:
        shared = self._shared[call.id]
        task = _Task(shared, (call.id, ipyparallel.Reference(shared.name), chunk.payload, chunk.start))
        task.resent = chunk.attempts > 0
        self._send(task)
        return task

    def wait(self, handles, timeout: float) -> list[_Task]:
        if self._heal is not None:
            self._heal()
        if self._cancelled:
            self._interrupt_cancelled()
        self._remember_engines()
        engines = set(self._client.ids)
        for shared in self._shared.values():
            self._push(shared, engines)
        self._lose_tasks_of_unregistered_engines(handles)
        tasks = {task.decoded: task for task in handles}
        done = self._sending.wait_for_any(tasks, timeout)
        self._controller_silent &= not done
        finished = []
        for decoded in done:
            task = tasks[decoded]
            engine = None if task.lost_on else _engine_without_function(task)
            if engine is None or task.resends >= _MAX_RESENDS:
                finished.append(task)
                continue
            # An engine that registered after the function was pushed took the chunk first.
            self._push(task.shared, {engine}, again=True)
            task.resends += 1
            self._send(task)
        self._sending.dispatch()
        return finished

    def outcome(self, handle: _Task) -> Unpickled | bytes:
        try:
            if handle.lost_on is not None:
                engine = _engine_named_by(None, self._engine_ids, uuid=handle.lost_on)
                raise ChunkLost(
                    f"ipyparallel engine {engine} held the chunk when the controller unregistered it "
                    "(it died, or stopped answering the controller's heartbeats)"
                )
            failure = _failure_of(handle.future)
            if isinstance(failure, ipp_error.KernelError):  # an engine's error, its death, an abort
                raise self._engine_failure(failure, handle.engine) from None
            if failure is not None:
                raise failure
            return handle.decoded.result()
        finally:
            self._forget(handle.future)
            self._sending.forget(handle)

    def cancel(self, handles) -> None:
        self._sending.drop(handles)
        for task in handles:
            task.cancelled = True
        futures = [task.future for task in handles if task.future is not None and not task.future.done()]
        if not futures:
            return
        with contextlib.suppress(ipp_error.NoEnginesRegistered):
            self._client.abort([future.msg_id for future in futures], block=False)
        self._cancelled.update(futures)
        if self._controller_silent:  # it cannot say which engines run them; wait() signals them later
            return
        deadline = time.monotonic() + LOCATE_SECONDS
        while self._interrupt_cancelled() and time.monotonic() < deadline:
            time.sleep(0.05)

    def reclaim(self, where: str) -> None:
        """Kill the engine an item's thread was left running in, on the cluster the pool owns (which
        replaces dead engines); never an engine of a cluster someone else runs."""
        if self.cluster is not None and kill_worker_here(*parse_where(where), "ipyparallel.engine"):
            log.info("killed IPython engine %s: an item that timed out left its thread running there", where)

    def close(self) -> None:
        if not self._owns_client:  # the engines go on serving others: leave nothing of ours there
            for shared in self._kept.values():
                self._drop(shared)
        self._kept.clear()
        self._sending.clear()
        if self._owns_client:
            self._client.close()
        if self.cluster is not None:
            self.cluster.stop()

    def _send(self, task: _Task) -> None:
        task.decoded = concurrent.futures.Future()
        self._sending.send(task)

    def _before_sending(self, task: _Task, engine: int) -> None:
        if engine not in task.shared.engines:
            self._push(task.shared, {engine})

    @staticmethod
    def _started(task: _Task, future) -> None:
        task.future = future
        future.add_done_callback(functools.partial(_decode_when_done, task.decoded))

    def _engine_failure(self, exc: BaseException, sent_to: int | None = None) -> BaseException:
        """A lost engine becomes ChunkLost; anything else is the engine's own error, explained.
        ``sent_to``: the engine the chunk was sent to, if the pool chose it."""
        name = getattr(exc, "ename", type(exc).__name__)
        engine = _engine_named_by(exc, self._engine_ids, sent_to)
        if name == "EngineError" or isinstance(exc, ipp_error.EngineError):
            if self._heal is not None:
                self._heal()
            return ChunkLost(f"ipyparallel engine {engine} died while it held the chunk (running or queued)")
        message = str(getattr(exc, "evalue", exc))
        failure = RemoteError(
            f"ipyparallel engine {engine} could not run glimpse's chunk runner: {name}: {message} "
            "(are glimpse-pools and its dependencies installed where the engines run?)"
        )
        failure.__cause__ = RemoteTraceback(getattr(exc, "traceback", None) or str(exc))
        return failure

    def _push(self, shared: _Shared, engines: set[int], again: bool = False) -> None:
        """Send the function to each engine the way its chunks go: a task of the load-balanced
        view bound to it, or straight to its queue when the pool books the engines.

        Either way an engine gets its tasks in the order they were sent, so every chunk sent
        after this reaches an engine after the function does; no need to wait. (Through the
        task scheduler, ``DirectView.push`` would take another path, and chunks could overtake
        it.) Only an engine that registers later can take an older chunk of the task scheduler
        first: :meth:`wait` sends that chunk again.
        """
        live = set(self._client.ids)
        for engine in sorted((engines if again else engines - shared.engines) & live):
            self._sending.call_on(engine, _store, (shared.name, shared.blob))
            shared.engines.add(engine)

    def _drop_old_functions(self) -> None:
        """Keep the newest ``_KEPT_FUNCTIONS`` functions no call uses, and those calls use."""
        in_use = {id(shared) for shared in self._shared.values()}
        idle = [digest for digest, kept in self._kept.items() if id(kept) not in in_use]
        for digest in idle[: max(0, len(idle) - _KEPT_FUNCTIONS)]:
            self._drop(self._kept.pop(digest))

    def _drop(self, shared: _Shared) -> None:
        """Remove a pushed function from the engines that have it."""
        view = self._view_of(shared.engines)
        if view is not None:
            view.execute(f"globals().pop({shared.name!r}, None)", block=False)

    def _interrupt_cancelled(self) -> bool:
        """Signal the engines now running cancelled chunks; whether some are not located yet.

        ``abort()`` only stops queued tasks. The signal (sent by the engine's nanny) raises
        KeyboardInterrupt in the running chunk, which then ends at once.
        """
        engines = set()
        for future in list(self._cancelled):
            engine = None if future.done() else self._client.metadata.get(future.msg_id, {}).get("engine_id")
            if future.done() or engine is not None:
                self._cancelled.discard(future)
            if engine is not None:
                engines.add(engine)
        view = self._view_of(engines)
        if view is not None:
            self._client.send_signal(INTERRUPT_SIGNAL, targets=view.targets, block=False)
        return bool(self._cancelled)

    def _view_of(self, engines):
        """A direct view on those of ``engines`` still registered, or ``None`` if none is."""
        for _ in range(3):
            live = sorted(set(engines) & set(self._client.ids))
            if not live:
                return None
            try:
                return self._client[live]
            except (KeyError, IndexError, ipp_error.NoEnginesRegistered):
                continue  # an engine unregistered between the two looks
        return None

    def _lose_tasks_of_unregistered_engines(self, tasks) -> None:
        """Mark lost, now, the tasks running on engines the controller has unregistered.

        Through the task scheduler, ipyparallel reports such a task lost only 5 s after the engine
        left (its result might still be on the way); the client learns which engine runs a task
        from the engine's first message about it. Chunks the pool sent straight to an engine the
        client reports lost itself, at once.
        """
        gone = self._engine_ids.keys() - compat.engine_ids_by_uuid(self._client).keys()
        if not gone:
            return
        for task in tasks:
            if task.future is None or task.decoded.done():
                continue
            uuid = self._client.metadata.get(task.future.msg_id, {}).get("engine_uuid")
            if uuid in gone:
                try:
                    task.decoded.set_result(None)
                except concurrent.futures.InvalidStateError:  # its outcome came just now
                    continue
                task.lost_on = uuid

    def _remember_engines(self) -> None:
        # A dead engine's id is gone from the client when its loss is reported; keep the names.
        self._engine_ids.update(compat.engine_ids_by_uuid(self._client))

    def _forget(self, future) -> None:
        """Drop a read chunk's result from the client's caches now: the client drops it by itself
        only once the engine's output has arrived too, which may be later, or never."""
        if future.done():
            self._client.purge_local_results(jobs=[future.msg_id])


class _Task:
    """A submitted chunk: its arguments, its current ipyparallel task, the outcome unpickled once
    that task is done (``decoded``), the engine the pool sent it to if it chose one, the uuid of
    the unregistered engine it was lost on (``lost_on``), its re-sends
    after a missing function, whether the call sent it again after losing it (``resent``), and
    whether it was cancelled."""

    __slots__ = ("shared", "args", "future", "decoded", "engine", "lost_on", "resends", "resent", "cancelled")

    def __init__(self, shared: _Shared, args: tuple):
        self.shared, self.args = shared, args
        self.future = self.decoded = self.engine = self.lost_on = None
        self.resends = 0
        self.resent = self.cancelled = False


def _decode_when_done(decoded: concurrent.futures.Future, future) -> None:
    """In the client's IO thread, when a task ends: unpickle its outcome, then wake the caller.

    An outcome that does not unpickle is left as bytes, for the caller to fail on and report; a
    task that failed is marked done with nothing, and ``outcome()`` reads its error from ``future``.
    """
    if decoded.done():  # lost already, when its engine was unregistered
        return
    try:
        raw = future.result()
    except BaseException:  # the client closed, or the future was cancelled
        raw = None
    if type(raw) is not bytes:  # anything else is an error ipyparallel put there
        _settle(decoded, None)
        return
    try:
        value = Unpickled(pickling.loads(raw), len(raw))
    except Exception:
        value = raw
    _settle(decoded, value)


def _settle(decoded: concurrent.futures.Future, value) -> None:
    """Set a task's outcome, unless the caller marked it lost meanwhile (its engine was unregistered)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        decoded.set_result(value)


def _store(name: str, blob: bytes) -> None:
    """On an engine: keep a call's pickled function where ``ipyparallel.Reference`` looks.

    It runs before any chunk of the call on that engine, so it also makes the engine ignore
    the interrupt signal outside chunks.
    """
    from IPython import get_ipython

    get_ipython().user_ns[name] = blob
    _set_interrupt_handler(signal.SIG_IGN)


def _run_interruptibly(call_id: str, func_blob: bytes, payload: bytes, start: int) -> bytes:
    """On an engine: run a chunk, turning the interrupt signal into KeyboardInterrupt meanwhile.

    Not SIGINT: a SIGINT that lands in the engine's own code, just before or after the chunk,
    is caught by the kernel and the task never replies (so the scheduler never frees the engine).
    """
    _set_interrupt_handler(signal.default_int_handler)
    try:
        return run_chunk(call_id, func_blob, payload, start)
    finally:
        _set_interrupt_handler(signal.SIG_IGN)


def _set_interrupt_handler(handler) -> None:
    with contextlib.suppress(ValueError, AttributeError, OSError):  # not the main thread, or no SIGUSR2
        signal.signal(getattr(signal, INTERRUPT_SIGNAL), handler)


def _failure_of(future) -> BaseException | None:
    """Why a finished task has no outcome: the engine's error, its death, an abort; or ``None``.

    The runner returns bytes, so any other value of the reply is the error ipyparallel put there.
    """
    try:
        value = future.result()
    except BaseException as exc:  # the client closed, or the future was cancelled
        return exc
    return value if isinstance(value, BaseException) else None


def _engine_without_function(task: _Task) -> int | None:
    """The engine that failed the chunk for want of the call's function, if that is what happened."""
    exc = _failure_of(task.future)
    if isinstance(exc, ipp_error.RemoteError) and exc.ename == "NameError" and task.shared.name in str(exc.evalue):
        engine = (exc.engine_info or {}).get("engine_id")
        return engine if isinstance(engine, int) else None
    return None


def _engine_named_by(
    exc: BaseException | None, engine_ids: dict[str, int], sent_to: int | None = None, uuid: str | None = None
) -> str:
    info = getattr(exc, "engine_info", None) or {}
    uuid = uuid or info.get("engine_uuid") or _uuid_in(str(getattr(exc, "evalue", "")))
    engine = info.get("engine_id")
    if engine is None:
        engine = engine_ids.get(uuid, sent_to)
    if uuid is None and engine is not None:
        uuid = next((known for known, number in engine_ids.items() if number == engine), None)
    if engine is not None:
        return f"{engine}" + (f" ({uuid})" if uuid else "")
    return uuid or "(unknown)"


def _uuid_in(message: str) -> str | None:
    found = re.search(r"Engine b?'([0-9a-f-]+)'", message)
    return found.group(1) if found else None
