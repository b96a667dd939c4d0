"""Tests of API keys, their settings and the Redis password settings.

No servers run here: the API's Redis port has no server, which the key check
never needs.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from core import access
from core.access import KeyRing
from core.config import (
    ApiKey,
    ConfigError,
    load_settings,
    redact_url,
    reset_settings,
    with_password,
)
from core.options import TranslationOptions
from tests.helpers import free_port

pytestmark = pytest.mark.unit

KEY = "first-key-0123456789abcdef"
OTHER_KEY = "second-key-0123456789abcdef"


# Settings.


def test_api_keys_from_variable_and_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"# comment\n\n{OTHER_KEY} requests=5/minute characters=100/day\n"
    )
    clean_env.setenv("API_KEYS", f" {KEY} ,")
    clean_env.setenv("API_KEYS_FILE", str(keys_file))
    clean_env.setenv("API_RATE_LIMIT", "60/minute")

    settings = load_settings()

    assert [key.key for key in settings.api_keys] == [KEY, OTHER_KEY]
    assert settings.api_keys[0].request_limit is None
    assert settings.api_keys[1].request_limit == "5/minute"
    assert settings.api_keys[1].character_limit == "100/day"
    assert settings.api_rate_limit == "60/minute"
    assert KEY not in repr(settings)
    assert OTHER_KEY not in repr(settings)


def test_short_api_key_rejected_without_echo(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_KEYS", f"{KEY},tiny")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "API_KEYS item 2" in str(raised.value)
    assert "tiny" not in str(raised.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"{KEY} requests=often", "not a rate limit"),
        (f"{KEY} burst=5/second", "option 'burst=5/second'"),
        (f"{KEY} requests=", "option 'requests='"),
    ],
)
def test_bad_key_file_line(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, line: str, expected: str
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(line + "\n")
    clean_env.setenv("API_KEYS_FILE", str(keys_file))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert "line 1" in str(raised.value)


def test_invalid_rate_limit(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_CHARACTER_LIMIT", "lots")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "API_CHARACTER_LIMIT" in str(raised.value)
    assert "'lots'" in str(raised.value)


def test_missing_keys_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("API_KEYS_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "API_KEYS_FILE" in str(raised.value)


def test_redis_password_goes_into_every_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:7000/0")
    clean_env.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:7001/0")
    clean_env.setenv("REDIS_PASSWORD", "p@ss:word/1")

    settings = load_settings()

    quoted = "p%40ss%3Aword%2F1"
    assert settings.redis_url == f"redis://:{quoted}@127.0.0.1:7000/0"
    assert settings.broker_url == settings.redis_url
    assert settings.result_backend == f"redis://:{quoted}@127.0.0.1:7001/0"
    assert quoted not in repr(settings)
    assert "p@ss" not in repr(settings)


def test_redis_password_from_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password_file = tmp_path / "redis-password"
    password_file.write_text("from-the-file\n")
    clean_env.setenv("REDIS_PASSWORD_FILE", str(password_file))
    assert load_settings().redis_url == "redis://:from-the-file@127.0.0.1:6379/0"

    clean_env.setenv("REDIS_PASSWORD", "from-the-variable")
    assert "from-the-variable" in load_settings().redis_url


def test_url_password_wins() -> None:
    url = "redis://:own@127.0.0.1:6379/0"
    assert with_password(url, "other") == url
    assert with_password("memory://", "other") == "memory://"


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == (
        "redis://:***@127.0.0.1:6379/0"
    )
    assert redact_url("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# Key ring.


def ring(*keys: ApiKey) -> KeyRing:
    return KeyRing(keys, request_limit="10/minute", character_limit="")


def test_keyring_finds_valid_keys_only() -> None:
    keys = ring(ApiKey(KEY), ApiKey(OTHER_KEY, character_limit="9/day"))

    assert keys.enabled is True
    assert keys.find(KEY) is keys.records[0]
    assert keys.find(OTHER_KEY) is keys.records[1]
    assert keys.find(KEY[:-1]) is None
    assert keys.find(KEY + "x") is None
    assert keys.find("") is None
    assert keys.find(None) is None
    assert keys.records[0].request_limit == "10/minute"
    assert keys.records[1].character_limit == "9/day"


def test_keyring_keeps_no_plain_key() -> None:
    keys = ring(ApiKey(KEY))
    assert KEY not in repr(keys.records)
    assert len(keys.records[0].key_id) == access.KEY_ID_LENGTH


def test_keyring_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    compare = hmac.compare_digest

    def counting(first: bytes, second: bytes) -> bool:
        calls.append(first)
        return compare(first, second)

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    keys = ring(ApiKey(KEY), ApiKey(OTHER_KEY), ApiKey("third-key-0123456789abc"))

    assert keys.find(KEY) is not None
    assert len(calls) == 3


def test_empty_keyring_allows_nothing_by_key() -> None:
    keys = ring()
    assert keys.enabled is False
    assert keys.find(KEY) is None


# The API with keys, no Redis server behind it.


@pytest.fixture
def keyed_client(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Any
) -> Iterator[FlaskClient]:
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    clean_env.setenv("API_KEYS", KEY)
    clean_env.setenv("FLASK_DEBUG", "1")
    reset_settings()
    import api_server

    app = api_server.create_app()
    assert app.debug is False
    yield app.test_client()


def test_native_api_rejects_missing_key(keyed_client: FlaskClient) -> None:
    for headers in ({}, {"X-API-Key": OTHER_KEY}):
        response = keyed_client.get("/api/languages", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["code"] == "unauthorized"
    response = keyed_client.get("/api/languages", headers={"X-API-Key": KEY})
    assert response.status_code == 200


def test_unknown_path_needs_key_too(keyed_client: FlaskClient) -> None:
    assert keyed_client.get("/api/nothing").status_code == 401
    assert (
        keyed_client.get("/api/nothing", headers={"X-API-Key": KEY}).status_code == 404
    )


def test_health_and_docs_need_no_key(keyed_client: FlaskClient) -> None:
    assert keyed_client.get("/health").status_code == 503  # no Redis, not 401
    assert keyed_client.get("/api/docs").status_code == 200
    assert keyed_client.get("/api/openapi.json").status_code == 200
    assert keyed_client.get("/metrics").status_code == 200


def test_compat_keys_in_protocol_shape(keyed_client: FlaskClient) -> None:
    libre = keyed_client.post("/translate", json={"q": "Hi", "target": "es"})
    assert libre.status_code == 403
    assert set(libre.get_json()) == {"error"}

    deepl = keyed_client.get(
        "/v2/languages", headers={"Authorization": f"DeepL-Auth-Key {OTHER_KEY}"}
    )
    assert deepl.status_code == 403
    assert set(deepl.get_json()) == {"message"}

    allowed = keyed_client.get(
        "/v2/languages", headers={"Authorization": f"DeepL-Auth-Key {KEY}"}
    )
    assert allowed.status_code == 200
    assert keyed_client.get(f"/languages?api_key={KEY}").status_code == 200


# The cache option.


def test_cache_option_round_trip() -> None:
    options = TranslationOptions.from_request({"cache": False})
    assert options.cache is False
    assert options.key() == {}
    assert TranslationOptions.from_dict(options.to_dict()).cache is False
    assert TranslationOptions.from_dict({}).cache is True
    assert TranslationOptions.from_request({}).cache is True
