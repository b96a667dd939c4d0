"""Checks of the container and service files, which cannot run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from core.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
UNITS = sorted((PROJECT_ROOT / "deploy" / "systemd").glob("*.service"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_every_service(compose: dict) -> None:
    assert set(compose["services"]) == {
        "redis",
        "worker",
        "worker-interactive",
        "api",
        "ui",
        "flower",
    }


def test_compose_ports_bind_loopback(compose: dict) -> None:
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)


def test_compose_services_share_redis(compose: dict) -> None:
    for name in ("worker", "worker-interactive", "api", "ui", "flower"):
        environment = compose["services"][name]["environment"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0", name
        assert "redis" in compose["services"][name]["depends_on"]


def test_compose_redis_never_evicts_queues(compose: dict) -> None:
    script = compose["services"]["redis"]["entrypoint"][-1]
    assert "--maxmemory-policy volatile-lru" in script
    assert "--appendonly yes" in script


def test_compose_redis_password_stays_off_arguments(compose: dict) -> None:
    redis = compose["services"]["redis"]
    script = redis["entrypoint"][-1]
    # The password reaches redis-server on standard input, not as an argument.
    assert "| exec redis-server - " in script
    assert "--requirepass" not in script
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    for name in ("worker", "worker-interactive", "api", "ui", "flower"):
        environment = compose["services"][name]["environment"]
        assert environment["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?"), name


def test_compose_commands_use_project_modules(compose: dict) -> None:
    services = compose["services"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert "api_server:app" in services["api"]["command"]
    assert "app_streamlit.py" in services["ui"]["command"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "tasks", "flower"]


def test_dockerfile_default_command_is_api() -> None:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "api_server:app" in text
    assert re.search(r"^USER mt$", text, re.MULTILINE)


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_systemd_units_are_complete(unit: Path) -> None:
    text = unit.read_text()
    for section in ("[Unit]", "[Service]", "[Install]"):
        assert section in text
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE)
    assert exec_start is not None
    assert exec_start.group(1).startswith("/opt/mt-service/.venv/bin/")
    assert "EnvironmentFile=/etc/mt-service.env" in text


def test_units_shipped() -> None:
    assert [unit.name for unit in UNITS] == [
        "mt-api.service",
        "mt-flower.service",
        "mt-ui.service",
        "mt-worker-interactive.service",
        "mt-worker.service",
    ]


def test_workers_split_by_queue(compose: dict) -> None:
    services = compose["services"]
    bulk = services["worker"]["command"]
    interactive = services["worker-interactive"]["command"]
    assert bulk[bulk.index("-Q") + 1] == "bulk,maintenance"
    assert interactive[interactive.index("-Q") + 1] == "interactive"
    units = {unit.name: unit.read_text() for unit in UNITS}
    assert "-Q bulk,maintenance" in units["mt-worker.service"]
    assert "-Q interactive " in units["mt-worker-interactive.service"]
