"""Resume a call from its journal: ``journal=PATH`` records every finished result, and the same
call run again skips the items recorded and delivers their results from the file.

The journal is an SQLite database (the standard library's ``sqlite3``, WAL mode) holding one row
per finished item: its index in the input and its result pickled with protocol 5 as a BLOB. A
result takes on disk about what its pickle takes (a 1 MiB numpy array about 1 MiB: arrays are
stored whole, in their row), and writing it costs about twice the time of writing its bytes to a
file (SQLite writes it to its write-ahead log, then into the database): a function that returns
megabytes in a few milliseconds is slowed down by its journal, one that computes for longer
hardly. Each list of results the contract delivers is recorded in one transaction before the
consumer sees it, so a crash, Ctrl-C, ``kill -9`` or a time limit loses at most the chunks in
flight. Items that failed (a :class:`~glimpse.pools.Failure`) are not recorded and run again.
Several processes may share a journal: SQLite locks it, and a writer waits for another's commit.

A journal belongs to one call: its fingerprint is a SHA-256 of the function's pickle (cloudpickle:
the code and the globals it uses for a function pickled by value, the name for one the workers
import) and the ``key=`` the user gives. Only its index ties a row to its item, so a call over
another input, or of an imported function whose code changed, must give another ``key=`` or path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cloudpickle

from glimpse.pools.contract import pickling
from glimpse.pools.errors import JournalMismatchError, SerializationError

log = logging.getLogger(__name__)

#: Finished indexes read from the file at a time while the input is walked.
_INDEX_BATCH = 65536
#: Recorded results are delivered in lists of about this many items or bytes.
_DELIVER_ITEMS = 4096
_DELIVER_BYTES = 16 << 20
#: How long a write waits for another process's transaction before it fails.
_LOCK_SECONDS = 60.0
_FORMAT = 1
#: SQLite's page size for a new journal: a large result is stored as a chain of pages, written
#: much faster in pages of 64 KiB than in SQLite's default 4 KiB.
_PAGE_BYTES = 65536


def journaled(
    run: Callable[[Iterable[Any], Callable[[Any], Any]], Iterator[list[Any]]],
    func: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    path: str | os.PathLike[str],
    key: Any = None,
    ordered: bool,
    failures: list[Any] | None = None,
) -> Iterator[list[Any]]:
    """The lists of results of ``func`` over the whole of ``iterable``, recorded in the journal at ``path``.

    ``run(items, function)`` is the contract call of ``function`` (to be guarded by the call's
    policy as ``func`` would be) over the items not finished yet; it yields one list of results
    per chunk, in the order of the items it was given when ``ordered``, else in completion order.
    The journal gives it ``func`` wrapped to carry each item's index (:class:`Indexed`) and the
    items as ``(index, item)`` pairs, so every result is recorded under its own index whatever
    the order and whichever items ``errors="skip"`` leaves out. The failures that ``run`` adds to
    ``failures`` (the call's list of items left out) get their ``index`` and ``item`` in the input.

    Results recorded by an earlier run are read from the file as they are due, never all at
    once; the input is walked once, lazily. A journal written by another call (another function
    or ``key``) raises :class:`~glimpse.pools.JournalMismatchError` here, at the call, and is left
    as it was.
    """
    fingerprint, description = call_fingerprint(func, key)
    _Journal(path, fingerprint, description).close()  # a mismatch is an error at the call, not at the first result
    return _replay(run, func, iterable, path, fingerprint, description, ordered, failures)


def call_fingerprint(func: Callable[[Any], Any], key: Any = None) -> tuple[str, str]:
    """The SHA-256 (hex) of ``func``'s pickle and ``key``, and the words that name them in errors."""
    digest = hashlib.sha256()
    try:
        digest.update(_canonical_pickle(func))
        digest.update(b"\0key\0")
        digest.update(key.encode() if isinstance(key, str) else _canonical_pickle(key))
    except Exception as exc:
        raise SerializationError(
            f"the journal cannot fingerprint the function {_name(func)} or key {key!r}: "
            f"they must pickle with cloudpickle ({type(exc).__name__}: {exc})"
        ) from exc
    shown_key = repr(key)
    if len(shown_key) > 80:
        shown_key = shown_key[:77] + "..."
    return digest.hexdigest(), f"function {_name(func)}, key={shown_key}"


class Indexed:
    """The function as a journalled call sends it: it takes an ``(index, item)`` pair and returns
    ``(index, func(item))``, so the caller records each result under its index."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]):
        self.func = func

    def __call__(self, pair: tuple[int, Any]) -> tuple[int, Any]:
        index, item = pair
        try:
            return index, self.func(item)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # an exception that takes no attributes keeps its run's index
                exc._glimpse_input_index = index  # type: ignore[attr-defined]
            raise

    def __reduce__(self):
        return Indexed, (self.func,)

    @staticmethod
    def input_of(pair: tuple[int, Any]) -> tuple[int, Any]:
        """The index in the input and the item a pair sent to the workers stands for."""
        return pair


def _replay(run, func, iterable, path, fingerprint, description, ordered, failures) -> Iterator[list[Any]]:
    journal = _Journal(path, fingerprint, description)
    walk = _Walk(journal, iterable)
    calls = None
    try:
        calls = run(walk.pairs(), Indexed(func))
        restored = len(failures) if failures is not None else 0
        for values in calls:
            fresh = journal.record_fresh(values)
            if failures is not None:
                for failure in failures[restored:]:
                    _restore_failure(failure)
                restored = len(failures)
            if ordered:
                yield from walk.in_order(fresh)
            else:
                if fresh:
                    yield [value for _, value in fresh]
                yield from walk.earlier()
        yield from walk.earlier()
    except Exception as exc:
        _name_the_input_item(exc)
        raise
    finally:
        if calls is not None and hasattr(calls, "close"):
            calls.close()
        journal.close()


class _Journal:
    """One connection to a journal file whose fingerprint is checked (and written, if the file is new)."""

    def __init__(self, path: str | os.PathLike[str], fingerprint: str, description: str):
        self.path = os.fspath(path)
        self._unpicklable_warned = False
        try:
            self.db = sqlite3.connect(self.path, timeout=_LOCK_SECONDS, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open the journal {self.path}: {exc}") from exc
        try:
            self._check_or_create(fingerprint, description)
        except BaseException:
            self.db.close()
            raise

    def _check_or_create(self, fingerprint: str, description: str) -> None:
        if self._stored_call() is None:
            self.db.execute(f"PRAGMA page_size={_PAGE_BYTES}")  # takes effect in an empty database only
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self._stored_call() is None:  # no other process created it meanwhile
                    self.db.execute("CREATE TABLE glimpse_journal (format INTEGER, fingerprint TEXT, call TEXT)")
                    self.db.execute("CREATE TABLE results (idx INTEGER PRIMARY KEY, value BLOB NOT NULL)")
                    self.db.execute("INSERT INTO glimpse_journal VALUES (?, ?, ?)", (_FORMAT, fingerprint, description))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        stored = self._stored_call()
        if stored is None or stored[0] != fingerprint:
            raise JournalMismatchError(
                f"the journal {self.path} belongs to another call ({stored[1] if stored else 'unknown'}); "
                f"this call is {description}. Give this call another journal path, delete {self.path} to "
                "start again, or pass the key= of the call that wrote it (with the same function: one "
                "pickled by value changes with its code and the globals it uses)."
            )
        self._use_write_ahead_log()
        self.db.execute("PRAGMA synchronous=NORMAL")

    def _use_write_ahead_log(self) -> None:
        """Switch the file to WAL mode (once, for good), waiting for other connections to let it."""
        deadline = time.monotonic() + _LOCK_SECONDS
        while self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:  # SQLite does not wait by itself while another connection reads
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _stored_call(self) -> tuple[str, str] | None:
        """The journal's (fingerprint, call) or ``None`` for an empty file; anything else is a mismatch."""
        try:
            tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return None
            if "glimpse_journal" in tables:
                row = self.db.execute("SELECT format, fingerprint, call FROM glimpse_journal").fetchone()
                if row is not None and row[0] == _FORMAT:
                    return row[1], row[2]
        except sqlite3.DatabaseError as exc:
            raise JournalMismatchError(
                f"{self.path} is not a glimpse journal ({exc}); give the call another journal path, "
                "or delete the file if it is a journal you no longer need"
            ) from exc
        raise JournalMismatchError(
            f"{self.path} is not a glimpse journal (an SQLite database of other tables); "
            "give the call another journal path"
        )

    def finished_from(self, start: int, limit: int) -> list[int]:
        """Up to ``limit`` recorded indexes from ``start`` on, in order."""
        rows = self.db.execute("SELECT idx FROM results WHERE idx >= ? ORDER BY idx LIMIT ?", (start, limit)).fetchall()
        return [index for (index,) in rows]

    def results(self, start: int, stop: int) -> Iterator[tuple[Any, int]]:
        """The recorded results of indexes ``start`` to ``stop`` (those recorded), in order, with their sizes."""
        for (blob,) in self.db.execute(
            "SELECT value FROM results WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
        ):
            yield pickling.loads(blob), len(blob)

    def record_fresh(self, values: list[Any]) -> list[tuple[int | None, Any]]:
        """Record a list of :class:`Indexed` results in one transaction; return them as ``(index,
        result)``, failures as ``(index or None, failure)`` (not recorded: they run again)."""
        fresh: list[tuple[int | None, Any]] = []
        rows = []
        for value in values:
            if type(value) is tuple:
                index, result = value
                fresh.append((index, result))
                blob = self._pickled(index, result)
                if blob is not None:
                    rows.append((index, blob))
            else:
                fresh.append((_restore_failure(value), value))
        if rows:
            self._write(rows)
        return fresh

    def _pickled(self, index: int, result: Any) -> bytes | None:
        try:
            return _pickled(result)
        except Exception as exc:
            if not self._unpicklable_warned:
                self._unpicklable_warned = True
                log.warning(
                    "the journal %s cannot record item #%d (its result does not pickle: %s: %s); "
                    "such items run again on resume",
                    self.path,
                    index,
                    type(exc).__name__,
                    exc,
                )
            return None

    def _write(self, rows: list[tuple[int, bytes]]) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("INSERT OR REPLACE INTO results (idx, value) VALUES (?, ?)", rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise OSError(
                f"could not record results in the journal {self.path}: {exc} (another process may have held "
                f"its lock for {_LOCK_SECONDS:.0f} s, or the disk is full)"
            ) from exc

    def close(self) -> None:
        self.db.close()


class _Walk:
    """The input, walked once: the items not recorded go to the call as ``(index, item)`` pairs;
    the runs of recorded indexes between them are kept as ranges until their results are due."""

    def __init__(self, journal: _Journal, iterable: Iterable[Any]):
        self.journal = journal
        self.iterable = iterable
        self.ranges: deque[tuple[int, int]] = deque()
        self._run_start: int | None = None
        self._batch: list[int] = []
        self._position = 0
        self._more = True

    def pairs(self) -> Iterator[tuple[int, Any]]:
        index = -1
        for index, item in enumerate(self.iterable):
            if self._recorded(index):
                if self._run_start is None:
                    self._run_start = index
                continue
            self._end_run(index)
            yield index, item
        self._end_run(index + 1)

    def in_order(self, fresh: list[tuple[int | None, Any]]) -> Iterator[list[Any]]:
        """Fresh results (in input order) with the recorded ones before each of them, as lists."""
        out: list[Any] = []
        for index, value in fresh:
            if index is not None:
                while self.ranges and self.ranges[0][0] < index:
                    out = yield from self._deliver_range(self.ranges.popleft(), out)
            out.append(value)
        if out:
            yield out

    def earlier(self) -> Iterator[list[Any]]:
        """The recorded results of every range walked so far, as lists."""
        out: list[Any] = []
        while self.ranges:
            out = yield from self._deliver_range(self.ranges.popleft(), out)
        if out:
            yield out

    def _deliver_range(self, span: tuple[int, int], out: list[Any]):
        nbytes = 0
        for value, size in self.journal.results(*span):
            out.append(value)
            nbytes += size
            if len(out) >= _DELIVER_ITEMS or nbytes >= _DELIVER_BYTES:
                yield out
                out, nbytes = [], 0
        return out

    def _recorded(self, index: int) -> bool:
        batch = self._batch
        while self._position < len(batch) and batch[self._position] < index:
            self._position += 1
        if self._position == len(batch):
            if not self._more:
                return False
            # From the walk's position on: results recorded in this run are all behind it.
            self._batch = batch = self.journal.finished_from(index, _INDEX_BATCH)
            self._position = 0
            self._more = len(batch) == _INDEX_BATCH
            if not batch:
                return False
        return batch[self._position] == index

    def _end_run(self, stop: int) -> None:
        if self._run_start is not None:
            self.ranges.append((self._run_start, stop))
            self._run_start = None


def _name_the_input_item(exc: BaseException) -> None:
    """Make the note "raised by item #k" count ``k`` in the input, not among the items this run sent."""
    index = exc.__dict__.pop("_glimpse_input_index", None) if hasattr(exc, "__dict__") else None
    notes = getattr(exc, "__notes__", None)
    if index is None or not isinstance(notes, list):
        return
    notes[:] = [re.sub(r"^raised by item #\d+", f"raised by item #{index}", note) for note in notes]


def _pickled(result: Any) -> bytes:
    """``result`` pickled for this machine's later runs: the standard pickle, cloudpickle for
    what it cannot pickle (a lambda, a local class)."""
    try:
        return pickle.dumps(result, protocol=5)
    except Exception:
        return cloudpickle.dumps(result, protocol=5)


def _restore_failure(failure: Any) -> int | None:
    """Give a failure of an :class:`Indexed` call its input index and item back; return the index."""
    pair = getattr(failure, "item", None)
    if type(pair) is not tuple or len(pair) != 2:
        return None
    try:
        failure.index, failure.item = pair
    except AttributeError:
        return None
    getattr(getattr(failure, "exception", None), "__dict__", {}).pop("_glimpse_input_index", None)
    return pair[0]


class _CanonicalPickler(cloudpickle.Pickler):
    """cloudpickle, with sets pickled in sorted order: a set of strings iterates in another order
    in each process (hash randomization), and a function that uses one would never resume."""

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is set or type(obj) is frozenset:
            try:
                return type(obj).__name__, tuple(sorted(obj))
            except TypeError:
                return type(obj).__name__, tuple(sorted(obj, key=repr))
        return None


def _canonical_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _CanonicalPickler(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


def _name(func: Any) -> str:
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}" if module else name
