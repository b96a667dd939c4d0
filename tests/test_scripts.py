"""Tests of the service scripts and of the process helpers they rely on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import (
    RedisServer,
    pids_alive,
    process_group,
    process_tree,
    run_script,
    stack_env,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
STOP_SCRIPT = ROOT / "stop_services.sh"
SCRIPTS = ("start_services.sh", "stop_services.sh", "run_tests.sh", ".ci/run")
SCRIPT_TIMEOUT = 60.0
PROCESS_TIMEOUT = 5.0

SpawnGroup = Callable[[str], subprocess.Popen[bytes]]


def run_stop(run_dir: Path, stop_timeout: int = 5) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUN_DIR": str(run_dir), "STOP_TIMEOUT": str(stop_timeout)}
    return subprocess.run(
        [str(STOP_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


@pytest.fixture
def spawn_group() -> Iterator[SpawnGroup]:
    """Start bash scripts as process group leaders, and KILL what is left after."""
    leaders: list[subprocess.Popen[bytes]] = []

    def spawn(script: str) -> subprocess.Popen[bytes]:
        leader = subprocess.Popen(["bash", "-c", script], start_new_session=True)
        leaders.append(leader)
        return leader

    yield spawn

    for leader in leaders:
        if process_group(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait(PROCESS_TIMEOUT)


@pytest.mark.unit
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script: str) -> None:
    path = ROOT / script
    result = subprocess.run(
        ["bash", "-n", str(path)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert os.access(path, os.X_OK), f"{script} is not executable"


@pytest.mark.unit
def test_stop_without_pid_files_twice(tmp_path: Path) -> None:
    for _ in range(2):
        result = run_stop(tmp_path)

        assert result.returncode == 0, result.stderr
        assert "Nothing is running" in result.stdout


@pytest.mark.unit
def test_stop_kills_group_with_child(tmp_path: Path, spawn_group: SpawnGroup) -> None:
    leader = spawn_group("sleep 1000 & exec sleep 1000")
    wait_for(lambda: len(process_tree(leader.pid)) == 2, PROCESS_TIMEOUT)
    tree = process_tree(leader.pid)
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(f"{leader.pid}\n")

    started = time.monotonic()
    result = run_stop(tmp_path, stop_timeout=10)

    assert result.returncode == 0, result.stderr
    assert "worker: stopped" in result.stdout
    assert "KILL" not in result.stdout
    assert time.monotonic() - started < 10
    assert pids_alive(tree) == []
    assert process_group(leader.pid) == []
    assert not pid_file.exists()


@pytest.mark.unit
def test_stop_kills_group_ignoring_term(
    tmp_path: Path, spawn_group: SpawnGroup
) -> None:
    leader = spawn_group("trap '' TERM; while :; do sleep 0.1; done")
    pid_file = tmp_path / "api.pid"
    pid_file.write_text(f"{leader.pid}\n")

    started = time.monotonic()
    result = run_stop(tmp_path, stop_timeout=1)

    assert result.returncode == 0, result.stderr
    assert "api: still running after 1 s; sending KILL" in result.stdout
    assert "api: stopped" in result.stdout
    assert time.monotonic() - started >= 1
    assert process_group(leader.pid) == []
    assert not pid_file.exists()


@pytest.mark.unit
def test_stop_goes_in_reverse_start_order(
    tmp_path: Path, spawn_group: SpawnGroup
) -> None:
    order = ["streamlit", "flower", "api", "interactive", "worker", "redis"]
    leaders = {}
    for name in order:
        leaders[name] = spawn_group("exec sleep 1000")
        (tmp_path / f"{name}.pid").write_text(f"{leaders[name].pid}\n")

    result = run_stop(tmp_path)

    assert result.returncode == 0, result.stderr
    stopped = [
        line.removesuffix(": stopped")
        for line in result.stdout.splitlines()
        if line.endswith(": stopped")
    ]
    assert stopped == order
    for name, leader in leaders.items():
        assert process_group(leader.pid) == [], f"{name} is still running"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
@pytest.mark.parametrize("content", ["", "not-a-pid", "0", "1", "dead"])
def test_stop_removes_stale_pid_file(tmp_path: Path, content: str) -> None:
    if content == "dead":
        finished = subprocess.Popen(["true"])
        finished.wait(PROCESS_TIMEOUT)
        content = str(finished.pid)
    pid_file = tmp_path / "flower.pid"
    pid_file.write_text(content)

    result = run_stop(tmp_path)

    assert result.returncode == 0, result.stderr
    assert "flower: not running" in result.stdout
    assert not pid_file.exists()


@pytest.mark.integration
def test_redis_server_responds_to_ping() -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

        assert client.ping()
        assert client.config_get("maxmemory-policy") == {
            "maxmemory-policy": "volatile-lru"
        }
        client.close()


@pytest.mark.integration
def test_redis_server_restart_keeps_port() -> None:
    with RedisServer() as server:
        port, old_pid = server.port, server.pid
        client = redis.Redis.from_url(server.url)
        client.set("key", "value")

        server.restart()

        assert server.port == port
        assert server.pid != old_pid
        assert pids_alive([old_pid]) == []
        assert client.ping()
        # The server keeps no data on disk, so a restart starts empty.
        assert client.get("key") is None
        client.close()


@pytest.mark.integration
def test_redis_server_stop_leaves_no_process() -> None:
    with RedisServer() as server:
        tree = process_tree(server.pid)
        assert tree

        server.stop()

        assert pids_alive(tree) == []
        assert not server.ping()


@pytest.mark.integration
def test_redis_server_requires_password() -> None:
    with RedisServer(password="s3cret") as server:
        unauthenticated = redis.Redis(host="127.0.0.1", port=server.port)

        authenticated = redis.Redis.from_url(server.url)

        with pytest.raises(redis.AuthenticationError):
            unauthenticated.ping()
        assert authenticated.ping()
        unauthenticated.close()
        authenticated.close()


@pytest.mark.integration
@pytest.mark.parametrize("setting", ["PORT", "FLOWER_PORT", "STREAMLIT_PORT"])
def test_start_refuses_port_in_use(tmp_path: Path, setting: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = stack_env(tmp_path, tmp_path / "models", **{setting: str(port)})
        result = run_script("start_services.sh", env, SCRIPT_TIMEOUT * 4)

    assert result.returncode != 0
    assert f"{setting}={port} is already in use" in result.stderr
    # It failed before starting anything.
    assert list((tmp_path / "run").glob("*.pid")) == []


@pytest.mark.integration
def test_start_refuses_invalid_setting(tmp_path: Path) -> None:
    env = stack_env(tmp_path, tmp_path / "models", MICRO_BATCH_MAX_WAIT="-1")
    result = run_script("start_services.sh", env, SCRIPT_TIMEOUT * 4)

    assert result.returncode == 1
    assert "invalid setting: MICRO_BATCH_MAX_WAIT='-1' is below" in result.stderr
    assert "Traceback" not in result.stderr
    # It failed before starting anything.
    assert list((tmp_path / "run").glob("*.pid")) == []
