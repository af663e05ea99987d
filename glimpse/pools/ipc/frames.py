"""Length-prefixed frames over a pipe: written several at a time, read in large blocks.

Between a MulticorePool caller and its workers each frame costs a system call or two at most:
the frames sent together go in one ``writev``, and one ``read`` takes every frame that has
arrived, so a worker that holds a few chunks and the caller that reads a few outcomes pay one
wake-up for all of them.
"""

from __future__ import annotations

import os
import socket
import struct

#: What a worker sends after a chunk in which an item timed out and left its thread running: it
#: starts nothing more, and the pool gives its queued chunks to others and replaces it.
RETIRING = b"R"
_HEADER = struct.Struct("!Q")
_BLOCK = 256 * 1024
#: A frame at least this large is read into a buffer of its own instead of through the block buffer.
_LARGE = 1024 * 1024
_MAX_PARTS = 1024  # IOV_MAX
#: Frames smaller than this are copied into one buffer with their headers before a write.
_JOIN = 16 * 1024


def write_frames(fd: int, frames: list) -> None:
    """Write ``frames`` (bytes-like) in order, with as few system calls as their size allows."""
    views = frame_views(frames)
    while views:
        _advance(views, os.writev(fd, views[:_MAX_PARTS]))


def frame_views(frames: list) -> list[memoryview]:
    """The bytes that carry ``frames``, as views to write in order: small frames joined with
    their headers into one view (a view each would cost more than copying them), large ones
    as they are."""
    views, joined = [], bytearray()
    for frame in frames:
        size = len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes
        joined += _HEADER.pack(size)
        if size < _JOIN:
            joined += frame
            continue
        views.append(memoryview(joined))
        views.append(memoryview(frame).cast("B"))
        joined = bytearray()
    if joined:
        views.append(memoryview(joined))
    return views


def write_available(fd: int, views: list[memoryview]) -> None:
    """Write as much of ``views`` as the non-blocking ``fd`` takes now, removing it from ``views``."""
    while views:
        try:
            _advance(views, os.writev(fd, views[:_MAX_PARTS]))
        except BlockingIOError:
            return


def send_available(sock: socket.socket, views: list[memoryview]) -> None:
    """:func:`write_available` for a socket that blocks when read: sends without waiting."""
    while views:
        try:
            _advance(views, sock.sendmsg(views[:_MAX_PARTS], [], socket.MSG_DONTWAIT))
        except BlockingIOError:
            return


def _advance(views: list[memoryview], written: int) -> None:
    """Drop the first ``written`` bytes from ``views``."""
    done = 0
    while done < len(views) and written >= len(views[done]):
        written -= len(views[done])
        done += 1
    del views[:done]
    if views and written:
        views[0] = views[0][written:]


class FrameReader:
    """Reads the frames :func:`write_frames` wrote to the other end of a pipe."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buffer = bytearray()

    def read_frames(self) -> list:
        """Every whole frame that has arrived, at least one (waits for it); ``EOFError`` at the end.

        Small frames are ``bytes``; a large one is a ``bytearray``, read straight into place.
        """
        while True:
            frames = self._whole_frames()
            if frames:
                return frames
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if size >= _LARGE:
                    return [self._read_large(size)]
            block = os.read(self.fd, _BLOCK)
            if not block:
                raise EOFError("the other end of the pipe closed")
            self._buffer += block

    def _whole_frames(self) -> list:
        frames, offset, buffer = [], 0, self._buffer
        while len(buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + size
            if end > len(buffer):
                break
            frames.append(bytes(buffer[offset + _HEADER.size : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    def _read_large(self, size: int) -> bytearray:
        frame = bytearray(size)
        view = memoryview(frame)
        have = len(self._buffer) - _HEADER.size
        view[:have] = memoryview(self._buffer)[_HEADER.size :]
        self._buffer.clear()
        while have < size:
            count = os.readv(self.fd, [view[have:]])
            if not count:
                raise EOFError("the other end of the pipe closed")
            have += count
        return frame
