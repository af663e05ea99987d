"""Large buffers between a MulticorePool caller and its workers through shared memory, not the pipe.

Used on both sides. A chunk's items (and a chunk's results) are pickled with their large
buffers out of band (``contract.out_of_band``); those buffers are copied once into an anonymous
``memfd``, and the receiver maps it instead of reading the bytes through the pipe. The memfd
has no name, so nothing can leak into ``/dev/shm``: the kernel frees it when the last
descriptor and mapping are gone, whoever dies.

On the wire a payload is one pipe frame: a pickle (``\\x80...``) when nothing was large, or
``S`` + the pickled buffer sizes and skeleton, whose memfd travels before it on the worker's
descriptor socket (``socket.send_fds``), memfds in the order of their frames.
"""

from __future__ import annotations

import functools
import mmap
import os
import pickle
import socket
import weakref

import cloudpickle

from glimpse.pools.contract import pickling
from glimpse.pools.contract.out_of_band import pickle_out_of_band
from glimpse.pools.ipc.frames import write_frames

_SHARED = b"S"
#: A whole pickle at least this large goes through a memfd (:func:`share_pickle`).
SHARED_PICKLE_BYTES = 64 * 1024
_HAS_MEMFD = hasattr(os, "memfd_create")


class SharedPayload:
    """A pickle whose large buffers live in a memfd (``fd``, owned) or its mapping (``view``);
    with no ``skeleton``, the whole pickle does (see :func:`share_pickle`)."""

    def __init__(self, skeleton: bytes | None, sizes: list[int], fd: int | None = None, view: memoryview | None = None):
        self.skeleton, self.sizes, self.fd, self.view = skeleton, sizes, fd, view
        if fd is not None:
            weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return len(self.skeleton or b"") + sum(self.sizes)

    @functools.cached_property
    def frame(self) -> bytes:
        """What travels in the pipe: the buffer sizes and the skeleton (the buffers are in the memfd)."""
        return _SHARED + pickle.dumps((self.sizes, self.skeleton), protocol=pickle.HIGHEST_PROTOCOL)

    def load(self):
        """The pickled object; its arrays are backed by the shared pages (copy-on-write)."""
        view = self.view if self.view is not None else _map(self.fd, sum(self.sizes))
        if self.skeleton is None:
            return pickling.loads(view)
        buffers, offset = [], 0
        for size in self.sizes:
            buffers.append(view[offset : offset + size])
            offset += size
        return pickling.loads(self.skeleton, buffers=buffers)


def dumps(obj) -> bytes | SharedPayload:
    """Pickle ``obj``; as a :class:`SharedPayload` if it holds large buffers, else as bytes."""
    if not _HAS_MEMFD:  # not Linux: no anonymous shared memory, so everything goes through the pipe
        return cloudpickle.dumps(obj)
    skeleton, raws = pickle_out_of_band(obj)
    if not raws:
        return skeleton
    return SharedPayload(skeleton, [raw.nbytes for raw in raws], fd=_memfd(raws))


def share_pickle(data: bytes) -> bytes | SharedPayload:
    """A pickle moved whole into a memfd when it is large (so it never waits for the reader of a
    pipe), else as it is. A zmq worker slot sends its child large chunks this way, and gets large
    outcomes back (:func:`dumps_whole`); the pickle itself is the one the broker forwarded."""
    if not _HAS_MEMFD or len(data) < SHARED_PICKLE_BYTES:
        return data
    return SharedPayload(None, [len(data)], fd=_memfd([memoryview(data)]))


def dumps_whole(obj) -> bytes | SharedPayload:
    """Pickle ``obj`` (cloudpickle where needed), through a memfd if the pickle is large."""
    return share_pickle(pickling.dumps(obj))


def _memfd(raws: list[memoryview]) -> int:
    fd = os.memfd_create("glimpse-payload", os.MFD_CLOEXEC)
    try:
        _write_all(fd, raws)
    except BaseException:
        os.close(fd)
        raise
    return fd


def loads(payload: bytes | SharedPayload):
    """The object a :func:`dumps` payload holds."""
    return payload.load() if isinstance(payload, SharedPayload) else pickling.loads(payload)


def outgoing(payload: bytes | SharedPayload) -> tuple[bytes, int | None]:
    """The frame that carries a payload, and the memfd to send just before it (or ``None``)."""
    if isinstance(payload, SharedPayload):
        return payload.frame, payload.fd
    return payload, None


def write(fd: int, fds: socket.socket, frames: list, memfds: list[int]) -> None:
    """Write frames to a pipe, after sending the memfds some of them carry (in their order) on ``fds``."""
    send_memfds(fds, memfds)
    write_frames(fd, frames)


def send_memfds(fds: socket.socket, memfds: list[int]) -> None:
    """Send memfds (in the order of the frames that carry them) ahead of those frames."""
    for memfd in memfds:
        socket.send_fds(fds, [b"m"], [memfd])


def incoming(frame, fds: socket.socket):
    """The payload a frame carries; a shared one's memfd is taken from ``fds`` and mapped."""
    if frame[:1] != _SHARED:
        return frame
    sizes, skeleton = pickle.loads(memoryview(frame)[1:])
    _, (fd,), _, _ = socket.recv_fds(fds, 1, 1)
    try:
        view = _map(fd, sum(sizes))
    finally:
        os.close(fd)
    return SharedPayload(skeleton, sizes, view=view)


def _write_all(fd: int, raws: list[memoryview]) -> None:
    offset = 0
    for raw in raws:
        view = raw.cast("B")
        while view:
            written = os.pwrite(fd, view, offset)
            offset += written
            view = view[written:]


def _map(fd: int, size: int) -> memoryview:
    # Private and writable: the receiver may change its arrays in place without touching the sender's.
    return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))
