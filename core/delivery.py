"""Bounded delivery attempts of translation tasks, and bisection of failing chunks.

Redis keeps no delivery count, and ``task_reject_on_worker_lost`` hands a task
back to the queue each time its process dies, so an item that kills the
process would be redelivered forever. Each task therefore counts its own
attempts in Redis, per range of its items, in the hash
``mt:attempts:<task_id>`` (TTL ``JOB_TTL``):

- a range that raises is split in two in the same process, until the item
  that raises is alone;
- a range whose earlier attempt never finished (its process died) is split at
  once when the task is delivered again;
- an item alone is tried at most ``TASK_MAX_ATTEMPTS`` times, then comes back
  with an ``error`` and its source text, and the rest of the chunk completes.

The counts go when the task returns. A range that succeeds runs again whole on
a later delivery; its items are cache hits by then.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from core.config import get_settings
from core.errors import ServiceError
from core.store import redis_client

logger = logging.getLogger(__name__)

ATTEMPTS_PREFIX = "mt:attempts:"

Item = dict[str, Any]
# Translates ``texts``, the items from ``start`` on, and returns one item each.
TranslateRange = Callable[[int, list[str]], list[Item]]

# Errors that concern the whole request, not one item: splitting cannot help.
_REQUEST_ERRORS = (ServiceError, SoftTimeLimitExceeded)


class AttemptLog:
    """Attempt counts of one task's item ranges, kept in Redis.

    Counts are also kept in the process, so attempts are still bounded when
    Redis is unreachable or the task has no id (eager mode).
    """

    def __init__(self, task_id: str | None) -> None:
        self.key = f"{ATTEMPTS_PREFIX}{task_id}" if task_id else None
        self._local: dict[str, int] = {}

    def start(self, start: int, end: int) -> int:
        """Count an attempt of items ``start`` to ``end``; return its number, from 1."""
        field = f"{start}:{end}"
        local = self._local.get(field, 0) + 1
        self._local[field] = local
        if self.key is None:
            return local
        try:
            pipeline = redis_client().pipeline()
            pipeline.hincrby(self.key, field, 1)
            pipeline.expire(self.key, get_settings().job_ttl)
            stored = int(pipeline.execute()[0])
        except redis.RedisError as error:
            logger.warning("Attempt count of %s unavailable: %s", self.key, error)
            return local
        return max(stored, local)

    def finish(self, start: int, end: int) -> None:
        """Forget the attempts of a range that completed."""
        self._local.pop(f"{start}:{end}", None)
        self._call(lambda client, key: client.hdel(key, f"{start}:{end}"))

    def clear(self) -> None:
        """Forget every count of the task, once it returns."""
        self._local.clear()
        self._call(lambda client, key: client.delete(key))

    def _call(self, function: Callable[[redis.Redis, str], Any]) -> None:
        if self.key is None:
            return
        try:
            function(redis_client(), self.key)
        except redis.RedisError as error:
            logger.warning("Attempt count of %s unavailable: %s", self.key, error)


# The ``code`` of an item that failed every attempt, as TranslationFailed's.
FAILED_CODE = "translation_failed"


def failed_item(text: str, reason: str) -> Item:
    """Return the item of a text that could not be translated: its source text."""
    return {
        "translation": text,
        "model": None,
        "models": [],
        "score": None,
        "cached": False,
        "error": reason,
        "code": FAILED_CODE,
    }


class _Bisector:
    def __init__(
        self,
        texts: Sequence[str],
        translate: TranslateRange,
        log: AttemptLog,
        max_attempts: int,
        task_id: str | None,
    ) -> None:
        self.texts = list(texts)
        self.translate = translate
        self.log = log
        self.max_attempts = max_attempts
        self.task_id = task_id

    def run(self, start: int, end: int) -> list[Item]:
        if end - start == 1:
            return [self._run_item(start)]
        if self.log.start(start, end) > 1:
            logger.warning(
                "Task %s: items %d-%d did not finish on an earlier delivery; "
                "splitting them",
                self.task_id,
                start,
                end - 1,
            )
            items = self._split(start, end)
        else:
            try:
                items = self.translate(start, self.texts[start:end])
            except _REQUEST_ERRORS:
                raise
            except Exception as error:
                logger.warning(
                    "Task %s: items %d-%d failed (%s); splitting them",
                    self.task_id,
                    start,
                    end - 1,
                    type(error).__name__,
                )
                items = self._split(start, end)
        self.log.finish(start, end)
        return items

    def _split(self, start: int, end: int) -> list[Item]:
        middle = (start + end) // 2
        return self.run(start, middle) + self.run(middle, end)

    def _run_item(self, index: int) -> Item:
        text = self.texts[index]
        last_error: str | None = None
        while True:
            attempt = self.log.start(index, index + 1)
            if attempt > self.max_attempts:
                reason = (
                    f"Translation failed {self.max_attempts} times: {last_error}"
                    if last_error
                    else f"The worker process died on each of {self.max_attempts} "
                    "attempts to translate this item."
                )
                logger.error(
                    "Task %s: item %d failed after %d attempts; it keeps its "
                    "source text",
                    self.task_id,
                    index,
                    self.max_attempts,
                )
                return failed_item(text, reason)
            try:
                item = self.translate(index, [text])[0]
            except _REQUEST_ERRORS:
                raise
            except Exception as error:
                last_error = f"{type(error).__name__}: {error}"
                logger.warning(
                    "Task %s: item %d failed on attempt %d of %d: %s",
                    self.task_id,
                    index,
                    attempt,
                    self.max_attempts,
                    type(error).__name__,
                )
                continue
            self.log.finish(index, index + 1)
            return item


def translate_bounded(
    texts: Sequence[str],
    translate: TranslateRange,
    *,
    task_id: str | None,
    max_attempts: int | None = None,
) -> list[Item]:
    """Translate texts with ``translate``, isolating and failing poison items.

    Returns one item per text, in order. An item that raised or killed the
    process ``max_attempts`` times (default ``TASK_MAX_ATTEMPTS``) gets an
    ``error`` and its source text. ``ServiceError`` and the soft time limit
    concern the whole task and are raised.
    """
    if not texts:
        return []
    limit = max_attempts or get_settings().task_max_attempts
    log = AttemptLog(task_id)
    items = _Bisector(texts, translate, log, limit, task_id).run(0, len(texts))
    log.clear()
    return items


def inject_test_faults(texts: Sequence[str]) -> None:
    """Apply the test-only ``TEST_*`` fault settings to texts about to be translated.

    ``TEST_ITEM_DELAY`` sleeps that many seconds per text, a text containing
    ``TEST_RAISE_MARKER`` raises RuntimeError, and one containing
    ``TEST_CRASH_MARKER`` kills this process with SIGKILL. All are off by
    default and cost three attribute reads then.
    """
    settings = get_settings()
    if settings.test_item_delay:
        time.sleep(settings.test_item_delay * len(texts))
    if settings.test_crash_marker and any(
        settings.test_crash_marker in text for text in texts
    ):
        logger.error("TEST_CRASH_MARKER found: killing process %d", os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
    if settings.test_raise_marker and any(
        settings.test_raise_marker in text for text in texts
    ):
        raise RuntimeError("TEST_RAISE_MARKER found in a text")
