"""Redis clients, configured the same way in every process (API, workers, rq-dashboard, tools).

:func:`connect` is the one factory: a plain URL (``redis://``, ``rediss://`` for TLS, a password or
an ACL user in it) or a Sentinel URL (``redis+sentinel://``, see :mod:`shared.redis_url`), whose
clients ask the sentinels for the primary on every (re)connection and so follow a failover.
"""

from __future__ import annotations

import queue

from redis import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.sentinel import Sentinel, SentinelConnectionPool

from shared.redis_url import is_sentinel_url, parse_sentinel_url

#: Connections one client (all the threads or greenlets sharing it) may open at once.
DEFAULT_MAX_CONNECTIONS = 64

#: Seconds a command waits for a free connection of a full pool before :class:`PoolExhausted`.
DEFAULT_POOL_TIMEOUT = 5.0


class PoolExhausted(RedisConnectionError):
    """Every connection of the pool stayed busy for the pool's whole wait: this process is
    overloaded, Redis is not (known to be) down.

    A ``ConnectionError`` so that code which retries on connection trouble (rq's worker loop, the
    slots) treats it alike; the API answers it with its own retryable 503, not ``redis_unavailable``.
    """


class _Slots(queue.LifoQueue):
    """The pool's free list; a wait that runs out says so with :class:`PoolExhausted`.

    redis-py turns an empty wait into a bare ``ConnectionError("No connection available.")``,
    the same class as "connection refused"; raising our own here (``queue_class`` is its public
    seam) keeps the two apart without parsing messages.
    """

    def get(self, block: bool = True, timeout: float | None = None):
        try:
            return super().get(block, timeout)
        except queue.Empty:
            raise PoolExhausted(
                f"all {self.maxsize} Redis connections of this process stayed busy for {timeout}s"
            ) from None


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (connections go to the primary the sentinels name now; one that
    reaches a demoted primary is dropped) with the blocking pool's wait for a free connection.

    Both are redis-py's own classes; their methods cooperate through ``super()``: the Sentinel
    pool's ``owns_connection``, ``reset`` and connection class over the blocking pool's free list.
    """


#: Seconds a sentinel may take to answer "who is the primary?" before the next one is asked.
SENTINEL_TIMEOUT = 2.0


def connect(
    url: str,
    *,
    socket_timeout: float | None = 30.0,
    name: str | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> Redis:
    """A client for ``url``; ``socket_timeout`` must exceed any blocking command's own timeout.

    Its pool opens up to ``max_connections`` connections; past that a command waits up to
    ``pool_timeout`` seconds for one to come free (then :class:`PoolExhausted`) instead of failing
    at once as redis-py's default pool does. ``name`` is every connection's ``CLIENT SETNAME``:
    what ``CLIENT LIST`` shows for it."""
    common = dict(
        max_connections=max_connections,
        timeout=pool_timeout,
        queue_class=_Slots,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        client_name=name,
    )
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel_kwargs = {
            **target.sentinel_connection,
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        }
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
        pool: BlockingConnectionPool = _SentinelBlockingPool(
            target.service, sentinel, **{**common, "db": target.db, **target.connection}
        )
    else:
        pool = BlockingConnectionPool.from_url(url, **common)
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # closing the client closes its pool, as from_url does
    return client
