"""Fixtures shared by every test tier.

Integration fixtures start real processes on 127.0.0.1: one Redis server and
one Celery worker per test session, loading tiny random-weight Marian
checkpoints built by ``tests/make_tiny_model.py``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import broker, cache, models, store
from core.config import PROJECT_ROOT, reset_settings
from tests.helpers import (
    LOCALHOST,
    SERVICE_ENV_VARS,
    LiveApi,
    RedisServer,
    free_port,
    start_worker,
    wait_for_http,
)
from tests.make_tiny_model import build_tiny_model

TINY_PAIRS = (("en", "es"), ("es", "en"), ("en", "de"), ("de", "en"), ("en", "fr"))
# A multi-target checkpoint: en-it and en-pt are served only through it.
TINY_MULTI_TARGET = ("en", "ROMANCE", ("es", "fr", "it", "pt"))
API_START_TIMEOUT = 90.0
API_STOP_TIMEOUT = 20.0
WORKER_NAME = "testworker@127.0.0.1"


def _reset_process_state() -> None:
    """Forget every cached setting and client so the environment is reread."""
    reset_settings()
    cache.reset_cache()
    store.reset_client()
    broker.reset_app()
    if "celery_config" in sys.modules:
        importlib.reload(sys.modules["celery_config"])
        # The reload read the settings; forget them so a test can still set
        # variables after this reset.
        reset_settings()


@pytest.fixture(scope="session", autouse=True)
def ct2_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ``CT2_CACHE_DIR`` for the session, inherited by every started process.

    Each checkpoint is then converted for CTranslate2 once per session, and no
    converted model is written under the project's ``var/`` folder.
    """
    folder = tmp_path_factory.mktemp("ct2-models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CT2_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR with tiny random-weight checkpoints: TINY_PAIRS and ROMANCE."""
    model_dir = tmp_path_factory.mktemp("models")
    for source, target in TINY_PAIRS:
        build_tiny_model(model_dir, source, target)
    source, group, targets = TINY_MULTI_TARGET
    build_tiny_model(model_dir, source, group, target_tokens=targets)
    return model_dir


@pytest.fixture
def clean_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pytest.MonkeyPatch]:
    """Remove every service setting from the environment for one test.

    ``CACHE_DIR`` points at an empty folder of the test's own, so no test reads
    the disk tier that a stack started in this checkout left in var/cache.
    """
    for name in SERVICE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    _reset_process_state()
    yield monkeypatch
    monkeypatch.undo()
    _reset_process_state()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis server process for the whole session."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def stack_env(
    redis_server: RedisServer,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Environment variables shared by the test process and its workers."""
    worker_cache = tmp_path_factory.mktemp("worker-cache")
    env = {name: value for name, value in os.environ.items()}
    for name in SERVICE_ENV_VARS:
        env.pop(name, None)
    env.update(
        {
            "REDIS_URL": redis_server.url,
            "MODEL_DIR": str(tiny_model_dir),
            "CACHE_DIR": str(worker_cache),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TORCH_THREADS": "1",
            "NUM_BEAMS": "2",
            "SYNC_TIMEOUT": "60",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return env


@pytest.fixture(scope="session")
def celery_worker(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery -A tasks worker`` process consuming every queue."""
    log_path = tmp_path_factory.mktemp("worker-log") / "worker.log"
    with start_worker(stack_env, WORKER_NAME, log_path) as process:
        yield process


@pytest.fixture
def service_env(
    stack_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[dict[str, str]]:
    """Point this test process at the session's Redis, with its own disk tier."""
    for name in SERVICE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ("REDIS_URL", "MODEL_DIR", "HF_HUB_OFFLINE", "NUM_BEAMS"):
        monkeypatch.setenv(name, stack_env[name])
    monkeypatch.setenv("SYNC_TIMEOUT", stack_env["SYNC_TIMEOUT"])
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "front-cache"))
    _reset_process_state()
    yield dict(stack_env, CACHE_DIR=str(tmp_path / "front-cache"))
    cache.reset_cache()
    models.unload_all()
    _reset_process_state()


@pytest.fixture
def live_stack(
    celery_worker: subprocess.Popen[bytes], service_env: dict[str, str]
) -> dict[str, str]:
    """A running worker plus this process configured as a front end."""
    return service_env


@pytest.fixture(scope="session")
def gunicorn_api(
    celery_worker: subprocess.Popen[bytes],
    stack_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveApi]:
    """``gunicorn api_server:app`` in front of the session's Redis and worker.

    It runs from the project root, so gunicorn reads ``gunicorn.conf.py`` as
    it does under ``start_services.sh``, and keeps every limit at its default.
    """
    folder = tmp_path_factory.mktemp("gunicorn")
    log_path = folder / "api.log"
    port = free_port()
    env = dict(stack_env, CACHE_DIR=str(folder / "cache"))
    timeout = int(float(env["SYNC_TIMEOUT"])) + 30
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"{LOCALHOST}:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--timeout",
                str(timeout),
                "api_server:app",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = LiveApi(f"http://{LOCALHOST}:{port}", port, log_path)
    try:
        try:
            wait_for_http(f"{api.url}/health", API_START_TIMEOUT)
        except TimeoutError as error:
            log = log_path.read_text(errors="replace")
            raise RuntimeError(f"{error} gunicorn log:\n{log}") from None
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=API_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
