"""Logic of the browser UI that needs no Streamlit: pickers, jobs and status.

``app_streamlit.py`` draws the widgets; this module decides what they show
and talks to ``core.dispatch`` and ``core.jobs`` the way the API does, so it
can be tested without a browser. Like every front end it never imports torch.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core import jobs, models
from core.broker import require_workers
from core.config import get_settings
from core.dispatch import QUEUE_BULK, Submission
from core.errors import JobNotFound, ServiceError
from core.languages import language_name
from core.pipeline import AUTO, OUTCOME_FAILED, OUTCOME_UNCHANGED, item_outcome
from core.ui_files import (
    Upload,
    UploadError,
    is_saved_upload,
    output_column_name,
    text_chunks,
)

logger = logging.getLogger(__name__)

AUTO_LABEL = "Detect language"
JOB_KIND_CSV = "csv"
JOB_KIND_TEXT_FILE = "text_file"
# Marks a job submitted by the UI, so that only such jobs are re-attached.
UI_ORIGIN = "streamlit"
FINISHED_STATUSES = (jobs.STATUS_DONE, jobs.STATUS_FAILED, jobs.STATUS_CANCELLED)
_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# Language pickers.


@dataclass(frozen=True)
class LanguageChoices:
    """The served routes, as the source and target pickers list them."""

    routes: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls) -> LanguageChoices:
        """Read the routes this deployment serves, pivots included."""
        routes = models.served_routes()
        pairs = {(route["source_lang"], route["target_lang"]) for route in routes}
        return cls(tuple(sorted(pairs)))

    @property
    def sources(self) -> list[str]:
        """Source codes, ``auto`` first, then sorted by language name."""
        codes = {source for source, _ in self.routes}
        return [AUTO, *sorted(codes, key=label)]

    def targets(self, source_lang: str) -> list[str]:
        """Target codes served from ``source_lang``, every target for ``auto``."""
        codes = {
            target
            for source, target in self.routes
            if source_lang == AUTO or source == source_lang
        }
        return sorted(codes, key=label)

    def swapped(self, source_lang: str, target_lang: str) -> tuple[str, str] | None:
        """Return the reverse pair when it is served, else None."""
        if source_lang == AUTO or (target_lang, source_lang) not in self.routes:
            return None
        return target_lang, source_lang


def label(code: str) -> str:
    """Return a picker label such as ``Spanish (es)``; ``auto`` is spelled out."""
    if code == AUTO:
        return AUTO_LABEL
    name = language_name(code)
    return code if name == code else f"{name} ({code})"


# Translating text.


@dataclass(frozen=True)
class Badge:
    """A small label shown under a translation."""

    text: str
    color: str
    help: str = ""


def result_badges(item: dict[str, Any], seconds: float) -> list[Badge]:
    """Return the badges of a translated item: cache, model, time, detection."""
    badges = []
    if item.get("cached"):
        tier = item.get("cache_tier")
        text = f"Cached ({tier})" if tier else "Cached"
        badges.append(Badge(text, "green", "Served from the shared cache."))
    elif item.get("model"):
        badges.append(Badge("Translated now", "blue", "No cache entry existed."))
    else:
        badges.append(Badge("Unchanged", "gray", "The text has no words to translate."))

    models_used = item.get("models") or ([item["model"]] if item.get("model") else [])
    if models_used:
        badges.append(Badge(" → ".join(models_used), "violet", "Model checkpoint."))
    if item.get("pivot"):
        badges.append(Badge(f"via {language_name(item['pivot'])}", "orange"))
    badges.append(Badge(f"{seconds:.2f} s", "gray", "Time taken, cache included."))

    detected = item.get("detected_source_lang")
    if detected:
        confidence = item.get("detection_confidence")
        text = f"Detected: {language_name(detected)}"
        if isinstance(confidence, int | float):
            text += f" ({confidence:.0%})"
        badges.append(Badge(text, "blue", "Language detected in the text."))
    score = item.get("score")
    if isinstance(score, int | float):
        badges.append(
            Badge(
                f"Score {score:.2f}",
                "green" if score >= 0.5 else "orange",
                "Model confidence from 0 to 1; low values flag doubtful output.",
            )
        )
    return badges


# File jobs.


@dataclass(frozen=True)
class FileJob:
    """A file job the UI submitted, with what it needs to write the output."""

    job_id: str
    upload: Upload
    text_column: str
    output_column: str
    source_lang: str
    target_lang: str


def submit_file(
    upload: Upload, text_column: str, source_lang: str, target_lang: str
) -> FileJob:
    """Send an upload's text column to the bulk queue as one job.

    The rows go in chunks of ``CHUNK_SIZE``, each chunk's cache misses as one
    task. Raises ``BackendUnavailable`` before creating the job when Redis or
    every worker is down, and cancels a partly submitted job on any error.
    """
    require_workers()
    output_column = output_column_name(upload.header, text_column, target_lang)
    kind = JOB_KIND_CSV if upload.kind == "csv" else JOB_KIND_TEXT_FILE
    submission = Submission(
        kind,
        source_lang,
        target_lang,
        queue=QUEUE_BULK,
        total=upload.rows,
        origin=UI_ORIGIN,
        text_column=text_column,
        output_column=output_column,
        detected_column=None,
        score_column=None,
        **upload.to_meta(),
    )
    try:
        for texts in text_chunks(upload, text_column, get_settings().chunk_size):
            submission.add(texts)
        job_id = submission.finish()
    except BaseException:
        _cancel_quietly(submission.job_id)
        raise
    logger.info("Job %s: %s submitted from the UI", job_id, upload.file_name)
    return FileJob(job_id, upload, text_column, output_column, source_lang, target_lang)


def _cancel_quietly(job_id: str) -> None:
    try:
        jobs.cancel_job(job_id)
    except ServiceError as error:
        logger.warning("Cancelling job %s failed: %s", job_id, error.message)


def attach_file_job(job_id: str) -> FileJob:
    """Rebuild a file job from its id, as a refreshed page or new tab does.

    Raises ``JobNotFound`` for an id that is malformed or belongs to a job
    not submitted from the UI, ``JobExpired`` once it expired, and
    ``BackendUnavailable`` when Redis is down.
    """
    if not _JOB_ID.match(job_id):
        raise JobNotFound(
            f"{job_id!r} is not a job id. Open the page without '?job=' and "
            "upload the file again."
        )
    record = jobs.load_job(job_id)
    meta = record.get("meta") or {}
    if meta.get("origin") != UI_ORIGIN:
        raise JobNotFound(
            f"Job {job_id} was not submitted from this page, so it cannot be "
            "shown here. Read it with GET /api/task/<id> instead."
        )
    path = Path(str(meta.get("input_path", "")))
    if not is_saved_upload(path) or not path.is_file():
        raise JobNotFound(
            f"The uploaded file of job {job_id} is no longer on the server. "
            "Upload the file again."
        )
    try:
        upload = Upload.from_meta(meta)
    except UploadError as error:
        raise JobNotFound(error.message) from None
    return FileJob(
        job_id,
        upload,
        str(meta["text_column"]),
        str(meta["output_column"]),
        str(record["source_lang"]),
        str(record["target_lang"]),
    )


@dataclass(frozen=True)
class Progress:
    """Progress bar values of a job: fraction done and caption."""

    fraction: float
    current: int
    total: int
    rate: float | None
    eta_seconds: float | None

    @property
    def text(self) -> str:
        """Return ``128 of 500 rows · 42 rows/s · about 9 s left``."""
        parts = [f"{self.current:,} of {self.total:,} rows"]
        if self.rate:
            parts.append(f"{self.rate:,.1f} rows/s")
        if self.eta_seconds is not None and self.current < self.total:
            parts.append(f"about {format_duration(self.eta_seconds)} left")
        return " · ".join(parts)


def progress_of(report: dict[str, Any], now: float | None = None) -> Progress:
    """Compute a job's fraction done, rate and ETA from its report.

    The rate is the rows done since the job was created divided by the time
    since, so it is the same in every tab that shows the job.
    """
    now = time.time() if now is None else now
    current = int(report["progress"]["current"])
    total = max(int(report["progress"]["total"] or 0), current)
    fraction = 1.0 if total == 0 else min(1.0, current / total)
    created = _parse_time(report.get("created_at"))
    elapsed = None if created is None else max(0.0, now - created)
    rate = current / elapsed if elapsed and current else None
    eta = (total - current) / rate if rate else None
    return Progress(fraction, current, total, rate, eta)


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    """Return ``42 s``, ``3 min 5 s`` or ``2 h 4 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@dataclass
class JobOutcome:
    """Row counts of a finished job, by outcome."""

    rows: int = 0
    translated: int = 0
    unchanged: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)


