"""A live input for a call: items that arrive while the call runs (single calls to batch).

An ordinary iterable ends a call once it is used up. A :class:`Feed` may have nothing right now
and more later: the call keeps going, sends what has arrived as chunks of whatever size it has,
and waits for more when nothing is in flight, until the feed says it is done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Feed(ABC):
    """The input side of a call that stays open for items to arrive. Used from the call's thread."""

    @abstractmethod
    def available(self) -> int:
        """How many items have arrived and not been taken."""

    @abstractmethod
    def take(self, most: int) -> list:
        """Up to ``most`` items that have arrived, in order, without waiting (maybe none)."""

    @abstractmethod
    def wait(self) -> bool:
        """Wait until items arrive (``True``), or until the call should end (``False``): the feed was
        closed, or stayed empty for long enough that the call may end and a new one start later."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """Whether no item will ever arrive again."""
