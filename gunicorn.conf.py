"""gunicorn settings of the API, read from the working directory at start.

gunicorn loads ``./gunicorn.conf.py`` unless ``--config`` names another file,
and every way this project runs the API (``start_services.sh``, the
Dockerfile, docker-compose.yml and the systemd unit) starts gunicorn in the
project root. Options given on the command line override these settings.

gunicorn rejects a request it cannot parse (an over-long request line or
header, an invalid header, broken body framing) itself, before the API gets
it, with an HTML page. The hook below makes those responses use the API's
JSON error shape, ``{"success": false, "error": "...", "code": "..."}``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util

# gunicorn includes the offending request line or header in its message, so
# only its start is echoed back.
MAX_DETAIL_CHARS = 200

MESSAGES = {
    400: (
        "The request is not valid HTTP ({detail}). Check the request line, the "
        "headers and the body framing (Content-Length or chunked encoding)."
    ),
    403: "The request was rejected ({detail}).",
    414: (
        "The request line is over gunicorn's limit ({detail}). Send long values "
        "in a JSON body instead of the URL."
    ),
    417: (
        "The Expect header is not supported ({detail}). Leave it out or send "
        "'Expect: 100-continue'."
    ),
    431: (
        "The request headers are too large or too many ({detail}). Send fewer "
        "or shorter headers."
    ),
    500: "The server failed to handle the request. The error is logged.",
}


def json_error(status: int, reason: str, detail: str) -> bytes:
    """Return a complete HTTP response with the API's JSON error body.

    gunicorn rejects an unsupported transfer coding with 501, which clients
    may retry as a server failure, so it is sent as 400 because only the
    client can fix the request.
    """
    if status == 501:
        status, reason = 400, "Bad Request"
    detail = detail[:MAX_DETAIL_CHARS] or reason
    template = MESSAGES.get(status, MESSAGES[400])
    code = "internal_error" if status >= 500 else reason.lower().replace(" ", "_")
    body = json.dumps(
        {"success": False, "error": template.format(detail=detail), "code": code}
    ).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    return head + body


def write_json_error(
    sock: socket.socket, status: int, reason: str, detail: str
) -> None:
    """Send ``json_error``; a drop-in for ``gunicorn.util.write_error``."""
    util.write_nonblock(sock, json_error(status, reason, detail))


def post_worker_init(worker: Any) -> None:
    """Make this worker send its own HTTP errors as JSON instead of HTML."""
    # NOTE: gunicorn 27.0.1 writes these errors through util.write_error in
    # Worker.handle_error; tests/test_hostile.py fails if a release changes that.
    util.write_error = write_json_error
