"""The glimpse ZeroMQ engine: a broker and workers of our own (face: ``glimpse.pools.zmq_cluster``).

``protocol.py`` is the messages every side speaks and ``signed_socket.py`` signs and checks each
one; ``broker.py`` runs in the broker, ``worker.py`` in the worker processes, ``backend.py`` in the caller.
"""
