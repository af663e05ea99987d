"""Runs on the workers: apply a function to one chunk of items and report the outcome.

Every engine's worker calls :func:`run_chunk`; it never raises, so every engine returns the
same outcome bytes and the caller sees the user's own exception, never an engine wrapper.
This module imports only the standard library and cloudpickle, so workers load it fast.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import cloudpickle

from glimpse.pools.contract import pickling
from glimpse.pools.contract.worker_policy import Guarded, portable_exception, short_repr, worker_where
from glimpse.pools.errors import SerializationError

_FUNCTION_CACHE_SIZE = 4
_functions: OrderedDict[str, object] = OrderedDict()
_unpickling = threading.RLock()  # re-entrant: code run by unpickling a function never waits for itself


@dataclass
class ItemError:
    """An exception raised by the function (or by pickling) at item ``index`` of the call."""

    index: int
    exception: BaseException
    traceback: str = ""
    where: str = ""


@dataclass(eq=False)
class ChunkOutcome:
    """The results of a chunk, in order, up to the first failure, and the compute time.

    It travels as a plain tuple (:meth:`wire`, :meth:`from_wire`): a class named in a pickle
    costs a lookup on each side, more than the rest of a small chunk's outcome.
    """

    values: list = field(default_factory=list)
    failure: ItemError | None = None
    seconds: float = 0.0

    def wire(self) -> tuple:
        return self.values, self.failure, self.seconds

    @classmethod
    def from_wire(cls, wire: tuple) -> ChunkOutcome:
        return cls(*wire)


class ProbeItems(list):
    """The items of a call's first chunk on a worker, sent before anyone knows what an item costs.

    The worker runs them only until ``budget`` seconds have passed (one item at least) and
    returns the results so far; the caller sends the rest again in chunks sized by what the
    probe measured. So a call of tiny items needs no round trip to learn, and a call of slow
    items keeps the first results early.
    """

    def __init__(self, items, budget: float):
        super().__init__(items)
        self.budget = budget

    def __reduce__(self):
        return ProbeItems, (self[:], self.budget)  # a slice is a plain list, pickled fastest


def outcome_of_chunk(func, items, start: int, catch=Exception) -> ChunkOutcome:
    """Apply ``func`` to each item, stopping at the first exception (kept with its traceback),
    or, for :class:`ProbeItems`, once their time budget is spent."""
    values: list = []
    began = time.perf_counter()
    try:
        if type(func) is Guarded and func.timeout is not None:
            func.run_items(items, start, values)
        elif type(items) is ProbeItems:
            _run_within_budget(func, items, values, began)
        else:
            values.extend(map(func, items))  # the loop runs in C; on an error, the values before it stay
    except catch as exc:
        return ChunkOutcome(values, ItemError(start + len(values), exc), time.perf_counter() - began)
    return ChunkOutcome(values, None, time.perf_counter() - began)


def _run_within_budget(func, items: ProbeItems, values: list, began: float) -> None:
    """Run items in blocks, each as large as the time left allows at the rate measured so far."""
    deadline, remaining = began + items.budget, iter(items)
    while len(values) < len(items):
        now = time.perf_counter()
        done = len(values)
        if done and now >= deadline:
            return
        block = 1 if not done else max(1, min(done, int((deadline - now) * done / max(now - began, 1e-9))))
        values.extend(map(func, islice(remaining, block)))


#: How a chunk names its call's function: the pickled function, or a callable that returns it
#: (called only when this process has not unpickled the call's function yet, for workers that
#: fetch it on demand), or ``None`` when the sender knows this process has it already.
PickledFunction = bytes | Callable[[], bytes] | None


def run_chunk(call_id: str, function: PickledFunction, payload, start: int, dumps=pickling.dumps):
    """Unpickle a function (cached per call) and a chunk, run it, and return the pickled outcome.

    ``payload`` is the pickled items: bytes, or an object whose ``load()`` returns them (pickled
    with its large buffers elsewhere); ``dumps`` pickles the outcome's :meth:`~ChunkOutcome.wire`
    tuple (an engine may keep its large buffers out of band the same way).
    """
    try:
        func = _function_for(call_id, function)
        items = payload.load() if hasattr(payload, "load") else pickling.loads(payload)
    except BaseException as exc:
        outcome = ChunkOutcome(failure=ItemError(start, exc))
    else:
        outcome = outcome_of_chunk(func, items, start, catch=BaseException)
        replace = getattr(func, "replace_unpicklable", None)
        if replace is not None:
            return dumps_outcome(outcome, start, dumps, replace)
    return dumps_outcome(outcome, start, dumps)


def _function_for(call_id: str, function: PickledFunction):
    func = _functions.get(call_id)
    if func is not None:
        _functions.move_to_end(call_id)
        return func
    # Threads of one worker (Dask's) start a call's first chunks together: one fetches and
    # unpickles the function, the others wait for it, rather than each asking the scheduler.
    with _unpickling:
        func = _functions.get(call_id)
        if func is None:
            if function is None:
                raise RuntimeError(f"this worker was sent a chunk of call {call_id} without its function")
            func = pickling.loads(function() if callable(function) else function)
            _functions[call_id] = func
            while len(_functions) > _FUNCTION_CACHE_SIZE:
                _functions.popitem(last=False)
    return func


def dumps_outcome(outcome: ChunkOutcome, start: int, dumps=pickling.dumps, replace=None):
    """Pickle an outcome's :meth:`~ChunkOutcome.wire` form with ``dumps``; a result that cannot be
    pickled becomes a failure at its item, or, given ``replace(value, error)`` (a function's
    ``replace_unpicklable``, for functions that report failures in their values), that value."""
    if outcome.failure is not None:
        outcome.failure = portable_failure(outcome.failure)
    try:
        return dumps(outcome.wire())
    except Exception:
        if replace is not None:
            return dumps(_outcome_with_unpicklable_values_replaced(outcome, start, replace).wire())
        return dumps(_outcome_up_to_unpicklable_value(outcome, start).wire())


def _outcome_with_unpicklable_values_replaced(outcome: ChunkOutcome, start: int, replace) -> ChunkOutcome:
    values = []
    for value in outcome.values:
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            value = replace(value, exc)
        values.append(value)
    return ChunkOutcome(values, outcome.failure, outcome.seconds)


def _outcome_up_to_unpicklable_value(outcome: ChunkOutcome, start: int) -> ChunkOutcome:
    for offset, value in enumerate(outcome.values):
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            failure = portable_failure(ItemError(start + offset, _unpicklable_result(start + offset, value, exc)))
            return ChunkOutcome(outcome.values[:offset], failure, outcome.seconds)
    raise AssertionError("an outcome that fails to pickle has an unpicklable value")


def _unpicklable_result(index: int, value, exc: Exception) -> SerializationError:
    return SerializationError(
        f"the result of item #{index} could not be pickled: {type(exc).__name__}: {exc} "
        f"(result was {short_repr(value)})"
    )


def portable_failure(failure: ItemError) -> ItemError:
    """Format the traceback here, and make sure the exception survives a pickle round trip."""
    exc, text = portable_exception(failure.exception)
    return ItemError(failure.index, exc, text, worker_where())
