"""Tests of the Celery task bodies and of the worker configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from core import dispatch, models
from core.cache import get_cache
from core.config import PROJECT_ROOT, reset_settings
from tests.conftest import WORKER_NAME
from tests.helpers import free_port


@pytest.fixture
def eager_env(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path
) -> pytest.MonkeyPatch:
    """Tiny models on disk and a Redis URL with no server behind it."""
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    clean_env.setenv("NUM_BEAMS", "1")
    reset_settings()
    yield clean_env
    models.unload_all()


@pytest.mark.unit
class TestTaskBodies:
    def test_batch_one_item_per_input_in_order(self, eager_env: object) -> None:
        import tasks

        texts = ["Hello there.", "", "Good morning.", "   ", "Hello there."]
        result = tasks.translate_batch.apply(args=[texts, "en", "es"]).get()
        assert len(result["items"]) == len(texts)
        assert result["translations"] == [
            item["translation"] for item in result["items"]
        ]
        assert result["translations"][1] == ""
        assert result["translations"][3] == "   "
        assert result["translations"][0] == result["translations"][4]
        assert result["items"][0]["model"] == "opus-mt-en-es"
        assert result["items"][1]["model"] is None

    def test_second_call_is_cache_hit(self, eager_env: object) -> None:
        import tasks

        first = tasks.translate_text.apply(args=["A new sentence.", "en", "es"]).get()
        second = tasks.translate_text.apply(args=["A new sentence.", "en", "es"]).get()
        assert first["cached"] is False
        assert second["cached"] is True
        assert second["cache_tier"] == "memory"
        assert second["translation"] == first["translation"]

    def test_progress_reaches_total(
        self, eager_env: object, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import tasks

        monkeypatch.setenv("MAX_BATCH_SIZE", "2")
        reset_settings()
        reports: list[dict[str, int]] = []

        def record(self: object, state: str, meta: dict[str, int]) -> None:
            assert state == "PROGRESS"
            reports.append(meta)

        class FakeRequest:
            id = "progress-test"
            called_directly = False
            is_eager = False

        class RecordingTask:
            request = FakeRequest()
            update_state = record

        texts = [f"Sentence number {index}." for index in range(5)]
        tasks.translate_items(RecordingTask(), texts, "en", "es")
        assert reports[-1] == {"current": 5, "total": 5}
        currents = [report["current"] for report in reports]
        assert currents == sorted(currents)

    def test_missing_checkpoint_raises_model_not_available(
        self, eager_env: pytest.MonkeyPatch
    ) -> None:
        import tasks
        from core.errors import ModelNotAvailable

        eager_env.setenv("LANGUAGE_PAIRS", "en-es,en-nl")
        reset_settings()
        result = tasks.translate_text.apply(args=["Hello", "en", "nl"])
        with pytest.raises(ModelNotAvailable, match="en-nl"):
            result.get()


@pytest.mark.unit
def test_celery_settings() -> None:
    import celery_config

    assert celery_config.accept_content == ["json"]
    assert celery_config.result_accept_content == ["json"]
    assert celery_config.task_serializer == "json"
    assert celery_config.result_serializer == "json"
    assert celery_config.task_acks_late is True
    assert celery_config.task_reject_on_worker_lost is True
    assert celery_config.worker_prefetch_multiplier == 1
    assert celery_config.worker_max_tasks_per_child >= 1
    assert celery_config.task_soft_time_limit < celery_config.task_time_limit
    timeout = celery_config.broker_transport_options["visibility_timeout"]
    assert timeout > celery_config.task_time_limit
    assert celery_config.result_expires > 0
    queues = {queue.name for queue in celery_config.task_queues}
    assert queues == {"interactive", "bulk", "maintenance"}


@pytest.mark.unit
def test_front_ends_do_not_import_torch() -> None:
    code = (
        "import sys, api_server, app_batch_celery, core.dispatch, core.models\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert output.stdout.strip() == ""


@pytest.mark.integration
class TestLiveWorker:
    def test_worker_consumes_all_queues(self, live_stack: dict[str, str]) -> None:
        client = redis.Redis.from_url(live_stack["REDIS_URL"])
        beat = json.loads(client.get(f"mt:worker:{WORKER_NAME}"))
        assert beat["queues"] == ["bulk", "interactive", "maintenance"]
        assert "en-es" in beat["pairs"]

    def test_front_end_and_worker_keys_agree(self, live_stack: dict[str, str]) -> None:
        text = f"Key agreement {time.time_ns()}."
        items = dispatch.translate_sync([text], "en", "es")
        assert items[0]["cached"] is False

        from core.pipeline import Pipeline

        route = models.resolve_route("en", "es")
        context = Pipeline(worker=False)._context(route)
        assert context is not None
        key = context.key(text, {})
        client = redis.Redis.from_url(live_stack["REDIS_URL"])
        stored = client.get(f"trans:e:{key}")
        assert stored is not None, "the worker wrote under a different key"
        assert json.loads(stored)["translation"] == items[0]["translation"]
        published = client.get("mt:fingerprint:en-es").decode()
        assert published == context.model_fingerprint

    def test_hit_needs_no_worker_round_trip(
        self, live_stack: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        text = f"Round trip {time.time_ns()}."
        dispatch.translate_sync([text], "en", "es")

        def fail(*args: object, **kwargs: object) -> str:
            raise AssertionError("a cache hit must not send a task")

        monkeypatch.setattr(dispatch, "send", fail)
        items = dispatch.translate_sync([text], "en", "es")
        assert items[0]["cached"] is True

    def test_clear_cache_task_bumps_generation(
        self, live_stack: dict[str, str]
    ) -> None:
        from core.broker import celery_app

        before = get_cache().stats()["generation"]
        result = celery_app().send_task("tasks.clear_cache", queue="maintenance")
        cleared = result.get(timeout=60)
        assert cleared["generation"] == before + 1
        stats = (
            celery_app()
            .send_task("tasks.get_cache_stats", queue="maintenance")
            .get(timeout=60)
        )
        assert stats["generation"] == before + 1
        assert stats["tiers"]["memory"]["entries"] == 0


@pytest.mark.integration
def test_queues_route_to_their_own_lists(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A message sent to one queue lands in that queue's Redis list only."""
    from core.broker import send
    from tests.conftest import _reset_process_state
    from tests.helpers import RedisServer

    with RedisServer() as server:
        clean_env.setenv("REDIS_URL", server.url)
        _reset_process_state()
        send("tasks.translate_batch", args=[["x"], "en", "es"], queue="bulk")
        send("tasks.translate_text", args=["x", "en", "es"], queue="interactive")
        send("tasks.clear_cache", queue="maintenance")
        client = redis.Redis.from_url(server.url)
        assert client.llen("bulk") == 1
        assert client.llen("interactive") == 1
        assert client.llen("maintenance") == 1
        bulk_message = json.loads(client.lindex("bulk", 0))
        assert bulk_message["headers"]["task"] == "tasks.translate_batch"


@pytest.mark.unit
def test_worker_log_omits_task_results() -> None:
    from celery.app import trace

    import tasks

    assert tasks.app is not None
    assert "return_value" not in trace.LOG_SUCCESS
