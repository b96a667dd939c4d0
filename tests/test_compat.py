"""Tests of the LibreTranslate- and DeepL-compatible endpoints.

The unit tests check each protocol's error shape through Flask's test client
with no Redis behind it. The integration tests serve the API on 127.0.0.1 in a
thread and drive it with the published clients, ``libretranslatepy`` and
``deepl``, against a live worker, and compare their responses with those of
``POST /api/translate``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import deepl
import pytest
import redis
from flask.testing import FlaskClient
from libretranslatepy import LibreTranslateAPI
from werkzeug.serving import make_server

import api_compat
from core.config import reset_settings
from tests.helpers import LOCALHOST, free_port

HTTP_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 10.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
DIRECT_TARGETS_OF_EN = ["de", "es", "fr", "it", "pt"]
# The tiny checkpoints of conftest serve es-en and en-{de,fr,it,pt}, so es
# reaches those four targets through English.
TARGETS_OF_ES = ["de", "en", "fr", "it", "pt"]
ENGLISH = "The weather is very nice today and we are going to the beach"
SPANISH = "Hoy hace muy buen tiempo y vamos a ir a la playa con mis amigos"


def make_client() -> FlaskClient:
    import api_server

    return api_server.create_app().test_client()


def unique(text: str) -> str:
    """Make a text unique per test run, so that no cache tier contains it."""
    return f"{text} {time.time_ns() % 100_000_000}"


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


def error_message(response: Any, status: int, field: str) -> str:
    """Check a protocol error: its status and a body of exactly ``{field: str}``."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == [field]
    assert isinstance(body[field], str)
    return body[field]


# LibreTranslate errors.

LIBRETRANSLATE_BAD_REQUESTS = [
    (
        "unsupported pair",
        {"q": "Hello", "source": "fr", "target": "de"},
        "fr-de is not served",
    ),
    ("missing q", {"source": "en", "target": "es"}, "'q' is required"),
    ("empty q", {"q": "", "source": "en", "target": "es"}, "'q' is empty"),
    ("empty q list", {"q": [], "source": "en", "target": "es"}, "'q' is empty"),
    ("number in q", {"q": ["a", 5], "source": "en", "target": "es"}, "'q[1]'"),
    ("missing source", {"q": "Hello", "target": "es"}, "'source' is required"),
    ("missing target", {"q": "Hello", "source": "en"}, "'target' is required"),
    (
        "invalid source",
        {"q": "Hello", "source": "english", "target": "es"},
        "'source' has the invalid language code",
    ),
    (
        "auto into unserved",
        {"q": "Hello", "source": "auto", "target": "ja"},
        "'ja'",
    ),
    (
        "bad format",
        {"q": "Hello", "source": "en", "target": "es", "format": "markdown"},
        "'format' must be 'text' or 'html'",
    ),
    (
        "bad alternatives",
        {"q": "Hello", "source": "en", "target": "es", "alternatives": "x"},
        "'alternatives'",
    ),
    (
        "text too long",
        {"q": "a" * 101, "source": "en", "target": "es"},
        "limit is 100",
    ),
    (
        "too many texts",
        {"q": ["a"] * 6, "source": "en", "target": "es"},
        "limit is 5",
    ),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("case", "body", "fragment"),
    LIBRETRANSLATE_BAD_REQUESTS,
    ids=[case[0] for case in LIBRETRANSLATE_BAD_REQUESTS],
)
def test_libretranslate_rejects_bad_input(
    offline_client: FlaskClient, case: str, body: dict[str, Any], fragment: str
) -> None:
    response = offline_client.post("/translate", json=body)
    assert fragment in error_message(response, 400, "error")


@pytest.mark.unit
def test_libretranslate_form_errors(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/translate", data={"q": "Hello", "source": "fr", "target": "de"}
    )
    assert "fr-de is not served" in error_message(response, 400, "error")
    response = offline_client.post("/translate", data={"source": "en"})
    assert "'q' is required" in error_message(response, 400, "error")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "fragment"),
    [("{bad", "not valid JSON"), ("[1]", "JSON object, got array")],
)
def test_libretranslate_bad_json(
    offline_client: FlaskClient, body: str, fragment: str
) -> None:
    response = offline_client.post(
        "/translate", data=body, content_type="application/json"
    )
    assert fragment in error_message(response, 400, "error")


@pytest.mark.unit
def test_libretranslate_body_over_limit(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/translate", json={"q": "a" * 5000, "source": "en", "target": "es"}
    )
    assert "limit of 2000 bytes" in error_message(response, 400, "error")


