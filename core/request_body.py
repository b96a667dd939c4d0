"""Reading a Flask request body, shared by the native and compatible APIs.

Both turn unreadable, oversized, malformed or deeply nested bodies into the
service's own errors, which each API then answers in its own error shape.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from core.config import get_settings
from core.errors import InvalidRequest

logger = logging.getLogger(__name__)


def read_body() -> bytes:
    """Read the body once, so JSON and form parsing use the cached bytes.

    Raises ``RequestEntityTooLarge`` over ``MAX_REQUEST_BYTES`` and
    ``InvalidRequest`` when the body cannot be read.
    """
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise
    except Exception as error:  # gunicorn raises its own parse errors here
        logger.info("Request %s: body unreadable: %r", g.get("request_id"), error)
        raise InvalidRequest(
            f"The request body could not be read ({type(error).__name__}). "
            "Send a complete body with a correct Content-Length or chunked "
            "encoding."
        ) from None
    if len(raw) >= get_settings().max_request_bytes and request.content_length is None:
        # Werkzeug cuts a chunked body off at the limit instead of failing.
        raise RequestEntityTooLarge()
    return raw


def json_object(raw: bytes, example: str = "") -> dict[str, Any]:
    """Parse the body read by ``read_body`` as a JSON object.

    ``example`` is appended to the message for invalid JSON. Raises
    ``InvalidRequest`` for invalid JSON, deep nesting and non-objects.
    """
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise InvalidRequest(
            "The request body nests arrays or objects too deeply. Send a flat "
            "JSON object with the documented fields."
        ) from None
    if body is None and raw.strip() != b"null":
        raise InvalidRequest(f"The request body is not valid JSON.{example}")
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise InvalidRequest(f"The request body must be a JSON object, got {kind}.")
    return body
