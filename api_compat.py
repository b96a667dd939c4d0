"""LibreTranslate- and DeepL-compatible endpoints over the translation service.

Programs written for either API, including their published client libraries,
can point at this deployment unchanged:

- LibreTranslate: ``POST /translate``, ``GET /languages``, ``POST /detect``;
- DeepL: ``POST /v2/translate``, ``GET /v2/languages``, ``GET /v2/usage``.

Both front ends use the same cache-first dispatch as ``/api/translate``, so a
text translated through one API is a cache hit for the others. Each protocol
keeps its own error shape (``{"error": ...}`` for LibreTranslate,
``{"message": ...}`` for DeepL) through error handlers registered on its own
blueprint, so the native ``/api/*`` endpoints keep theirs.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, default_exceptions

from core import dispatch, jobs, models
from core.access import KEYRING_EXTENSION, KeyRing
from core.broker import require_workers, send
from core.config import get_settings
from core.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    InputTooLarge,
    InvalidRequest,
    ServiceError,
    TranslationFailed,
    UnsupportedLanguagePair,
)
from core.languages import base_language, language_name, normalize_code
from core.options import TranslationOptions
from core.pipeline import AUTO, detect_with_cache, needs_model
from core.request_body import JSON_TYPE_NAMES, json_object, read_body
from core.routing import QUEUE_INTERACTIVE, any_worker_queue
from core.store import redis_client

logger = logging.getLogger(__name__)

USAGE_KEY = "mt:usage:characters"
# NOTE: no character quota is enforced, so DeepL clients are shown this limit
# and never receive status 456.
USAGE_CHARACTER_LIMIT = 1_000_000_000_000
DETECT_TASK = "tasks.detect_language"
FORM_MIMETYPE = "application/x-www-form-urlencoded"
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,18}")
UNDETERMINED = "und"
DEEPL_AUTH_SCHEME = "DeepL-Auth-Key"
DEEPL_TAG_HANDLING = ("html",)
# DeepL accepts no formality for a target whose supports_formality is false,
# except these values, which fall back to the default.
DEEPL_SOFT_FORMALITY = ("default", "prefer_less", "prefer_more")
# The deepl client (1.32.0) rejects the bare targets EN and PT, so these
# languages are listed by variant. A variant request uses the language's
# checkpoint.
DEEPL_TARGET_VARIANTS = {"en": ("EN-GB", "EN-US"), "pt": ("PT-BR", "PT-PT")}

libretranslate_api = Blueprint("libretranslate", __name__)
deepl_api = Blueprint("deepl", __name__, url_prefix="/v2")


class InvalidAuthKey(ServiceError):
    """The API key of a request is missing or not allowed."""

    status = 403
    code = "invalid_auth_key"


def key_allowed(protocol: str, key: str | None) -> bool:
    """Decide whether ``key`` may use the ``protocol`` API ("libretranslate", "deepl").

    Every endpoint of this module calls it before any other work, and a False
    return becomes status 403 in the protocol's error shape. Without
    configured keys (``API_KEYS``, ``API_KEYS_FILE``) every request is allowed.
    The same check runs before the endpoint in ``api_access``.
    """
    ring: KeyRing | None = current_app.extensions.get(KEYRING_EXTENSION)
    if ring is None or not ring.enabled:
        return True
    return ring.find(key) is not None


def request_fields() -> dict[str, Any]:
    """Return the fields of the current compatible-API request (see below)."""
    return _request_fields()


# Request parsing shared by both protocols.


def _request_fields() -> dict[str, Any]:
    """Return the fields of a JSON object body, else of the query and form.

    A form or query field sent once is a string, and one sent several times
    (``text=a&text=b``) is a list of strings.
    """
    raw = read_body()
    # An empty body with a JSON type, which some clients send with every
    # request, counts as no body, so query parameters still apply.
    if request.is_json and raw.strip():
        return json_object(raw)
    if request.mimetype == FORM_MIMETYPE:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(
                "The form body is not valid UTF-8. Percent-encode the field "
                "values as UTF-8."
            ) from None

    fields: dict[str, Any] = {}
    # For GET requests Werkzeug leaves the form out of request.values, but the
    # deepl client sends the fields of GET /v2/languages as a form body.
    for source in (request.args, request.form):
        for name in source:
            values = source.getlist(name)
            fields[name] = values[0] if len(values) == 1 else values
    return fields


def _texts(value: Any, field: str) -> list[str]:
    """Validate one text or a list of texts against the service's limits."""
    settings = get_settings()
    if value is None:
        raise InvalidRequest(f"Parameter {field!r} is required.")
    texts = value if isinstance(value, list) else [value]
    if not texts:
        raise InvalidRequest(f"Parameter {field!r} is empty. Send at least one text.")
    if len(texts) > settings.max_batch_texts:
        raise InputTooLarge(
            f"Parameter {field!r} has {len(texts)} texts; the limit is "
            f"{settings.max_batch_texts} (MAX_BATCH_TEXTS). Split the request."
        )

    for index, text in enumerate(texts):
        name = field if len(texts) == 1 else f"{field}[{index}]"
        if not isinstance(text, str):
            kind = "null" if text is None else type(text).__name__
            raise InvalidRequest(f"Parameter {name!r} must be a string, got {kind}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"Parameter {name!r} contains a lone UTF-16 surrogate, which is "
                "not valid Unicode. Send the text as valid UTF-8."
            ) from None
        if len(text) > settings.max_text_chars:
            raise InputTooLarge(
                f"Parameter {name!r} has {len(text)} characters; the limit is "
                f"{settings.max_text_chars} (MAX_TEXT_CHARS). Split the text."
            )
    return texts


