"""Tests of job records and status reports, against a real Redis server.

Task states are written into the Celery result backend directly, the way a
worker writes them, so each status transition can be checked on its own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from core import jobs
from core.errors import (
    DeadlineExceeded,
    JobExpired,
    JobLost,
    JobNotFound,
    TranslationFailed,
)
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def job_redis(
    redis_server: RedisServer, clean_env: pytest.MonkeyPatch
) -> Iterator[redis.Redis]:
    clean_env.setenv("REDIS_URL", redis_server.url)
    clean_env.setenv("JOB_TTL", "600")
    _reset_process_state()
    yield redis.Redis.from_url(redis_server.url)


def set_task_state(
    client: redis.Redis, task_id: str, status: str, result: object
) -> None:
    meta = {"status": status, "result": result, "task_id": task_id, "traceback": None}
    client.set(f"celery-task-meta-{task_id}", json.dumps(meta))


def make_job(chunks: list[jobs.Chunk], total: int) -> str:
    job_id = jobs.new_job_id()
    jobs.create_job(job_id, "batch", "en", "es", total=total)
    for index, chunk in enumerate(chunks):
        jobs.add_chunk(job_id, index, chunk)
    jobs.finish_submission(job_id, total)
    return job_id


def item(text: str, cached: bool = False) -> dict[str, object]:
    return {"translation": text, "model": "opus-mt-en-es", "cached": cached}


def test_unknown_job_is_not_found(job_redis: redis.Redis) -> None:
    with pytest.raises(JobNotFound, match="No job with id"):
        jobs.job_status(str(uuid.uuid4()))


def test_expired_job_is_gone(job_redis: redis.Redis) -> None:
    job_id = make_job([jobs.Chunk(0, 1, hits={0: item("a", True)})], 1)
    job_redis.delete(f"mt:job:{job_id}")
    with pytest.raises(JobExpired, match="expired at"):
        jobs.job_status(job_id)


def test_job_of_hits_only_is_done(job_redis: redis.Redis) -> None:
    chunk = jobs.Chunk(0, 2, hits={0: item("uno", True), 1: item("dos", True)})
    job_id = make_job([chunk], 2)
    report = jobs.job_status(job_id)
    assert report["status"] == "done"
    assert report["progress"] == {"current": 2, "total": 2}
    assert report["result"]["translations"] == ["uno", "dos"]


def test_status_moves_queued_processing_done(job_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    chunk = jobs.Chunk(0, 3, hits={1: item("hit", True)}, misses=[0, 2])
    chunk.task_id = task_id
    job_id = make_job([chunk], 3)

    report = jobs.job_status(job_id)
    assert report["status"] == "processing"
    assert report["progress"] == {"current": 1, "total": 3}

    job_redis.set(f"mt:job:{job_id}:chunks:probe", "1")
    set_task_state(job_redis, task_id, "PROGRESS", {"current": 1, "total": 2})
    assert jobs.job_status(job_id)["progress"]["current"] == 2

    set_task_state(
        job_redis, task_id, "SUCCESS", {"items": [item("first"), item("third")]}
    )
    report = jobs.job_status(job_id)
    assert report["status"] == "done"
    assert report["progress"] == {"current": 3, "total": 3}
    assert report["result"]["translations"] == ["first", "hit", "third"]


def test_queued_when_nothing_started(job_redis: redis.Redis) -> None:
    chunk = jobs.Chunk(0, 2, misses=[0, 1])
    chunk.task_id = str(uuid.uuid4())
    job_id = make_job([chunk], 2)
    report = jobs.job_status(job_id)
    assert report["status"] == "queued"
    assert report["progress"] == {"current": 0, "total": 2}


def test_failed_chunk_reports_item_errors(job_redis: redis.Redis) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    first = jobs.Chunk(0, 2, misses=[0, 1], task_id=good)
    second = jobs.Chunk(2, 2, hits={0: item("x", True)}, misses=[1], task_id=bad)
    job_id = make_job([first, second], 4)
    set_task_state(job_redis, good, "SUCCESS", {"items": [item("a"), item("b")]})
    set_task_state(
        job_redis,
        bad,
        "FAILURE",
        {"exc_type": "RuntimeError", "exc_message": ["model crashed"]},
    )
    report = jobs.job_status(job_id)
    assert report["status"] == "failed"
    assert report["error"] == "model crashed"
    assert report["errors"] == [{"index": 3, "error": "model crashed"}]


def test_iter_items_waits_in_order(job_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    chunk = jobs.Chunk(0, 2, hits={0: item("a", True)}, misses=[1], task_id=task_id)
    job_id = make_job([chunk], 2)
    set_task_state(job_redis, task_id, "SUCCESS", {"items": [item("b")]})
    translations = [entry["translation"] for entry in jobs.iter_items(job_id)]
    assert translations == ["a", "b"]


def test_iter_items_maps_worker_failure(job_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    chunk = jobs.Chunk(0, 1, misses=[0], task_id=task_id)
    job_id = make_job([chunk], 1)
    set_task_state(
        job_redis,
        task_id,
        "FAILURE",
        {
            "exc_type": "RuntimeError",
            "exc_message": ["boom"],
            "exc_module": "builtins",
        },
    )
    with pytest.raises(TranslationFailed, match="boom"):
        list(jobs.iter_items(job_id, deadline=time.monotonic() + 10))


def test_cancel_marks_job(job_redis: redis.Redis) -> None:
    chunk = jobs.Chunk(0, 1, misses=[0], task_id=str(uuid.uuid4()))
    job_id = make_job([chunk], 1)
    assert jobs.is_cancelled(job_id) is False
    assert jobs.cancel_job(job_id)["status"] == "cancelled"
    assert jobs.is_cancelled(job_id) is True
    assert jobs.job_status(job_id)["status"] == "cancelled"


def test_records_expire(job_redis: redis.Redis) -> None:
    job_id = make_job([jobs.Chunk(0, 1, hits={0: item("a", True)})], 1)
    assert 0 < job_redis.ttl(f"mt:job:{job_id}") <= 600
    assert 0 < job_redis.ttl(f"mt:job:{job_id}:chunks") <= 600
    assert job_redis.ttl(f"mt:jobknown:{job_id}") > 600


def test_wait_raises_503_when_redis_down(clean_env: pytest.MonkeyPatch) -> None:
    from tests.helpers import free_port

    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    _reset_process_state()
    started = time.monotonic()
    with pytest.raises(jobs.BackendUnavailable):
        jobs.wait_for_task("some-task", time.monotonic() + 30, "some-job")
    assert time.monotonic() - started < 5


def test_outage_is_ridden_out_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"count": 0}

    def flaky() -> str:
        calls["count"] += 1
        if calls["count"] < 3:
            raise jobs.BackendUnavailable("Redis is down")
        return "done"

    monkeypatch.setattr(jobs, "OUTAGE_POLL_MAX_INTERVAL", 0.01)
    assert jobs._outage_tolerant(flaky, (), True, "job") == "done"
    assert calls["count"] == 3
    calls["count"] = 0
    with pytest.raises(jobs.BackendUnavailable):
        jobs._outage_tolerant(flaky, (), False, "job")


def test_done_job_lists_failed_items(job_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    chunk = jobs.Chunk(4, 3, hits={0: item("x", True)}, misses=[1, 2], task_id=task_id)
    job_id = make_job(
        [jobs.Chunk(0, 4, hits={i: item("h", True) for i in range(4)}), chunk], 7
    )
    failed = {**item("bad"), "error": "Translation failed 3 times: RuntimeError: boom"}
    set_task_state(job_redis, task_id, "SUCCESS", {"items": [item("a"), failed]})

    report = jobs.job_status(job_id, include_result=False)

    assert report["status"] == "done"
    assert report["errors"] == [
        {"index": 6, "error": "Translation failed 3 times: RuntimeError: boom"}
    ]


def test_iter_items_reports_lost_job(job_redis: redis.Redis) -> None:
    chunk = jobs.Chunk(0, 1, misses=[0], task_id=str(uuid.uuid4()))
    job_id = make_job([chunk], 1)
    items = jobs.iter_items(job_id, deadline=time.monotonic() + 10)

    def lose_job() -> None:
        for key in job_redis.scan_iter(f"mt:job*{job_id}*"):
            job_redis.delete(key)

    # The keys go while the iteration waits for the chunk's task.
    timer = threading.Timer(0.3, lose_job)
    timer.start()
    try:
        with pytest.raises(JobLost, match="Redis no longer has job"):
            next(items)
    finally:
        timer.join()


def test_iter_items_waits_for_present_job(job_redis: redis.Redis) -> None:
    chunk = jobs.Chunk(0, 1, misses=[0], task_id=str(uuid.uuid4()))
    job_id = make_job([chunk], 1)
    items = jobs.iter_items(job_id, deadline=time.monotonic() + 1.5)

    with pytest.raises(DeadlineExceeded):
        next(items)


def permuted_job(client: redis.Redis) -> tuple[str, str, str]:
    """A job of 6 items sent as two chunks of rows [4, 1, 2] and [0, 5, 3]."""
    first_task, second_task = str(uuid.uuid4()), str(uuid.uuid4())
    first = jobs.Chunk(
        0,
        3,
        hits={1: item("r1", True)},
        misses=[0, 2],
        task_id=first_task,
        rows=[4, 1, 2],
    )
    second = jobs.Chunk(3, 3, misses=[0, 1, 2], task_id=second_task, rows=[0, 5, 3])
    job_id = make_job([first, second], 6)
    set_task_state(client, first_task, "SUCCESS", {"items": [item("r4"), item("r2")]})
    return job_id, first_task, second_task


def test_iter_items_puts_permuted_chunks_in_row_order(job_redis: redis.Redis) -> None:
    job_id, _, second_task = permuted_job(job_redis)
    failed = {**item("r5"), "error": "Translation failed 3 times: boom"}
    set_task_state(
        job_redis, second_task, "SUCCESS", {"items": [item("r0"), failed, item("r3")]}
    )

    translations = [entry["translation"] for entry in jobs.iter_items(job_id)]
    page = jobs.job_status(job_id, offset=2, limit=3)

    assert translations == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert page["status"] == "done"
    assert page["result"]["translations"] == ["r2", "r3", "r4"]
    assert page["errors"] == [{"index": 5, "error": "Translation failed 3 times: boom"}]


def test_failed_permuted_chunk_names_its_rows(job_redis: redis.Redis) -> None:
    job_id, _, second_task = permuted_job(job_redis)
    set_task_state(
        job_redis,
        second_task,
        "FAILURE",
        {"exc_type": "RuntimeError", "exc_message": ["model crashed"]},
    )

    report = jobs.job_status(job_id)

    assert report["status"] == "failed"
    assert [entry["index"] for entry in report["errors"]] == [0, 3, 5]


def test_chunk_rows_must_match_its_count() -> None:
    with pytest.raises(ValueError, match="needs 2 rows, not 3"):
        jobs.Chunk(0, 2, rows=[0, 1, 2])


def test_iter_items_reads_chunk_list_once(
    job_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 50 chunks of cached items: rereading the list per chunk would read it 50 times.
    chunks = [
        jobs.Chunk(index, 1, hits={0: item(f"t{index}", True)}) for index in range(50)
    ]
    job_id = make_job(chunks, 50)
    reads = []
    read_chunks = jobs._chunks

    def counting(job: str) -> list[dict[str, object]]:
        reads.append(job)
        return read_chunks(job)

    monkeypatch.setattr(jobs, "_chunks", counting)
    translations = [entry["translation"] for entry in jobs.iter_items(job_id)]

    assert translations == [f"t{index}" for index in range(50)]
    assert len(reads) <= 2
