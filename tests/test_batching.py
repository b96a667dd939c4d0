"""Tests of micro-batching and single flight across requests and workers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from core import batching, dispatch, singleflight
from core.options import TranslationOptions
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer, run_worker

pytestmark = pytest.mark.integration

TRANSLATED = re.compile(r"Translated (\d+) texts with opus-mt-en-es")
BATCHED = re.compile(r"batching (\d+) pending texts")


@pytest.fixture
def own_redis(clean_env: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A Redis of this test alone."""
    with RedisServer() as server:
        clean_env.setenv("REDIS_URL", server.url)
        _reset_process_state()
        yield redis.Redis.from_url(server.url)


def test_acquire_is_exclusive(own_redis: redis.Redis) -> None:
    assert singleflight.acquire(["k1", "k2"], "task-a") == {"k1", "k2"}
    assert singleflight.acquire(["k1", "k3"], "task-b") == {"k3"}
    # A redelivered task takes back the keys its first delivery held.
    assert singleflight.acquire(["k1", "k2"], "task-a") == {"k1", "k2"}
    singleflight.release(["k1"])
    assert singleflight.acquire(["k1"], "task-b") == {"k1"}
    assert 0 < own_redis.ttl(f"{singleflight.INFLIGHT_PREFIX}k1") <= 60


