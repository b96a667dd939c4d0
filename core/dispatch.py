"""Cache-first dispatch of translation requests from front ends to workers.

Front ends look every text up in the cache first and send only the misses to
the workers, so a hit never costs a worker round trip. Texts that are empty
or whitespace-only come back unchanged without reaching a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from core import jobs, models, workers
from core.broker import require_workers, send
from core.cache import KeyContext, get_cache
from core.config import get_settings

logger = logging.getLogger(__name__)

QUEUE_INTERACTIVE = "interactive"
QUEUE_BULK = "bulk"
TASK_TEXT = "tasks.translate_text"
TASK_BATCH = "tasks.translate_batch"


def needs_model(text: str) -> bool:
    """True when a text has something for the model to translate."""
    return bool(text.strip())


def passthrough_item(text: str) -> dict[str, Any]:
    """The item of a text that is returned unchanged without a model."""
    return {"translation": text, "model": None, "cached": False}


def front_end_key_context(source_lang: str, target_lang: str) -> KeyContext | None:
    """Build the cache key context without loading a model.

    The fingerprint comes from the local checkpoint files when this host has
    them, else from the value a worker published when it loaded the model.
    None means the key cannot be computed yet, so every text is a miss.
    """
    fingerprint = models.fingerprint_for_pair(source_lang, target_lang)
    if fingerprint is None:
        fingerprint = workers.published_fingerprint(source_lang, target_lang)
    if fingerprint is None:
        return None
    return KeyContext.build(source_lang, target_lang, fingerprint)


def lookup(
    context: KeyContext | None, texts: Sequence[str], options: Mapping[str, Any]
) -> list[dict[str, Any] | None]:
    """Return one item per text for cache hits and passthroughs, else None."""
    items: list[dict[str, Any] | None] = [None] * len(texts)
    keys: dict[int, str] = {}
    for index, text in enumerate(texts):
        if not needs_model(text):
            items[index] = passthrough_item(text)
        elif context is not None:
            keys[index] = context.key(text, options)
    if not keys:
        return items

    hits = get_cache().get_many(keys.values())
    for index, key in keys.items():
        hit = hits.get(key)
        if hit is not None:
            value = {name: item for name, item in hit.value.items() if name != "g"}
            items[index] = {**value, "cached": True, "cache_tier": hit.tier}
    return items


class Submission:
    """A job being submitted chunk by chunk, each chunk's misses as one task."""

    def __init__(
        self,
        kind: str,
        source_lang: str,
        target_lang: str,
        *,
        options: Mapping[str, Any] | None = None,
        queue: str = QUEUE_BULK,
        **meta: Any,
    ) -> None:
        self.kind = kind
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.options = dict(options or {})
        self.queue = queue
        self.job_id = jobs.new_job_id()
        self.total = 0
        self.chunk_count = 0
        self.task_count = 0
        self.context = front_end_key_context(source_lang, target_lang)
        jobs.create_job(self.job_id, kind, source_lang, target_lang, **meta)

    def add(
        self,
        texts: Sequence[str],
        known: Sequence[dict[str, Any] | None] | None = None,
    ) -> jobs.Chunk:
        """Look a chunk up in the cache and send its misses as one task."""
        items = (
            list(known)
            if known is not None
            else lookup(self.context, texts, self.options)
        )
        chunk = jobs.Chunk(start=self.total, count=len(texts))
        for position, item in enumerate(items):
            if item is None:
                chunk.misses.append(position)
            else:
                chunk.hits[position] = item

        if chunk.misses:
            chunk.task_id = self._send([texts[position] for position in chunk.misses])
        jobs.add_chunk(self.job_id, self.chunk_count, chunk)
        self.total += len(texts)
        self.chunk_count += 1
        return chunk

    def _send(self, texts: list[str]) -> str:
        self.task_count += 1
        args: list[Any]
        if self.queue == QUEUE_INTERACTIVE and len(texts) == 1:
            name, args = TASK_TEXT, [texts[0], self.source_lang, self.target_lang]
        else:
            name, args = TASK_BATCH, [texts, self.source_lang, self.target_lang]
        return send(
            name,
            args=args,
            kwargs={"options": self.options, "job_id": self.job_id},
            queue=self.queue,
        )

    def finish(self) -> str:
        """Mark the submission complete; return the job id."""
        jobs.finish_submission(self.job_id, self.total)
        logger.info(
            "Job %s submitted: %d items in %d chunks, %d tasks on %s",
            self.job_id,
            self.total,
            self.chunk_count,
            self.task_count,
            self.queue,
        )
        return self.job_id


def translate_sync(
    texts: Sequence[str],
    source_lang: str,
    target_lang: str,
    options: Mapping[str, Any] | None = None,
    kind: str = "batch",
) -> list[dict[str, Any]]:
    """Translate texts and wait for them, at most ``SYNC_TIMEOUT`` seconds.

    Raises ``DeadlineExceeded`` carrying the job id when the deadline passes.
    """
    settings = get_settings()
    options = dict(options or {})
    deadline = time.monotonic() + settings.sync_timeout
    context = front_end_key_context(source_lang, target_lang)
    items = lookup(context, texts, options)
    if all(item is not None for item in items):
        return [item for item in items if item is not None]

    require_workers()
    submission = Submission(
        kind,
        source_lang,
        target_lang,
        options=options,
        queue=QUEUE_INTERACTIVE,
        total=len(texts),
    )
    for start in range(0, len(texts), settings.chunk_size):
        end = start + settings.chunk_size
        submission.add(texts[start:end], known=items[start:end])
    job_id = submission.finish()
    return list(jobs.iter_items(job_id, deadline=deadline))


def submit_async(
    texts: Sequence[str],
    source_lang: str,
    target_lang: str,
    options: Mapping[str, Any] | None = None,
    kind: str = "batch",
) -> str:
    """Queue texts on the bulk queue as a job; return the job id."""
    settings = get_settings()
    require_workers()
    submission = Submission(
        kind,
        source_lang,
        target_lang,
        options=options,
        queue=QUEUE_BULK,
        total=len(texts),
    )
    for start in range(0, len(texts), settings.chunk_size):
        submission.add(texts[start : start + settings.chunk_size])
    return submission.finish()
