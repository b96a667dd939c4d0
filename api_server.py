"""REST API of the translation service (Flask, served by gunicorn).

Every response is JSON. Errors have the shape ``{"success": false, "error":
"...", "code": "..."}`` with the status of the ``core.errors`` class behind
them; nothing returns HTML or a traceback. The API never imports torch: it
looks texts up in the shared cache and sends the misses to Celery workers.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api_access import register_access_control
from api_compat import register_compat_routes
from api_docs import register_api_docs
from core import dispatch, jobs, metrics, models, routing, workers
from core.cache import get_cache
from core.config import get_settings
from core.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    InputTooLarge,
    InvalidRequest,
    ServiceError,
    TranslationFailed,
)
from core.languages import language_name
from core.logs import configure_logging
from core.options import TranslationOptions
from core.request_body import json_object, read_body
from core.store import redis_client

logger = logging.getLogger(__name__)

JSON_MIMETYPE = "application/json"
# The opus-mt checkpoints are published under CC-BY 4.0, which requires attribution.
MODEL_LICENSE = "CC-BY-4.0"
MODEL_ATTRIBUTION = (
    "OPUS-MT models by Helsinki-NLP "
    "(Language Technology Research Group, University of Helsinki)"
)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
QUERY_INT = re.compile(r"[0-9]{1,18}")


def _error_response(status: int, message: str, code: str, **extra: Any) -> Response:
    response = jsonify({"success": False, "error": message, "code": code, **extra})
    response.status_code = status
    return response


def _json_body() -> dict[str, Any]:
    """Return the request body as a JSON object, or raise a 4xx error."""
    if request.mimetype != JSON_MIMETYPE:
        raise UnsupportedMediaType(request.mimetype or "none")
    return json_object(
        read_body(),
        ' Send a JSON object such as {"text": "Hello", "source_lang": "en", '
        '"target_lang": "es"}.',
    )


class UnsupportedMediaType(ServiceError):
    """The request body is not ``application/json``."""

    status = 415
    code = "unsupported_media_type"

    def __init__(self, mimetype: str) -> None:
        super().__init__(
            f"Content type {mimetype!r} is not supported. Send the body as JSON "
            "with the header 'Content-Type: application/json'."
        )


def _check_text(value: Any, field: str, fix: str = "Split the text.") -> str:
    settings = get_settings()
    if not isinstance(value, str):
        raise InvalidRequest(
            f"Field {field!r} must be a string, got "
            f"{'null' if value is None else type(value).__name__}."
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"Field {field!r} contains a lone UTF-16 surrogate, which is not "
            "valid Unicode. Send the text as valid UTF-8."
        ) from None
    if len(value) > settings.max_text_chars:
        raise InputTooLarge(
            f"Field {field!r} has {len(value)} characters; the limit is "
            f"{settings.max_text_chars} (MAX_TEXT_CHARS). {fix}"
        )
    return value


def _required(body: dict[str, Any], field: str) -> Any:
    if field not in body or body[field] is None:
        raise InvalidRequest(f"Field {field!r} is required.")
    return body[field]


def _pair(body: dict[str, Any]) -> tuple[str, str]:
    return dispatch.resolve_languages(
        _required(body, "source_lang"), _required(body, "target_lang")
    )


def _texts(body: dict[str, Any]) -> list[str]:
    settings = get_settings()
    texts = _required(body, "texts")
    if not isinstance(texts, list):
        raise InvalidRequest(
            f"Field 'texts' must be a list of strings, got {type(texts).__name__}."
        )
    if not texts:
        raise InvalidRequest("Field 'texts' is empty. Send at least one text.")
    if len(texts) > settings.max_batch_texts:
        raise InputTooLarge(
            f"Field 'texts' has {len(texts)} items; the limit is "
            f"{settings.max_batch_texts} (MAX_BATCH_TEXTS). Split the batch or "
            "use the CSV batch CLI."
        )
    return [_check_text(text, f"texts[{index}]") for index, text in enumerate(texts)]


def _async_flag(body: dict[str, Any]) -> bool:
    value = body.get("async", False)
    if not isinstance(value, bool):
        shown = "null" if value is None else json.dumps(value)
        raise InvalidRequest(f"Field 'async' must be true or false, got {shown}.")
    return value


def _query_int(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    # str.isdigit() also accepts digits that int() rejects, such as "²".
    if QUERY_INT.fullmatch(raw) is None or int(raw) > maximum:
        raise InvalidRequest(
            f"Query parameter {name!r} must be a whole number from 0 to "
            f"{maximum}, got {raw!r}."
        )
    return int(raw)


def _public_item(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "translation": item["translation"],
        "cached": bool(item.get("cached")),
        "model": item.get("model"),
        **{
            name: value
            for name, value in item.items()
            if name not in {"translation", "cached", "model"}
        },
    }


def register_routes(app: Flask) -> None:
    """Attach every endpoint of the API to ``app``."""

    @app.post("/api/translate")
    def translate() -> Response:
        body = _json_body()
        text = _check_text(
            _required(body, "text"),
            "text",
            "Split the text into several texts and send them to /api/batch.",
        )
        source, target = _pair(body)
        options = TranslationOptions.from_request(body)
        item = dispatch.translate_sync([text], source, target, options, kind="text")[0]
        if item.get("code") == TranslationFailed.code:
            # One text has no other items to return, so its failure fails the
            # request, as a failed task does.
            raise TranslationFailed(
                f"The text could not be translated: {item['error']}"
            )
        return jsonify(
            {
                "success": True,
                **_public_item(item),
                "source_lang": source,
                "target_lang": target,
            }
        )

    @app.post("/api/batch")
    def batch() -> tuple[Response, int] | Response:
        body = _json_body()
        texts = _texts(body)
        source, target = _pair(body)
        options = TranslationOptions.from_request(body)
        if _async_flag(body):
            job_id = dispatch.submit_async(texts, source, target, options)
            response = jsonify({"success": True, "task_id": job_id, "status": "queued"})
            response.headers["Location"] = f"/api/task/{job_id}"
            return response, 202
        items = dispatch.translate_sync(texts, source, target, options)
        public = [_public_item(item) for item in items]
        return jsonify(
            {
                "success": True,
                "translations": [item["translation"] for item in public],
                "items": public,
                "source_lang": source,
                "target_lang": target,
            }
        )

    @app.get("/api/task/<task_id>")
    def task_status(task_id: str) -> Response:
        offset = _query_int("offset", 0, jobs.MAX_RESULT_PAGE_SIZE * 10_000)
        limit = _query_int("limit", jobs.RESULT_PAGE_SIZE, jobs.MAX_RESULT_PAGE_SIZE)
        report = jobs.job_status(task_id, offset=offset, limit=max(1, limit))
        return jsonify({"success": True, **report})

    @app.delete("/api/task/<task_id>")
    def task_cancel(task_id: str) -> Response:
        return jsonify({"success": True, **jobs.cancel_job(task_id)})

    @app.get("/api/cache/stats")
    def cache_stats() -> Response:
        return jsonify(
            {
                "success": True,
                "cache": get_cache().stats(),
                "models_loaded": _models_loaded(),
            }
        )

    @app.post("/api/cache/clear")
    def cache_clear() -> Response:
        result = get_cache().clear()
        if not result["redis_cleared"]:
            # Other processes learn of a clear through Redis, so this one
            # process's tiers are all that could be cleared.
            raise BackendUnavailable(
                "The cache was cleared in this API process only, because Redis "
                "is unreachable and the other processes learn of a clear through "
                "it. Retry once Redis is back."
            )
        logger.info("Request %s cleared the cache", g.request_id)
        return jsonify({"success": True, **result})

    @app.get("/api/languages")
    def languages() -> Response:
        routes = models.served_routes()
        announced = _announced_routes()
        codes = sorted(
            {route["source_lang"] for route in routes}
            | {route["target_lang"] for route in routes}
        )
        return jsonify(
            {
                "success": True,
                "languages": [
                    {"code": code, "name": language_name(code)} for code in codes
                ],
                "pairs": [
                    {
                        **route,
                        "source_name": language_name(route["source_lang"]),
                        "target_name": language_name(route["target_lang"]),
                        "model": route["models"][-1],
                        "license": MODEL_LICENSE,
                        "attribution": MODEL_ATTRIBUTION,
                        "workers_ready": _route_ready(route, announced),
                    }
                    for route in routes
                ],
            }
        )

    @app.get("/health")
    def health() -> tuple[Response, int]:
        return _health()


def _announced_routes() -> set[str] | None:
    """Routes the live workers announce in their heartbeats; None without Redis."""
    try:
        live = workers.live_workers()
    except redis.RedisError:
        return None
    return {route for worker in live for route in worker.get("routes", [])}


def _route_ready(route: dict[str, Any], announced: set[str] | None) -> bool | None:
    """Return whether one live worker serves the whole route; None when unknown.

    A pivot route needs both hops in the same worker, because one task runs
    both.
    """
    if announced is None:
        return None
    return routing.route_key(route["source_lang"], route["target_lang"]) in announced


def _models_loaded() -> dict[str, list[str]] | None:
    try:
        return workers.loaded_models_by_process()
    except redis.RedisError:
        return None


def _health() -> tuple[Response, int]:
    cache_stats = get_cache().stats(count_redis_entries=False)
    try:
        redis_client().ping()
        live = workers.live_workers()
        redis_ok = True
    except redis.RedisError as error:
        logger.warning("Health check: Redis unreachable: %s", error)
        live, redis_ok = [], False

    # Cache tiers that fail: the service goes on with the others.
    degraded = []
    if not cache_stats["disk_ok"]:
        degraded.append({"tier": "disk", "error": cache_stats["disk_error"]})
    if not cache_stats["redis_connected"]:
        degraded.append({"tier": "redis", "error": "Redis is unreachable"})
    ok = redis_ok and bool(live) and not degraded
    body = {
        "status": "ok" if ok else "degraded",
        "degraded": degraded,
        "redis": redis_ok,
        "workers": len(live),
        "worker_details": [
            {key: worker.get(key) for key in ("hostname", "queues", "pairs", "routes")}
            for worker in live
        ],
        "models_loaded": _models_loaded() if redis_ok else None,
        "cache": {
            "redis_connected": cache_stats["redis_connected"],
            "disk_ok": cache_stats["disk_ok"],
            "memory_entries": cache_stats["tiers"]["memory"]["entries"],
            "disk_entries": cache_stats["tiers"]["disk"]["entries"],
            "hit_rate": cache_stats["hit_rate"],
        },
    }
    return jsonify(body), 200 if redis_ok else 503


def register_error_handlers(app: Flask) -> None:
    """Map every error to one JSON shape; never HTML or a traceback."""

    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError) -> Response:
        extra: dict[str, Any] = {}
        if isinstance(error, DeadlineExceeded):
            extra["task_id"] = error.task_id
        if error.status >= 500:
            logger.warning(
                "Request %s failed with %s: %s", g.request_id, error.code, error.message
            )
        response = _error_response(error.status, error.message, error.code, **extra)
        if error.status == 503:
            response.headers["Retry-After"] = str(getattr(error, "retry_after", 5))
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> Response:
        limit = get_settings().max_request_bytes
        return _error_response(
            413,
            f"The request body is larger than the limit of {limit} bytes "
            "(MAX_REQUEST_BYTES). Send fewer or shorter texts per request.",
            "request_too_large",
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {
            404: f"No endpoint at {request.path!r}. See the README for the API.",
            405: f"Method {request.method} is not allowed on {request.path!r}.",
        }.get(status, error.description or error.name)
        response = _error_response(
            status, message, error.name.lower().replace(" ", "_")
        )
        valid_methods = getattr(error, "valid_methods", None)
        if status == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        logger.exception("Request %s failed unexpectedly", g.get("request_id"))
        return _error_response(
            500,
            "The server failed to handle the request. The error is logged with "
            f"request id {g.get('request_id')}.",
            "internal_error",
        )


class ApiFlask(Flask):
    """Flask whose automatic ``OPTIONS`` response is 204 with no body or type."""

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app() -> Flask:
    """Build the Flask application."""
    settings = get_settings()
    configure_logging()
    app = ApiFlask(__name__)
    # Flask reads FLASK_DEBUG from the environment; debug mode would let
    # errors through to the server instead of the JSON handlers below.
    app.debug = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.config["TRAP_HTTP_EXCEPTIONS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    @app.before_request
    def start_request() -> None:
        supplied = request.headers.get("X-Request-ID", "")
        # A client's id is echoed and logged, so only a short safe token is kept.
        g.request_id = supplied if REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        elapsed_ms = elapsed * 1e3
        rule = request.url_rule.rule if request.url_rule is not None else None
        metrics.record_request(rule, request.method, response.status_code, elapsed)
        metrics.record_request_characters(rule, response.status_code)
        logger.info(
            "Request %s %s %r -> %d in %.1f ms",
            g.get("request_id"),
            request.method,
            request.path,
            response.status_code,
            elapsed_ms,
        )
        return response

    register_access_control(app)
    register_routes(app)
    register_error_handlers(app)
    register_compat_routes(app)
    register_api_docs(app)
    metrics.register_metrics_endpoint(app)
    return app


app = create_app()

if __name__ == "__main__":
    _settings = get_settings()
    app.run(host=_settings.host, port=_settings.port, debug=False)