def _resolve_pair(source: Any, target: Any, fields: tuple[str, str]) -> tuple[str, str]:
    """Return the canonical codes of a pair, with ``auto`` for a missing source.

    A target with a region the deployment does not serve (``en-US``) uses the
    language's checkpoint, also with ``auto``, which ``resolve_languages``
    alone would reject.
    """
    source_field, target_field = fields
    if target is None or target == "":
        raise InvalidRequest(f"Parameter {target_field!r} is required.")
    code = normalize_code(target, target_field)
    served_targets = {route["target_lang"] for route in models.served_routes()}
    if code not in served_targets and base_language(code) in served_targets:
        code = base_language(code)

    if source is None or source == "":
        source = AUTO
    elif not (isinstance(source, str) and source.strip().lower() == AUTO):
        source = normalize_code(source, source_field)

    if source == AUTO and code not in served_targets:
        # resolve_languages would reject this too, but naming the native fields.
        listing = ", ".join(sorted(served_targets)) or "none"
        raise UnsupportedLanguagePair(
            f"No served pair translates into {code!r}, so the source language "
            f"cannot be detected for it. Target languages: {listing}."
        )
    return dispatch.resolve_languages(source, code)


def _translate(
    texts: list[str], source_lang: str, target_lang: str, text_format: Any
) -> list[dict[str, Any]]:
    """Translate texts through the cache and the workers, and count their characters.

    A text the pipeline could not translate, such as one whose language could
    not be detected, fails the whole request with status 400 because neither
    protocol has a field for an error of one text.
    """
    options = TranslationOptions.from_request({"format": text_format})
    kind = "text" if len(texts) == 1 else "batch"
    items = dispatch.translate_sync(texts, source_lang, target_lang, options, kind)
    for index, item in enumerate(items):
        if item.get("error"):
            where = "The text" if len(items) == 1 else f"Text {index}"
            message = f"{where} could not be translated: {item['error']}"
            if item.get("code") == TranslationFailed.code:
                raise TranslationFailed(message)
            raise InvalidRequest(message)
    _count_characters(texts)
    return items


def _count_characters(texts: list[str]) -> None:
    """Add the texts' characters, cache hits included, to the usage counter."""
    count = sum(len(text) for text in texts)
    try:
        redis_client().incrby(USAGE_KEY, count)
    except redis.RedisError as error:
        # The translation is done, so a lost count does not fail the request.
        logger.warning(
            "Request %s: usage counter not updated (%d characters): %s",
            g.get("request_id"),
            count,
            error,
        )


