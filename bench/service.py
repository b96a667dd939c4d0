"""The whole stack, started with the service scripts, measured as a client.

``Stack`` runs ``./start_services.sh`` with a private ``RUN_DIR``, folders and
free ports on 127.0.0.1 (the environment ``tests.helpers.stack_env`` builds),
and always runs ``./stop_services.sh`` on exit, also after an error or
Ctrl-C. The functions below time the CSV command and the REST API against it
and read the memory of every process of the stack.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.memory import MemoryUsage, command_line, maps_library, read_memory
from core.config import PROJECT_ROOT
from tests.helpers import (
    STACK_START_TIMEOUT,
    STACK_STOP_TIMEOUT,
    process_tree,
    run_script,
    stack_env,
)

logger = logging.getLogger(__name__)

SOURCE_LANG = "en"
TARGET_LANG = "de"
MODEL_NAME = "opus-mt-en-de"
HTTP_TIMEOUT = 900.0
CLI_TIMEOUT = 7200.0
WARMUP_TIMEOUT = 900.0
MEMORY_SAMPLE_SECONDS = 0.25
# Settings the benchmark gives every stack and ceiling on top of the product
# defaults; bench/run.py sets TORCH_THREADS from --torch-threads.
# SYNC_TIMEOUT is raised so that a slow miss on a loaded machine is measured
# instead of ending in a 504.
BENCH_SETTINGS = {
    "BENCH_FORCED_OUTPUT_TOKENS": "true",
    "TORCH_THREADS": "0",
    "SYNC_TIMEOUT": "600",
    "TRANSFORMERS_OFFLINE": "1",
}
SERVICES = ("redis", "worker", "interactive", "api", "flower", "streamlit")
# The services that run Celery workers, which load the model.
WORKER_SERVICES = ("worker", "interactive")

# No proxy from the environment: every request goes to 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Stack:
    """One running stack; use it as a context manager."""

    def __init__(
        self, name: str, base: Path, model_dir: Path, settings: dict[str, str]
    ) -> None:
        self.name = name
        self.base = base
        self.model_dir = model_dir
        self.settings = settings
        self.env: dict[str, str] = {}
        self._started = False

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    def __enter__(self) -> Stack:
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        self.env = stack_env(self.base, self.model_dir, **self.settings)
        self._started = True
        logger.info("Starting stack %s in %s", self.name, self.base)
        try:
            result = run_script("start_services.sh", self.env, STACK_START_TIMEOUT)
            if result.returncode != 0:
                raise RuntimeError(
                    f"start_services.sh failed for stack {self.name} with exit "
                    f"status {result.returncode}:\n{result.stdout}{result.stderr}"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Run ``./stop_services.sh``; a second Ctrl-C cannot interrupt it."""
        if not self._started:
            return
        self._started = False
        logger.info("Stopping stack %s", self.name)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Its own session keeps the terminal's Ctrl-C away from the script.
            result = subprocess.run(
                ["./stop_services.sh"],
                cwd=PROJECT_ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=STACK_STOP_TIMEOUT,
                start_new_session=True,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        if result.returncode != 0:
            logger.error(
                "stop_services.sh failed for stack %s: %s%s",
                self.name,
                result.stdout,
                result.stderr,
            )

    def service_pids(self) -> dict[str, int]:
        """Return the main pid of each service the start script recorded."""
        pids = {}
        for name in SERVICES:
            path = self.run_dir / f"{name}.pid"
            if path.is_file() and path.read_text().strip().isdigit():
                pids[name] = int(path.read_text().strip())
        return pids


@dataclass
class Response:
    """One HTTP exchange: status, decoded JSON body and wall time."""

    status: int
    body: dict[str, Any]
    seconds: float


def request_json(method: str, url: str, body: dict[str, Any] | None = None) -> Response:
    """Send one request and return its status, JSON body and duration."""
    data = json.dumps(body).encode() if body is not None else None
    # The URLs are built from the stack's own http://127.0.0.1 address.
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    started = time.perf_counter()
    try:
        with _opener.open(request, timeout=HTTP_TIMEOUT) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    seconds = time.perf_counter() - started
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw[:200].decode(errors="replace")}
    return Response(status, parsed, seconds)


def translate(stack: Stack, text: str) -> Response:
    """POST one text to ``/api/translate``; raise unless it succeeds."""
    response = request_json(
        "POST",
        f"{stack.api}/api/translate",
        {"text": text, "source_lang": SOURCE_LANG, "target_lang": TARGET_LANG},
    )
    _check(response, "/api/translate")
    return response


def translate_batch(stack: Stack, texts: Sequence[str]) -> Response:
    """POST texts to ``/api/batch`` synchronously; raise unless it succeeds."""
    response = request_json(
        "POST",
        f"{stack.api}/api/batch",
        {"texts": list(texts), "source_lang": SOURCE_LANG, "target_lang": TARGET_LANG},
    )
    _check(response, "/api/batch")
    return response


def _check(response: Response, endpoint: str) -> None:
    if response.status != 200:
        raise RuntimeError(
            f"{endpoint} returned HTTP {response.status}: {response.body}"
        )


