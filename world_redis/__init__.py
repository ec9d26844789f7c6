"""The Redis World: storage, queue and timers of the workflow engine on Redis Streams."""

from ._embedded import ensure_embedded
from ._keys import Keys, partition_of
from ._world import RedisWorld

__all__ = ["Keys", "RedisWorld", "ensure_embedded", "partition_of"]
