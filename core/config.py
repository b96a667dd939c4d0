"""Settings of the translation service, read once from environment variables.

Every setting has a typed default here and a row in the README table. Reading
the settings has no side effects: no directory is created and no connection is
opened until a component uses them.
"""

from __future__ import annotations

import functools
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from limits import parse_many

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PAIRS = ("en-es", "es-en", "en-de", "de-en", "en-fr", "fr-en")

ENGINES = ("ctranslate2", "transformers")
PRECISIONS = ("auto", "fp32", "fp16", "int8", "int8_fp16")
# CTranslate2 names of the compute types, accepted as PRECISION values too.
PRECISION_ALIASES = {"float32": "fp32", "float16": "fp16", "int8_float16": "int8_fp16"}


class ConfigError(ValueError):
    """An environment variable contains a value that cannot be used."""


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer. Set it to a whole number "
            f"such as {default}, or unset it to use the default."
        ) from None
    if value < minimum:
        raise ConfigError(
            f"{name}={raw!r} is below the minimum of {minimum}. "
            f"Set it to at least {minimum} (default {default})."
        )
    return value


def _env_float(
    name: str, default: float, minimum: float = 0.0, maximum: float | None = None
) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a number. Set it to a value such as "
            f"{default}, or unset it to use the default."
        ) from None
    # float() also parses "inf" and "nan", and nan passes every comparison.
    if not math.isfinite(value):
        raise ConfigError(
            f"{name}={raw!r} is not a finite number. Set it to a value such as "
            f"{default}, or unset it to use the default."
        )
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"{name}={raw!r} is above the maximum of {maximum}. "
            f"Set it to at most {maximum} (default {default})."
        )
    if value < minimum:
        raise ConfigError(
            f"{name}={raw!r} is below the minimum of {minimum}. "
            f"Set it to at least {minimum} (default {default})."
        )
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(
        f"{name}={raw!r} is not a boolean. Use one of true, false, 1, 0, "
        "yes, no, on, off."
    )


def _env_path(name: str, default: Path | None) -> Path | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return Path(raw.strip()).expanduser().resolve()


WORKER_QUEUE_NAMES = ("interactive", "bulk", "maintenance")


def _env_queues(name: str) -> tuple[str, ...]:
    """Parse a comma-separated subset of ``WORKER_QUEUE_NAMES``."""
    raw = os.environ.get(name, "")
    chosen = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if not chosen:
        return WORKER_QUEUE_NAMES
    unknown = [part for part in chosen if part not in WORKER_QUEUE_NAMES]
    if unknown:
        raise ConfigError(
            f"{name} contains {unknown[0]!r}, which is not a queue. Use a "
            f"comma-separated subset of {', '.join(WORKER_QUEUE_NAMES)}."
        )
    return tuple(queue for queue in WORKER_QUEUE_NAMES if queue in chosen)


def _env_precision(name: str) -> str:
    value = _env_str(name, "auto").lower()
    return PRECISION_ALIASES.get(value, value)


def _env_pairs(name: str) -> tuple[str, ...] | None:
    """Parse a comma-separated list such as ``en-es,es-en`` into pair codes."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    pairs = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        pieces = part.split("-")
        if len(pieces) != 2 or not all(pieces):
            raise ConfigError(
                f"{name} contains {part!r}, which is not a language pair. "
                "Write pairs as SOURCE-TARGET separated by commas, "
                "for example 'en-es,es-en'."
            )
        pairs.append(part)
    return tuple(pairs)


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def with_password(url: str, password: str) -> str:
    """Put ``password`` into a ``redis://`` or ``rediss://`` URL that has none."""
    parts = urllib.parse.urlsplit(url)
    if not password or parts.password is not None:
        return url
    if parts.scheme not in {"redis", "rediss"}:
        return url
    user = urllib.parse.quote(parts.username or "", safe="")
    secret = urllib.parse.quote(password, safe="")
    return parts._replace(netloc=f"{user}:{secret}@{parts.netloc}").geturl()


def _read_secret_file(name: str) -> str:
    """Return the first line of the file named by variable ``name``, or ""."""
    path = _env_path(name, None)
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(
            f"{name}={str(path)!r} cannot be read ({error.strerror}). Point it at "
            "an existing file readable by this user, or unset it."
        ) from None


def _redis_password() -> str:
    """Return ``REDIS_PASSWORD``, else the content of ``REDIS_PASSWORD_FILE``."""
    password = os.environ.get("REDIS_PASSWORD", "").strip()
    return password or _read_secret_file("REDIS_PASSWORD_FILE")


