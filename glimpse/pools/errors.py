"""Exceptions a pool raises in the caller, with the worker's side of the story attached."""

from __future__ import annotations

import pickle


class SerializationError(pickle.PicklingError):
    """A function, argument or result could not be pickled or unpickled.

    The message names the item and the reason; the original error is chained as ``__cause__``.
    """


class WorkerLostError(RuntimeError):
    """A chunk of items was lost with its worker (killed, crashed, out of memory) too many times.

    The message names the items and how the worker died, and ``items`` is the range of their
    indexes in the call. Nothing is silently dropped: either every item of a call is delivered,
    or this error says which ones were not.
    """

    items: range = range(0)


class TaskTimeoutError(TimeoutError):
    """An item ran longer than the call's ``timeout=`` seconds (running time, not time queued).

    The message names the item, the timeout and the worker. The item's thread was left behind;
    a worker process glimpse owns is replaced after the chunk (see ``docs/long-runs.md``).
    """


class InitializerError(RuntimeError):
    """A pool's ``initializer`` raised in a worker process; its exception is chained as ``__cause__``.

    The message names the initializer and the worker. Every later chunk on that worker process
    fails with it at once, so a broken initializer ends the call instead of looping.
    """


class RemoteError(Exception):
    """Stands in for a worker's exception that could not be pickled back to the caller.

    Its message is ``"<module>.<type>: <message>"`` of the original exception.
    """


class ClusterConnectionError(ConnectionError):
    """A cluster could not be reached; the message names the address and what to start."""


class ClusterLostError(ClusterConnectionError):
    """The cluster's scheduler, head node, controller or broker went away during a call.

    The message names its address and how many results the call delivered before; nothing
    after those was delivered. It is never reported as a crashing function (``WorkerLostError``).
    """


class AuthenticationError(ClusterConnectionError):
    """A cluster key is missing or unusable, or a peer's messages do not verify with it.

    The message says which key source was used (an argument, ``$GLIMPSE_CLUSTER_KEY``,
    ``$GLIMPSE_CLUSTER_KEY_FILE`` or the default key file), never the key.
    """


class NoWorkersError(RuntimeError):
    """A call waited ``$GLIMPSE_NO_WORKERS_TIMEOUT`` seconds with no worker connected to the cluster.

    The message names the cluster's address and the command that starts a worker.
    """


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained as ``__cause__`` of that exception.

    Printing the exception shows the worker's traceback first, as
    ``concurrent.futures.ProcessPoolExecutor`` does.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class JournalMismatchError(ValueError):
    """A call's ``journal=`` file belongs to another call (another function or ``key=``), or is
    not a journal at all; the file is left as it was.

    The message names the file and what to do: give the call another path, delete the file to
    start again, or pass the ``key=`` of the call that wrote it.
    """


class JobSubmitError(RuntimeError):
    """A batch system (SLURM) refused the pool's worker jobs; the message is the scheduler's own
    (``sbatch: error: ...``) and says which of the pool's arguments to change."""
