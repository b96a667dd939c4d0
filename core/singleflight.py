"""Single flight: one translation of a text at a time across all workers.

Before a worker translates a cache miss, it sets a marker ``mt:inflight:<key>``
for the miss's cache key with ``SET NX``. A worker that finds the marker set
waits for the cache entry the owner will write instead of translating the
same text again. The owner refreshes the marker while it translates and deletes it
once the entry is cached or the translation failed. A marker that is no longer
refreshed expires after ``SINGLE_FLIGHT_TTL`` seconds, so a waiting worker
translates the text itself soon after the owner died or failed.

Without Redis every worker owns every key: the service then does the work
twice rather than wait for a marker it cannot read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import redis

from core.config import get_settings
from core.store import redis_client

logger = logging.getLogger(__name__)

INFLIGHT_PREFIX = "mt:inflight:"
WAIT_INTERVAL = 0.02


def _marker(key: str) -> str:
    return f"{INFLIGHT_PREFIX}{key}"


def acquire(keys: Sequence[str], owner: str) -> set[str]:
    """Set the in-flight marker of each key that has none; return those keys.

    The returned keys are this caller's to translate, including keys whose
    marker ``owner`` set before, so a redelivered task takes its own keys back
    at once. Every key is returned when Redis is unreachable.
    """
    if not keys:
        return set()
    ttl = get_settings().single_flight_ttl
    try:
        with redis_client().pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.set(_marker(key), owner, nx=True, ex=ttl)
                pipeline.get(_marker(key))
            results = pipeline.execute()
    except redis.RedisError as error:
        logger.warning("Single flight off, Redis unreachable: %s", error)
        return set(keys)
    mine = owner.encode()
    return {
        key
        for index, key in enumerate(keys)
        if results[2 * index] or results[2 * index + 1] == mine
    }


class Holder:
    """Keeps the in-flight markers of some keys alive while they translate.

    The markers expire ``SINGLE_FLIGHT_TTL`` seconds after their last
    refresh, and a daemon thread refreshes them every third of that time, so
    a marker outlives a long translation but not a process that died.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.markers = [_marker(key) for key in keys]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Holder:
        if self.markers:
            self._thread = threading.Thread(
                target=self._refresh, name="single-flight", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _refresh(self) -> None:
        ttl = get_settings().single_flight_ttl
        while not self._stop.wait(ttl / 3):
            try:
                with redis_client().pipeline(transaction=False) as pipeline:
                    for marker in self.markers:
                        pipeline.expire(marker, ttl, xx=True)
                    pipeline.execute()
            except redis.RedisError as error:
                logger.warning("Could not refresh in-flight markers: %s", error)


def release(keys: Iterable[str]) -> None:
    """Delete the in-flight markers of keys this caller acquired."""
    markers = [_marker(key) for key in keys]
    if not markers:
        return
    try:
        redis_client().delete(*markers)
    except redis.RedisError as error:
        logger.warning("Could not delete %d in-flight markers: %s", len(markers), error)


def _still_in_flight(keys: Sequence[str]) -> set[str]:
    try:
        with redis_client().pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.exists(_marker(key))
            results = pipeline.execute()
    except redis.RedisError:
        return set()
    return {key for key, result in zip(keys, results, strict=True) if result}


def wait_for_owners(
    keys: Sequence[str],
    fetch: Callable[[list[str]], set[str]],
    timeout: float | None = None,
) -> set[str]:
    """Wait until other workers cached ``keys``; return the keys left to do.

    ``fetch`` reads the cache for some keys and returns those it found,
    keeping their values. A key is left to do when its marker disappeared
    without a cache entry (the owner failed or died) or when ``timeout``
    seconds passed, by default ``SINGLE_FLIGHT_TTL``.
    """
    waiting = list(keys)
    left: set[str] = set()
    deadline = time.monotonic() + (
        get_settings().single_flight_ttl if timeout is None else timeout
    )
    while waiting:
        found = fetch(waiting)
        waiting = [key for key in waiting if key not in found]
        if not waiting:
            break
        if time.monotonic() >= deadline:
            left.update(waiting)
            break
        alive = _still_in_flight(waiting)
        # A marker that vanished may mean the entry was written just now.
        released = [key for key in waiting if key not in alive]
        if released:
            found = fetch(released)
            left.update(key for key in released if key not in found)
            waiting = [key for key in waiting if key in alive]
        time.sleep(WAIT_INTERVAL)
    return left
