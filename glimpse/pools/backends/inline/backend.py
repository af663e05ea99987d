"""The backend that runs each chunk at once, in the caller's process, without pickling."""

from __future__ import annotations

from glimpse.pools.contract import Backend, Call, Chunk
from glimpse.pools.contract.worker_runner import ChunkOutcome, outcome_of_chunk


class InlineBackend(Backend):
    """Runs chunks when submitted; exceptions keep their own, local traceback."""

    serializes = False

    def workers(self) -> int:
        return 1

    def window(self) -> int:
        return 1

    def submit(self, call: Call, chunk: Chunk) -> ChunkOutcome:
        return outcome_of_chunk(call.func, chunk.items, chunk.start)

    def wait(self, handles, timeout):
        return list(handles)

    def outcome(self, handle: ChunkOutcome) -> ChunkOutcome:
        return handle

    def cancel(self, handles) -> None:
        pass
