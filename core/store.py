"""The Redis client for service metadata: jobs, worker presence, fingerprints.

Cache entries use their own client in ``core.cache``; both read ``REDIS_URL``
and use short socket timeouts so an outage is reported instead of hanging.
"""

from __future__ import annotations

import threading

import redis

from core.config import get_settings

_client: redis.Redis | None = None
_lock = threading.Lock()


def redis_client() -> redis.Redis:
    """Return the process-wide metadata client, created on first use."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                settings = get_settings()
                _client = redis.Redis.from_url(
                    settings.redis_url,
                    socket_timeout=settings.redis_timeout * 5,
                    socket_connect_timeout=settings.redis_timeout,
                )
    return _client


def reset_client() -> None:
    """Drop the client, for tests that change REDIS_URL."""
    global _client
    with _lock:
        _client = None
