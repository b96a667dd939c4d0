"""Hostile and malformed requests against the API served by gunicorn.

Every case goes over a raw socket to ``gunicorn api_server:app`` in front of a
real Redis and a real Celery worker, so malformed HTTP reaches the same
parser it meets in production. Each case checks the exact status the README
documents and the error shape of its protocol: ``{success, error, code}`` for
the native API and for anything gunicorn rejects before routing,
``{error}`` for LibreTranslate and ``{message}`` for DeepL. No response may be
HTML, carry a traceback or have a 5xx status, and the server log may not
record an unexpected failure.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers import LiveApi

pytestmark = pytest.mark.chaos

SOCKET_TIMEOUT = 120.0
SEND_CHUNK_BYTES = 65_536
TEN_MB = 10 * 1024 * 1024
# Defaults of core/config.py, which the gunicorn_api fixture keeps.
MAX_REQUEST_BYTES = 2_097_152
MAX_TEXT_CHARS = 5000
MAX_BATCH_TEXTS = 1000
# gunicorn's defaults: request line 4094 bytes, header field 8190 bytes, 100
# header fields.
LONG_ID = "a" * 5000
HUGE_HEADER = "a" * 9000

NATIVE = "native"
LIBRETRANSLATE = "libretranslate"
DEEPL = "deepl"
SHAPES = {
    NATIVE: ("success", "error", "code"),
    LIBRETRANSLATE: ("error",),
    DEEPL: ("message",),
}
MESSAGE_FIELD = {NATIVE: "error", LIBRETRANSLATE: "error", DEEPL: "message"}
LOG_FAILURES = re.compile(r"Traceback|failed unexpectedly|Error handling request")

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
TEXT = {"text": "Hello world.", "source_lang": "en", "target_lang": "es"}
LT = {"q": "Hello world.", "source": "en", "target": "es"}
DL = {"text": ["Hello world."], "source_lang": "EN", "target_lang": "ES"}
BIG_BODY = b"a" * TEN_MB


@dataclass
class Reply:
    """A parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Case:
    """One hostile request and the documented error it must get."""

    name: str
    method: str
    path: str
    status: int
    shape: str
    fragment: str
    body: Any = b""
    content_type: str | None = JSON
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    # Raw request bytes, sent as they are, for HTTP that a client library
    # would refuse to build.
    raw: bytes | None = None


def encode_body(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def build_request(case: Case) -> tuple[bytes, Iterator[bytes]]:
    """Return the request head and an iterator over the body's wire bytes."""
    body = encode_body(case.body)
    lines = [f"{case.method} {case.path} HTTP/1.1", "Host: 127.0.0.1"]
    if case.content_type is not None:
        lines.append(f"Content-Type: {case.content_type}")
    lines += [f"{name}: {value}" for name, value in case.headers.items()]
    if case.chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body or case.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return head, (chunk_body(body) if case.chunked else iter([body]))


def chunk_body(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), SEND_CHUNK_BYTES):
        part = body[start : start + SEND_CHUNK_BYTES]
        yield b"%x\r\n%b\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


def send_raw(port: int, head: bytes, body: Iterator[bytes]) -> Reply:
    """Send a request and read the response at the same time.

    A server may respond to an oversized body before reading it and close the
    connection, so the body is sent from a thread and a failed send is not an
    error: the response is what the test checks.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:

        def send() -> None:
            try:
                sock.sendall(head)
                for part in body:
                    sock.sendall(part)
                # A body shorter than its Content-Length then ends at EOF
                # instead of waiting for gunicorn's timeout.
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = read_response(sock)
        sender.join(timeout=SOCKET_TIMEOUT)
    return parse_response(data)


def read_response(sock: socket.socket) -> bytes:
    """Read one response: its head, then Content-Length bytes or up to EOF."""
    data = b""
    while True:
        try:
            chunk = sock.recv(SEND_CHUNK_BYTES)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            continue
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if length is not None and len(rest) >= int(length.group(1)):
            break
    return data


def parse_response(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1."), f"no HTTP response: {data[:200]!r}"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


def request(api: LiveApi, case: Case) -> Reply:
    if case.raw is not None:
        return send_raw(api.port, case.raw, iter([]))
    head, body = build_request(case)
    return send_raw(api.port, head, body)


def assert_error_shape(reply: Reply, case: Case) -> str:
    """Check a JSON error body of the case's protocol and return its message."""
    assert reply.headers.get("content-type", "").startswith(JSON), reply
    assert b"<html" not in reply.body.lower()
    assert b"Traceback" not in reply.body
    body = reply.json()
    fields = SHAPES[case.shape]
    assert isinstance(body, dict), body
    assert tuple(body) == fields, body
    message = body[MESSAGE_FIELD[case.shape]]
    assert isinstance(message, str)
    assert message
    if case.shape == NATIVE:
        assert body["success"] is False
        assert isinstance(body["code"], str)
    return message


