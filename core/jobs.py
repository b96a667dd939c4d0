"""Jobs: what a user submitted, tracked across the Celery tasks that run it.

A job (a synchronous request, an async batch or a CSV file) is split into
chunks of consecutive items. Items found in the cache are stored with the
chunk; the misses of a chunk go to one Celery task. Redis holds:

- ``mt:job:<id>``: JSON metadata with a TTL of ``JOB_TTL``;
- ``mt:job:<id>:chunks``: a list of ``{task_id, start, count, hits}`` entries;
- ``mt:job:<id>:hits:<n>``: the cached items and miss positions of chunk n;
- ``mt:jobknown:<id>``: the expiry time, kept 30 days longer, so an expired
  job returns 410 instead of 404; ``read`` once the result of a job submitted
  with ``cache: false`` has been read and deleted.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import states

from core.broker import BROKER_ERRORS, celery_app
from core.config import get_settings
from core.errors import (
    ERRORS_BY_NAME,
    BackendUnavailable,
    DeadlineExceeded,
    JobCancelled,
    JobExpired,
    JobFinished,
    JobLost,
    JobNotFound,
    ServiceError,
    TranslationFailed,
)
from core.store import redis_client

logger = logging.getLogger(__name__)

JOB_PREFIX = "mt:job:"
KNOWN_PREFIX = "mt:jobknown:"
TOMBSTONE_EXTRA_SECONDS = 30 * 24 * 3600
RESULT_POLL_INTERVAL = 0.05
# Seconds between checks, while a task has no result, that Redis still has
# the job's record; a job whose record vanished can never complete.
JOB_PRESENCE_INTERVAL = 1.0
OUTAGE_POLL_MAX_INTERVAL = 2.0
RESULT_PAGE_SIZE = 1000
MAX_RESULT_PAGE_SIZE = 10_000
# The tombstone of a job submitted with cache: false whose result was read.
READ_MARKER = b"read"
STATUS_QUEUED = "queued"
STATUS_PROCESSING = "processing"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"


def new_job_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Chunk:
    """Items of a job: cached items plus the misses sent as a task.

    The chunk's items are the job's items ``start`` to ``start + count``,
    unless ``rows`` lists the job item index of each of them, for a submitter
    that sends items in another order than the job's.
    """

    start: int
    count: int
    hits: dict[int, dict[str, Any]] = field(default_factory=dict)
    misses: list[int] = field(default_factory=list)
    task_id: str | None = None
    rows: list[int] | None = None

    def __post_init__(self) -> None:
        if self.rows is not None and len(self.rows) != self.count:
            raise ValueError(
                f"A chunk of {self.count} items needs {self.count} rows, not "
                f"{len(self.rows)}."
            )


def _redis_call(function: Any) -> Any:
    try:
        return function(redis_client())
    except redis.RedisError as error:
        raise BackendUnavailable(
            f"Redis is unreachable ({error}). Start Redis and retry."
        ) from None


def create_job(
    job_id: str, kind: str, source_lang: str, target_lang: str, **meta: Any
) -> dict[str, Any]:
    """Record a new job; chunks are added with ``add_chunk``."""
    settings = get_settings()
    now = time.time()
    record = {
        "job_id": job_id,
        "kind": kind,
        "source_lang": source_lang,
        "target_lang": target_lang,
        "created_at": now,
        "expires_at": now + settings.job_ttl,
        "total": meta.pop("total", None),
        "submitted": False,
        "cancelled": False,
        "meta": meta,
    }

    def write(client: redis.Redis) -> None:
        pipeline = client.pipeline()
        pipeline.set(f"{JOB_PREFIX}{job_id}", json.dumps(record), ex=settings.job_ttl)
        pipeline.set(
            f"{KNOWN_PREFIX}{job_id}",
            record["expires_at"],
            ex=settings.job_ttl + TOMBSTONE_EXTRA_SECONDS,
        )
        pipeline.execute()

    _redis_call(write)
    return record


def add_chunk(job_id: str, index: int, chunk: Chunk) -> None:
    """Append a chunk to a job, storing its cached items."""
    settings = get_settings()
    entry: dict[str, Any] = {
        "task_id": chunk.task_id,
        "start": chunk.start,
        "count": chunk.count,
        "hits": len(chunk.hits),
    }
    detail: dict[str, Any] = {
        "hits": {str(position): item for position, item in chunk.hits.items()},
        "misses": chunk.misses,
    }
    if chunk.rows is not None:
        # The span lets readers of a slice skip chunks without their rows.
        entry["span"] = [min(chunk.rows, default=0), max(chunk.rows, default=-1) + 1]
        detail["rows"] = chunk.rows

    def write(client: redis.Redis) -> None:
        pipeline = client.pipeline()
        pipeline.set(
            f"{JOB_PREFIX}{job_id}:hits:{index}",
            json.dumps(detail),
            ex=settings.job_ttl,
        )
        pipeline.rpush(f"{JOB_PREFIX}{job_id}:chunks", json.dumps(entry))
        pipeline.expire(f"{JOB_PREFIX}{job_id}:chunks", settings.job_ttl)
        pipeline.execute()

    _redis_call(write)


def finish_submission(job_id: str, total: int) -> None:
    """Mark that every chunk of a job has been sent."""
    record = load_job(job_id)
    record["submitted"] = True
    record["total"] = total
    _save(record)


def _save(record: dict[str, Any]) -> None:
    ttl = max(1, int(record["expires_at"] - time.time()))
    _redis_call(
        lambda client: client.set(
            f"{JOB_PREFIX}{record['job_id']}", json.dumps(record), ex=ttl
        )
    )


def load_job(job_id: str) -> dict[str, Any]:
    """Return a job's metadata; raise JobNotFound or JobExpired."""

    def read(client: redis.Redis) -> tuple[Any, Any]:
        pipeline = client.pipeline(transaction=False)
        pipeline.get(f"{JOB_PREFIX}{job_id}")
        pipeline.get(f"{KNOWN_PREFIX}{job_id}")
        return tuple(pipeline.execute())

    raw, known = _redis_call(read)
    if raw is not None:
        return json.loads(raw)
    if known == READ_MARKER:
        raise JobExpired(
            f"Job {job_id!r} was submitted with cache: false, so its result was "
            "deleted once it had been read. Submit the texts again."
        )
    if known is not None:
        expired_at = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(known.decode()))
        )
        raise JobExpired(
            f"Job {job_id!r} expired at {expired_at} and its result was deleted. "
            "Submit the texts again."
        )
    raise JobNotFound(
        f"No job with id {job_id!r} was submitted to this service. "
        "Check the id returned when the job was queued."
    )


