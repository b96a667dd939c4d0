"""Tests of worker presence records in Redis and of the broker client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from core import workers
from core.broker import require_workers
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
