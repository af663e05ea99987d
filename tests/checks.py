"""Assertions several test files share."""

from __future__ import annotations

import contextlib
import io
import sys

from glimpse.pools import RemoteTraceback


def assert_worker_traceback_names_the_raise(exc: BaseException, function) -> None:
    """``exc`` carries the worker's traceback, as ``__cause__``, naming the line where ``function``
    raised it (the line after its ``def``), and printing ``exc`` shows that line.

    cloudpickle sends a test module's functions by value, naming their file "<dynamic-code>": the
    worker's traceback names the function and the line of the raise, without its source text.
    """
    raise_line = f"line {function.__code__.co_firstlineno + 1}, in {function.__name__}"
    cause = exc.__cause__
    assert type(cause) is RemoteTraceback  # multiprocessing's and ProcessPoolExecutor's hold the text in ``.tb``
    assert raise_line in cause.text
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            raise exc
        except type(exc):
            sys.excepthook(*sys.exc_info())
    assert raise_line in stderr.getvalue()