def _api_keys() -> tuple[ApiKey, ...]:
    """Read ``API_KEYS`` (comma-separated) and the lines of ``API_KEYS_FILE``.

    A file line is ``KEY`` or ``KEY requests=LIMIT characters=LIMIT``, where a
    limit in flask-limiter's notation (``60/minute``) replaces the default
    limit for that key. Blank lines and lines starting with ``#`` are skipped.
    """
    keys = [
        ApiKey(part.strip(), source=f"API_KEYS item {index + 1}")
        for index, part in enumerate(os.environ.get("API_KEYS", "").split(","))
        if part.strip()
    ]
    path = _env_path("API_KEYS_FILE", None)
    if path is not None:
        text = _read_secret_file("API_KEYS_FILE")
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(_parse_key_line(line, f"{path} line {number}"))
    for key in keys:
        if len(key.key) < MIN_API_KEY_CHARS:
            raise ConfigError(
                f"The API key in {key.source} has {len(key.key)} characters; keys "
                f"need at least {MIN_API_KEY_CHARS}. Generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(24))'."
            )
    return tuple(keys)


def _parse_key_line(line: str, source: str) -> ApiKey:
    key, *options = line.split()
    limits: dict[str, str] = {}
    for option in options:
        name, _, value = option.partition("=")
        if name not in {"requests", "characters"} or not value:
            raise ConfigError(
                f"{source} has the option {option!r}. Write a key line as "
                "'KEY', or 'KEY requests=60/minute characters=100000/day'."
            )
        limits[name] = _check_limit(value, f"{name}= in {source}")
    return ApiKey(
        key,
        source=source,
        request_limit=limits.get("requests"),
        character_limit=limits.get("characters"),
    )


def _check_limit(value: str, where: str) -> str:
    """Validate a limit such as ``60/minute`` or ``10/second;1000/day``."""
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(
            f"{where} is {value!r}, which is not a rate limit. Write it as "
            "COUNT/PERIOD, such as '60/minute' or '100000/day', with ';' "
            "between several limits."
        ) from None
    return value


def _env_limit(name: str) -> str:
    value = os.environ.get(name, "").strip()
    return _check_limit(value, name) if value else ""


MIN_API_KEY_CHARS = 16


@dataclass(frozen=True)
class ApiKey:
    """One API key and the limits that replace the defaults for it."""

    key: str = field(repr=False)
    source: str = ""
    request_limit: str | None = None
    character_limit: str | None = None


@dataclass(frozen=True)
class Settings:
    """Typed view of every environment variable the service reads."""

    # Network and processes. The URLs carry REDIS_PASSWORD, so repr leaves them out.
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    broker_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    result_backend: str = field(default=DEFAULT_REDIS_URL, repr=False)
    host: str = "127.0.0.1"
    port: int = 5000
    streamlit_port: int = 8501
    flower_port: int = 5555
    debug: bool = False
    log_level: str = "INFO"
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 0
    metrics_token: str = field(default="", repr=False)

    # API keys and per-key limits; without keys the limits apply per client address.
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    api_rate_limit: str = ""
    api_character_limit: str = ""

    # Models.
    model_dir: Path | None = None
    language_pairs: tuple[str, ...] | None = None
    worker_pairs: tuple[str, ...] | None = None
    worker_queues: tuple[str, ...] = ("interactive", "bulk", "maintenance")
    auto_download_models: bool = False
    max_loaded_models: int = 2
    device: str = "auto"
    precision: str = "auto"
    engine: str = "ctranslate2"
    ct2_cache_dir: Path | None = None
    num_beams: int = 4
    batch_token_budget: int = 6000
    max_batch_size: int = 64
    max_new_tokens_ratio: float = 1.5
    max_new_tokens_extra: int = 10
    no_repeat_ngram_size: int = 8
    repetition_penalty: float = 1.0
    torch_threads: int = 0
    bench_forced_output_tokens: bool = False

    # Cache.
    cache_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "var" / "cache")
    cache_memory_entries: int = 10_000
    cache_disk_bytes: int = 1_073_741_824
    cache_redis_ttl: int = 30 * 24 * 3600
    cache_prefix: str = "trans:"

    # Browser UI uploads.
    ui_max_upload_mb: int = 50
    ui_max_upload_rows: int = 100_000
    ui_upload_dir: Path | None = None

    # Request limits and deadlines.
    max_text_chars: int = 5_000
    max_batch_texts: int = 1_000
    max_request_bytes: int = 2 * 1024 * 1024
    sync_timeout: float = 30.0
    redis_timeout: float = 1.0
    redis_retry_interval: float = 2.0

    # Jobs and Celery.
    job_ttl: int = 24 * 3600
    chunk_size: int = 64
    max_bulk_queue: int = 10_000
    worker_concurrency: int = 1
    worker_max_tasks_per_child: int = 200
    task_soft_time_limit: int = 270
    task_time_limit: int = 300
    visibility_timeout: int = 360
    single_flight_ttl: int = 15
    micro_batch_window: float = 0.01
    micro_batch_max_wait: float = 0.1
    task_max_attempts: int = 3

    # Test-only fault injection: unset in production.
    test_item_delay: float = 0.0
    test_raise_marker: str = ""
    test_crash_marker: str = ""

    @property
    def pairs_are_configured(self) -> bool:
        """True when ``LANGUAGE_PAIRS`` names the pairs explicitly."""
        return self.language_pairs is not None