def warm_workers(stack: Stack, processes: int, texts: Iterator[str]) -> None:
    """Load the model in ``processes`` worker processes before any timing.

    Sends uncached texts, as many at once as there are processes, until the
    workers report the model loaded in that many processes.
    """

    def loaded_in() -> int:
        stats = request_json("GET", f"{stack.api}/api/cache/stats").body
        per_process = stats.get("models_loaded") or {}
        return sum(MODEL_NAME in names for names in per_process.values())

    deadline = time.monotonic() + WARMUP_TIMEOUT
    with ThreadPoolExecutor(max_workers=processes) as pool:
        while loaded_in() < processes:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"The model was not loaded in {processes} worker processes "
                    f"of stack {stack.name} after {WARMUP_TIMEOUT:.0f} s."
                )
            batch = [next(texts) for _ in range(processes * 2)]
            list(pool.map(lambda text: translate(stack, text), batch))


@dataclass
class CliRun:
    """The CSV command run to completion, with the peak memory it reached."""

    seconds: float
    peak: MemoryUsage | None
    imports_torch: bool | None
    output: str


def write_csv(path: Path, texts: Sequence[str]) -> None:
    """Write texts as a CSV file with an ``id`` and a ``text`` column."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for index, text in enumerate(texts, start=1):
            writer.writerow([index, text])


def cli_command(input_csv: Path, output_csv: Path, *extra: str) -> list[str]:
    """Return the CSV command line the benchmark runs."""
    return [
        sys.executable,
        "app_batch_celery.py",
        str(input_csv),
        str(output_csv),
        "--text-column",
        "text",
        "--source-lang",
        SOURCE_LANG,
        "--target-lang",
        TARGET_LANG,
        "--no-progress",
        *extra,
    ]


def run_cli(stack: Stack, input_csv: Path, output_csv: Path, chunk_size: int) -> CliRun:
    """Run the CSV command and sample its memory until it exits."""
    command = cli_command(input_csv, output_csv, "--chunk-size", str(chunk_size))
    log = output_csv.with_suffix(".log")
    peak: MemoryUsage | None = None
    imports_torch: bool | None = None
    started = time.perf_counter()
    with _process(command, stack.env, log) as process:
        while process.poll() is None:
            sample = read_memory(process.pid)
            if sample is not None:
                peak = sample if peak is None else peak.peak(sample)
                mapped = maps_library(process.pid)
                if mapped is not None:
                    imports_torch = bool(imports_torch) or mapped
            if time.perf_counter() - started > CLI_TIMEOUT:
                raise TimeoutError(
                    f"The CSV command ran over {CLI_TIMEOUT:.0f} s: {command}"
                )
            time.sleep(MEMORY_SAMPLE_SECONDS)
        seconds = time.perf_counter() - started
    output = log.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(
            f"The CSV command exited with status {process.returncode}:\n{output}"
        )
    return CliRun(seconds, peak, imports_torch, output)


def submit_csv_async(
    stack: Stack, input_csv: Path, output_csv: Path, *extra: str
) -> str:
    """Queue a CSV job with ``--async --json`` and return its job id."""
    command = cli_command(input_csv, output_csv, "--async", "--json", *extra)
    log = output_csv.with_suffix(".log")
    with _process(command, stack.env, log) as process:
        process.wait(timeout=CLI_TIMEOUT)
    output = log.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"The CSV command --async failed:\n{output}")
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return str(json.loads(line)["task_id"])
    raise RuntimeError(f"The CSV command --async printed no job id:\n{output}")


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[Any]:
    """Run a command with its output in ``log``; kill it if still running."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def clear_cache(stack: Stack) -> None:
    """Clear every cache tier of the stack through the API."""
    _check(request_json("POST", f"{stack.api}/api/cache/clear"), "/api/cache/clear")


def cancel_job(stack: Stack, job_id: str) -> None:
    """Cancel a job through the API; a job that already finished is fine."""
    response = request_json("DELETE", f"{stack.api}/api/task/{job_id}")
    if response.status not in (200, 409):
        logger.warning("Cancelling job %s returned %s", job_id, response.status)


def time_requests(
    call: Callable[[str], Response], texts: Sequence[str], clients: int
) -> tuple[list[float], float]:
    """Send one request per text from ``clients`` threads.

    Returns the latency of each request and the wall time of them all.
    """
    started = time.perf_counter()
    if clients == 1:
        latencies = [call(text).seconds for text in texts]
    else:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            latencies = [response.seconds for response in pool.map(call, texts)]
    return latencies, time.perf_counter() - started


@dataclass
class ProcessMemory:
    """The memory of one process of the stack."""

    service: str
    role: str
    pid: int
    usage: MemoryUsage
    imports_torch: bool | None


def stack_memory(stack: Stack) -> list[ProcessMemory]:
    """Read the memory of every process of every service of the stack."""
    rows: list[ProcessMemory] = []
    for service, main_pid in stack.service_pids().items():
        for index, pid in enumerate(process_tree(main_pid)):
            usage = read_memory(pid)
            if usage is None:
                continue
            role = _role(service, index, command_line(pid))
            rows.append(ProcessMemory(service, role, pid, usage, maps_library(pid)))
    return rows


def _role(service: str, index: int, command: str) -> str:
    if service == "api":
        return "gunicorn master" if index == 0 else "gunicorn worker"
    if service in WORKER_SERVICES:
        return "celery parent" if index == 0 else "celery child"
    return service if index == 0 else f"{service} child"