@pytest.mark.unit
def test_libretranslate_broker_down_is_500(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/translate", json={"q": "Hello there", "source": "en", "target": "es"}
    )
    assert "unreachable" in error_message(response, 500, "error")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "fragment"),
    [({}, "'q' is required"), ({"q": ["a", "b"]}, "not a list"), ({"q": ""}, "empty")],
)
def test_libretranslate_detect_errors(
    offline_client: FlaskClient, body: dict[str, Any], fragment: str
) -> None:
    response = offline_client.post("/detect", json=body)
    assert fragment in error_message(response, 400, "error")


@pytest.mark.unit
def test_libretranslate_languages_offline(offline_client: FlaskClient) -> None:
    response = offline_client.get("/languages")
    assert response.status_code == 200
    languages = {entry["code"]: entry for entry in response.get_json()}
    assert sorted(languages) == ["de", "en", "es", "fr", "it", "pt"]
    assert languages["en"]["name"] == "English"
    assert languages["en"]["targets"] == DIRECT_TARGETS_OF_EN
    assert languages["es"]["targets"] == TARGETS_OF_ES
    assert languages["it"]["targets"] == []


# DeepL errors.

DEEPL_BAD_REQUESTS = [
    (
        "unsupported pair",
        {"text": ["Hello"], "source_lang": "FR", "target_lang": "DE"},
        400,
        "fr-de is not served",
    ),
    ("missing text", {"target_lang": "ES"}, 400, "'text' is required"),
    ("empty text", {"text": [], "target_lang": "ES"}, 400, "'text' is empty"),
    ("null in text", {"text": [None], "target_lang": "ES"}, 400, "got null"),
    ("missing target", {"text": ["Hello"]}, 400, "'target_lang' is required"),
    (
        "detection into unserved",
        {"text": ["Hello"], "target_lang": "JA"},
        400,
        "translates into 'ja', so the source language cannot be detected",
    ),
    (
        "invalid target",
        {"text": ["Hello"], "target_lang": "Spanish"},
        400,
        "'target_lang' has the invalid language code",
    ),
    (
        "xml tags",
        {"text": ["<a>x</a>"], "target_lang": "ES", "tag_handling": "xml"},
        400,
        "'tag_handling' not supported",
    ),
    (
        "strict formality",
        {"text": ["Hello"], "target_lang": "DE", "formality": "more"},
        400,
        "'formality'",
    ),
    (
        "glossary",
        {"text": ["Hello"], "target_lang": "DE", "glossary_id": "g-1"},
        400,
        "Glossaries are not supported",
    ),
    ("text too long", {"text": ["a" * 101], "target_lang": "ES"}, 413, "limit is 100"),
    ("too many texts", {"text": ["a"] * 6, "target_lang": "ES"}, 413, "limit is 5"),
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("case", "body", "status", "fragment"),
    DEEPL_BAD_REQUESTS,
    ids=[case[0] for case in DEEPL_BAD_REQUESTS],
)
def test_deepl_rejects_bad_input(
    offline_client: FlaskClient,
    case: str,
    body: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    response = offline_client.post("/v2/translate", json=body)
    assert fragment in error_message(response, status, "message")


@pytest.mark.unit
def test_deepl_form_errors(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/v2/translate",
        data={"text": ["Hello", "World"], "source_lang": "FR", "target_lang": "DE"},
    )
    assert "fr-de is not served" in error_message(response, 400, "message")


@pytest.mark.unit
def test_deepl_bad_json(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/v2/translate", data="{bad", content_type="application/json"
    )
    assert "not valid JSON" in error_message(response, 400, "message")


@pytest.mark.unit
def test_deepl_body_over_limit(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/v2/translate", json={"text": ["a" * 5000], "target_lang": "ES"}
    )
    assert "limit of 2000 bytes" in error_message(response, 413, "message")


@pytest.mark.unit
def test_deepl_broker_down_is_503(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/v2/translate", json={"text": ["Hello there"], "target_lang": "ES"}
    )
    assert "unreachable" in error_message(response, 503, "message")
    assert response.headers["Retry-After"]
    usage = offline_client.get("/v2/usage")
    assert "unreachable" in error_message(usage, 503, "message")


@pytest.mark.unit
def test_deepl_languages_offline(offline_client: FlaskClient) -> None:
    sources = offline_client.get("/v2/languages").get_json()
    assert [entry["language"] for entry in sources] == ["DE", "EN", "ES"]
    assert sources[0]["name"] == "German"

    targets = offline_client.get("/v2/languages?type=target").get_json()
    codes = [entry["language"] for entry in targets]
    assert codes == ["DE", "EN-GB", "EN-US", "ES", "FR", "IT", "PT-BR", "PT-PT"]
    assert all(entry["supports_formality"] is False for entry in targets)

    # The deepl client sends the type of a GET as a form body.
    form = offline_client.get(
        "/v2/languages",
        data="type=target",
        content_type="application/x-www-form-urlencoded",
    ).get_json()
    assert form == targets

    response = offline_client.get("/v2/languages?type=glossary")
    assert "'type' must be" in error_message(response, 400, "message")


@pytest.mark.unit
def test_native_errors_keep_their_shape(offline_client: FlaskClient) -> None:
    response = offline_client.post(
        "/api/translate",
        json={"text": "Hello", "source_lang": "fr", "target_lang": "de"},
    )
    assert response.status_code == 400
    body = response.get_json()
    assert body["success"] is False
    assert body["code"] == "unsupported_language_pair"


@pytest.mark.unit
def test_rejected_key_is_403(
    offline_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str | None]] = []

    def reject(protocol: str, key: str | None) -> bool:
        seen.append((protocol, key))
        return False

    monkeypatch.setattr(api_compat, "key_allowed", reject)
    response = offline_client.post(
        "/translate",
        json={"q": "Hello", "source": "en", "target": "es", "api_key": "k1"},
    )
    assert "Invalid API key" in error_message(response, 403, "error")
    response = offline_client.get(
        "/v2/usage", headers={"Authorization": "DeepL-Auth-Key k2"}
    )
    assert "Authorization failed" in error_message(response, 403, "message")
    assert seen == [("libretranslate", "k1"), ("deepl", "k2")]


# Live stack, driven by the published clients.


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection this process opens to a host other than loopback."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            loopback = ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise AssertionError(f"Connection to {address!r} is not to loopback.")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        original_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return original_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
def server_url(
    live_stack: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    loopback_only: None,
) -> Iterator[str]:
    """The API served on 127.0.0.1 by a werkzeug server in a thread."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("NO_PROXY", f"{LOCALHOST},localhost")
    monkeypatch.setenv("no_proxy", f"{LOCALHOST},localhost")

    import api_server

    server = make_server(LOCALHOST, 0, api_server.create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOCALHOST}:{server.port}"
    finally:
        server.shutdown()
        thread.join(SERVER_STOP_TIMEOUT)
        server.server_close()


@pytest.fixture
def deepl_client(server_url: str) -> Iterator[deepl.DeepLClient]:
    client = deepl.DeepLClient("any-key", server_url=server_url)
    assert client.server_url == server_url
    try:
        yield client
    finally:
        client.close()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with _opener.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def native_translation(url: str, text: str, source: str, target: str) -> str:
    status, body = post_json(
        f"{url}/api/translate",
        {"text": text, "source_lang": source, "target_lang": target},
    )
    assert status == 200, body
    return body["translation"]


def usage_count(env: dict[str, str]) -> int:
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        return int(client.get(api_compat.USAGE_KEY) or 0)
    finally:
        client.close()


def forbid_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> str:
        raise AssertionError("this request must not reach a worker")

    monkeypatch.setattr(api_compat, "send", fail)
    monkeypatch.setattr(api_compat.dispatch, "send", fail)


@pytest.mark.integration
class TestLibreTranslateClient:
    def test_translate_matches_native(self, server_url: str) -> None:
        text = unique("The cat sleeps on the sofa")
        translated = LibreTranslateAPI(server_url).translate(text, "en", "es")
        assert isinstance(translated, str)
        assert translated == native_translation(server_url, text, "en", "es")

    def test_translate_auto_detects(self, server_url: str) -> None:
        text = unique(ENGLISH)
        translated = LibreTranslateAPI(server_url).translate(text, "auto", "es")
        assert translated == native_translation(server_url, text, "en", "es")

        status, body = post_json(
            f"{server_url}/translate", {"q": text, "source": "auto", "target": "es"}
        )
        assert status == 200, body
        assert body["translatedText"] == translated
        assert body["detectedLanguage"]["language"] == "en"
        assert 0 < body["detectedLanguage"]["confidence"] <= 100

    def test_translate_list_auto(self, server_url: str) -> None:
        texts = [unique(ENGLISH), unique(SPANISH), "42"]
        status, body = post_json(
            f"{server_url}/translate", {"q": texts, "source": "auto", "target": "de"}
        )
        assert status == 200, body
        assert body["translatedText"][0] == native_translation(
            server_url, texts[0], "en", "de"
        )
        assert body["translatedText"][1] == native_translation(
            server_url, texts[1], "es", "de"
        )
        assert body["translatedText"][2] == "42"
        languages = [entry["language"] for entry in body["detectedLanguage"]]
        assert languages == ["en", "es", "und"]

    def test_translate_html_format(self, server_url: str) -> None:
        html = f"<p>Hello <b>dear</b> friend {time.time_ns()}</p>"
        status, body = post_json(
            f"{server_url}/translate",
            {"q": html, "source": "en", "target": "es", "format": "html"},
        )
        assert status == 200, body
        assert body["translatedText"].startswith("<p>")
        assert "<b>" in body["translatedText"]

    def test_languages(self, server_url: str) -> None:
        languages = LibreTranslateAPI(server_url).languages()
        by_code = {entry["code"]: entry for entry in languages}
        assert by_code["en"]["targets"] == DIRECT_TARGETS_OF_EN
        assert by_code["es"]["targets"] == TARGETS_OF_ES
        assert by_code["es"]["name"] == "Spanish"

    def test_detect_then_cached(
        self, server_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        text = unique(SPANISH)
        detections = LibreTranslateAPI(server_url).detect(text)
        assert [entry["language"] for entry in detections] == ["es"]
        assert 0 < detections[0]["confidence"] <= 100

        forbid_workers(monkeypatch)
        assert LibreTranslateAPI(server_url).detect(text) == detections

    def test_detect_without_letters(
        self, server_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        forbid_workers(monkeypatch)
        detections = LibreTranslateAPI(server_url).detect("12 + 7")
        assert detections == [{"language": "und", "confidence": 0.0}]

    def test_unsupported_pair_raises(self, server_url: str) -> None:
        with pytest.raises(urllib.error.HTTPError) as raised:
            LibreTranslateAPI(server_url).translate("Hello", "fr", "de")
        assert raised.value.code == 400
        assert "fr-de" in json.loads(raised.value.read())["error"]


@pytest.mark.integration
class TestDeepLClient:
    def test_translate_with_source(
        self, server_url: str, deepl_client: deepl.DeepLClient
    ) -> None:
        text = unique("The dog runs in the park")
        result = deepl_client.translate_text(text, source_lang="EN", target_lang="ES")
        assert isinstance(result, deepl.TextResult)
        assert result.text == native_translation(server_url, text, "en", "es")
        assert result.detected_source_lang == "EN"
        assert result.billed_characters == len(text)

    def test_translate_list_without_source(
        self, server_url: str, deepl_client: deepl.DeepLClient
    ) -> None:
        texts = [unique(ENGLISH), unique(SPANISH)]
        results = deepl_client.translate_text(texts, target_lang="DE")
        assert isinstance(results, list)
        assert [result.detected_source_lang for result in results] == ["EN", "ES"]
        assert results[0].text == native_translation(server_url, texts[0], "en", "de")
        assert results[1].text == native_translation(server_url, texts[1], "es", "de")

    @pytest.mark.parametrize(
        ("source", "target", "pair"),
        [
            ("ES", "EN-US", ("es", "en")),
            ("es", "en-gb", ("es", "en")),
            ("EN", "PT-BR", ("en", "pt")),
        ],
    )
    def test_region_variants(
        self,
        server_url: str,
        deepl_client: deepl.DeepLClient,
        source: str,
        target: str,
        pair: tuple[str, str],
    ) -> None:
        text = unique("Good evening to all of you")
        result = deepl_client.translate_text(
            [text], source_lang=source, target_lang=target
        )
        assert result[0].text == native_translation(server_url, text, *pair)

    def test_html_tag_handling(self, deepl_client: deepl.DeepLClient) -> None:
        html = f"<p>Hello <b>dear</b> friend {time.time_ns()}</p>"
        result = deepl_client.translate_text(
            html, source_lang="EN", target_lang="ES", tag_handling="html"
        )
        assert result.text.startswith("<p>")
        assert "<b>" in result.text

    def test_unsupported_pair_raises(self, deepl_client: deepl.DeepLClient) -> None:
        with pytest.raises(deepl.DeepLException, match="fr-de is not served"):
            deepl_client.translate_text("Bonjour", source_lang="FR", target_lang="DE")

    def test_languages(self, deepl_client: deepl.DeepLClient) -> None:
        sources = deepl_client.get_source_languages()
        assert [language.code for language in sources] == ["DE", "EN", "ES"]
        targets = deepl_client.get_target_languages()
        codes = [language.code for language in targets]
        assert codes == ["DE", "EN-GB", "EN-US", "ES", "FR", "IT", "PT-BR", "PT-PT"]
        assert all(language.supports_formality is False for language in targets)

    def test_usage_counts_characters(
        self,
        live_stack: dict[str, str],
        server_url: str,
        deepl_client: deepl.DeepLClient,
    ) -> None:
        before = deepl_client.get_usage()
        assert before.character.valid
        assert before.character.count == usage_count(live_stack)

        texts = [unique("Count these characters"), "12"]
        deepl_client.translate_text(texts, source_lang="EN", target_lang="ES")
        LibreTranslateAPI(server_url).translate(texts[0], "en", "es")
        after = deepl_client.get_usage()
        expected = len(texts[0]) * 2 + len(texts[1])
        assert after.character.count == before.character.count + expected
        assert after.character.limit == api_compat.USAGE_CHARACTER_LIMIT
        assert not after.any_limit_reached
