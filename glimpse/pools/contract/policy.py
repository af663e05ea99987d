"""A call's options for long runs: ``timeout=``, ``retries=``, ``retry_on=``, ``errors=``, ``journal=``, ``key=``.

Every ``map``-like call of every face takes them as keywords (see :class:`CallOptions`).
:class:`CallPolicy` checks them once and wraps the call's function for the workers
(:class:`~glimpse.pools.contract.worker_policy.Guarded`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from glimpse.pools.contract.worker_policy import Failure, Guarded, WorkerSetup

ERRORS = ("raise", "return", "skip")


class CallOptions(TypedDict, total=False):
    """The keywords every ``map``-like call takes (all optional).

    - ``timeout``: seconds one item may run (not counting time queued); an item that runs longer
      ends as :class:`~glimpse.pools.TaskTimeoutError`, and the rest of its chunk runs on.
    - ``retries``: how many more times an item whose function raised one of ``retry_on`` runs.
    - ``retry_on``: the exception types worth another attempt (default: none).
    - ``errors``: ``"raise"`` (the first failure ends the call, after every earlier result),
      ``"return"`` (a :class:`~glimpse.pools.Failure` in the item's place) or ``"skip"`` (left
      out; the call's ``failures`` list holds them).
    - ``journal``: a file where finished results are recorded; running the same call again
      skips them (``map``, ``imap``, ``imap_unordered``).
    - ``key``: what tells this call's journal from another's besides the function.
    """

    timeout: float | None
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    errors: Literal["raise", "return", "skip"]
    journal: str | os.PathLike[str] | None
    key: Any


@dataclass(frozen=True)
class CallPolicy:
    """The checked ``timeout``/``retries``/``retry_on``/``errors`` of one call."""

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    errors: str = "raise"

    @classmethod
    def of(
        cls,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        errors: str = "raise",
    ) -> CallPolicy:
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds):
            raise TypeError(f"retry_on must be an exception type or a tuple of them, not {retry_on!r}")
        if retries and not kinds:
            raise ValueError(
                f"retries={retries} needs retry_on= (the exception types worth another attempt), "
                "e.g. retry_on=OSError or retry_on=Exception"
            )
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {', '.join(map(repr, ERRORS))}, not {errors!r}")
        return cls(None if timeout is None else float(timeout), retries, kinds, errors)

    @property
    def keeps_failures(self) -> bool:
        return self.errors != "raise"

    def guard(self, func: Callable[..., Any], setup: WorkerSetup | None) -> Callable[..., Any]:
        """``func`` as the workers run it under this policy and the pool's initializer."""
        if self == PLAIN and setup is None:
            return func
        return Guarded(func, self.timeout, self.retries, self.retry_on, self.keeps_failures, setup)

    def deliverable(self, values: list, start: int, failures: list[Failure] | None) -> list:
        """A chunk's values as the consumer gets them: failures numbered by their item, and left
        out into ``failures`` for ``errors="skip"``."""
        if not self.keeps_failures:
            return values
        kept = []
        for offset, value in enumerate(values):
            if type(value) is Failure:
                value.index = start + offset
                if self.errors == "skip":
                    if failures is not None:
                        failures.append(value)
                    continue
            kept.append(value)
        return kept if self.errors == "skip" else values


class Results(list[Any]):
    """What ``map(..., errors="skip")`` returns: the results, and ``failures``, the items left out."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[Failure] = []


def results_list(options: CallOptions) -> list[Any]:
    """The list a whole call's results go in: a :class:`Results` for ``errors="skip"``."""
    return Results() if options.get("errors") == "skip" else []


#: A call without any of the options: today's behaviour.
PLAIN = CallPolicy()
