"""End to end: the stack started by the service scripts, used as a client would.

One stack per module: ``./start_services.sh`` on free ports with its own Redis,
tiny Marian checkpoints and temporary folders; the API over HTTP; the CSV CLI
as a subprocess; then ``./stop_services.sh`` and a check that no process of
the stack is left.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import PROJECT_ROOT
from tests.helpers import (
    STACK_START_TIMEOUT,
    STACK_STOP_TIMEOUT,
    pids_alive,
    process_tree,
    run_script,
    stack_env,
)

pytestmark = pytest.mark.e2e

CSV_FILE = PROJECT_ROOT / "tests" / "data" / "products_en_bom.csv"


def http_json(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 90
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stack_pids(run_dir: Path) -> list[int]:
    """Every process of the stack: the recorded pids and their descendants."""
    pids: list[int] = []
    for pid_file in run_dir.glob("*.pid"):
        text = pid_file.read_text().strip()
        if text.isdigit():
            pids.append(int(text))
            pids.extend(process_tree(int(text)))
    return sorted(set(pids))


@pytest.fixture(scope="module")
def stack(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("stack")
    env = stack_env(base, tiny_model_dir, NUM_BEAMS="2")
    started = run_script("start_services.sh", env, STACK_START_TIMEOUT)
    run_dir = base / "run"
    info = {
        "env": env,
        "api": f"http://127.0.0.1:{env['PORT']}",
        "run_dir": run_dir,
        "start": started,
    }
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield info
    finally:
        pids = stack_pids(run_dir)
        info["stop"] = run_script("stop_services.sh", env, STACK_STOP_TIMEOUT)
        info["pids_before_stop"] = pids


def test_start_prints_urls_and_logs(stack: dict[str, Any]) -> None:
    output = stack["start"].stdout
    assert stack["api"] in output
    assert str(stack["env"]["LOG_DIR"]) in output


def test_health_ok(stack: dict[str, Any]) -> None:
    status, body = http_json("GET", f"{stack['api']}/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["workers"] == 2, "a bulk worker and an interactive worker"
    queues = sorted(tuple(worker["queues"]) for worker in body["worker_details"])
    assert queues == [("bulk", "maintenance"), ("interactive",)]


def test_redis_never_evicts_queued_tasks(stack: dict[str, Any]) -> None:
    import redis

    password = Path(stack["env"]["REDIS_PASSWORD_FILE"]).read_text().strip()
    client = redis.Redis.from_url(stack["env"]["REDIS_URL"], password=password)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
    assert int(client.config_get("maxmemory")["maxmemory"]) > 0
    assert client.config_get("bind")["bind"].startswith("127.0.0.1")


def test_translate_then_cached(stack: dict[str, Any]) -> None:
    request = {
        "text": "The weather is nice today.",
        "source_lang": "en",
        "target_lang": "es",
    }
    status, first = http_json("POST", f"{stack['api']}/api/translate", request)
    assert status == 200, first
    assert first["success"] is True
    assert first["translation"]
    assert first["cached"] is False
    status, second = http_json("POST", f"{stack['api']}/api/translate", request)
    assert status == 200
    assert second["cached"] is True
    assert second["translation"] == first["translation"]


def test_bad_request_is_json(stack: dict[str, Any]) -> None:
    status, body = http_json(
        "POST", f"{stack['api']}/api/translate", {"text": "x", "source_lang": "en"}
    )
    assert status == 400
    assert body == {
        "success": False,
        "error": "Field 'target_lang' is required.",
        "code": "invalid_request",
    }


def raw_request(stack: dict[str, Any], payload: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes to the API and return the status and JSON body."""
    import socket

    port = int(stack["env"]["PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(payload)
        received = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def chunked_request(chunks: list[bytes]) -> bytes:
    head = (
        b"POST /api/translate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    return head + b"".join(chunks)


def test_chunked_body_over_limit_is_413(stack: dict[str, Any]) -> None:
    text = "a" * 3_000_000
    body = json.dumps({"text": text, "source_lang": "en", "target_lang": "es"})
    data = body.encode()
    pieces = [
        b"%x\r\n%s\r\n" % (len(data[i : i + 65536]), data[i : i + 65536])
        for i in range(0, len(data), 65536)
    ]
    status, answer = raw_request(stack, chunked_request([*pieces, b"0\r\n\r\n"]))
    assert status == 413
    assert answer["code"] == "request_too_large"


def test_bad_chunk_size_is_400(stack: dict[str, Any]) -> None:
    status, answer = raw_request(stack, chunked_request([b"zz\r\n{}\r\n0\r\n\r\n"]))
    assert status == 400
    assert answer["success"] is False


def test_overlong_request_line_is_json(stack: dict[str, Any]) -> None:
    """gunicorn, started by start_services.sh, reads gunicorn.conf.py."""
    path = "/api/task/" + "a" * 5000
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    status, answer = raw_request(stack, request)
    assert status == 414
    assert answer["success"] is False
    assert answer["code"] == "uri_too_long"


def read_rows(path: Path, encoding: str) -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_cli_translates_every_row(stack: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    result = subprocess.run(
        [
            sys.executable,
            "app_batch_celery.py",
            str(CSV_FILE),
            str(output),
            "--text-column",
            "text",
            "--source-lang",
            "en",
            "--target-lang",
            "es",
        ],
        cwd=PROJECT_ROOT,
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "220/220" in result.stderr
    assert "row/s" in result.stderr

    source_rows = read_rows(CSV_FILE, "utf-8-sig")
    output_rows = read_rows(output, "utf-8-sig")
    assert len(source_rows) >= 200
    assert len(output_rows) == len(source_rows)
    for source, translated in zip(source_rows, output_rows, strict=True):
        for column, value in source.items():
            assert translated[column] == value
        if source["text"].strip():
            assert translated["text_es"].strip()
        else:
            assert translated["text_es"] == source["text"]


def flower_get(stack: dict[str, Any], path: str, auth: str | None) -> tuple[int, bytes]:
    import base64

    url = f"http://127.0.0.1:{stack['env']['FLOWER_PORT']}{path}"
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_flower_needs_password_and_hides_text(stack: dict[str, Any]) -> None:
    credentials_file = Path(stack["env"]["RUN_DIR"]).parent / "flower-credentials"
    assert credentials_file.stat().st_mode & 0o077 == 0
    credentials = credentials_file.read_text().strip()
    assert credentials.startswith("admin:")
    assert credentials.split(":", 1)[1] not in stack["start"].stdout

    assert flower_get(stack, "/api/workers", None)[0] == 401
    assert flower_get(stack, "/api/workers", "admin:wrong")[0] == 401

    secret = f"Confidential board minutes {time.time_ns()}"
    status, item = http_json(
        "POST",
        f"{stack['api']}/api/translate",
        {"text": secret, "source_lang": "en", "target_lang": "es"},
    )
    assert status == 200
    deadline = time.monotonic() + 30
    tasks: dict[str, Any] = {}
    while time.monotonic() < deadline and not tasks:
        status, body = flower_get(stack, "/api/tasks", credentials)
        assert status == 200
        tasks = json.loads(body)
        time.sleep(0.5)
    assert tasks, "Flower saw no task"
    listing = json.dumps(tasks)
    assert secret not in listing
    assert item["translation"] not in listing
    assert "(withheld)" in listing


def test_stop_leaves_no_process(stack: dict[str, Any]) -> None:
    """Runs last in this module: stop the stack and look for survivors."""
    pids = stack_pids(stack["run_dir"])
    assert len(pids) >= 4
    stopped = run_script("stop_services.sh", stack["env"], STACK_STOP_TIMEOUT)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 10
    while pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids_alive(pids) == []
    assert list(stack["run_dir"].glob("*.pid")) == []

    again = run_script("stop_services.sh", stack["env"], STACK_STOP_TIMEOUT)
    assert again.returncode == 0
