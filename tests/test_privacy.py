"""``cache: false`` keeps a text out of every cache tier and of stored results.

The API runs in this process as the front end, next to a real Celery worker
with tiny checkpoints. After each request every Redis key, both disk tiers
(front end and worker) and the front end's memory tier are searched for the
text and its translation, and the worker's memory entries are counted. A
request that uses the cache is searched the same way, to show the search
finds what is there.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from core import cache, jobs
from core.broker import celery_app
from core.errors import JobExpired

pytestmark = pytest.mark.chaos

PAIR = {"source_lang": "en", "target_lang": "es"}
TASK_TIMEOUT = 60.0


def make_client() -> FlaskClient:
    import api_server

    return api_server.create_app().test_client()


def redis_values(url: str) -> bytes:
    """Return every key and value in the Redis database, concatenated."""
    client = redis.Redis.from_url(url)
    dump = []
    for key in client.scan_iter(count=1000):
        dump.append(key)
        kind = client.type(key)
        if kind == b"string":
            dump.append(client.get(key) or b"")
        elif kind == b"list":
            dump.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                dump.extend((field, value))
        elif kind == b"set":
            dump.extend(client.smembers(key))
        elif kind == b"zset":
            dump.extend(client.zrange(key, 0, -1))
    return b"\n".join(dump)


def folder_bytes(folder: Path) -> bytes:
    """Return the content of every file under ``folder``, concatenated."""
    if not folder.exists():
        return b""
    return b"\n".join(
        path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    )


def memory_values() -> str:
    tier = cache.get_cache().memory
    return repr(list(tier._entries.values()))


def worker_memory_entries() -> int:
    result = celery_app().send_task("tasks.get_cache_stats", queue="maintenance")
    stats: dict[str, Any] = result.get(timeout=TASK_TIMEOUT)
    entries: int = stats["tiers"]["memory"]["entries"]
    return entries


def snapshot(env: dict[str, str], worker_cache: Path) -> dict[str, bytes]:
    """Return the content of every place a text could be stored, by place."""
    return {
        "redis": redis_values(env["REDIS_URL"]),
        "front disk": folder_bytes(Path(env["CACHE_DIR"])),
        "worker disk": folder_bytes(worker_cache),
        "front memory": memory_values().encode(),
    }


def new_traces(
    before: dict[str, bytes], after: dict[str, bytes], needles: list[str]
) -> list[str]:
    """Return the places where a needle occurs more often than before.

    The tiny random-weight models give similar inputs similar output, so a
    translation may already be stored for another text; only growth counts.
    """
    found = []
    for name, content in after.items():
        for needle in needles:
            encoded = needle.encode()
            if content.count(encoded) > before[name].count(encoded):
                found.append(f"{name}: {needle!r}")
    return found


@pytest.fixture
def worker_cache(live_stack: dict[str, str], stack_env: dict[str, str]) -> Path:
    return Path(stack_env["CACHE_DIR"])


def secret_text() -> str:
    return f"Private memo {uuid.uuid4().hex} about the merger."


def test_private_text_leaves_no_trace(
    live_stack: dict[str, str], worker_cache: Path
) -> None:
    client = make_client()
    secret = secret_text()
    before = worker_memory_entries()
    stored = snapshot(live_stack, worker_cache)

    first = client.post("/api/translate", json={"text": secret, **PAIR, "cache": False})
    second = client.post(
        "/api/translate", json={"text": secret, **PAIR, "cache": False}
    )

    assert first.status_code == 200, first.get_json()
    assert second.status_code == 200
    assert second.get_json()["cached"] is False
    translation = first.get_json()["translation"]
    after = snapshot(live_stack, worker_cache)
    assert new_traces(stored, after, [secret, translation]) == []
    assert worker_memory_entries() == before

    # The same search finds the translation of a text sent with the cache on
    # (cache keys are hashes, so the text itself is stored nowhere).
    shared = client.post("/api/translate", json={"text": secret_text(), **PAIR})
    assert shared.status_code == 200
    found = new_traces(
        after, snapshot(live_stack, worker_cache), [shared.get_json()["translation"]]
    )
    assert any(place.startswith("redis") for place in found)
    assert any(place.startswith("worker disk") for place in found)
    assert worker_memory_entries() > before


def test_private_batch_deleted_after_read(
    live_stack: dict[str, str], worker_cache: Path
) -> None:
    client = make_client()
    texts = [secret_text(), secret_text(), "12345"]
    stored = snapshot(live_stack, worker_cache)
    response = client.post(
        "/api/batch", json={"texts": texts, **PAIR, "async": True, "cache": False}
    )
    assert response.status_code == 202, response.get_json()
    task_id = response.get_json()["task_id"]

    deadline = time.monotonic() + TASK_TIMEOUT
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = client.get(f"/api/task/{task_id}").get_json()
        if report.get("status") == "done":
            break
        time.sleep(0.2)
    assert report.get("status") == "done", report
    translations = report["result"]["translations"]
    assert len(translations) == 3

    expired = client.get(f"/api/task/{task_id}")
    assert expired.status_code == 410
    assert "cache: false" in expired.get_json()["error"]
    after = snapshot(live_stack, worker_cache)
    assert new_traces(stored, after, texts[:2] + translations[:2]) == []
    # Only the tombstone that explains the 410 is left.
    left = redis.Redis.from_url(live_stack["REDIS_URL"]).keys(f"*{task_id}*")
    assert left == [f"mt:jobknown:{task_id}".encode()]


def test_private_option_rejects_non_boolean(live_stack: dict[str, str]) -> None:
    response = make_client().post(
        "/api/translate", json={"text": "Hello.", **PAIR, "cache": "no"}
    )
    assert response.status_code == 400
    assert "'cache'" in response.get_json()["error"]


def test_cli_no_cache_deletes_job(
    live_stack: dict[str, str],
    worker_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import app_batch_celery

    secret = secret_text()
    source = tmp_path / "in.csv"
    source.write_text(f"id,text\n1,{secret}\n2,{secret_text()}\n", encoding="utf-8")
    output = tmp_path / "out.csv"
    stored = snapshot(live_stack, worker_cache)

    code = app_batch_celery.main(
        [
            str(source),
            str(output),
            "--text-column",
            "text",
            "--source-lang",
            "en",
            "--target-lang",
            "es",
            "--no-cache",
            "--no-progress",
            "--json",
        ]
    )

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 2
    assert report["cache_hits"] == 0
    with pytest.raises(JobExpired) as raised:
        jobs.load_job(report["task_id"])
    assert "cache: false" in raised.value.message
    with output.open(encoding="utf-8-sig", newline="") as rows:
        translation = next(csv.DictReader(rows))["text_es"]
    assert translation
    after = snapshot(live_stack, worker_cache)
    assert new_traces(stored, after, [secret, translation]) == []
