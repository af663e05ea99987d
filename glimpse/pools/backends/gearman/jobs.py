"""What glimpse puts in gearman jobs: signed chunks, signed results, signed control requests.

gearmand itself authenticates nobody, so every job's data and every result is signed with the
cluster key (``glimpse.pools.security``) and checked before anything is unpickled. The function
names carry a tag derived from the key (never the key), so clusters with different keys can
share one gearmand without taking each other's jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from glimpse.pools.security import ClusterKey, MessageSigner, Rejected

POOL, WORKER = b"gearman-pool", b"gearman-worker"
CANCEL, CANCEL_CALLS, EXIT, RESTART = b"cancel", b"cancel-calls", b"exit", b"restart"
#: The WORK_DATA a worker sends when it starts a job: ``started <worker id>``.
STARTED = b"started "
#: How often a worker slot sends a WORK_STATUS heartbeat while it runs a job.
HEARTBEAT_SECONDS = 1.0
#: A running job whose worker sent no heartbeat this long, while gearmand itself answers, is lost
#: (the worker's machine went silent, or its process hangs); ``$GLIMPSE_SILENCE_TIMEOUT`` if shorter.
WORKER_SILENCE_SECONDS = 10.0
_COUNT = struct.Struct(">I")


def cluster_tag(key: ClusterKey) -> str:
    """A short public name of the key: equal keys, equal tags."""
    return hmac.new(key.secret or b"insecure", b"glimpse-gearman-function", hashlib.sha256).hexdigest()[:16]


def chunk_function(key: ClusterKey) -> bytes:
    """The gearman function every worker of the cluster can do: run one chunk."""
    return f"glimpse:{cluster_tag(key)}".encode()


def control_function(key: ClusterKey, worker_id: str) -> bytes:
    """The function only one worker slot does: cancel its chunk, exit, or restart its task process."""
    return f"glimpse-control:{cluster_tag(key)}:{worker_id}".encode()


def is_control_function(key: ClusterKey, name: str) -> bool:
    return name.startswith(f"glimpse-control:{cluster_tag(key)}:")


def seal(signer: MessageSigner, recipient: bytes, frames: list[bytes]) -> bytes:
    """``frames`` signed for ``recipient``, as one job or result blob."""
    signed = signer.sign(recipient, frames)
    sizes = struct.pack(f">{len(signed)}Q", *map(len, signed))
    return b"".join([_COUNT.pack(len(signed)), sizes, *signed])


def open_sealed(signer: MessageSigner, sender: bytes, blob: bytes) -> list[bytes]:
    """The frames of a blob :func:`seal` made; :class:`Rejected` if it is malformed or does not verify."""
    view = memoryview(blob)
    try:
        (count,) = _COUNT.unpack_from(view)
        if count > 64:
            raise Rejected("a job with too many parts")
        sizes = struct.unpack_from(f">{count}Q", view, _COUNT.size)
    except struct.error:
        raise Rejected("a truncated job") from None
    offset = _COUNT.size + 8 * count
    if offset + sum(sizes) != len(blob):
        raise Rejected("a job whose parts do not add up")
    frames = []
    for size in sizes:
        frames.append(view[offset : offset + size])
        offset += size
    return [bytes(frame) for frame in signer.verify(sender, frames)]