def load_settings() -> Settings:
    """Read every setting from the environment, without caching."""
    password = _redis_password()
    redis_url = with_password(_env_str("REDIS_URL", DEFAULT_REDIS_URL), password)
    task_time_limit = _env_int("TASK_TIME_LIMIT", 300, minimum=2)
    # The soft limit leaves a tenth of the hard limit, at most 30 s, for the
    # task to report its failure before the hard limit kills it.
    soft_default = task_time_limit - max(1, min(30, task_time_limit // 10))
    settings = Settings(
        redis_url=redis_url,
        broker_url=with_password(_env_str("CELERY_BROKER_URL", redis_url), password),
        result_backend=with_password(
            _env_str("CELERY_RESULT_BACKEND", redis_url), password
        ),
        host=_env_str("HOST", "127.0.0.1"),
        port=_env_int("PORT", 5000, minimum=1),
        streamlit_port=_env_int("STREAMLIT_PORT", 8501, minimum=1),
        flower_port=_env_int("FLOWER_PORT", 5555, minimum=1),
        debug=_env_bool("DEBUG", False),
        metrics_token=os.environ.get("METRICS_TOKEN", "").strip(),
        worker_metrics_host=_env_str("WORKER_METRICS_HOST", "127.0.0.1"),
        worker_metrics_port=_env_int("WORKER_METRICS_PORT", 0, minimum=0),
        api_keys=_api_keys(),
        api_rate_limit=_env_limit("API_RATE_LIMIT"),
        api_character_limit=_env_limit("API_CHARACTER_LIMIT"),
        log_level=_env_str(
            "LOG_LEVEL", "DEBUG" if _env_bool("DEBUG", False) else "INFO"
        ).upper(),
        model_dir=_env_path("MODEL_DIR", None),
        language_pairs=_env_pairs("LANGUAGE_PAIRS"),
        worker_pairs=_env_pairs("WORKER_PAIRS"),
        worker_queues=_env_queues("WORKER_QUEUES"),
        auto_download_models=_env_bool("AUTO_DOWNLOAD_MODELS", False),
        max_loaded_models=_env_int("MAX_LOADED_MODELS", 2, minimum=1),
        device=_env_str("DEVICE", "auto").lower(),
        precision=_env_precision("PRECISION"),
        engine=_env_str("ENGINE", "ctranslate2").lower(),
        ct2_cache_dir=_env_path("CT2_CACHE_DIR", None),
        num_beams=_env_int("NUM_BEAMS", 4, minimum=1),
        batch_token_budget=_env_int("BATCH_TOKEN_BUDGET", 6000, minimum=64),
        max_batch_size=_env_int("MAX_BATCH_SIZE", 64, minimum=1),
        max_new_tokens_ratio=_env_float("MAX_NEW_TOKENS_RATIO", 1.5, minimum=0.1),
        max_new_tokens_extra=_env_int("MAX_NEW_TOKENS_EXTRA", 10, minimum=0),
        no_repeat_ngram_size=_env_int("NO_REPEAT_NGRAM_SIZE", 8, minimum=0),
        repetition_penalty=_env_float("REPETITION_PENALTY", 1.0, minimum=1.0),
        torch_threads=_env_int("TORCH_THREADS", 0, minimum=0),
        bench_forced_output_tokens=_env_bool("BENCH_FORCED_OUTPUT_TOKENS", False),
        cache_dir=_env_path("CACHE_DIR", PROJECT_ROOT / "var" / "cache")
        or PROJECT_ROOT / "var" / "cache",
        cache_memory_entries=_env_int("CACHE_MEMORY_ENTRIES", 10_000, minimum=0),
        cache_disk_bytes=_env_int("CACHE_DISK_BYTES", 1_073_741_824, minimum=0),
        cache_redis_ttl=_env_int("CACHE_REDIS_TTL", 30 * 24 * 3600, minimum=1),
        cache_prefix=_env_str("CACHE_PREFIX", "trans:"),
        ui_max_upload_mb=_env_int("UI_MAX_UPLOAD_MB", 50, minimum=1),
        ui_max_upload_rows=_env_int("UI_MAX_UPLOAD_ROWS", 100_000, minimum=1),
        ui_upload_dir=_env_path("UI_UPLOAD_DIR", None),
        max_text_chars=_env_int("MAX_TEXT_CHARS", 5_000, minimum=1),
        max_batch_texts=_env_int("MAX_BATCH_TEXTS", 1_000, minimum=1),
        max_request_bytes=_env_int("MAX_REQUEST_BYTES", 2 * 1024 * 1024, minimum=1),
        sync_timeout=_env_float("SYNC_TIMEOUT", 30.0, minimum=0.1),
        redis_timeout=_env_float("REDIS_TIMEOUT", 1.0, minimum=0.05),
        redis_retry_interval=_env_float("REDIS_RETRY_INTERVAL", 2.0, minimum=0.0),
        job_ttl=_env_int("JOB_TTL", 24 * 3600, minimum=60),
        chunk_size=_env_int("CHUNK_SIZE", 64, minimum=1),
        max_bulk_queue=_env_int("MAX_BULK_QUEUE", 10_000, minimum=1),
        worker_concurrency=_env_int("WORKER_CONCURRENCY", 1, minimum=1),
        worker_max_tasks_per_child=_env_int(
            "WORKER_MAX_TASKS_PER_CHILD", 200, minimum=1
        ),
        task_soft_time_limit=_env_int("TASK_SOFT_TIME_LIMIT", soft_default, minimum=1),
        task_time_limit=task_time_limit,
        visibility_timeout=_env_int(
            "VISIBILITY_TIMEOUT", task_time_limit + 60, minimum=1
        ),
        single_flight_ttl=_env_int("SINGLE_FLIGHT_TTL", 15, minimum=1),
        # A worker sleeps these seconds before it translates a single text.
        micro_batch_window=_env_float(
            "MICRO_BATCH_WINDOW", 0.01, minimum=0.0, maximum=1.0
        ),
        micro_batch_max_wait=_env_float(
            "MICRO_BATCH_MAX_WAIT", 0.1, minimum=0.0, maximum=5.0
        ),
        task_max_attempts=_env_int("TASK_MAX_ATTEMPTS", 3, minimum=1),
        test_item_delay=_env_float("TEST_ITEM_DELAY", 0.0, minimum=0.0),
        test_raise_marker=os.environ.get("TEST_RAISE_MARKER", "").strip(),
        test_crash_marker=os.environ.get("TEST_CRASH_MARKER", "").strip(),
    )
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.engine not in ENGINES:
        raise ConfigError(
            f"ENGINE={settings.engine!r} is not supported. Use ctranslate2 or "
            "transformers."
        )
    if settings.device not in {"auto", "cpu", "cuda"}:
        raise ConfigError(
            f"DEVICE={settings.device!r} is not valid. Use auto, cpu or cuda."
        )
    if settings.precision not in PRECISIONS:
        raise ConfigError(
            f"PRECISION={settings.precision!r} is not valid. Use auto, fp32, fp16, "
            "int8 or int8_fp16."
        )
    if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"LOG_LEVEL={settings.log_level!r} is not valid. Use DEBUG, INFO, "
            "WARNING, ERROR or CRITICAL."
        )
    if settings.task_soft_time_limit >= settings.task_time_limit:
        raise ConfigError(
            f"TASK_SOFT_TIME_LIMIT={settings.task_soft_time_limit} must be below "
            f"TASK_TIME_LIMIT={settings.task_time_limit}, so a task gets the "
            "soft signal before it is killed."
        )
    if settings.visibility_timeout <= settings.task_time_limit:
        raise ConfigError(
            f"VISIBILITY_TIMEOUT={settings.visibility_timeout} must be longer "
            f"than TASK_TIME_LIMIT={settings.task_time_limit}; otherwise Redis "
            "redelivers a task that is still running and it runs twice."
        )


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read on first use."""
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings so the next call reads the environment again."""
    get_settings.cache_clear()