def _read_usage() -> int:
    try:
        raw = redis_client().get(USAGE_KEY)
    except redis.RedisError as error:
        raise BackendUnavailable(
            f"Redis is unreachable ({error}). Start Redis and retry."
        ) from None
    return int(raw or 0)


# Language detection without translation.


def detection_languages() -> list[str]:
    """Return the base codes ``/detect`` chooses from: every served language."""
    codes = set()
    for route in models.served_routes():
        codes.add(base_language(route["source_lang"]))
        codes.add(base_language(route["target_lang"]))
    return sorted(codes)


def detect_languages(texts: list[str], candidates: list[str]) -> list[dict[str, Any]]:
    """Detect the language of each text, from the cache or in a worker.

    Returns ``{"language", "confidence"}`` per text, in order: the base code
    (None when undetermined) and the detector's probability from 0 to 1.
    Texts without a run of two letters are undetermined without a worker.
    """
    results: list[dict[str, Any] | None] = [None] * len(texts)
    to_detect = []
    for index, text in enumerate(texts):
        if needs_model(text):
            to_detect.append(index)
        else:
            results[index] = {"language": None, "confidence": 0.0}

    cached = detect_with_cache(
        [texts[index] for index in to_detect], candidates, run_detector=False
    )
    misses = []
    for index, value in zip(to_detect, cached, strict=True):
        if value is None:
            misses.append(index)
        else:
            results[index] = value

    if misses:
        detected = _detect_in_worker([texts[index] for index in misses], candidates)
        for index, value in zip(misses, detected, strict=True):
            results[index] = value
    return [result for result in results if result is not None]


def _detect_in_worker(texts: list[str], candidates: list[str]) -> list[dict[str, Any]]:
    queue = any_worker_queue(QUEUE_INTERACTIVE, require_workers())
    task_id = send(DETECT_TASK, args=[texts, candidates], queue=queue)
    timeout = get_settings().sync_timeout
    try:
        result: Any = jobs.wait_for_task(task_id, time.monotonic() + timeout, task_id)
    except DeadlineExceeded:
        raise DeadlineExceeded(
            f"Language detection did not finish within {timeout:g} s "
            "(SYNC_TIMEOUT). Retry the request.",
            task_id=task_id,
        ) from None
    return list(result)


# LibreTranslate.


@libretranslate_api.post("/translate")
def libretranslate_translate() -> Response:
    fields = _request_fields()
    _require_libretranslate_key(fields)
    query = fields.get("q")
    if query == "":
        raise InvalidRequest("Parameter 'q' is empty. Send the text to translate.")
    texts = _texts(query, "q")
    if fields.get("source") in (None, ""):
        raise InvalidRequest(
            "Parameter 'source' is required. Send 'auto' to detect the language."
        )
    source, target = _resolve_pair(
        fields.get("source"), fields.get("target"), ("source", "target")
    )
    alternatives = _alternatives_requested(fields.get("alternatives"))
    items = _translate(texts, source, target, fields.get("format"))

    single = not isinstance(query, list)
    translations = [item["translation"] for item in items]
    body: dict[str, Any] = {
        "translatedText": translations[0] if single else translations
    }
    if source == AUTO:
        detected = [_libretranslate_detection(item) for item in items]
        body["detectedLanguage"] = detected[0] if single else detected
    if alternatives:
        # The models produce one translation per text, so there are none.
        body["alternatives"] = [] if single else [[] for _ in items]
    return jsonify(body)


@libretranslate_api.get("/languages")
def libretranslate_languages() -> Response:
    _require_libretranslate_key(_request_fields())
    routes = models.served_routes()
    targets: dict[str, set[str]] = {}
    for route in routes:
        targets.setdefault(route["source_lang"], set()).add(route["target_lang"])
        targets.setdefault(route["target_lang"], set())
    return jsonify(
        [
            {
                "code": code,
                "name": language_name(code),
                "targets": sorted(targets[code]),
            }
            for code in sorted(targets)
        ]
    )


