"""The engine of ``MulticorePool``: worker processes of its own on this machine, over pipes.

``child_process.py`` is the caller's handle on one worker process (also used by zmq worker
slots); ``worker_main.py`` is the program that runs in it.
"""
