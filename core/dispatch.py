"""Cache-first dispatch of translation requests from front ends to workers.

Front ends look every text up in the cache first, through the same pipeline
the workers run, and send only the misses to the workers, so a hit never
costs a worker round trip. Texts without letters come back unchanged without
reaching a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from core import batching, jobs, models
from core.broker import check_backpressure, require_workers, send
from core.config import get_settings
from core.errors import UnsupportedLanguagePair
from core.languages import normalize_code
from core.options import TranslationOptions
from core.pipeline import AUTO, Pipeline, needs_model
from core.routing import QUEUE_BULK, QUEUE_INTERACTIVE, choose_queue

__all__ = [
    "QUEUE_BULK",
    "QUEUE_INTERACTIVE",
    "Submission",
    "lookup",
    "needs_model",
    "resolve_languages",
    "submit_async",
    "translate_sync",
]

logger = logging.getLogger(__name__)

TASK_TEXT = "tasks.translate_text"
TASK_BATCH = "tasks.translate_batch"


def resolve_languages(source_lang: object, target_lang: object) -> tuple[str, str]:
    """Validate a request's languages; ``auto`` is allowed as the source.

    Returns canonical codes. Raises ``InvalidRequest`` or
    ``UnsupportedLanguagePair`` naming the value.
    """
    if isinstance(source_lang, str) and source_lang.strip().lower() == AUTO:
        target = normalize_code(target_lang, "target_lang")
        targets = {route["target_lang"] for route in models.served_routes()}
        if target not in targets:
            listing = ", ".join(sorted(targets)) or "none"
            raise UnsupportedLanguagePair(
                f"No served pair translates into {target!r}, so source_lang "
                f"'auto' cannot be used with it. Target languages: {listing}."
            )
        return AUTO, target
    models.resolve_route(source_lang, target_lang)
    return (
        normalize_code(source_lang, "source_lang"),
        normalize_code(target_lang, "target_lang"),
    )


def lookup(
    texts: Sequence[str],
    source_lang: str,
    target_lang: str,
    options: TranslationOptions | None = None,
) -> list[dict[str, Any] | None]:
    """Return one item per text for cache hits and passthroughs, else None."""
    return Pipeline(options, worker=False).run(texts, source_lang, target_lang)


class Submission:
    """A job being submitted chunk by chunk, each chunk's misses as one task.

    ``queue`` is the priority, ``interactive`` or ``bulk``. The tasks go to
    the queue of that priority that a live worker serving the route consumes,
    and a bulk job is refused while that queue is over ``MAX_BULK_QUEUE``.
    Both checks run before the job record is created.
    """

    def __init__(
        self,
        kind: str,
        source_lang: str,
        target_lang: str,
        *,
        options: TranslationOptions | None = None,
        queue: str = QUEUE_BULK,
        **meta: Any,
    ) -> None:
        self.kind = kind
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.options = options or TranslationOptions()
        self.priority = queue
        self.queue = choose_queue(queue, source_lang, target_lang, require_workers())
        if queue == QUEUE_BULK:
            check_backpressure(self.queue)
        self.job_id = jobs.new_job_id()
        self.total = 0
        self.chunk_count = 0
        self.task_count = 0
        if not self.options.cache:
            meta["cache"] = False
        jobs.create_job(self.job_id, kind, source_lang, target_lang, **meta)

    def add(
        self,
        texts: Sequence[str],
        known: Sequence[dict[str, Any] | None] | None = None,
        rows: Sequence[int] | None = None,
    ) -> jobs.Chunk:
        """Look a chunk up in the cache and send its misses as one task.

        ``rows`` gives the job item index of each text when the texts are not
        the job's next items in order. Each index is below the job's ``total``
        and is used once.
        """
        items = (
            list(known)
            if known is not None
            else lookup(texts, self.source_lang, self.target_lang, self.options)
        )
        chunk = jobs.Chunk(
            start=self.total,
            count=len(texts),
            rows=None if rows is None else list(rows),
        )
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
        if self.priority == QUEUE_INTERACTIVE and len(texts) == 1:
            name, args = TASK_TEXT, [texts[0], self.source_lang, self.target_lang]
            # A pending list would keep a cache: false text in Redis.
            if self.options.cache:
                batching.announce(
                    texts[0], self.source_lang, self.target_lang, self.options
                )
        else:
            name, args = TASK_BATCH, [texts, self.source_lang, self.target_lang]
        return send(
            name,
            args=args,
            kwargs={"options": self.options.to_dict(), "job_id": self.job_id},
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
    options: TranslationOptions | None = None,
    kind: str = "batch",
) -> list[dict[str, Any]]:
    """Translate texts and wait for them, at most ``SYNC_TIMEOUT`` seconds.

    Raises ``DeadlineExceeded`` carrying the job id when the deadline passes.
    """
    settings = get_settings()
    deadline = time.monotonic() + settings.sync_timeout
    items = lookup(texts, source_lang, target_lang, options)
    if all(item is not None for item in items):
        return [item for item in items if item is not None]

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
    result = list(jobs.iter_items(job_id, deadline=deadline))
    jobs.release_private_job(job_id)
    return result


def submit_async(
    texts: Sequence[str],
    source_lang: str,
    target_lang: str,
    options: TranslationOptions | None = None,
    kind: str = "batch",
) -> str:
    """Queue texts on the bulk queue as a job; return the job id."""
    settings = get_settings()
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