@libretranslate_api.post("/detect")
def libretranslate_detect() -> Response:
    fields = _request_fields()
    _require_libretranslate_key(fields)
    query = fields.get("q")
    if isinstance(query, list):
        raise InvalidRequest("Parameter 'q' must be one text, not a list.")
    if query == "":
        raise InvalidRequest("Parameter 'q' is empty. Send the text to detect.")
    text = _texts(query, "q")[0]
    detection = detect_languages([text], detection_languages())[0]
    return jsonify([_percent_detection(detection)])


def _require_libretranslate_key(fields: dict[str, Any]) -> None:
    key = fields.get("api_key")
    if key is not None and not isinstance(key, str):
        raise InvalidRequest(
            f"Parameter 'api_key' must be a string, got {_json_kind(key)}."
        )
    if not key_allowed("libretranslate", key if isinstance(key, str) else None):
        raise InvalidAuthKey("Invalid API key.")


def _json_kind(value: Any) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _alternatives_requested(value: Any) -> bool:
    if isinstance(value, str):
        value = value.strip()
        if WHOLE_NUMBER.fullmatch(value):
            return int(value) > 0
    if value is None or value == "":
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return value > 0
    raise InvalidRequest(
        f"Parameter 'alternatives' must be a whole number, got {value!r}."
    )


def _libretranslate_detection(item: dict[str, Any]) -> dict[str, Any]:
    return _percent_detection(
        {
            "language": item.get("detected_source_lang"),
            "confidence": item.get("detection_confidence") or 0.0,
        }
    )


def _percent_detection(detection: dict[str, Any]) -> dict[str, Any]:
    """Convert a detection to LibreTranslate's form: confidence in percent."""
    language = detection["language"]
    if language is None:
        return {"language": UNDETERMINED, "confidence": 0.0}
    return {"language": language, "confidence": round(detection["confidence"] * 100, 2)}


# DeepL.


@deepl_api.post("/translate")
def deepl_translate() -> Response:
    _require_deepl_key()
    fields = _request_fields()
    texts = _texts(fields.get("text"), "text")
    source, target = _resolve_pair(
        fields.get("source_lang"),
        fields.get("target_lang"),
        ("source_lang", "target_lang"),
    )
    _check_deepl_options(fields)
    text_format = "html" if fields.get("tag_handling") else "text"
    items = _translate(texts, source, target, text_format)

    translations = []
    for text, item in zip(texts, items, strict=True):
        detected = source if source != AUTO else item.get("detected_source_lang")
        translations.append(
            {
                "detected_source_language": _deepl_code(detected),
                "text": item["translation"],
                "billed_characters": len(text),
            }
        )
    return jsonify({"translations": translations})


@deepl_api.route("/languages", methods=["GET", "POST"])
def deepl_languages() -> Response:
    _require_deepl_key()
    kind = _request_fields().get("type")
    if kind is None or kind == "":
        kind = "source"
    routes = models.served_routes()
    if kind == "source":
        sources = sorted({base_language(route["source_lang"]) for route in routes})
        return jsonify(
            [
                {"language": _deepl_code(code), "name": language_name(code)}
                for code in sources
            ]
        )
    if kind == "target":
        codes = sorted({route["target_lang"] for route in routes})
        listing = {
            variant: name for code in codes for variant, name in _deepl_targets(code)
        }
        return jsonify(
            [
                {"language": variant, "name": name, "supports_formality": False}
                for variant, name in sorted(listing.items())
            ]
        )
    raise InvalidRequest(
        f"Parameter 'type' must be 'source' or 'target', got {kind!r}."
    )


@deepl_api.route("/usage", methods=["GET", "POST"])
def deepl_usage() -> Response:
    _require_deepl_key()
    return jsonify(
        {"character_count": _read_usage(), "character_limit": USAGE_CHARACTER_LIMIT}
    )


def _require_deepl_key() -> None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    supplied = key.strip() if scheme == DEEPL_AUTH_SCHEME and key.strip() else None
    if not key_allowed("deepl", supplied):
        raise InvalidAuthKey(
            "Authorization failed. Send the header "
            f"'Authorization: {DEEPL_AUTH_SCHEME} <key>' with a valid key."
        )


