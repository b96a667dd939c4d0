"""API keys and per-key rate limits of the REST API.

When ``API_KEYS`` or ``API_KEYS_FILE`` configures keys, every request needs
one, except ``OPEN_PATHS`` (health, docs and ``/metrics``, which has its own
``METRICS_TOKEN`` check). Each protocol carries the key its own way:

- native ``/api/*``: the ``X-API-Key`` header; a missing or invalid key gets
  401 in the native error shape;
- LibreTranslate: the ``api_key`` field of the body or query; 403 ``{"error"}``;
- DeepL ``/v2/*``: ``Authorization: DeepL-Auth-Key KEY``; 403 ``{"message"}``.

Keys are checked in memory (``core.access``), never in Redis. Request and
character limits are counted by flask-limiter in Redis, so every gunicorn
worker shares them. A request over a limit gets 429 with ``Retry-After``.
While Redis is unreachable, flask-limiter logs one warning and each process
counts in its own memory until Redis responds again, so no request fails
because of the outage.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limit, Limiter, RequestLimit

from api_compat import (
    DEEPL_AUTH_SCHEME,
    InvalidAuthKey,
    deepl_api,
    libretranslate_api,
    request_fields,
)
from core.access import KEYRING_EXTENSION, KeyRecord, KeyRing
from core.config import get_settings
from core.errors import ServiceError
from core.request_body import read_body

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
OPEN_PATHS = frozenset({"/health", "/metrics", "/api/docs", "/api/openapi.json"})
# The fields that hold the texts of a request, per protocol.
TEXT_FIELDS = ("text", "texts", "q")
RATE_LIMIT_PREFIX = "mt-ratelimit"


class Unauthorized(ServiceError):
    """A native API request without a valid ``X-API-Key`` header."""

    status = 401
    code = "unauthorized"


def keyring() -> KeyRing:
    """Return the keys of the running application."""
    ring: KeyRing = current_app.extensions[KEYRING_EXTENSION]
    return ring


def _supplied_key() -> str | None:
    """Return the key the request carries, the way its protocol sends it."""
    if request.blueprint == deepl_api.name:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return key.strip() if scheme == DEEPL_AUTH_SCHEME and key.strip() else None
    if request.blueprint == libretranslate_api.name:
        value = _protocol_fields().get("api_key")
        return value if isinstance(value, str) else None
    return request.headers.get(API_KEY_HEADER)


def _protocol_fields() -> dict[str, Any]:
    return request_fields()


def _check_key() -> None:
    """Reject a request without a valid key when keys are configured."""
    g.api_key = None
    ring = keyring()
    if not ring.enabled or request.path in OPEN_PATHS:
        return
    record = ring.find(_supplied_key())
    if record is None:
        logger.info(
            "Request %s to %r rejected: missing or invalid API key",
            g.get("request_id"),
            request.path,
        )
        if request.blueprint in (deepl_api.name, libretranslate_api.name):
            raise InvalidAuthKey(_compat_key_message())
        raise Unauthorized(
            f"A valid API key is required. Send it in the {API_KEY_HEADER!r} "
            "header; ask the operator of this service for a key."
        )
    g.api_key = record


def _compat_key_message() -> str:
    if request.blueprint == deepl_api.name:
        return (
            "Authorization failed. Send the header "
            f"'Authorization: {DEEPL_AUTH_SCHEME} <key>' with a valid key."
        )
    return "Invalid API key. Send a valid key in the 'api_key' field."


# Rate limits.


def _current_key() -> KeyRecord | None:
    record: KeyRecord | None = g.get("api_key")
    return record


def _limit_identity() -> str:
    """Count a request under its key id, or its client address without keys."""
    record = _current_key()
    return f"key-{record.key_id}" if record else f"addr-{request.remote_addr}"


def _request_limit() -> str:
    record = _current_key()
    return record.request_limit if record else get_settings().api_rate_limit


def _character_limit() -> str:
    record = _current_key()
    return record.character_limit if record else get_settings().api_character_limit


def request_characters() -> int:
    """Count the characters of the texts a request sends; 0 when it sends none.

    The body may be invalid here. The endpoint reports that itself, so any
    error while reading it counts as 0 characters.
    """
    if "request_characters" in g:
        count: int = g.request_characters
        return count
    count = 0
    try:
        if request.method == "POST":
            read_body()
            fields = (
                request.get_json(silent=True)
                if request.blueprint is None
                else _protocol_fields()
            )
            count = _count_text_characters(fields)
    except Exception:  # the endpoint reports an invalid body itself
        count = 0
    g.request_characters = count
    return count


def _count_text_characters(fields: Any) -> int:
    if not isinstance(fields, dict):
        return 0
    count = 0
    for name in TEXT_FIELDS:
        value = fields.get(name)
        texts = value if isinstance(value, list) else [value]
        count += sum(len(text) for text in texts if isinstance(text, str))
    return count


def _on_breach(limit: RequestLimit) -> None:
    """Remember when the breached window resets, for the Retry-After header.

    flask-limiter itself logs the breach with the key id at INFO.
    """
    try:
        g.retry_after = max(1, int(limit.reset_at - time.time()) + 1)
    except Exception:  # the limiter logs storage failures itself
        g.retry_after = 1


def _add_retry_after(response: Response) -> Response:
    if response.status_code == 429 and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(g.get("retry_after", 1))
    return response


def _build_limiter() -> Limiter:
    settings = get_settings()
    return Limiter(
        _limit_identity,
        default_limits=[
            Limit(
                _request_limit,
                scope="requests",
                shared=True,
                exempt_when=lambda: not _request_limit(),
                error_message=lambda: (
                    f"Request limit {_request_limit()} reached. Retry after the "
                    "time in the Retry-After header."
                ),
            ),
            Limit(
                _character_limit,
                scope="characters",
                shared=True,
                cost=request_characters,
                exempt_when=lambda: not _character_limit() or request_characters() == 0,
                error_message=lambda: (
                    f"Character limit {_character_limit()} reached: this request "
                    f"has {request_characters()} characters. Retry after the "
                    "time in the Retry-After header, or send fewer characters."
                ),
            ),
        ],
        storage_uri=settings.redis_url,
        storage_options={
            "socket_connect_timeout": settings.redis_timeout,
            "socket_timeout": settings.redis_timeout * 5,
        },
        key_prefix=RATE_LIMIT_PREFIX,
        strategy="fixed-window",
        headers_enabled=False,
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        on_breach=_on_breach,
    )


def register_access_control(app: Flask) -> None:
    """Check API keys and, when limits are configured, count requests.

    Call it after the hook that sets ``g.request_id`` and before the routes
    are used: the key check runs before the limiter, so a rejected request
    is not counted against any key.
    """
    settings = get_settings()
    ring = KeyRing.from_settings(settings)
    app.extensions[KEYRING_EXTENSION] = ring
    app.before_request(_check_key)
    if ring.enabled:
        logger.info("API keys required: %d keys configured", len(ring.records))

    per_key_limits = any(
        record.request_limit or record.character_limit for record in ring.records
    )
    if not (settings.api_rate_limit or settings.api_character_limit or per_key_limits):
        return
    limiter = _build_limiter()
    limiter.request_filter(lambda: request.path in OPEN_PATHS)
    limiter.init_app(app)
    app.after_request(_add_retry_after)