def native(
    name: str, method: str, path: str, status: int, fragment: str, **kw: Any
) -> Case:
    return Case(name, method, path, status, NATIVE, fragment, **kw)


def libre(name: str, path: str, status: int, fragment: str, **kw: Any) -> Case:
    return Case(name, "POST", path, status, LIBRETRANSLATE, fragment, **kw)


def deepl(name: str, path: str, status: int, fragment: str, **kw: Any) -> Case:
    return Case(name, kw.pop("method", "POST"), path, status, DEEPL, fragment, **kw)


def translate(name: str, body: Any, status: int, fragment: str, **kw: Any) -> Case:
    return native(name, "POST", "/api/translate", status, fragment, body=body, **kw)


def batch(name: str, body: Any, status: int, fragment: str) -> Case:
    payload = {"source_lang": "en", "target_lang": "es", **body}
    return native(name, "POST", "/api/batch", status, fragment, body=payload)


def raw(name: str, data: bytes, status: int, fragment: str) -> Case:
    return native(name, "GET", "/", status, fragment, raw=data)


CASES = [
    # Native API: bodies that are not a JSON object.
    translate("malformed json", b"{bad", 400, "not valid JSON"),
    translate("json array", b"[1, 2]", 400, "must be a JSON object, got array"),
    translate("json string", b'"text"', 400, "must be a JSON object, got string"),
    translate("json null", b"null", 400, "must be a JSON object, got null"),
    translate("json number", b"42", 400, "must be a JSON object, got number"),
    translate("empty body", b"", 400, "body is empty"),
    translate("invalid utf-8", b'{"text": "\xff\xfe"}', 400, "not valid UTF-8"),
    translate(
        "latin-1 body",
        '{"text": "caf\u00e9", "source_lang": "en", "target_lang": "es"}'.encode(
            "latin-1"
        ),
        400,
        "not valid UTF-8",
        content_type="application/json; charset=latin-1",
    ),
    translate("nan literal", b'{"text": NaN}', 400, "NaN"),
    translate("infinity literal", b'{"text": "a", "x": Infinity}', 400, "Infinity"),
    translate(
        "deep nesting",
        b'{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "nests arrays or objects too deeply",
    ),
    translate(
        "long number",
        b'{"text": "a", "x": ' + b"9" * 5000 + b"}",
        400,
        "not valid JSON",
    ),
    # Native API: wrong types and nulls for every field.
    translate("text null", {**TEXT, "text": None}, 400, "'text' is required"),
    translate("text number", {**TEXT, "text": 5}, 400, "'text' must be a string"),
    translate("text list", {**TEXT, "text": ["a"]}, 400, "'text' must be a string"),
    translate("text object", {**TEXT, "text": {}}, 400, "'text' must be a string"),
    translate("text bool", {**TEXT, "text": True}, 400, "'text' must be a string"),
    translate("source null", {**TEXT, "source_lang": None}, 400, "'source_lang'"),
    translate("source number", {**TEXT, "source_lang": 7}, 400, "'source_lang'"),
    translate("target list", {**TEXT, "target_lang": ["es"]}, 400, "'target_lang'"),
    translate("target object", {**TEXT, "target_lang": {}}, 400, "'target_lang'"),
    translate("format number", {**TEXT, "format": 5}, 400, "'format'"),
    translate("format unknown", {**TEXT, "format": "pdf"}, 400, "'format'"),
    translate("dnt string", {**TEXT, "do_not_translate": "x"}, 400, "do_not_translate"),
    translate("dnt null item", {**TEXT, "do_not_translate": [None]}, 400, "do_not"),
    translate("glossary list", {**TEXT, "glossary": ["a"]}, 400, "glossary"),
    translate("glossary value", {**TEXT, "glossary": {"a": 1}}, 400, "glossary"),
    translate(
        "glossary too big",
        {**TEXT, "glossary": {f"t{index}": "x" for index in range(1000)}},
        400,
        "glossary has 1000 entries",
    ),
    # Native API: invalid strings.
    translate(
        "lone surrogate",
        b'{"text": "\\ud800", "source_lang": "en", "target_lang": "es"}',
        400,
        "lone UTF-16 surrogate",
    ),
    translate(
        "surrogate in glossary",
        b'{"text": "a", "source_lang": "en", "target_lang": "es", '
        b'"glossary": {"\\udfff": "x"}}',
        400,
        "surrogate",
    ),
    translate(
        "control char in code",
        {**TEXT, "source_lang": "en\u0000"},
        400,
        "invalid language code",
    ),
    translate(
        "huge text",
        {**TEXT, "text": "a" * 100_000},
        413,
        f"'text' has 100000 characters; the limit is {MAX_TEXT_CHARS}",
    ),
    translate(
        "huge language code",
        {**TEXT, "target_lang": "x" * 100_000},
        400,
        "invalid language code",
    ),
    translate("unknown language", {**TEXT, "target_lang": "zz"}, 400, "unknown"),
    translate("unsupported pair", {**TEXT, "target_lang": "ja"}, 400, "not served"),
    # Native API: body size, plain and chunked.
    translate("10 MB body", BIG_BODY, 413, f"limit of {MAX_REQUEST_BYTES} bytes"),
    translate(
        "10 MB chunked body",
        BIG_BODY,
        413,
        f"limit of {MAX_REQUEST_BYTES} bytes",
        chunked=True,
    ),
    # Native API: content types.
    translate("form text as json", "text=a", 400, "not valid JSON"),
    translate(
        "form body as form",
        "text=a&source_lang=en&target_lang=es",
        415,
        "Content type",
        content_type=FORM,
    ),
    translate("text/plain", TEXT, 415, "'text/plain'", content_type="text/plain"),
    translate("no content type", TEXT, 415, "'none'", content_type=None),
    translate(
        "multipart",
        b"--x\r\nContent-Disposition: form-data; name=text\r\n\r\nhi\r\n--x--\r\n",
        415,
        "'multipart/form-data'",
        content_type="multipart/form-data; boundary=x",
    ),
    translate(
        "bad chunk size",
        b"",
        400,
        "could not be read",
        raw=b"POST /api/translate HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ),
    translate(
        "truncated body",
        b"",
        400,
        "ended after 2 of the 100 bytes",
        raw=b"POST /api/translate HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nContent-Length: 100\r\n\r\n{}",
    ),
    # Native API: batches.
    batch("texts string", {"texts": "abc"}, 400, "'texts' must be a list"),
    batch("texts null", {"texts": None}, 400, "'texts' is required"),
    batch("texts empty", {"texts": []}, 400, "'texts' is empty"),
    batch("texts null item", {"texts": ["a", None]}, 400, "'texts[1]'"),
    batch("texts nested", {"texts": [["a"]]}, 400, "'texts[0]' must be a string"),
    batch(
        "too many texts",
        {"texts": ["a"] * (MAX_BATCH_TEXTS + 1)},
        413,
        f"limit is {MAX_BATCH_TEXTS}",
    ),
    batch(
        "batch text too long",
        {"texts": ["a" * (MAX_TEXT_CHARS + 1)]},
        413,
        "'texts[0]' has",
    ),
    batch("async string", {"texts": ["a"], "async": "yes"}, 400, "'async'"),
    batch("async number", {"texts": ["a"], "async": 1}, 400, "'async'"),
    # Native API: job ids and query strings.
    native("negative offset", "GET", "/api/task/x?offset=-1", 400, "'offset'"),
    native("text limit", "GET", "/api/task/x?limit=abc", 400, "'limit'"),
    native("huge limit", "GET", "/api/task/x?limit=" + "9" * 40, 400, "'limit'"),
    native("float offset", "GET", "/api/task/x?offset=1e3", 400, "'offset'"),
    native("superscript limit", "GET", "/api/task/x?limit=%C2%B2", 400, "'limit'"),
    native("arabic digit", "GET", "/api/task/x?offset=%D9%A3", 400, "'offset'"),
    native("empty query pairs", "GET", "/api/task/x?&&==&", 404, "No job with id"),
    native("unknown job", "GET", "/api/task/no-such-job", 404, "No job with id"),
    native("glob job id", "GET", "/api/task/*", 404, "No job with id"),
    native("nul job id", "GET", "/api/task/%00", 404, "No job with id"),
    native("redis key id", "GET", "/api/task/mt:job:x:chunks", 404, "No job"),
    native("long job id", "GET", "/api/task/" + "b" * 3000, 404, "No job with id"),
    native("traversal id", "GET", "/api/task/../../etc/passwd", 404, "No endpoint at"),
    native(
        "encoded traversal",
        "GET",
        "/api/task/..%2F..%2Fetc%2Fpasswd",
        404,
        "No endpoint at",
    ),
    native("cancel unknown", "DELETE", "/api/task/no-such-job", 404, "No job"),
    native("cancel traversal", "DELETE", "/api/task/..%2Fx", 404, "No endpoint"),
    native("cancel dotdot", "DELETE", "/api/task/..", 404, "No job with id"),
    # Methods and routes.
    native("get translate", "GET", "/api/translate", 405, "Method GET"),
    native("put batch", "PUT", "/api/batch", 405, "Method PUT"),
    native("patch task", "PATCH", "/api/task/x", 405, "Method PATCH"),
    native("delete languages", "DELETE", "/api/languages", 405, "Method DELETE"),
    native("get cache clear", "GET", "/api/cache/clear", 405, "Method GET"),
    native("post health", "POST", "/health", 405, "Method POST"),
    native("unknown method", "BREW", "/api/translate", 405, "Method BREW"),
    native("unknown route", "GET", "/api/nope", 404, "No endpoint at '/api/nope'"),
    native("root", "GET", "/", 404, "No endpoint at '/'"),
    native("trailing slash", "GET", "/api/languages/", 404, "No endpoint"),
    # HTTP that gunicorn rejects before the application receives it.
    native("long request line", "GET", "/api/task/" + LONG_ID, 414, "request line"),
    native("cancel long id", "DELETE", "/api/task/" + LONG_ID, 414, "request line"),
    native(
        "huge header",
        "GET",
        "/api/languages",
        431,
        "header",
        headers={"X-Big": HUGE_HEADER},
    ),
    native(
        "too many headers",
        "GET",
        "/api/languages",
        431,
        "header",
        headers={f"X-Header-{index}": "a" for index in range(150)},
    ),
    raw(
        "invalid method",
        b"G@T /api/languages HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not valid HTTP",
    ),
    raw("garbage", b"garbage\r\n\r\n", 400, "not valid HTTP"),
    raw(
        "bytes in path",
        b"GET /api/task/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "not valid HTTP",
    ),
    raw(
        "nul in header",
        b"GET /api/languages HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        400,
        "not valid HTTP",
    ),
    raw(
        "header name space",
        b"GET /api/languages HTTP/1.1\r\nHost: x\r\nBad Name: a\r\n\r\n",
        400,
        "not valid HTTP",
    ),
    raw(
        "bad content length",
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n{}",
        400,
        "not valid HTTP",
    ),
    raw(
        "two content lengths",
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        400,
        "not valid HTTP",
    ),
    raw(
        "unknown transfer coding",
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        400,
        "not valid HTTP",
    ),
    raw(
        "http version",
        b"GET /api/languages HTTP/9.9\r\nHost: x\r\n\r\n",
        400,
        "not valid HTTP",
    ),
    raw(
        "bad expect",
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        417,
        "Expect",
    ),
    # LibreTranslate.
    libre("lt malformed json", "/translate", 400, "not valid JSON", body=b"{bad"),
    libre("lt json array", "/translate", 400, "got array", body=b"[]"),
    libre(
        "lt q number", "/translate", 400, "'q' must be a string", body={**LT, "q": 5}
    ),
    libre("lt q null", "/translate", 400, "'q' is required", body={**LT, "q": None}),
    libre("lt q items", "/translate", 400, "'q[1]'", body={**LT, "q": ["a", 1]}),
    libre("lt source number", "/translate", 400, "'source'", body={**LT, "source": 1}),
    libre("lt source null", "/translate", 400, "'source'", body={**LT, "source": None}),
    libre("lt target list", "/translate", 400, "'target'", body={**LT, "target": []}),
    libre("lt format", "/translate", 400, "'format'", body={**LT, "format": "pdf"}),
    libre(
        "lt infinite alternatives",
        "/translate",
        400,
        "'alternatives'",
        body=b'{"q": "a", "source": "en", "target": "es", "alternatives": 1e999}',
    ),
    libre(
        "lt alternatives list",
        "/translate",
        400,
        "'alternatives'",
        body={**LT, "alternatives": [1]},
    ),
    libre(
        "lt alternatives float",
        "/translate",
        400,
        "'alternatives'",
        body={**LT, "alternatives": 1.5},
    ),
    libre(
        "lt lone surrogate",
        "/translate",
        400,
        "surrogate",
        body=b'{"q": "\\ud800", "source": "en", "target": "es"}',
    ),
    libre(
        "lt huge q",
        "/translate",
        400,
        "100000 characters",
        body={**LT, "q": "a" * 100_000},
    ),
    libre("lt 10 MB body", "/translate", 400, "limit of", body=BIG_BODY),
    libre(
        "lt 10 MB chunked", "/translate", 400, "limit of", body=BIG_BODY, chunked=True
    ),
    libre(
        "lt deep nesting",
        "/translate",
        400,
        "too deeply",
        body=b"[" * 100_000 + b"]" * 100_000,
    ),
    libre(
        "lt form invalid utf-8",
        "/translate",
        400,
        "not valid UTF-8",
        body=b"q=\xff\xfe&source=en&target=es",
        content_type=FORM,
    ),
    libre("lt text/plain", "/translate", 400, "'q'", content_type="text/plain"),
    libre(
        "lt bad query string",
        "/translate?%%%=&&q&source=%zz",
        400,
        "'q'",
        content_type="text/plain",
    ),
    libre(
        "lt api_key number", "/translate", 400, "'api_key'", body={**LT, "api_key": 5}
    ),
    libre(
        "lt too many texts",
        "/translate",
        400,
        f"limit is {MAX_BATCH_TEXTS}",
        body={**LT, "q": ["a"] * (MAX_BATCH_TEXTS + 1)},
    ),
    libre("lt detect list", "/detect", 400, "one text", body={"q": ["a"]}),
    libre("lt detect number", "/detect", 400, "'q' must be", body={"q": 1}),
    libre("lt detect empty", "/detect", 400, "'q' is empty", body={"q": ""}),
    libre("lt detect bad json", "/detect", 400, "not valid JSON", body=b"{"),
    native("lt get translate", "GET", "/translate", 405, "Method GET"),
    native("lt post languages", "POST", "/languages", 405, "Method POST"),
    # DeepL.
    deepl("dl malformed json", "/v2/translate", 400, "not valid JSON", body=b"{x"),
    deepl("dl json null", "/v2/translate", 400, "got null", body=b"null"),
    deepl("dl text number", "/v2/translate", 400, "'text'", body={**DL, "text": 5}),
    deepl(
        "dl text missing", "/v2/translate", 400, "'text'", body={"target_lang": "ES"}
    ),
    deepl(
        "dl target number",
        "/v2/translate",
        400,
        "'target_lang'",
        body={**DL, "target_lang": 5},
    ),
    deepl(
        "dl target missing", "/v2/translate", 400, "'target_lang'", body={"text": ["a"]}
    ),
    deepl(
        "dl tag handling",
        "/v2/translate",
        400,
        "'tag_handling'",
        body={**DL, "tag_handling": "xml"},
    ),
    deepl(
        "dl formality",
        "/v2/translate",
        400,
        "'formality'",
        body={**DL, "formality": {}},
    ),
    deepl(
        "dl glossary",
        "/v2/translate",
        400,
        "glossary_id",
        body={**DL, "glossary_id": "g"},
    ),
    deepl(
        "dl huge text",
        "/v2/translate",
        413,
        "100000 characters",
        body={**DL, "text": ["a" * 100_000]},
    ),
    deepl("dl 10 MB body", "/v2/translate", 413, "limit of", body=BIG_BODY),
    deepl(
        "dl 10 MB chunked",
        "/v2/translate",
        413,
        "limit of",
        body=BIG_BODY,
        chunked=True,
        content_type=FORM,
    ),
    deepl(
        "dl form invalid utf-8",
        "/v2/translate",
        400,
        "not valid UTF-8",
        body=b"text=\xff&target_lang=ES",
        content_type=FORM,
    ),
    deepl("dl language type", "/v2/languages?type=foo", 400, "'type'", method="GET"),
    deepl(
        "dl language types",
        "/v2/languages?type=source&type=target",
        400,
        "'type'",
        method="GET",
        content_type=None,
    ),
    deepl("dl text/plain", "/v2/translate", 400, "'text'", content_type="text/plain"),
    deepl("dl language type object", "/v2/languages", 400, "'type'", body={"type": {}}),
    deepl(
        "dl text empty list",
        "/v2/translate",
        400,
        "'text' is empty",
        body={**DL, "text": []},
    ),
    deepl(
        "dl too many texts",
        "/v2/translate",
        413,
        f"limit is {MAX_BATCH_TEXTS}",
        body={**DL, "text": ["a"] * (MAX_BATCH_TEXTS + 1)},
    ),
    native("dl put translate", "PUT", "/v2/translate", 405, "Method PUT"),
    native("dl unknown route", "GET", "/v2/nope", 404, "No endpoint"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_gets_documented_error(
    gunicorn_api: LiveApi, case: Case
) -> None:
    log_offset = gunicorn_api.log_size()
    reply = request(gunicorn_api, case)

    assert reply.status == case.status, reply
    message = assert_error_shape(reply, case)
    assert case.fragment in message
    unexpected = LOG_FAILURES.findall(gunicorn_api.log_since(log_offset))
    assert not unexpected, gunicorn_api.log_since(log_offset)


def test_case_table_is_large() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


def test_options_is_not_html(gunicorn_api: LiveApi) -> None:
    case = native("options", "OPTIONS", "/api/translate", 204, "", content_type=None)
    reply = request(gunicorn_api, case)

    assert reply.status == 204
    assert reply.body == b""
    assert "content-type" not in reply.headers
    assert "POST" in reply.headers["allow"]


SUCCESSES = [
    Case(
        "native extra fields",
        "POST",
        "/api/translate",
        200,
        NATIVE,
        "",
        body={**TEXT, "priority": "high", "options": {"beam": 9}, "x": [None]},
    ),
    Case(
        "native control characters",
        "POST",
        "/api/translate",
        200,
        NATIVE,
        "",
        body={**TEXT, "text": "Hello\u0000 world\u001b[31m \u202e.", "x": 1},
    ),
    Case(
        "batch extra fields",
        "POST",
        "/api/batch",
        200,
        NATIVE,
        "",
        body={
            "texts": ["Hello world."],
            "source_lang": "en",
            "target_lang": "es",
            "callback_url": "http://127.0.0.1:1/",
            "async": False,
            "z": {},
        },
    ),
    Case(
        "lt extra fields",
        "POST",
        "/translate",
        200,
        LIBRETRANSLATE,
        "",
        body={**LT, "api_key": "anything", "glossary": "ignored", "x": [1]},
    ),
    Case(
        "lt form extra fields",
        "POST",
        "/translate",
        200,
        LIBRETRANSLATE,
        "",
        body="q=Hello+world.&source=en&target=es&unknown=1&unknown=2",
        content_type=FORM,
    ),
    Case(
        "dl extra fields",
        "POST",
        "/v2/translate",
        200,
        DEEPL,
        "",
        body={
            **DL,
            "split_sentences": "1",
            "preserve_formatting": True,
            "context": "greeting",
            "show_billed_characters": True,
        },
    ),
]


@pytest.mark.parametrize("case", SUCCESSES, ids=[case.name for case in SUCCESSES])
def test_unknown_fields_are_ignored(gunicorn_api: LiveApi, case: Case) -> None:
    reply = request(gunicorn_api, case)

    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith(JSON)
    body = reply.json()
    if case.shape == NATIVE:
        assert body["success"] is True
        translations = (
            [body["translation"]] if "translation" in body else body["translations"]
        )
    elif case.shape == LIBRETRANSLATE:
        translations = [body["translatedText"]]
    else:
        translations = [item["text"] for item in body["translations"]]
    assert translations
    assert all(isinstance(text, str) and text for text in translations)
