"""Chunks booked on the engines of a cluster the pool owns, past ipyparallel's task scheduler.

Every task of a load-balanced view passes through ipyparallel's task scheduler, a Python process
of the controller, on its way to an engine and back. On the cluster a pool starts for itself no
one else sends work, so the pool books its engines itself, as the zmq broker books its workers,
and sends each chunk straight to an engine's queue: each engine runs one chunk and has one more
queued, and other chunks wait in the caller until an engine has room. Two rules keep this from
losing or spoiling work: an engine still running a cancelled chunk takes nothing new (the signal
that ends that chunk must not land in the next one), and a chunk sent again after its engine
died runs alone, on an engine with nothing else to do and nothing queued behind it (an engine
that dies loses every chunk it holds: so a chunk is lost at most once for another's sake).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection

#: Chunks an engine holds at once: one running, and one queued so it never waits for the next.
SLOTS_PER_ENGINE = 2


class EngineBooking:
    """Which chunks each engine holds, and the chunks waiting for room.

    ``engine_ids()`` gives the engines registered now; ``send(task, engine)`` sends a chunk to one.
    A task has ``future`` (set when sent, done when its engine replied or was lost), and the flags
    ``cancelled`` and ``resent``.
    """

    def __init__(self, engine_ids: Callable[[], list[int]], send: Callable[[object, int], None]):
        self._engine_ids = engine_ids
        self._send = send
        self._waiting: deque = deque()
        self._held: dict[int, list] = {}

    def add(self, task) -> None:
        """Send ``task`` to an engine with room, or keep it until :meth:`dispatch` finds one."""
        self._waiting.append(task)
        self.dispatch()

    def drop(self, tasks: Collection) -> None:
        """Forget those of ``tasks`` still waiting: they will never be sent."""
        dropped = {id(task) for task in tasks}
        self._waiting = deque(task for task in self._waiting if id(task) not in dropped)

    @property
    def waiting(self) -> bool:
        """Whether some tasks wait for room."""
        return bool(self._waiting)

    def held(self) -> list:
        """The tasks sent to engines, of every call (a cancelled call's too), as of the last
        :meth:`dispatch` that found tasks waiting: some may have finished since."""
        return [task for tasks in self._held.values() for task in tasks]

    def dispatch(self) -> None:
        """Send the waiting tasks that engines have room for, oldest first."""
        if not self._waiting:
            return
        room = self._room()
        waiting, self._waiting = self._waiting, deque()
        for task in waiting:
            engine = _engine_for(task, room)
            if engine is None:
                self._waiting.append(task)
                continue
            try:
                self._send(task, engine)
            except KeyError:  # the engine unregistered just now
                room[engine] = 0
                self._waiting.append(task)
                continue
            self._held.setdefault(engine, []).append(task)
            room[engine] = 0 if task.resent else room[engine] - 1

    def forget(self, task) -> None:
        """Stop holding ``task``, whose outcome has been read: its results go with it."""
        for tasks in self._held.values():
            for index, held in enumerate(tasks):
                if held is task:
                    del tasks[index]
                    return

    def clear(self) -> None:
        self._waiting.clear()

    def _room(self) -> dict[int, int]:
        """How many more chunks each registered engine takes now."""
        live = self._engine_ids()
        for gone in set(self._held) - set(live):
            del self._held[gone]
        room = {}
        for engine in live:
            tasks = self._held[engine] = [task for task in self._held.get(engine, ()) if not task.future.done()]
            alone = any(task.cancelled or task.resent for task in tasks)
            room[engine] = 0 if alone else SLOTS_PER_ENGINE - len(tasks)
        return room


def _engine_for(task, room: dict[int, int]) -> int | None:
    """The engine with the most room (an idle one for a task sent again), or ``None``."""
    needed = SLOTS_PER_ENGINE if task.resent else 1
    engine = max(room, key=room.get, default=None)
    return engine if engine is not None and room[engine] >= needed else None
