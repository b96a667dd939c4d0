"""Tests of routing tasks by language pair to the workers that serve it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core import dispatch, jobs, routing, workers
from core.broker import send
from core.config import ConfigError, get_settings, reset_settings
from core.errors import BackendUnavailable, UnsupportedLanguagePair
from core.routing import PairUnavailable, choose_queue
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer, run_worker, wait_for

SHARED = {
    "hostname": "shared@h",
    "queues": ["bulk", "interactive", "maintenance"],
    "routes": ["en-de", "en-es", "es-en"],
}
GERMAN = {
    "hostname": "german@h",
    "queues": ["bulk.en-de", "interactive.en-de", "maintenance"],
    "routes": ["en-de"],
}


@pytest.mark.unit
def test_shared_queue_preferred() -> None:
    assert choose_queue("bulk", "en", "de", [SHARED, GERMAN]) == "bulk"
    assert choose_queue("interactive", "en", "es", [SHARED]) == "interactive"


@pytest.mark.unit
def test_dedicated_queue_without_shared() -> None:
    assert choose_queue("bulk", "en", "de", [GERMAN]) == "bulk.en-de"
    assert choose_queue("interactive", "en", "de", [GERMAN]) == "interactive.en-de"


@pytest.mark.unit
def test_dedicated_queue_for_route_shared_lacks() -> None:
    french = {**GERMAN, "queues": ["bulk.en-fr", "interactive.en-fr"]}
    french["routes"] = ["en-fr"]
    assert choose_queue("bulk", "en", "fr", [SHARED, french]) == "bulk.en-fr"


@pytest.mark.unit
def test_unserved_pair_names_it() -> None:
    with pytest.raises(PairUnavailable) as raised:
        choose_queue("interactive", "en", "fr", [SHARED, GERMAN])
    message = str(raised.value)
    assert "'en-fr'" in message
    assert "WORKER_PAIRS=en-fr" in message
    assert "en-de, en-es, es-en" in message
    assert raised.value.status == 503
    assert raised.value.code == "pair_unavailable"


@pytest.mark.unit
def test_auto_needs_shared_worker() -> None:
    assert choose_queue("bulk", "auto", "de", [SHARED]) == "bulk"
    with pytest.raises(PairUnavailable, match="source_lang 'auto'"):
        choose_queue("bulk", "auto", "de", [GERMAN])


@pytest.mark.unit
def test_any_worker_queue() -> None:
    assert routing.any_worker_queue("interactive", [GERMAN]) == "interactive.en-de"
    assert routing.any_worker_queue("interactive", [GERMAN, SHARED]) == "interactive"


@pytest.mark.unit
def test_worker_routes_with_pivot(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    assert routing.worker_routes() is None

    clean_env.setenv("WORKER_PAIRS", "es-en,en-de")
    _reset_process_state()
    assert routing.worker_routes() == ["en-de", "es-de", "es-en"]

    clean_env.setenv("WORKER_PAIRS", "en-de")
    _reset_process_state()
    assert routing.worker_routes() == ["en-de"]


@pytest.mark.unit
def test_worker_routes_reject_unserved(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("WORKER_PAIRS", "en-de,en-ja")
    _reset_process_state()
    with pytest.raises(ConfigError, match="'en-ja'"):
        routing.worker_routes()


@pytest.mark.unit
def test_worker_queues_names() -> None:
    shared = [queue.name for queue in routing.worker_queues(None)]
    assert shared == ["interactive", "bulk", "maintenance"]
    dedicated = routing.worker_queues(["en-de", "es-de"])
    names = [queue.name for queue in dedicated]
    assert names == [
        "interactive.en-de",
        "bulk.en-de",
        "interactive.es-de",
        "bulk.es-de",
        "maintenance",
    ]
    assert all(queue.routing_key == queue.name for queue in dedicated)
    assert all(queue.exchange.name == queue.name for queue in dedicated)


@pytest.fixture
def pair_workers(
    stack_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """Two workers on a Redis of their own: one for en-es, one for en-de."""
    with RedisServer() as server:
        env = {
            **stack_env,
            "REDIS_URL": server.url,
            "CACHE_DIR": str(tmp_path / "worker-cache"),
        }
        for variable in ("REDIS_URL", "MODEL_DIR", "HF_HUB_OFFLINE", "NUM_BEAMS"):
            monkeypatch.setenv(variable, env[variable])
        monkeypatch.setenv("CACHE_DIR", str(tmp_path / "front-cache"))
        monkeypatch.delenv("WORKER_PAIRS", raising=False)
        _reset_process_state()
        with (
            run_worker(
                {**env, "WORKER_PAIRS": "en-es"}, "spanish", tmp_path
            ) as spanish,
            run_worker({**env, "WORKER_PAIRS": "en-de"}, "german", tmp_path) as german,
        ):
            yield {"spanish": spanish, "german": german, "redis": server}
        _reset_process_state()


def loaded_models(hostname: str) -> set[str]:
    client = redis.Redis.from_url(get_settings().redis_url)
    names: set[str] = set()
    for key in client.scan_iter(match=f"{workers.MODELS_PREFIX}{hostname}:*"):
        names.update(json.loads(client.get(key) or "[]"))
    return names


@pytest.mark.integration
def test_pairs_reach_their_workers(pair_workers: dict[str, Any]) -> None:
    beats = {worker["hostname"]: worker for worker in workers.live_workers()}
    spanish = beats[pair_workers["spanish"]]
    assert spanish["routes"] == ["en-es"]
    assert spanish["queues"] == ["bulk.en-es", "interactive.en-es", "maintenance"]
    assert beats[pair_workers["german"]]["routes"] == ["en-de"]

    spanish_items = dispatch.translate_sync(["A red house."], "en", "es")
    german_job = dispatch.submit_async(["A green tree.", "Two cats."], "en", "de")
    german_items = list(jobs.iter_items(german_job, deadline=time.monotonic() + 120))

    assert spanish_items[0]["translation"]
    assert len(german_items) == 2
    assert all(item["translation"] for item in german_items)
    wait_for(
        lambda: "opus-mt-en-de" in loaded_models(pair_workers["german"]),
        timeout=60,
    )
    assert loaded_models(pair_workers["spanish"]) == {"opus-mt-en-es"}
    assert loaded_models(pair_workers["german"]) == {"opus-mt-en-de"}


@pytest.mark.integration
def test_unserved_pair_fails_fast(pair_workers: dict[str, Any]) -> None:
    client = redis.Redis.from_url(get_settings().redis_url)
    keys_before = set(client.keys("mt:job:*"))

    with pytest.raises(PairUnavailable, match="'en-fr'"):
        dispatch.translate_sync(["A red house."], "en", "fr")
    with pytest.raises(PairUnavailable, match="'es-de'"):
        dispatch.submit_async(["Una casa."], "es", "de")

    assert set(client.keys("mt:job:*")) == keys_before, "no job may be created"
    for queue in ("interactive", "bulk", "interactive.en-fr", "bulk.es-de"):
        assert client.llen(queue) == 0


@pytest.mark.integration
def test_worker_rejects_foreign_pair(pair_workers: dict[str, Any]) -> None:
    task_id = send(
        dispatch.TASK_TEXT,
        args=["A red house.", "en", "de"],
        queue=routing.pair_queue("interactive", "en", "es"),
    )
    with pytest.raises(UnsupportedLanguagePair, match="serves only en-es"):
        jobs.wait_for_task(task_id, time.monotonic() + 60, task_id)
    assert "opus-mt-en-de" not in loaded_models(pair_workers["spanish"])


@pytest.mark.integration
def test_api_names_unserved_pair(pair_workers: dict[str, Any]) -> None:
    import api_server

    client = api_server.create_app().test_client()
    response = client.post(
        "/api/translate",
        json={"text": "A red house.", "source_lang": "en", "target_lang": "fr"},
    )
    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == "pair_unavailable"
    assert "'en-fr'" in body["error"]

    compat = client.post(
        "/translate", json={"q": "A cat.", "source": "en", "target": "fr"}
    )
    # LibreTranslate's protocol documents 400, 403, 429 and 500 only.
    assert compat.status_code == 500
    assert "'en-fr'" in compat.get_json()["error"]

    pairs = client.get("/api/languages").get_json()["pairs"]
    ready = {(p["source_lang"], p["target_lang"]): p["workers_ready"] for p in pairs}
    assert ready[("en", "es")] is True
    assert ready[("en", "de")] is True
    assert ready[("en", "fr")] is False
    assert ready[("es", "de")] is False, "no single worker serves both hops"


@pytest.mark.unit
def test_missing_priority_names_queue() -> None:
    bulk_only = {**SHARED, "queues": ["bulk", "maintenance"]}
    assert choose_queue("bulk", "en", "es", [bulk_only]) == "bulk"
    with pytest.raises(BackendUnavailable, match="'interactive' tasks") as raised:
        choose_queue("interactive", "en", "es", [bulk_only])
    assert not isinstance(raised.value, PairUnavailable)
    assert "WORKER_QUEUES=interactive" in str(raised.value)


@pytest.mark.unit
def test_worker_queues_by_priority() -> None:
    bulk = [queue.name for queue in routing.worker_queues(None, ("bulk",))]
    assert bulk == ["bulk"]
    names = [
        queue.name
        for queue in routing.worker_queues(["en-de"], ("interactive", "maintenance"))
    ]
    assert names == ["interactive.en-de", "maintenance"]


@pytest.mark.unit
def test_worker_queues_setting(clean_env: pytest.MonkeyPatch) -> None:
    assert get_settings().worker_queues == ("interactive", "bulk", "maintenance")
    clean_env.setenv("WORKER_QUEUES", "maintenance, BULK")
    _reset_process_state()
    assert get_settings().worker_queues == ("bulk", "maintenance")
    clean_env.setenv("WORKER_QUEUES", "bulk,fast")
    reset_settings()
    with pytest.raises(ConfigError, match="'fast'"):
        get_settings()


@pytest.mark.unit
def test_region_codes_use_served_route(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    _reset_process_state()
    assert routing.served_route_key("en-US", "es-ES") == "en-es"
    assert routing.served_route_key("es", "de") == "es-de"
    assert routing.served_route_key("en", "ja") == "en-ja"
    assert choose_queue("bulk", "en-US", "de-AT", [GERMAN]) == "bulk.en-de"
    assert choose_queue("interactive", "en-GB", "es", [SHARED]) == "interactive"


@pytest.mark.integration
def test_missing_password_named(clean_env: pytest.MonkeyPatch) -> None:
    from core.broker import require_workers

    with RedisServer(password="s3cret-for-this-test") as server:
        clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{server.port}/0")
        _reset_process_state()
        with pytest.raises(BackendUnavailable, match="REDIS_PASSWORD") as raised:
            require_workers()
        assert "s3cret" not in str(raised.value)
        assert "unreachable" not in str(raised.value)
