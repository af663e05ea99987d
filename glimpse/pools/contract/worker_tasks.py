"""Runs on the workers: single calls (``submit``, ``apply_async``) and ``starmap``'s argument tuples.

A batch of single calls travels as the items of one long ``imap_unordered`` call whose function
is :func:`run_task`; each item carries its own pickled function and arguments, and each comes
back with its task id and its own outcome, so one call that raises (or cannot be unpickled here)
fails only its own future. Like ``worker_runner``, this imports only the standard library and
cloudpickle.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from glimpse.pools.contract import pickling
from glimpse.pools.contract.worker_policy import short_repr
from glimpse.pools.contract.worker_runner import ItemError, portable_failure
from glimpse.pools.errors import SerializationError

_FUNCTION_CACHE_SIZE = 16
_functions: OrderedDict[bytes, Any] = OrderedDict()
_functions_lock = threading.Lock()

#: A task on the wire: ``(task id, pickled function, pickled (args, kwargs))``.
TaskItem = tuple[int, bytes, bytes]
#: A task's outcome on the wire: ``(task id, True, value)`` or ``(task id, False, ItemError)``.
TaskOutcome = tuple[int, bool, Any]


def run_task(item: TaskItem) -> TaskOutcome:
    """Call one task's function with its arguments; never raises."""
    task_id, function, arguments = item
    try:
        func = _function(function)
        args, kwargs = pickling.loads(arguments)
        return task_id, True, func(*args, **kwargs)
    except BaseException as exc:  # as ProcessPoolExecutor: even SystemExit ends only this task
        return task_id, False, portable_failure(ItemError(-1, exc))


def _unpicklable_result(outcome: TaskOutcome, error: Exception) -> TaskOutcome:
    message = f"the result could not be pickled: {type(error).__name__}: {error} (result was {short_repr(outcome[2])})"
    return outcome[0], False, portable_failure(ItemError(-1, SerializationError(message)))


#: How ``run_chunk`` reports a result that cannot be pickled: as that task's failure alone.
run_task.replace_unpicklable = _unpicklable_result  # type: ignore[attr-defined]


def _function(blob: bytes):
    func = _functions.get(blob)
    if func is None:
        func = pickling.loads(blob)
        with _functions_lock:
            _functions[blob] = func
            while len(_functions) > _FUNCTION_CACHE_SIZE:
                _functions.popitem(last=False)
    return func


class Star:
    """``func(*args)`` for each argument tuple: what ``starmap`` maps."""

    __slots__ = ("func",)

    def __init__(self, func):
        self.func = func

    def __call__(self, args):
        return self.func(*args)

    def __reduce__(self):
        return Star, (self.func,)