def test_acquire_without_redis_owns_all(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    _reset_process_state()
    assert singleflight.acquire(["k1", "k2"], "task-a") == {"k1", "k2"}


def test_wait_returns_when_owner_caches(own_redis: redis.Redis) -> None:
    cached: set[str] = set()
    singleflight.acquire(["k1", "k2"], "owner")

    def owner_finishes() -> None:
        time.sleep(0.2)
        cached.update({"k1", "k2"})
        singleflight.release(["k1", "k2"])

    thread = threading.Thread(target=owner_finishes)
    thread.start()
    left = singleflight.wait_for_owners(
        ["k1", "k2"], lambda keys: {key for key in keys if key in cached}, timeout=30
    )
    thread.join()
    assert left == set()


def test_wait_takes_over_failed_owner(own_redis: redis.Redis) -> None:
    singleflight.acquire(["k1", "k2"], "owner")
    threading.Timer(0.2, singleflight.release, args=(["k1", "k2"],)).start()
    left = singleflight.wait_for_owners(["k1", "k2"], lambda keys: set(), timeout=30)
    assert left == {"k1", "k2"}


def test_wait_gives_up_after_timeout(own_redis: redis.Redis) -> None:
    singleflight.acquire(["k1"], "owner")
    assert singleflight.wait_for_owners(["k1"], lambda keys: set(), timeout=0.1) == {
        "k1"
    }


def test_pending_lists_by_route_and_options(
    own_redis: redis.Redis, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("MICRO_BATCH_WINDOW", "0")
    _reset_process_state()
    plain = TranslationOptions()
    html = TranslationOptions(format="html")
    for text in ("one", "two", "three"):
        batching.announce(text, "en", "es", plain)
    batching.announce("<b>four</b>", "en", "es", html)
    batching.announce("five", "en", "de", plain)

    assert batching.collect("en", "es", plain, 2) == ["one", "two"]
    assert batching.collect("en", "es", plain, 5) == ["three"]
    assert batching.collect("en", "es", plain, 5) == []
    assert batching.collect("en", "es", html, 5) == ["<b>four</b>"]
    assert batching.collect("en", "de", plain, 0) == []
    assert batching.collect("en", "de", plain, 1) == ["five"]
    key = batching.pending_key("en", "es", plain)
    assert key != batching.pending_key("en", "es", html)
    assert key.startswith(batching.PENDING_PREFIX)


class FakeClock:
    """A stand-in for the time module in ``core.batching``: each sleep is a
    window in which the texts of the next burst step are announced."""

    def __init__(self, steps: list[list[str]], options: TranslationOptions) -> None:
        self.now = 0.0
        self.steps = steps
        self.options = options
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        for text in self.steps.pop(0) if self.steps else []:
            batching.announce(text, "en", "es", self.options)


@pytest.fixture
def burst_settings(own_redis: redis.Redis, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MICRO_BATCH_WINDOW", "0.01")
    clean_env.setenv("MICRO_BATCH_MAX_WAIT", "0.035")
    _reset_process_state()


def test_collect_waits_while_burst_grows(
    burst_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = TranslationOptions()
    clock = FakeClock([["a", "b"], ["c"], [], ["late"]], plain)
    monkeypatch.setattr(batching, "time", clock)

    assert batching.collect("en", "es", plain, 10) == ["a", "b", "c"]
    assert clock.sleeps == 3
    assert batching.collect("en", "es", plain, 10) == ["late"]


def test_collect_lone_request_waits_once(
    burst_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = TranslationOptions()
    clock = FakeClock([], plain)
    monkeypatch.setattr(batching, "time", clock)

    assert batching.collect("en", "es", plain, 10) == []
    assert clock.sleeps == 1


def test_collect_stops_at_max_wait(
    burst_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = TranslationOptions()
    clock = FakeClock([["a"], ["b"], ["c"], ["d"], ["e"]], plain)
    monkeypatch.setattr(batching, "time", clock)

    # Windows end at 0.01, 0.02 and 0.03 s; a fourth would end after 0.035 s.
    assert batching.collect("en", "es", plain, 10) == ["a", "b", "c"]
    assert batching.collect("en", "es", plain, 2) == ["d", "e"]


def test_collect_stops_at_limit(
    burst_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = TranslationOptions()
    clock = FakeClock([["a", "b"], ["c", "d"], ["e"]], plain)
    monkeypatch.setattr(batching, "time", clock)

    assert batching.collect("en", "es", plain, 3) == ["a", "b", "c"]
    assert clock.sleeps == 2


@pytest.fixture
def batching_stack(
    stack_env: dict[str, str],
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, Any]]:
    """A worker on a Redis of its own; the test process is its front end."""
    concurrency, window = request.param
    with RedisServer() as server:
        env = {
            **stack_env,
            "REDIS_URL": server.url,
            "CACHE_DIR": str(tmp_path / "worker-cache"),
            "MICRO_BATCH_WINDOW": window,
        }
        for name in ("MODEL_DIR", "HF_HUB_OFFLINE", "NUM_BEAMS", "SYNC_TIMEOUT"):
            clean_env.setenv(name, stack_env[name])
        clean_env.setenv("REDIS_URL", server.url)
        clean_env.setenv("CACHE_DIR", str(tmp_path / "front-cache"))
        _reset_process_state()
        with run_worker(env, "batcher", tmp_path, concurrency=concurrency):
            yield {"log": tmp_path / "batcher.log"}
        _reset_process_state()


def translate_concurrently(texts: list[str]) -> list[dict[str, Any]]:
    def one(text: str) -> dict[str, Any]:
        return dispatch.translate_sync([text], "en", "es")[0]

    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        return list(pool.map(one, texts))


@pytest.mark.parametrize("batching_stack", [(1, "0.5")], indirect=True)
def test_concurrent_misses_share_batch(batching_stack: dict[str, Any]) -> None:
    texts = [f"Sentence number {index} is here." for index in range(16)]
    items = translate_concurrently(texts)

    assert len(items) == 16
    assert all(item["translation"] for item in items)
    log = batching_stack["log"].read_text()
    translated = [int(count) for count in TRANSLATED.findall(log)]
    assert sum(translated) == 16, "each text is translated exactly once"
    assert len(translated) < 16, "some texts were translated in one batch"
    assert max(int(count) for count in BATCHED.findall(log)) >= 2

    # The results equal those of the same texts translated one at a time.
    one_by_one = [dispatch.translate_sync([text], "en", "es")[0] for text in texts]
    assert [item["translation"] for item in one_by_one] == [
        item["translation"] for item in items
    ]


@pytest.mark.parametrize("batching_stack", [(2, "0")], indirect=True)
def test_identical_misses_translated_once(batching_stack: dict[str, Any]) -> None:
    texts = ["The same sentence, sent by many clients."] * 8 + [
        "Another sentence, also repeated."
    ] * 8
    items = translate_concurrently(texts)

    assert len({item["translation"] for item in items[:8]}) == 1
    assert len({item["translation"] for item in items[8:]}) == 1
    log = batching_stack["log"].read_text()
    translated = [int(count) for count in TRANSLATED.findall(log)]
    assert sum(translated) == 2, "each distinct text is translated once"


@pytest.fixture
def raising_worker(
    stack_env: dict[str, str], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> Iterator[None]:
    """A worker that raises on every text containing ``POISON``."""
    with RedisServer() as server:
        env = {
            **stack_env,
            "REDIS_URL": server.url,
            "CACHE_DIR": str(tmp_path / "worker-cache"),
            "TEST_RAISE_MARKER": POISON,
            "TASK_MAX_ATTEMPTS": "1",
        }
        for name in ("MODEL_DIR", "HF_HUB_OFFLINE", "NUM_BEAMS", "SYNC_TIMEOUT"):
            clean_env.setenv(name, stack_env[name])
        clean_env.setenv("REDIS_URL", server.url)
        clean_env.setenv("CACHE_DIR", str(tmp_path / "front-cache"))
        _reset_process_state()
        with run_worker(env, "raiser", tmp_path):
            yield
        _reset_process_state()


POISON = "zzpoisonzz"


def test_failed_single_text_is_error(raising_worker: None) -> None:
    import api_server

    client = api_server.create_app().test_client()
    pair = {"source_lang": "en", "target_lang": "es"}

    single = client.post("/api/translate", json={"text": f"A {POISON} here.", **pair})
    assert single.status_code == 500
    assert single.get_json()["code"] == "translation_failed"
    assert "RuntimeError" in single.get_json()["error"]

    texts = ["A good sentence.", f"A {POISON} here."]
    batch = client.post("/api/batch", json={"texts": texts, **pair})
    assert batch.status_code == 200
    items = batch.get_json()["items"]
    assert "error" not in items[0]
    assert items[1]["code"] == "translation_failed"

    compat = client.post(
        "/translate", json={"q": f"The {POISON} again.", "source": "en", "target": "es"}
    )
    assert compat.status_code == 500
    assert "could not be translated" in compat.get_json()["error"]


def test_holder_refreshes_until_exit(
    own_redis: redis.Redis, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("SINGLE_FLIGHT_TTL", "1")
    _reset_process_state()
    marker = f"{singleflight.INFLIGHT_PREFIX}k1"
    assert singleflight.acquire(["k1"], "owner") == {"k1"}
    with singleflight.Holder(["k1"]):
        time.sleep(2.5)
        assert own_redis.exists(marker) == 1, "a held marker outlives its TTL"
    # The owner died without releasing it: the marker expires on its own.
    time.sleep(1.5)
    assert own_redis.exists(marker) == 0
