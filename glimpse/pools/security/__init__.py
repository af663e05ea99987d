"""Who may send work to glimpse's own transports (zmq, gearman): the cluster key and signed messages."""

from glimpse.pools.security.keys import (
    INSECURE,
    ClusterKey,
    generate_key,
    insecure_key,
    key_for_broker,
    resolve_key,
)
from glimpse.pools.security.signing import MessageSigner, Rejected, Tagged

__all__ = [
    "INSECURE",
    "ClusterKey",
    "MessageSigner",
    "Rejected",
    "Tagged",
    "generate_key",
    "insecure_key",
    "key_for_broker",
    "resolve_key",
]