def _check_deepl_options(fields: dict[str, Any]) -> None:
    """Reject DeepL options that this service would otherwise silently ignore."""
    tag_handling = fields.get("tag_handling")
    if tag_handling not in (None, "", *DEEPL_TAG_HANDLING):
        raise InvalidRequest(
            f"Value for 'tag_handling' not supported: {tag_handling!r}. Only "
            "'html' is supported."
        )
    formality = fields.get("formality")
    if formality not in (None, "", *DEEPL_SOFT_FORMALITY):
        raise InvalidRequest(
            f"'formality' {formality!r} is not supported for this target language. "
            "Use 'prefer_less' or 'prefer_more', or leave it out."
        )
    if fields.get("glossary_id"):
        raise InvalidRequest(
            "Glossaries are not supported by this server. Remove 'glossary_id', or "
            "send the terms to /api/translate in its 'glossary' field."
        )


def _deepl_code(code: str | None) -> str:
    """Return a DeepL source code such as ``EN``, or "" when undetermined."""
    return base_language(code).upper() if code else ""


def _deepl_targets(code: str) -> list[tuple[str, str]]:
    """Return the DeepL target codes and names that request a served target."""
    if "-" in code:
        return [(code.upper(), language_name(code))]
    variants = DEEPL_TARGET_VARIANTS.get(code)
    if variants is None:
        return [(code.upper(), language_name(code))]
    return [(variant, language_name(variant)) for variant in variants]


# Error handlers, one set per protocol.


def _libretranslate_status(status: int) -> int:
    # Errors keep to the statuses of the LibreTranslate protocol (400, 403, 429
    # and 500), so input over a limit is 400 and every server failure is 500.
    if status in (400, 403, 429):
        return status
    return 500 if status >= 500 else 400


def _deepl_status(status: int) -> int:
    if status in (400, 403, 404, 413, 429, 456, 503):
        return status
    if status == 504:
        return 503
    return 500 if status >= 500 else 400


def _register_error_handlers(
    blueprint: Blueprint, field: str, status_for: Callable[[int], int]
) -> None:
    """Map every error of ``blueprint``'s views to ``{field: message}``.

    Flask prefers an app handler for a status code to a blueprint handler for
    an exception class, so a handler is registered for every HTTP status code
    as well as for the classes.
    """

    def render(status: int, message: str) -> Response:
        response = jsonify({field: message})
        response.status_code = status_for(status)
        if response.status_code == 503:
            response.headers["Retry-After"] = "5"
        return response

    def service_error(error: ServiceError) -> Response:
        if error.status >= 500:
            logger.warning(
                "Request %s failed with %s: %s",
                g.get("request_id"),
                error.code,
                error.message,
            )
        return render(error.status, error.message)

    def too_large(_: RequestEntityTooLarge) -> Response:
        limit = get_settings().max_request_bytes
        return render(
            413,
            f"The request body is larger than the limit of {limit} bytes "
            "(MAX_REQUEST_BYTES). Send fewer or shorter texts per request.",
        )

    def http_error(error: HTTPException) -> Response:
        return render(error.code or 500, error.description or error.name)

    def unexpected(error: Exception) -> Response:
        logger.exception("Request %s failed unexpectedly", g.get("request_id"))
        return render(
            500,
            "The server failed to handle the request. The error is logged with "
            f"request id {g.get('request_id')}.",
        )

    blueprint.register_error_handler(ServiceError, service_error)
    blueprint.register_error_handler(HTTPException, http_error)
    for code in default_exceptions:
        blueprint.register_error_handler(code, http_error)
    blueprint.register_error_handler(RequestEntityTooLarge, too_large)
    blueprint.register_error_handler(Exception, unexpected)


_register_error_handlers(libretranslate_api, "error", _libretranslate_status)
_register_error_handlers(deepl_api, "message", _deepl_status)


def register_compat_routes(app: Flask) -> None:
    """Attach the LibreTranslate and DeepL endpoints to ``app``."""
    app.register_blueprint(libretranslate_api)
    app.register_blueprint(deepl_api)
