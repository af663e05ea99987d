"""Who may send work to glimpse's own transports (zmq, gearman): the cluster key and signed messages."""

from glimpse.pools.security.keys import ClusterKey, generate_key, key_for_broker, resolve_key
from glimpse.pools.security.signing import MessageSigner, Rejected, Tagged

__all__ = ["ClusterKey", "MessageSigner", "Rejected", "Tagged", "generate_key", "key_for_broker", "resolve_key"]
