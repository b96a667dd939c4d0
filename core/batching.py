"""Micro-batching of single-text requests across clients.

Each single-text request that misses the cache becomes one
``tasks.translate_text`` task, and its front end also appends the text to a
pending list in Redis, one list per route and set of options. The worker that
runs such a task waits ``MICRO_BATCH_WINDOW`` seconds, takes up to
``MAX_BATCH_SIZE - 1`` pending texts of the same list and translates them
together with its own text in one batch. The tasks of the taken texts then
find their translations in the cache, or wait for them through single flight
(``core.singleflight``) while the batch runs.

The pending lists only add work to a batch: every text still has its own
task, so a text whose list entry was lost or taken by a worker that died is
translated by its own task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import redis

from core.config import get_settings
from core.options import TranslationOptions
from core.store import redis_client

logger = logging.getLogger(__name__)

PENDING_PREFIX = "mt:pending:"
# Entries older than this belong to requests that have likely been served
# or abandoned; the list expires with them.
PENDING_TTL = 60


def pending_key(source_lang: str, target_lang: str, options: TranslationOptions) -> str:
    """Return the pending list of one route and set of options."""
    encoded = json.dumps(options.to_dict(), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:16]
    return f"{PENDING_PREFIX}{source_lang}-{target_lang}:{digest}"


def announce(
    text: str, source_lang: str, target_lang: str, options: TranslationOptions
) -> None:
    """Append a text that is about to be sent as a task to its pending list."""
    key = pending_key(source_lang, target_lang, options)
    try:
        with redis_client().pipeline(transaction=False) as pipeline:
            pipeline.rpush(key, text)
            pipeline.expire(key, PENDING_TTL)
            pipeline.execute()
    except redis.RedisError as error:
        logger.warning("Could not add a text to %s: %s", key, error)


def collect(
    source_lang: str, target_lang: str, options: TranslationOptions, limit: int
) -> list[str]:
    """Wait ``MICRO_BATCH_WINDOW`` seconds, then take up to ``limit`` texts.

    While each window brings more pending texts, as during a burst of
    requests, the worker waits another window, for at most
    ``MICRO_BATCH_MAX_WAIT`` seconds in all, so a burst becomes one batch. A
    window that brings nothing ends the wait, so a lone request waits one
    window only. Returns the pending texts of the route and options, oldest
    first, or an empty list when Redis is unreachable.
    """
    if limit <= 0:
        return []
    settings = get_settings()
    window = settings.micro_batch_window
    deadline = time.monotonic() + settings.micro_batch_max_wait
    key = pending_key(source_lang, target_lang, options)
    if window > 0:
        time.sleep(window)
    texts = _take(key, limit)
    while window > 0 and texts and len(texts) < limit:
        if time.monotonic() + window > deadline:
            break
        time.sleep(window)
        more = _take(key, limit - len(texts))
        if not more:
            break
        texts.extend(more)
    return texts


def _take(key: str, count: int) -> list[str]:
    """Pop up to ``count`` texts from a pending list; none when Redis is down."""
    try:
        popped = redis_client().lpop(key, count)
    except redis.RedisError as error:
        logger.warning("Could not take texts from %s: %s", key, error)
        return []
    if not isinstance(popped, list):
        return []
    return [
        value.decode() if isinstance(value, bytes) else str(value) for value in popped
    ]
