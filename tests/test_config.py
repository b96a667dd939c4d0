"""Tests of settings read from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import DEFAULT_REDIS_URL, ConfigError, get_settings, load_settings

pytestmark = pytest.mark.unit


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.broker_url == DEFAULT_REDIS_URL
    assert settings.result_backend == DEFAULT_REDIS_URL
    assert settings.host == "127.0.0.1"
    assert settings.port == 5000
    assert settings.streamlit_port == 8501
    assert settings.flower_port == 5555
    assert settings.debug is False
    assert settings.model_dir is None
    assert settings.language_pairs is None
    assert settings.visibility_timeout > settings.task_time_limit
    assert settings.task_soft_time_limit < settings.task_time_limit


def test_broker_defaults_to_redis_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:7000/2")
    settings = load_settings()
    assert settings.broker_url == "redis://127.0.0.1:7000/2"
    assert settings.result_backend == "redis://127.0.0.1:7000/2"


def test_broker_override(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:7001/0")
    assert load_settings().broker_url == "redis://127.0.0.1:7001/0"
    assert load_settings().result_backend == DEFAULT_REDIS_URL


def test_typed_values(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("PORT", "8080")
    clean_env.setenv("DEBUG", "yes")
    clean_env.setenv("MODEL_DIR", str(tmp_path))
    clean_env.setenv("SYNC_TIMEOUT", "2.5")
    clean_env.setenv("LANGUAGE_PAIRS", "en-es, es-en")
    settings = load_settings()
    assert settings.port == 8080
    assert settings.debug is True
    assert settings.model_dir == tmp_path.resolve()
    assert settings.sync_timeout == 2.5
    assert settings.language_pairs == ("en-es", "es-en")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PORT", "abc", "PORT='abc' is not an integer"),
        ("PORT", "0", "below the minimum"),
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        ("SYNC_TIMEOUT", "soon", "SYNC_TIMEOUT='soon' is not a number"),
        ("LANGUAGE_PAIRS", "en", "'en', which is not a language pair"),
        ("ENGINE", "magic", "ENGINE='magic' is not supported"),
        ("DEVICE", "tpu", "DEVICE='tpu' is not valid"),
        ("PRECISION", "bf16", "PRECISION='bf16' is not valid"),
        ("VISIBILITY_TIMEOUT", "10", "must be longer than TASK_TIME_LIMIT"),
        ("SYNC_TIMEOUT", "nan", "SYNC_TIMEOUT='nan' is not a finite number"),
        ("MICRO_BATCH_WINDOW", "inf", "MICRO_BATCH_WINDOW='inf' is not a finite"),
        ("MICRO_BATCH_WINDOW", "1e400", "is not a finite number"),
        ("MICRO_BATCH_WINDOW", "5", "above the maximum of 1.0"),
        ("MICRO_BATCH_MAX_WAIT", "-1", "MICRO_BATCH_MAX_WAIT='-1' is below"),
        ("MICRO_BATCH_MAX_WAIT", "1e9", "above the maximum of 5.0"),
        ("MICRO_BATCH_MAX_WAIT", "nan", "is not a finite number"),
    ],
)
def test_invalid_values_name_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert fragment in str(raised.value)


def test_soft_limit_must_be_below_hard(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TASK_TIME_LIMIT", "100")
    clean_env.setenv("TASK_SOFT_TIME_LIMIT", "100")
    with pytest.raises(ConfigError, match="TASK_SOFT_TIME_LIMIT"):
        load_settings()


def test_get_settings_is_cached(clean_env: pytest.MonkeyPatch) -> None:
    first = get_settings()
    clean_env.setenv("PORT", "9999")
    assert get_settings() is first
    assert get_settings().port == 5000


def test_reading_creates_no_directories(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "not-yet"
    clean_env.setenv("CACHE_DIR", str(cache_dir))
    assert load_settings().cache_dir == cache_dir
    assert not cache_dir.exists()


def test_engine_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("CT2_CACHE_DIR", raising=False)
    settings = load_settings()
    assert settings.engine == "ctranslate2"
    assert settings.precision == "auto"
    assert settings.ct2_cache_dir is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("float32", "fp32"),
        ("FLOAT16", "fp16"),
        ("int8_float16", "int8_fp16"),
        ("int8", "int8"),
        ("fp16", "fp16"),
    ],
)
def test_precision_accepts_ctranslate2_names(
    clean_env: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    clean_env.setenv("PRECISION", value)
    assert load_settings().precision == expected


def test_engine_names(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ENGINE", "Transformers")
    clean_env.setenv("CT2_CACHE_DIR", str(tmp_path / "converted"))
    settings = load_settings()
    assert settings.engine == "transformers"
    assert settings.ct2_cache_dir == (tmp_path / "converted").resolve()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("hard", "soft"), [("300", 270), ("100", 90), ("31", 28), ("5", 4), ("2", 1)]
)
def test_soft_limit_follows_hard_limit(
    clean_env: pytest.MonkeyPatch, hard: str, soft: int
) -> None:
    clean_env.setenv("TASK_TIME_LIMIT", hard)
    settings = load_settings()
    assert settings.task_soft_time_limit == soft
    assert settings.task_soft_time_limit < settings.task_time_limit
