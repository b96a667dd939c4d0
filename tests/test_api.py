"""Tests of the REST API: validation without servers, then against a live stack."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from core.config import reset_settings
from tests.helpers import free_port

TEXT_BODY = {"text": "Hello world.", "source_lang": "en", "target_lang": "es"}


def make_client() -> FlaskClient:
    import api_server

    return api_server.create_app().test_client()


@pytest.fixture
def offline_client(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Any
) -> Iterator[FlaskClient]:
    """An API whose Redis port has no server, for validation tests."""
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    clean_env.setenv("MAX_TEXT_CHARS", "100")
    clean_env.setenv("MAX_BATCH_TEXTS", "5")
    clean_env.setenv("MAX_REQUEST_BYTES", "2000")
    reset_settings()
    yield make_client()


def submit_async(client: FlaskClient, texts: list[str]) -> str:
    """Queue an async en-es batch and return its task id."""
    response = client.post(
        "/api/batch",
        json={"texts": texts, "source_lang": "en", "target_lang": "es", "async": True},
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["task_id"]


def wait_until_done(client: FlaskClient, task_id: str, timeout: float = 120) -> dict:
    """Poll a job with a one-item page until it is done; return that report."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = client.get(f"/api/task/{task_id}?limit=1").get_json()
        if report["status"] == "done":
            return report
        time.sleep(0.2)
    raise AssertionError(f"job {task_id} did not finish: {report}")