def is_cancelled(job_id: str | None) -> bool:
    """True when the job was cancelled; False when unknown or unreachable."""
    if not job_id:
        return False
    try:
        raw = redis_client().get(f"{JOB_PREFIX}{job_id}")
    except redis.RedisError:
        return False
    if raw is None:
        return False
    return bool(json.loads(raw).get("cancelled"))


def _chunks(job_id: str) -> list[dict[str, Any]]:
    raw = _redis_call(
        lambda client: client.lrange(f"{JOB_PREFIX}{job_id}:chunks", 0, -1)
    )
    return [json.loads(entry) for entry in raw]


def _chunk_detail(job_id: str, index: int) -> dict[str, Any]:
    raw = _redis_call(lambda client: client.get(f"{JOB_PREFIX}{job_id}:hits:{index}"))
    if raw is None:
        check_job_present(job_id)
        raise JobExpired(f"Job {job_id!r} lost chunk {index}; submit it again.")
    return json.loads(raw)


def _span(chunk: dict[str, Any]) -> tuple[int, int]:
    """Return the lowest and one past the highest job item index of a chunk."""
    if "span" in chunk:
        low, high = chunk["span"]
        return int(low), int(high)
    return chunk["start"], chunk["start"] + chunk["count"]


def _row(chunk: dict[str, Any], detail: dict[str, Any], position: int) -> int:
    """Return the job item index of the item at ``position`` in a chunk."""
    rows = detail.get("rows")
    return int(rows[position]) if rows is not None else chunk["start"] + position


def check_job_present(job_id: str) -> dict[str, Any]:
    """Return a job's metadata; raise ``JobLost`` when Redis no longer has it.

    Only for a job known to exist: ``JobExpired`` is still raised for a job
    that expired.
    """
    try:
        return load_job(job_id)
    except JobNotFound:
        raise JobLost(
            f"Redis no longer has job {job_id!r}: it lost its data, for example "
            "when it restarted without persistence. Submit the texts again."
        ) from None