MAX_REASONS = 3


def job_outcome(job_id: str) -> JobOutcome:
    """Count translated, unchanged and failed rows of a finished job."""
    outcome = JobOutcome()
    deadline = time.monotonic() + get_settings().sync_timeout
    for item in jobs.iter_items(job_id, deadline=deadline):
        outcome.rows += 1
        kind = item_outcome(item)
        if kind == OUTCOME_FAILED:
            outcome.failed += 1
            error = item["error"]
            if error not in outcome.reasons and len(outcome.reasons) < MAX_REASONS:
                outcome.reasons.append(error)
        elif kind == OUTCOME_UNCHANGED:
            outcome.unchanged += 1
        else:
            outcome.translated += 1
    return outcome


def translations(job_id: str) -> Iterator[str]:
    """Yield a finished job's translations in row order."""
    deadline = time.monotonic() + get_settings().sync_timeout
    for item in jobs.iter_items(job_id, deadline=deadline):
        yield item["translation"]


# Status panel.


def tier_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one table row per cache tier: entries, hits, misses, hit rate."""
    rows = []
    for tier in ("memory", "disk", "redis"):
        values = stats["tiers"][tier]
        hits, misses = int(values["hits"]), int(values["misses"])
        entries = values["entries"]
        if tier == "redis" and entries is not None and not values["entries_exact"]:
            entries = f"{entries:,}+"
        rows.append(
            {
                "Tier": tier,
                "Entries": "unknown" if entries is None else entries,
                "Hits": hits,
                "Misses": misses,
                "Hit rate": f"{hits / (hits + misses):.0%}" if hits + misses else "–",
            }
        )
    return rows


def worker_rows(workers: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Return one table row per live worker: host, queues and pairs."""
    return [
        {
            "Worker": str(worker.get("hostname", "")),
            "Queues": ", ".join(worker.get("queues") or []),
            "Pairs": ", ".join(worker.get("pairs") or []),
        }
        for worker in workers
    ]


def model_rows(loaded: dict[str, list[str]]) -> list[dict[str, str]]:
    """Return one table row per worker process with the models it holds."""
    return [
        {"Worker process": process, "Models loaded": ", ".join(names) or "none"}
        for process, names in sorted(loaded.items())
    ]
