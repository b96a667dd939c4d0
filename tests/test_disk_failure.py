"""A failing disk tier: the API under gunicorn keeps serving from the others.

The API runs as a real gunicorn process next to the session's Redis and
Celery worker. Its disk tier fails in two ways: every file it writes is
limited to one byte (``RLIMIT_FSIZE``, so writes fail with EFBIG as they
would with ENOSPC), or ``CACHE_DIR`` is a regular file, so the tier cannot
be created. Requests must still succeed, and ``/health`` must name the tier.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from core.config import PROJECT_ROOT
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.chaos

API_START_TIMEOUT = 60.0
HTTP_TIMEOUT = 90.0
PAIR = {"source_lang": "en", "target_lang": "es"}


def limit_file_size() -> None:
    """Run in the API process before exec: writes beyond one byte fail."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))


def existing_disk_tier(folder: Path) -> Callable[[], None] | None:
    diskcache.Cache(str(folder)).close()
    return limit_file_size


def cache_dir_is_a_file(folder: Path) -> Callable[[], None] | None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    return None


def request(
    base: str, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    message = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        message.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(message, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(params=[existing_disk_tier, cache_dir_is_a_file])
def broken_disk_api(
    request: pytest.FixtureRequest,
    celery_worker: subprocess.Popen[bytes],
    stack_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[str]:
    """The API under gunicorn with a disk tier that fails; yields its URL."""
    cache_dir = tmp_path / "api-cache"
    preexec = request.param(cache_dir)
    port = free_port()
    env = {**stack_env, "CACHE_DIR": str(cache_dir), "REDIS_RETRY_INTERVAL": "0.5"}
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "2",
                "api_server:app",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: process.poll() is not None or _answers(base),
            timeout=API_START_TIMEOUT,
            description="the API to answer /health",
        )
        assert process.poll() is None, log_path.read_text()
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text()


def _answers(base: str) -> bool:
    try:
        request(base, "GET", "/health")
    except OSError:
        return False
    return True


def test_failing_disk_tier_degrades(broken_disk_api: str) -> None:
    body = {"text": "The disk is full today.", **PAIR}
    first_status, first = request(broken_disk_api, "POST", "/api/translate", body)
    second_status, second = request(broken_disk_api, "POST", "/api/translate", body)
    batch_status, batch = request(
        broken_disk_api,
        "POST",
        "/api/batch",
        {"texts": ["The disk is full today.", "Another line."], **PAIR},
    )
    stats_status, stats = request(broken_disk_api, "GET", "/api/cache/stats")
    health_status, health = request(broken_disk_api, "GET", "/health")

    assert first_status == 200, first
    assert second_status == 200, second
    assert second["cached"] is True
    assert second["cache_tier"] in {"memory", "redis"}
    assert second["translation"] == first["translation"]
    assert batch_status == 200, batch
    assert stats_status == 200, stats
    assert stats["cache"]["disk_ok"] is False
    assert health_status == 200, health
    assert health["status"] == "degraded"
    assert [entry["tier"] for entry in health["degraded"]] == ["disk"]
    assert "failed" in health["degraded"][0]["error"]
    # The error names what failed, not where the files are.
    assert "api-cache" not in health["degraded"][0]["error"]
