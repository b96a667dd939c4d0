"""Tests of the Prometheus metrics and the ``/metrics`` endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from core import jobs, metrics, workers
from core.broker import send
from core.config import PROJECT_ROOT, ConfigError, reset_settings
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer, free_port, run_worker

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "203.0.113.7"}
TOKEN = "scrape-secret"
SUBPROCESS_TIMEOUT = 60.0
WRITER = """
from core import metrics
metrics.record_characters(["abcd"])
metrics.record_task_outcome("tasks.translate_batch", "success")
"""


def make_client() -> FlaskClient:
    import api_server

    return api_server.create_app().test_client()


@pytest.fixture
def offline_client(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Any
) -> Iterator[FlaskClient]:
    """An API in single-process mode whose Redis port has no server."""
    clean_env.delenv(metrics.MULTIPROC_DIR_ENV, raising=False)
    clean_env.delenv("METRICS_TOKEN", raising=False)
    reset_settings()
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    reset_settings()
    metrics.reset_broker_client()
    yield make_client()
    metrics.reset_broker_client()


def scrape(client: FlaskClient) -> dict[tuple[str, tuple], float]:
    """Return every sample of ``/metrics`` by name and sorted labels."""
    response = client.get("/metrics", environ_base=LOOPBACK)
    assert response.status_code == 200, response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    """Sum the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


@pytest.mark.unit
def test_request_counter_counts_calls(offline_client: FlaskClient) -> None:
    labels = {"endpoint": "/api/languages", "method": "GET", "status": "200"}
    before = scrape(offline_client)
    for _ in range(3):
        assert offline_client.get("/api/languages").status_code == 200
    after = scrape(offline_client)

    counted = total(after, "mt_http_requests_total", **labels)
    assert counted - total(before, "mt_http_requests_total", **labels) == 3
    timed = "mt_http_request_seconds_count"
    endpoint = {"endpoint": "/api/languages"}
    assert total(after, timed, **endpoint) - total(before, timed, **endpoint) == 3


@pytest.mark.unit
def test_unknown_route_counted_as_unmatched(offline_client: FlaskClient) -> None:
    labels = {"endpoint": metrics.UNMATCHED_ENDPOINT, "status": "404"}
    before = total(scrape(offline_client), "mt_http_requests_total", **labels)
    assert offline_client.get("/no/such/route").status_code == 404
    after = total(scrape(offline_client), "mt_http_requests_total", **labels)
    assert after - before == 1


@pytest.mark.unit
def test_passthrough_characters_counted(offline_client: FlaskClient) -> None:
    body = {"text": "12345", "source_lang": "en", "target_lang": "es"}
    before = total(scrape(offline_client), "mt_characters_translated_total")
    response = offline_client.post("/api/translate", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    after = total(scrape(offline_client), "mt_characters_translated_total")
    assert after - before == 5


@pytest.mark.unit
def test_rejected_request_adds_no_characters(offline_client: FlaskClient) -> None:
    body = {"text": "12345", "source_lang": "en", "target_lang": "xx"}
    before = total(scrape(offline_client), "mt_characters_translated_total")
    assert offline_client.post("/api/translate", json=body).status_code == 400
    after = total(scrape(offline_client), "mt_characters_translated_total")
    assert after == before


@pytest.mark.unit
def test_remote_client_without_token_403(offline_client: FlaskClient) -> None:
    response = offline_client.get("/metrics", environ_base=REMOTE)
    assert response.status_code == 403
    assert response.mimetype == "application/json"
    assert response.get_json()["success"] is False
    assert response.get_json()["code"] == "forbidden"


@pytest.mark.unit
def test_remote_client_with_token(
    offline_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    reset_settings()
    right = {"Authorization": f"Bearer {TOKEN}"}
    wrong = {"Authorization": "Bearer not-the-token"}

    response = offline_client.get("/metrics", environ_base=REMOTE, headers=right)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert b"mt_http_requests_total" in response.data
    response = offline_client.get("/metrics", environ_base=REMOTE, headers=wrong)
    assert response.status_code == 403


@pytest.mark.unit
@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("::ffff:8.8.8.8", False),
        ("not-an-address", False),
        (None, False),
    ],
)
def test_scrape_allowed_by_address(
    address: str | None, allowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    reset_settings()
    assert metrics.scrape_allowed(address, None) is allowed


@pytest.mark.unit
def test_empty_token_never_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "")
    reset_settings()
    assert metrics.scrape_allowed("10.0.0.1", "Bearer ") is False