def assert_json_error(response: Any, status: int, fragment: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is False
    assert fragment in body["error"]
    return body


BAD_REQUESTS = [
    ("not json", "text/plain", "hello", 415, "Content type 'text/plain'"),
    ("malformed json", "application/json", "{bad", 400, "not valid JSON"),
    ("json array", "application/json", "[1, 2]", 400, "must be a JSON object"),
    ("json null", "application/json", "null", 400, "JSON object, got null"),
    ("missing text", "application/json", {"source_lang": "en"}, 400, "'text'"),
    ("null text", "application/json", {**TEXT_BODY, "text": None}, 400, "'text'"),
    ("number text", "application/json", {**TEXT_BODY, "text": 5}, 400, "'text'"),
    (
        "missing source",
        "application/json",
        {"text": "x", "target_lang": "es"},
        400,
        "'source_lang' is required",
    ),
    (
        "bad source code",
        "application/json",
        {**TEXT_BODY, "source_lang": "english"},
        400,
        "'source_lang' has the invalid language code 'english'",
    ),
    (
        "list target",
        "application/json",
        {**TEXT_BODY, "target_lang": ["es"]},
        400,
        "'target_lang' must be a language code",
    ),
    (
        "unsupported pair",
        "application/json",
        {**TEXT_BODY, "source_lang": "fr", "target_lang": "de"},
        400,
        "fr-de is not served",
    ),
    (
        "text too long",
        "application/json",
        {**TEXT_BODY, "text": "a" * 101},
        413,
        "limit is 100",
    ),
    (
        "lone surrogate",
        "application/json",
        '{"text": "\\ud800", "source_lang": "en", "target_lang": "es"}',
        400,
        "surrogate",
    ),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("case", "mimetype", "body", "status", "fragment"),
    BAD_REQUESTS,
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_translate_rejects_bad_input(
    offline_client: FlaskClient,
    case: str,
    mimetype: str,
    body: Any,
    status: int,
    fragment: str,
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    response = offline_client.post("/api/translate", data=data, content_type=mimetype)
    assert_json_error(response, status, fragment)


BAD_BATCHES = [
    ("texts not list", {"texts": "abc"}, 400, "'texts' must be a list"),
    ("texts empty", {"texts": []}, 400, "'texts' is empty"),
    ("texts item null", {"texts": ["a", None]}, 400, "'texts[1]' must be a string"),
    ("too many texts", {"texts": ["a"] * 6}, 413, "limit is 5"),
    ("async not bool", {"texts": ["a"], "async": "yes"}, 400, "'async' must be"),
    ("async null", {"texts": ["a"], "async": None}, 400, "got null"),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("case", "body", "status", "fragment"),
    BAD_BATCHES,
    ids=[case[0] for case in BAD_BATCHES],
)
def test_batch_rejects_bad_input(
    offline_client: FlaskClient, case: str, body: dict, status: int, fragment: str
) -> None:
    payload = {"source_lang": "en", "target_lang": "es", **body}
    response = offline_client.post("/api/batch", json=payload)
    assert_json_error(response, status, fragment)


@pytest.mark.unit
def test_batch_text_over_limit_names_item(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/api/batch",
        json={"texts": ["ok", "a" * 101], "source_lang": "en", "target_lang": "es"},
    )
    body = assert_json_error(response, 413, "'texts[1]' has 101 characters")
    assert "/api/batch" not in body["error"]


@pytest.mark.unit
def test_deep_nesting_is_400(
    offline_client: FlaskClient, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("MAX_REQUEST_BYTES", "100000")
    reset_settings()
    nested = "[" * 5000 + "]" * 5000
    body = f'{{"text": "a", "source_lang": "en", "target_lang": "es", "x": {nested}}}'
    response = make_client().post(
        "/api/translate", data=body, content_type="application/json"
    )
    assert_json_error(response, 400, "nests arrays or objects too deeply")


@pytest.mark.unit
def test_request_id_is_sanitised(offline_client: FlaskClient) -> None:
    good = offline_client.get("/api/languages", headers={"X-Request-ID": "abc-123"})
    assert good.headers["X-Request-ID"] == "abc-123"
    bad = offline_client.get("/api/languages", headers={"X-Request-ID": "a b;<x>"})
    assert bad.headers["X-Request-ID"] != "a b;<x>"
    assert len(bad.headers["X-Request-ID"]) == 32


@pytest.mark.unit
@pytest.mark.parametrize("query", ["offset=-1", "limit=abc", "limit=99999999"])
def test_task_paging_parameters_checked(
    offline_client: FlaskClient, query: str
) -> None:
    response = offline_client.get(f"/api/task/some-id?{query}")
    assert_json_error(response, 400, "Query parameter")


@pytest.mark.unit
def test_body_over_limit_is_413(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/api/translate",
        data=json.dumps({**TEXT_BODY, "text": "a" * 5000}),
        content_type="application/json",
    )
    assert_json_error(response, 413, "limit of 2000 bytes")


@pytest.mark.unit
def test_unknown_route_and_method_are_json(offline_client: FlaskClient) -> None:
    assert_json_error(offline_client.get("/nope"), 404, "No endpoint at '/nope'")
    response = offline_client.get("/api/translate")
    assert_json_error(response, 405, "Method GET is not allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.unit
def test_broker_down_gives_fast_503(offline_client: FlaskClient) -> None:
    started = time.monotonic()
    response = offline_client.post("/api/translate", json=TEXT_BODY)
    elapsed = time.monotonic() - started
    body = assert_json_error(response, 503, "unreachable")
    assert body["code"] == "backend_unavailable"
    assert response.headers["Retry-After"]
    assert elapsed < 10, "a broker outage must not hang the request"


@pytest.mark.unit
def test_health_503_when_redis_down(offline_client: FlaskClient) -> None:
    response = offline_client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["redis"] is False
    assert body["status"] == "degraded"
    assert body["cache"]["redis_connected"] is False


@pytest.mark.unit
def test_languages_lists_served_pairs(offline_client: FlaskClient) -> None:
    body = offline_client.get("/api/languages").get_json()
    by_pair = {
        (pair["source_lang"], pair["target_lang"]): pair for pair in body["pairs"]
    }
    direct = {("en", "es"), ("es", "en"), ("en", "de"), ("de", "en"), ("en", "fr")}
    multi_target = {("en", "it"), ("en", "pt")}
    pivots = {
        (source, target)
        for source in ("es", "de")
        for target in ("es", "de", "fr", "it", "pt")
        if source != target
    }
    assert set(by_pair) == direct | multi_target | pivots
    assert by_pair[("en", "es")]["pivot"] is None
    assert by_pair[("en", "es")]["model"] == "opus-mt-en-es"
    assert by_pair[("en", "es")]["license"] == "CC-BY-4.0"
    assert by_pair[("en", "es")]["workers_ready"] is None, "Redis is down here"
    assert "Helsinki-NLP" in by_pair[("en", "es")]["attribution"]
    assert by_pair[("en", "it")]["model"] == "opus-mt-en-ROMANCE"
    assert by_pair[("en", "it")]["pivot"] is None
    assert by_pair[("es", "de")]["pivot"] == "en"
    assert by_pair[("es", "de")]["models"] == ["opus-mt-es-en", "opus-mt-en-de"]
    names = {language["code"]: language["name"] for language in body["languages"]}
    assert names["de"] == "German"
    assert names["it"] == "Italian"
    assert set(names) == {"en", "es", "de", "fr", "it", "pt"}


@pytest.mark.integration
class TestLiveStack:
    @pytest.fixture
    def client(self, live_stack: dict[str, str]) -> FlaskClient:
        return make_client()

    def test_translate_then_cached(self, client: FlaskClient) -> None:
        body = {**TEXT_BODY, "text": f"The cat sleeps {time.time_ns()}."}
        first = client.post("/api/translate", json=body)
        assert first.status_code == 200, first.get_json()
        data = first.get_json()
        assert data["success"] is True
        assert data["cached"] is False
        assert data["model"] == "opus-mt-en-es"
        assert data["source_lang"] == "en"
        assert data["target_lang"] == "es"
        assert isinstance(data["translation"], str)
        assert data["translation"].strip()

        second = client.post("/api/translate", json=body).get_json()
        assert second["cached"] is True
        assert second["translation"] == data["translation"]

    def test_case_insensitive_codes(self, client: FlaskClient) -> None:
        response = client.post(
            "/api/translate",
            json={**TEXT_BODY, "source_lang": "EN", "target_lang": "Es"},
        )
        assert response.status_code == 200
        assert response.get_json()["target_lang"] == "es"

    def test_batch_sync_items_in_order(self, client: FlaskClient) -> None:
        stamp = time.time_ns()
        texts = [f"Line {index} {stamp}" for index in range(5)] + ["", "  "]
        texts.insert(2, texts[0])
        response = client.post(
            "/api/batch",
            json={"texts": texts, "source_lang": "en", "target_lang": "de"},
        )
        assert response.status_code == 200, response.get_json()
        data = response.get_json()
        assert len(data["translations"]) == len(texts)
        assert len(data["items"]) == len(texts)
        assert data["translations"][0] == data["translations"][2]
        assert data["translations"][-2:] == ["", "  "]
        assert data["items"][-1]["model"] is None
        assert all(item["model"] == "opus-mt-en-de" for item in data["items"][:-2])
        assert [item["translation"] for item in data["items"]] == data["translations"]

    def test_batch_async_job_lifecycle(self, client: FlaskClient) -> None:
        stamp = time.time_ns()
        texts = [f"Async sentence {index} {stamp}" for index in range(10)]
        response = client.post(
            "/api/batch",
            json={
                "texts": texts,
                "source_lang": "en",
                "target_lang": "es",
                "async": True,
            },
        )
        assert response.status_code == 202
        data = response.get_json()
        assert data["status"] == "queued"
        task_id = data["task_id"]

        deadline = time.monotonic() + 120
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            report = client.get(f"/api/task/{task_id}").get_json()
            assert report["status"] in {"queued", "processing", "done"}
            if report["status"] == "done":
                break
            time.sleep(0.2)
        assert report["status"] == "done"
        assert report["progress"] == {"current": 10, "total": 10}
        assert len(report["result"]["translations"]) == 10
        assert report["errors"] == []
        assert report["expires_at"]

        sync = client.post(
            "/api/batch",
            json={"texts": texts, "source_lang": "en", "target_lang": "es"},
        ).get_json()
        assert sync["translations"] == report["result"]["translations"]
        assert all(item["cached"] for item in sync["items"])

    def test_large_job_result_is_paged(self, client: FlaskClient) -> None:
        stamp = time.time_ns()
        texts = [f"Paged sentence {index} {stamp}" for index in range(25)]
        task_id = submit_async(client, texts)
        wait_until_done(client, task_id)

        pages = []
        offset: int | None = 0
        while offset is not None:
            report = client.get(
                f"/api/task/{task_id}?offset={offset}&limit=10"
            ).get_json()
            assert report["result"]["offset"] == offset
            pages.append(report["result"]["translations"])
            offset = report["result"]["next_offset"]
        assert [len(page) for page in pages] == [10, 10, 5]

        whole = client.get(f"/api/task/{task_id}").get_json()["result"]
        assert whole["next_offset"] is None
        assert [text for page in pages for text in page] == whole["translations"]

    def test_unknown_and_expired_jobs(
        self, client: FlaskClient, live_stack: dict[str, str]
    ) -> None:
        response = client.get("/api/task/00000000-0000-0000-0000-000000000000")
        assert_json_error(response, 404, "No job with id")

        stamp = time.time_ns()
        accepted = client.post(
            "/api/batch",
            json={
                "texts": [f"Expiring {stamp}"],
                "source_lang": "en",
                "target_lang": "es",
                "async": True,
            },
        ).get_json()
        client_redis = redis.Redis.from_url(live_stack["REDIS_URL"])
        client_redis.delete(f"mt:job:{accepted['task_id']}")
        response = client.get(f"/api/task/{accepted['task_id']}")
        assert_json_error(response, 410, "expired")

    def test_cancel_job(self, client: FlaskClient) -> None:
        stamp = time.time_ns()
        accepted = client.post(
            "/api/batch",
            json={
                "texts": [f"Cancel me {stamp} {index}" for index in range(3)],
                "source_lang": "en",
                "target_lang": "es",
                "async": True,
            },
        ).get_json()
        response = client.delete(f"/api/task/{accepted['task_id']}")
        assert response.status_code == 200
        assert response.get_json()["status"] == "cancelled"
        report = client.get(f"/api/task/{accepted['task_id']}").get_json()
        assert report["status"] == "cancelled"

    def test_cancel_finished_job_keeps_result(self, client: FlaskClient) -> None:
        task_id = submit_async(client, [f"Finished {time.time_ns()}"])
        wait_until_done(client, task_id)

        response = client.delete(f"/api/task/{task_id}")
        assert_json_error(response, 409, "already finished")
        report = client.get(f"/api/task/{task_id}").get_json()
        assert report["status"] == "done"
        assert len(report["result"]["translations"]) == 1

    def test_cache_stats_and_clear(self, client: FlaskClient) -> None:
        body = {**TEXT_BODY, "text": f"Stats check {time.time_ns()}"}
        client.post("/api/translate", json=body)
        client.post("/api/translate", json=body)
        stats = client.get("/api/cache/stats").get_json()
        assert stats["cache"]["redis_connected"] is True
        assert stats["cache"]["hits"] >= 1
        assert stats["cache"]["tiers"]["redis"]["entries"] >= 1
        assert any(
            "opus-mt-en-es" in names for names in stats["models_loaded"].values()
        )

        cleared = client.post("/api/cache/clear").get_json()
        assert cleared["success"] is True
        assert cleared["redis_cleared"] is True
        again = client.post("/api/translate", json=body).get_json()
        assert again["cached"] is False

    def test_languages_reflect_worker_pairs(self, client: FlaskClient) -> None:
        body = client.get("/api/languages").get_json()
        ready = {
            (pair["source_lang"], pair["target_lang"]): pair["workers_ready"]
            for pair in body["pairs"]
        }
        assert ready[("en", "es")] is True
        assert ready[("es", "de")] is True

    def test_health_ok(self, client: FlaskClient) -> None:
        response = client.get("/health")
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "ok"
        assert body["redis"] is True
        assert body["workers"] >= 1
        assert body["cache"]["redis_connected"] is True

    def test_sync_deadline_gives_504_with_task_id(
        self, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SYNC_TIMEOUT", "0.1")
        reset_settings()
        texts = [f"Deadline {time.time_ns()} {index} " * 20 for index in range(40)]
        response = client.post(
            "/api/batch",
            json={"texts": texts, "source_lang": "en", "target_lang": "es"},
        )
        body = assert_json_error(response, 504, "deadline")
        task_id = body["task_id"]
        monkeypatch.setenv("SYNC_TIMEOUT", "60")
        reset_settings()
        wait_until_done(client, task_id)
        report = client.get(f"/api/task/{task_id}").get_json()
        assert report["status"] == "done"
        assert len(report["result"]["translations"]) == 40

    def test_missing_model_fails_fast(
        self, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A pair the API serves but no worker has a checkpoint for."""
        monkeypatch.setenv("LANGUAGE_PAIRS", "en-es,es-en,en-de,en-nl")
        reset_settings()
        started = time.monotonic()
        response = client.post(
            "/api/translate",
            json={
                "text": f"hello {time.time_ns()}",
                "source_lang": "en",
                "target_lang": "nl",
            },
        )
        assert time.monotonic() - started < 30
        body = assert_json_error(response, 503, "'en-nl'")
        assert body["code"] == "pair_unavailable"
        assert "python -m core.models list" in body["error"]


@pytest.mark.unit
def test_cache_clear_without_redis_503(offline_client: FlaskClient) -> None:
    response = offline_client.post("/api/cache/clear")
    body = assert_json_error(response, 503, "this API process only")
    assert body["code"] == "backend_unavailable"
