"""Tests of worker presence records in Redis and of the broker client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core import workers
from core.broker import require_workers
from core.config import reset_settings
from core.errors import BackendUnavailable
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(clean_env: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A Redis of this test alone, so no real worker's heartbeat shows up."""
    with RedisServer() as server:
        clean_env.setenv("REDIS_URL", server.url)
        _reset_process_state()
        yield redis.Redis.from_url(server.url)


def test_heartbeat_announces_and_retires(own_redis: redis.Redis) -> None:
    beat = workers.Heartbeat("w1@host", {"queues": ["bulk"], "pairs": ["en-es"]})
    beat.beat()
    ttl = own_redis.ttl("mt:worker:w1@host")
    assert 0 < ttl <= workers.HEARTBEAT_TTL
    live = workers.live_workers()
    assert [worker["hostname"] for worker in live] == ["w1@host"]
    assert live[0]["pairs"] == ["en-es"]
    beat.stop()
    assert workers.live_workers() == []


def test_require_workers_without_worker(own_redis: redis.Redis) -> None:
    with pytest.raises(BackendUnavailable, match="No translation worker"):
        require_workers()
    workers.Heartbeat("w2@host", {}).beat()
    assert [worker["hostname"] for worker in require_workers()] == ["w2@host"]


def test_require_workers_without_redis(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    _reset_process_state()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        require_workers()


def test_models_recorded_per_process(own_redis: redis.Redis) -> None:
    workers.record_models("host", ["opus-mt-en-es"])
    recorded = workers.loaded_models_by_process()
    assert list(recorded.values()) == [["opus-mt-en-es"]]
    assert next(iter(recorded)).startswith("host:")
    workers.record_models("host", [])
    assert workers.loaded_models_by_process() == {}


def test_fingerprint_published(own_redis: redis.Redis) -> None:
    assert workers.published_fingerprint("en", "es") is None
    workers.publish_fingerprint("en", "es", "abc")
    assert workers.published_fingerprint("en", "es") == "abc"
    assert own_redis.ttl("mt:fingerprint:en-es") > 0
    raw = own_redis.get("mt:fingerprint:en-es")
    assert raw is not None
    assert json.dumps(raw.decode()) == '"abc"'


def test_backpressure_refuses_async_jobs(
    own_redis: redis.Redis, clean_env: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    from core.broker import check_backpressure
    from core.errors import QueueFull

    clean_env.setenv("MAX_BULK_QUEUE", "3")
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    reset_settings()
    workers.Heartbeat("w3@host", {"queues": ["bulk", "interactive"]}).beat()
    own_redis.rpush("bulk", "a", "b")
    assert check_backpressure() == 2
    own_redis.rpush("bulk", "c")
    with pytest.raises(QueueFull, match="MAX_BULK_QUEUE"):
        check_backpressure()

    import api_server

    client = api_server.create_app().test_client()
    response = client.post(
        "/api/batch",
        json={
            "texts": ["Hello"],
            "source_lang": "en",
            "target_lang": "es",
            "async": True,
        },
    )
    assert response.status_code == 503
    assert response.get_json()["code"] == "queue_full"
    assert response.headers["Retry-After"] == "30"
    assert own_redis.llen("bulk") == 3, "a refused job must queue nothing"


def test_languages_mark_pairs_no_worker_serves(
    own_redis: redis.Redis, clean_env: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    reset_settings()
    workers.Heartbeat(
        "w4@host", {"pairs": ["en-es", "es-en"], "routes": ["en-es", "es-en"]}
    ).beat()

    import api_server

    body = api_server.create_app().test_client().get("/api/languages").get_json()
    ready = {
        (pair["source_lang"], pair["target_lang"]): pair["workers_ready"]
        for pair in body["pairs"]
    }
    assert ready[("en", "es")] is True
    assert ready[("en", "de")] is False
    assert ready[("es", "de")] is False, "the en-de hop has no worker"