@pytest.mark.unit
def test_multiprocess_values_summed(
    offline_client: FlaskClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    env[metrics.MULTIPROC_DIR_ENV] = str(folder)
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", WRITER],
            cwd=PROJECT_ROOT,
            env=env,
            check=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
    assert len(list(folder.glob("counter_*.db"))) == 2

    monkeypatch.setenv(metrics.MULTIPROC_DIR_ENV, str(folder))
    samples = scrape(offline_client)
    assert total(samples, "mt_characters_translated_total") == 8
    outcome = {"task": "tasks.translate_batch", "outcome": "success"}
    assert total(samples, "mt_task_outcomes_total", **outcome) == 2


@pytest.mark.unit
@pytest.mark.parametrize(
    ("signal_name", "outcome"),
    [("task_success", "success"), ("task_failure", "failure"), ("task_retry", "retry")],
)
def test_task_signals_counted(signal_name: str, outcome: str) -> None:
    from celery import signals

    import tasks

    name = tasks.translate_batch.name
    labels = {"task": name, "outcome": outcome}
    sample = "mt_task_outcomes_total"
    before = REGISTRY.get_sample_value(sample, labels) or 0.0
    getattr(signals, signal_name).send(sender=tasks.translate_batch)
    assert REGISTRY.get_sample_value(sample, labels) == before + 1


@pytest.mark.integration
def test_cache_lookups_and_queue_depth(live_stack: dict[str, str]) -> None:
    client = make_client()
    body = {"text": "Metrics count this.", "source_lang": "en", "target_lang": "es"}
    metric = "mt_cache_lookups_total"

    before = scrape(client)
    first = client.post("/api/translate", json=body)
    assert first.status_code == 200, first.get_data(as_text=True)
    middle = scrape(client)
    second = client.post("/api/translate", json=body)
    assert second.status_code == 200, second.get_data(as_text=True)
    assert second.get_json()["cached"] is True
    after = scrape(client)

    miss = total(middle, metric, result="miss") - total(before, metric, result="miss")
    assert miss >= 1
    hit = total(after, metric, result="hit") - total(middle, metric, result="hit")
    assert hit >= 1
    for tier in ("memory", "disk", "redis"):
        assert (metric, (("result", "miss"), ("tier", tier))) in middle, tier
    for queue in metrics.QUEUES:
        assert ("mt_queue_depth", (("queue", queue),)) in after, queue
    characters = total(after, "mt_characters_translated_total")
    assert characters - total(before, "mt_characters_translated_total") == 2 * len(
        body["text"]
    )


def parse_samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.unit
def test_exporter_needs_multiprocess_dir(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv(metrics.MULTIPROC_DIR_ENV, raising=False)
    metrics.check_worker_exporter(0)
    with pytest.raises(ConfigError, match="WORKER_METRICS_PORT is 9200"):
        metrics.check_worker_exporter(9200)


@pytest.mark.integration
def test_worker_exporter_and_pair_queues(
    stack_env: dict[str, str], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    port = free_port()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    with RedisServer() as server:
        env = {
            **stack_env,
            "REDIS_URL": server.url,
            "CACHE_DIR": str(tmp_path / "worker-cache"),
            "WORKER_PAIRS": "en-es",
            "WORKER_METRICS_PORT": str(port),
            metrics.MULTIPROC_DIR_ENV: str(folder),
        }
        clean_env.setenv("REDIS_URL", server.url)
        clean_env.setenv("MODEL_DIR", stack_env["MODEL_DIR"])
        clean_env.delenv(metrics.MULTIPROC_DIR_ENV, raising=False)
        _reset_process_state()
        metrics.reset_broker_client()
        with run_worker(env, "exporter", tmp_path):
            task_id = send(
                "tasks.translate_text",
                args=["Count this task.", "en", "es"],
                queue="interactive.en-es",
            )
            jobs.wait_for_task(task_id, time.monotonic() + 120, task_id)
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                exported = parse_samples(response.read().decode())

            # A queue only a heartbeat names is still measured.
            workers.Heartbeat("idle@host", {"queues": ["bulk.en-fr"]}).beat()
            redis.Redis.from_url(server.url).rpush("bulk.en-fr", "a", "b")
            samples = scrape(make_client())
        metrics.reset_broker_client()

    outcome = {"task": "tasks.translate_text", "outcome": "success"}
    assert total(exported, "mt_task_outcomes_total", **outcome) == 1
    assert total(samples, "mt_queue_depth", queue="bulk.en-fr") == 2
    assert total(samples, "mt_queue_depth", queue="interactive.en-es") == 0
    assert ("mt_queue_depth", (("queue", "bulk"),)) in samples


@pytest.mark.unit
def test_made_up_methods_share_label(offline_client: FlaskClient) -> None:
    for method in ("BREW", "WHEN", "X1", "X2"):
        offline_client.open("/api/languages", method=method, environ_base=LOOPBACK)
    samples = scrape(offline_client)
    methods = {
        dict(labels).get("method")
        for (name, labels) in samples
        if name == "mt_http_requests_total"
    }
    assert "other" in methods
    assert not methods & {"BREW", "WHEN", "X1", "X2"}


@pytest.mark.unit
@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_proxied_loopback_needs_token(offline_client: FlaskClient, header: str) -> None:
    response = offline_client.get(
        "/metrics", environ_base=LOOPBACK, headers={header: "203.0.113.7"}
    )
    assert response.status_code == 403
    assert offline_client.get("/metrics", environ_base=LOOPBACK).status_code == 200
