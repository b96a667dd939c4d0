"""Reading a Flask request body, shared by the native and compatible APIs.

Both turn unreadable, truncated, oversized, malformed or deeply nested bodies
into the service's own errors, which each API then returns in its own error
shape.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from core.config import get_settings
from core.errors import InvalidRequest

logger = logging.getLogger(__name__)

# JSON names of the Python types that json.loads returns.
JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def read_body() -> bytes:
    """Read the body once, so JSON and form parsing use the cached bytes.

    Raises ``RequestEntityTooLarge`` over ``MAX_REQUEST_BYTES`` and
    ``InvalidRequest`` when the body cannot be read or ends before its
    ``Content-Length``.
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
    announced = request.content_length
    if announced is None and len(raw) >= get_settings().max_request_bytes:
        # Werkzeug cuts a chunked body off at the limit instead of failing.
        raise RequestEntityTooLarge()
    if announced is not None and len(raw) < announced:
        raise InvalidRequest(
            f"The request body ended after {len(raw)} of the {announced} bytes "
            "its Content-Length announced. Send the whole body."
        )
    return raw


def json_object(raw: bytes, example: str = "") -> dict[str, Any]:
    """Parse the body read by ``read_body`` as a JSON object.

    Only standard JSON is accepted: ``NaN`` and ``Infinity`` are rejected, as
    are integers longer than Python converts (``sys.get_int_max_str_digits``).
    ``example`` is appended to the message for an empty or invalid body.
    Raises ``InvalidRequest`` naming what is wrong.
    """
    if not raw.strip():
        raise InvalidRequest(f"The request body is empty.{example}")
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_int=_parse_int)
    except RecursionError:
        raise InvalidRequest(
            "The request body nests arrays or objects too deeply. Send a flat "
            "JSON object with the documented fields."
        ) from None
    except UnicodeDecodeError:
        raise InvalidRequest(
            "The request body is not valid UTF-8. Encode the JSON as UTF-8."
        ) from None
    except json.JSONDecodeError as error:
        raise InvalidRequest(
            f"The request body is not valid JSON: {error.msg} at line "
            f"{error.lineno}, column {error.colno}.{example}"
        ) from None
    except ValueError as error:  # raised by the parse hooks below
        raise InvalidRequest(
            f"The request body is not valid JSON: {error}.{example}"
        ) from None
    if not isinstance(body, dict):
        kind = JSON_TYPE_NAMES.get(type(body), type(body).__name__)
        raise InvalidRequest(f"The request body must be a JSON object, got {kind}.")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid in JSON, which has only finite numbers")


def _parse_int(digits: str) -> int:
    limit = sys.get_int_max_str_digits()
    if limit and len(digits.lstrip("-")) > limit:
        raise ValueError(
            f"a number has {len(digits)} digits, more than the {limit} accepted"
        )
    return int(digits)