def _task_metas(task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Read task states straight from the result backend in one round trip."""
    if not task_ids:
        return {}
    backend = celery_app().backend
    keys = [backend.get_key_for_task(task_id) for task_id in task_ids]
    try:
        raw = backend.client.mget(keys)
    except BROKER_ERRORS as error:
        raise BackendUnavailable(
            f"The result backend is unreachable ({error})."
        ) from None
    metas = {}
    for task_id, value in zip(task_ids, raw, strict=True):
        if value is not None:
            metas[task_id] = json.loads(value)
    return metas


def _failure_message(meta: dict[str, Any]) -> str:
    result = meta.get("result")
    if isinstance(result, dict):
        message = result.get("exc_message") or result.get("exc_type") or result
        return _flatten_message(message)
    return str(result)


def _flatten_message(message: Any) -> str:
    if isinstance(message, list | tuple):
        return " ".join(str(part) for part in message)
    return str(message)


def job_status(
    job_id: str,
    include_result: bool = True,
    offset: int = 0,
    limit: int = RESULT_PAGE_SIZE,
) -> dict[str, Any]:
    """Return the job report served by ``GET /api/task/<task_id>``.

    A finished job's ``result`` contains the items ``offset`` to
    ``offset + limit``, and ``next_offset`` is where the next page starts, or
    None after the last one, so a large job is read page by page.
    """
    record = load_job(job_id)
    chunks = _chunks(job_id)
    task_ids = [chunk["task_id"] for chunk in chunks if chunk["task_id"]]
    metas = _task_metas(task_ids)

    current = 0
    started = False
    failures: list[tuple[int, dict[str, Any], str]] = []
    item_errors: list[tuple[int, dict[str, Any], dict[int, str]]] = []
    pending = False
    for index, chunk in enumerate(chunks):
        current += chunk["hits"]
        task_id = chunk["task_id"]
        if task_id is None:
            continue
        meta = metas.get(task_id, {"status": states.PENDING})
        status = meta.get("status")
        if status == states.SUCCESS:
            current += chunk["count"] - chunk["hits"]
            started = True
            errors = _result_errors(meta.get("result"))
            if errors:
                item_errors.append((index, chunk, errors))
        elif status == states.FAILURE:
            failures.append((index, chunk, _failure_message(meta)))
            started = True
        elif status == "PROGRESS":
            current += int((meta.get("result") or {}).get("current", 0))
            started = True
            pending = True
        elif status in (states.STARTED, states.RETRY):
            started = True
            pending = True
        else:
            pending = True

    total = record["total"] if record["total"] is not None else current
    report: dict[str, Any] = {
        "task_id": job_id,
        "kind": record["kind"],
        "source_lang": record["source_lang"],
        "target_lang": record["target_lang"],
        "progress": {"current": current, "total": total},
        "errors": _item_error_entries(job_id, item_errors),
        "created_at": _iso(record["created_at"]),
        "expires_at": _iso(record["expires_at"]),
    }
    if record["cancelled"]:
        report["status"] = STATUS_CANCELLED
    elif failures:
        report["status"] = STATUS_FAILED
        report["error"] = failures[0][2]
        report["errors"] = sorted(
            report["errors"] + _failure_items(job_id, failures),
            key=lambda entry: entry["index"],
        )
    elif not pending and record["submitted"]:
        report["status"] = STATUS_DONE
        if include_result:
            deadline = time.monotonic() + get_settings().sync_timeout
            stop = offset + limit
            items = list(iter_items(job_id, deadline, start=offset, stop=stop))
            report["result"] = {
                "translations": [item["translation"] for item in items],
                "items": items,
                "offset": offset,
                "next_offset": stop if stop < total else None,
            }
            if stop >= total:
                release_private_job(job_id, record)
    elif started or current:
        report["status"] = STATUS_PROCESSING
    else:
        report["status"] = STATUS_QUEUED
    return report


def release_private_job(job_id: str, record: dict[str, Any] | None = None) -> None:
    """Delete the items and task results of a job submitted with ``cache: false``.

    Call it once the client has read the last item. Jobs that use the cache
    are left alone: their results stay until ``JOB_TTL`` passes. A tombstone
    remains, so a later read gets 410 with the reason.
    """
    record = record if record is not None else load_job(job_id)
    if (record.get("meta") or {}).get("cache") is not False:
        return
    chunks = _chunks(job_id)
    backend = celery_app().backend
    results = [
        backend.get_key_for_task(chunk["task_id"])
        for chunk in chunks
        if chunk["task_id"]
    ]
    if results:
        try:
            backend.client.delete(*results)
        except BROKER_ERRORS as error:
            raise BackendUnavailable(
                f"The result backend is unreachable ({error})."
            ) from None
    keys = [
        f"{JOB_PREFIX}{job_id}",
        f"{JOB_PREFIX}{job_id}:chunks",
        *(f"{JOB_PREFIX}{job_id}:hits:{index}" for index in range(len(chunks))),
    ]

    def delete(client: redis.Redis) -> None:
        pipeline = client.pipeline()
        pipeline.delete(*keys)
        pipeline.set(f"{KNOWN_PREFIX}{job_id}", READ_MARKER, ex=TOMBSTONE_EXTRA_SECONDS)
        pipeline.execute()

    _redis_call(delete)
    logger.info("Job %s read; its texts were deleted (cache: false)", job_id)


def _failure_items(
    job_id: str, failures: list[tuple[int, dict[str, Any], str]]
) -> list[dict[str, Any]]:
    errors = []
    for index, chunk, message in failures:
        detail = _chunk_detail(job_id, index)
        for position in detail["misses"]:
            errors.append({"index": _row(chunk, detail, position), "error": message})
    return errors


def _result_errors(result: Any) -> dict[int, str]:
    """Return ``{position: error}`` for the failed items of a task's result.

    Positions count the items the task translated, not the chunk's items.
    """
    if not isinstance(result, dict):
        return {}
    items = result.get("items") if "items" in result else [result]
    return {
        position: str(item["error"])
        for position, item in enumerate(items or [])
        if isinstance(item, dict) and item.get("error")
    }


def _item_error_entries(
    job_id: str, item_errors: list[tuple[int, dict[str, Any], dict[int, str]]]
) -> list[dict[str, Any]]:
    """Return ``[{index, error}]`` for items that failed inside successful tasks."""
    entries = []
    for index, chunk, errors in item_errors:
        detail = _chunk_detail(job_id, index)
        misses = detail["misses"]
        for position, message in errors.items():
            if position < len(misses):
                row = _row(chunk, detail, misses[position])
                entries.append({"index": row, "error": message})
    return sorted(entries, key=lambda entry: entry["index"])


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def wait_for_task(
    task_id: str,
    deadline: float | None,
    job_id: str,
    *,
    ride_out_outages: bool = False,
) -> dict[str, Any]:
    """Wait for one task's result until the monotonic ``deadline`` (None: forever).

    The result backend is polled directly instead of through Celery's pub/sub
    consumer, which gives up for good after a Redis outage. While Redis is
    unreachable, ``ride_out_outages`` keeps waiting (a CLI whose job goes on
    once Redis is back); otherwise ``BackendUnavailable`` is raised at once.
    """
    interval = RESULT_POLL_INTERVAL
    warned = False
    next_presence_check = time.monotonic() + JOB_PRESENCE_INTERVAL
    while True:
        try:
            meta = _task_metas([task_id]).get(task_id)
        except BackendUnavailable:
            if not ride_out_outages:
                raise
            if not warned:
                logger.warning("Redis unreachable; waiting for job %s to go on", job_id)
                warned = True
            meta = None
            interval = min(OUTAGE_POLL_MAX_INTERVAL, interval * 2)
        else:
            if warned:
                logger.warning("Redis reachable again; job %s goes on", job_id)
                warned = False
            interval = RESULT_POLL_INTERVAL
        if meta is not None:
            status = meta.get("status")
            if status == states.SUCCESS:
                return meta["result"]
            if status in states.PROPAGATE_STATES:
                raise _failure_error(meta)
        elif not warned and time.monotonic() >= next_presence_check:
            next_presence_check = time.monotonic() + JOB_PRESENCE_INTERVAL
            _outage_tolerant(check_job_present, (job_id,), ride_out_outages, job_id)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(
                "The translation did not finish within the deadline. Poll "
                f"GET /api/task/{job_id} for the result.",
                task_id=job_id,
            )
        time.sleep(interval)


def _failure_error(meta: dict[str, Any]) -> ServiceError:
    """Turn a failed task's stored exception into the matching ServiceError."""
    result = meta.get("result")
    name = result.get("exc_type") if isinstance(result, dict) else None
    message = _failure_message(meta)
    if meta.get("status") == states.REVOKED:
        return JobCancelled("The job was cancelled before this part of it ran.")
    cls = ERRORS_BY_NAME.get(str(name))
    if cls is not None:
        return cls(message)
    logger.warning("A worker task failed: %s: %s", name, message)
    return TranslationFailed(f"The worker failed to translate: {message}")


def iter_items(
    job_id: str,
    deadline: float | None = None,
    *,
    ride_out_outages: bool = False,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield a job's items in input order, waiting for each chunk's task.

    ``deadline`` is a ``time.monotonic()`` value bounding the whole wait;
    None waits as long as it takes. ``start`` and ``stop`` select a slice of
    the items, like ``items[start:stop]``. With ``ride_out_outages`` a Redis
    outage pauses the iteration instead of raising ``BackendUnavailable``.
    Items of chunks sent out of order wait until the items before them arrive.
    """

    def call(function: Any, *args: Any) -> Any:
        return _outage_tolerant(function, args, ride_out_outages, job_id)

    waiting: dict[int, dict[str, Any]] = {}
    next_row = start
    index = 0
    chunks: list[dict[str, Any]] = []
    while stop is None or next_row < stop:
        if index >= len(chunks):
            # The chunk list is read again only after every chunk read so far
            # was yielded, so a job of n chunks costs far fewer than n reads.
            # The record is read first, because once it is marked submitted,
            # the list read after it is complete.
            record = call(check_job_present, job_id)
            chunks = call(_chunks, job_id)
            if index >= len(chunks):
                if record["submitted"]:
                    break
                time.sleep(RESULT_POLL_INTERVAL)
            continue
        chunk = chunks[index]
        low, high = _span(chunk)
        if high > start and (stop is None or low < stop):
            detail = call(_chunk_detail, job_id, index)
            items = _chunk_items(job_id, chunk, detail, deadline, ride_out_outages)
            for position, item in enumerate(items):
                row = _row(chunk, detail, position)
                if row >= start and (stop is None or row < stop):
                    waiting[row] = item
            while next_row in waiting:
                yield waiting.pop(next_row)
                next_row += 1
        index += 1
    # Items after a row that never arrived still come, in row order.
    for row in sorted(waiting):
        yield waiting[row]


def _outage_tolerant(
    function: Any, args: tuple[Any, ...], ride_out: bool, job_id: str
) -> Any:
    interval = RESULT_POLL_INTERVAL
    warned = False
    while True:
        try:
            return function(*args)
        except BackendUnavailable:
            if not ride_out:
                raise
            if not warned:
                logger.warning("Redis unreachable; waiting for job %s to go on", job_id)
                warned = True
            interval = min(OUTAGE_POLL_MAX_INTERVAL, interval * 2)
            time.sleep(interval)


def _chunk_items(
    job_id: str,
    chunk: dict[str, Any],
    detail: dict[str, Any],
    deadline: float | None,
    ride_out_outages: bool,
) -> list[dict[str, Any]]:
    hits = {int(position): item for position, item in detail["hits"].items()}
    translated: list[dict[str, Any]] = []
    if chunk["task_id"]:
        result = wait_for_task(
            chunk["task_id"], deadline, job_id, ride_out_outages=ride_out_outages
        )
        if result.get("cancelled"):
            raise JobCancelled(
                f"Job {job_id!r} was cancelled; its result is incomplete."
            )
        translated = result["items"] if "items" in result else [result]
    by_position = dict(zip(detail["misses"], translated, strict=True))
    return [
        hits[position] if position in hits else by_position[position]
        for position in range(chunk["count"])
    ]


def cancel_job(job_id: str) -> dict[str, Any]:
    """Cancel a job: mark it and revoke its tasks that have not run.

    A job that already finished keeps its result: ``JobFinished`` is raised.
    """
    record = load_job(job_id)
    if record["cancelled"]:
        return {"task_id": job_id, "status": STATUS_CANCELLED}
    status = job_status(job_id, include_result=False)["status"]
    if status in (STATUS_DONE, STATUS_FAILED):
        raise JobFinished(
            f"Job {job_id!r} already finished with status {status!r}; there is "
            "nothing to cancel. Its result stays available until it expires."
        )
    record["cancelled"] = True
    _save(record)
    task_ids = [chunk["task_id"] for chunk in _chunks(job_id) if chunk["task_id"]]
    if task_ids:
        try:
            celery_app().control.revoke(task_ids)
        except BROKER_ERRORS as error:
            logger.warning("Revoking the tasks of job %s failed: %s", job_id, error)
    logger.info("Job %s cancelled (%d tasks revoked)", job_id, len(task_ids))
    return {"task_id": job_id, "status": STATUS_CANCELLED}
