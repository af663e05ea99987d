"""Worker processes on this machine and what moves between them, shared by the engines that run them.

MulticorePool, and the worker slots of zmq and gearman, each run their worker processes with
these modules:

- ``child_process.py``: the caller's handle on one worker process (start, feed, read, end).
- ``worker_main.py``: the program that runs in a worker process.
- ``frames.py``: pipes carrying frames, written together and read in blocks.
- ``shared_memory.py``: large buffers through anonymous memfds instead of the pipe.
"""
