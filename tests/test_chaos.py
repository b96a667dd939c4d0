"""Chaos tests: killed workers, poison items, redelivery, Redis restarts, pickle.

Each test runs real processes on 127.0.0.1. The module has one Redis server
with an append-only file, so a restart keeps its data unless a test wipes it.
The tests start and kill ``celery -A tasks worker`` processes, run the CSV
command as a subprocess and, for the outage test, the API under gunicorn. The
workers get the test-only fault settings: a delay per item that opens a window
to kill them mid-batch, and marker texts that make a translation raise or kill
its process. A short visibility timeout bounds the redelivery of a task whose
whole worker was killed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core import dispatch, jobs
from core.broker import send
from core.config import PROJECT_ROOT
from core.options import TranslationOptions
from tests.conftest import _reset_process_state
from tests.helpers import (
    LOCALHOST,
    SERVICE_ENV_VARS,
    RedisServer,
    free_port,
    pids_alive,
    process_tree,
    wait_for,
    wait_for_http,
)

pytestmark = pytest.mark.chaos

# Seconds each item sleeps in the workers, so a chunk of CHUNK_SIZE rows runs
# long enough to be killed mid-batch.
ITEM_DELAY = 0.3
CHUNK_SIZE = 4
MAX_ATTEMPTS = 2
RAISE_MARKER = "RAISE-MARKER-7Q"
CRASH_MARKER = "CRASH-MARKER-7Q"
# The time limit must cover a fresh worker child importing torch and loading
# a model; the visibility timeout exceeds it, as the settings require.
TASK_TIME_LIMIT = 30
VISIBILITY_TIMEOUT = 35
# Seconds a worker may take to start, and a whole CSV job to complete. A
# job that waits longer is hung.
# A killed worker's task is back on the queue at most VISIBILITY_TIMEOUT plus
# one restore sweep (8 s here) after its delivery. The remaining 52 s cover the
# remaining chunks on a busy machine.
REDELIVERY_TIMEOUT = VISIBILITY_TIMEOUT + 60
WORKER_START_TIMEOUT = 90.0
JOB_TIMEOUT = 150.0
TASK_WINDOW_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0
API_START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class Worker:
    """One ``celery -A tasks worker`` process group with one pool child."""

    def __init__(self, env: dict[str, str], name: str, log_path: Path) -> None:
        self.env = env
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, client: redis.Redis) -> Worker:
        client.delete(f"mt:worker:{self.name}")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
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
                    "1",
                    "--hostname",
                    self.name,
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        wait_for(
            lambda: (
                process.poll() is not None
                or bool(client.exists(f"mt:worker:{self.name}"))
            ),
            WORKER_START_TIMEOUT,
            interval=0.2,
            description=f"worker {self.name} to announce itself",
        )
        assert process.poll() is None, f"worker exited at start:\n{self.log()}"
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        return process_tree(self.pid)[1:]

    def kill_all(self) -> None:
        """SIGKILL the parent and its children at once, as a host crash would."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Chaos:
    """The module's Redis, its workers and the environments of every process."""

    def __init__(self, server: RedisServer, env: dict[str, str], base: Path) -> None:
        self.redis = server
        self.env = env
        self.base = base
        self.client = redis.Redis.from_url(server.url)
        self.workers: list[Worker] = []
        self.commands: list[subprocess.Popen[str]] = []

    def worker(self) -> Worker:
        """Return the running worker, starting a new one when none runs."""
        for worker in self.workers:
            if worker.alive():
                return worker
        return self.start_worker()

    def start_worker(self) -> Worker:
        number = len(self.workers) + 1
        env = dict(self.env, CACHE_DIR=str(self.base / f"worker-cache-{number}"))
        worker = Worker(
            env, f"chaos{number}@{LOCALHOST}", self.base / f"worker-{number}.log"
        )
        self.workers.append(worker)
        return worker.start(self.client)

    def cli_env(self) -> dict[str, str]:
        return dict(self.env, CACHE_DIR=str(self.base / "cli-cache"))


@pytest.fixture(scope="module")
def chaos(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chaos]:
    base = tmp_path_factory.mktemp("chaos")
    with RedisServer(appendonly=True) as server:
        env = dict(
            stack_env,
            REDIS_URL=server.url,
            CACHE_DIR=str(base / "test-cache"),
            TEST_ITEM_DELAY=str(ITEM_DELAY),
            TEST_RAISE_MARKER=RAISE_MARKER,
            TEST_CRASH_MARKER=CRASH_MARKER,
            TASK_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
            TASK_TIME_LIMIT=str(TASK_TIME_LIMIT),
            TASK_SOFT_TIME_LIMIT=str(TASK_TIME_LIMIT - 5),
            VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
            CHUNK_SIZE=str(CHUNK_SIZE),
        )
        stack = Chaos(server, env, base)
        # The test process reads jobs and the cache like a front end.
        with pytest.MonkeyPatch.context() as patch:
            for name in SERVICE_ENV_VARS:
                patch.delenv(name, raising=False)
            for name in SERVICE_ENV_VARS:
                if name in env:
                    patch.setenv(name, env[name])
            _reset_process_state()
            try:
                yield stack
            finally:
                for command in stack.commands:
                    if command.poll() is None:
                        command.kill()
                    command.communicate()
                for worker in stack.workers:
                    worker.stop()
        _reset_process_state()


# Input and output files.


def write_input(path: Path, texts: list[str]) -> list[list[str]]:
    rows = [["id", "text"], *([str(index), text] for index, text in enumerate(texts))]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return rows


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def sentences(tag: str, count: int) -> list[str]:
    """Texts no earlier test translated, so every row needs a worker."""
    nonce = uuid.uuid4().hex[:6]
    return [
        f"Row {index} of the {tag} batch {nonce} is ready." for index in range(count)
    ]


def start_cli(chaos: Chaos, source: Path, output: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "app_batch_celery.py",
            str(source),
            str(output),
            "--source-lang",
            "en",
            "--target-lang",
            "es",
            "--chunk-size",
            str(CHUNK_SIZE),
            "--timeout",
            str(JOB_TIMEOUT),
            "--json",
            "--no-progress",
        ],
        cwd=PROJECT_ROOT,
        env=chaos.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    chaos.commands.append(process)
    return process


def finish_cli(
    process: subprocess.Popen[str], timeout: float = JOB_TIMEOUT + 30
) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the CSV command did not finish within {timeout} s:\n{stderr}")
    return process.returncode, stdout, stderr


def assert_rows_once(
    rows: list[list[str]], output: Path, failed: set[int] = frozenset()
) -> None:
    """Check every input row appears once, in order, with its own translation.

    Rows in ``failed`` keep their source text. Every other translation must
    be the one the workers give for that row's text, so a row paired with a
    neighbour's translation fails.
    """
    written = read_rows(output)
    assert written[0] == [*rows[0], "text_es"]
    assert [row[0] for row in written[1:]] == [row[0] for row in rows[1:]]
    assert [row[:2] for row in written[1:]] == rows[1:]

    texts = [row[1] for row in rows[1:]]
    wanted = [index for index in range(len(texts)) if index not in failed]
    expected = dispatch.translate_sync([texts[index] for index in wanted], "en", "es")
    for index, item in zip(wanted, expected, strict=True):
        assert written[index + 1][2] == item["translation"], f"row {index}"
        assert written[index + 1][2] != texts[index], f"row {index} not translated"
    for index in failed:
        assert written[index + 1][2] == texts[index], f"row {index}"


# Watching the job from Redis.


def newest_job(client: redis.Redis, known: set[str]) -> str | None:
    for key in client.scan_iter("mt:job:*"):
        name = key.decode()[len("mt:job:") :]
        if ":" not in name and name not in known:
            return name
    return None


def existing_jobs(client: redis.Redis) -> set[str]:
    names = {key.decode()[len("mt:job:") :] for key in client.scan_iter("mt:job:*")}
    return {name for name in names if ":" not in name}


def task_states(client: redis.Redis, job_id: str) -> list[str | None]:
    """Return the Celery state of each chunk's task, None before it started."""
    states = []
    for raw in client.lrange(f"mt:job:{job_id}:chunks", 0, -1):
        task_id = json.loads(raw)["task_id"]
        meta = client.get(f"celery-task-meta-{task_id}")
        states.append(json.loads(meta)["status"] if meta else None)
    return states


def wait_mid_batch(client: redis.Redis, known: set[str]) -> str:
    """Wait until a job has a finished chunk and a running one; return its id."""
    found: list[str] = []

    def running() -> bool:
        if not found:
            job_id = newest_job(client, known)
            if job_id is None:
                return False
            found.append(job_id)
        states = task_states(client, found[0])
        return "SUCCESS" in states and bool({"STARTED", "PROGRESS"} & set(states))

    wait_for(running, TASK_WINDOW_TIMEOUT, interval=0.05, description="a running chunk")
    return found[0]


# 1 and 2: killed processes.


def test_killed_child_batch_completes(chaos: Chaos, tmp_path: Path) -> None:
    worker = chaos.worker()
    rows = write_input(tmp_path / "in.csv", sentences("killed child", 16))
    known = existing_jobs(chaos.client)
    cli = start_cli(chaos, tmp_path / "in.csv", tmp_path / "out.csv")

    wait_mid_batch(chaos.client, known)
    children = worker.children()
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)

    code, stdout, stderr = finish_cli(cli)
    assert code == 0, stderr
    assert json.loads(stdout)["rows"] == 16
    assert_rows_once(rows, tmp_path / "out.csv")
    assert worker.alive()
    assert "WorkerLostError" in worker.log()


def test_killed_worker_redelivered(chaos: Chaos, tmp_path: Path) -> None:
    worker = chaos.worker()
    rows = write_input(tmp_path / "in.csv", sentences("killed worker", 12))
    known = existing_jobs(chaos.client)
    cli = start_cli(chaos, tmp_path / "in.csv", tmp_path / "out.csv")

    job_id = wait_mid_batch(chaos.client, known)
    group = process_tree(worker.pid)
    worker.kill_all()
    wait_for(
        lambda: pids_alive(group) == [],
        STOP_TIMEOUT,
        description="every process of the killed worker to exit",
    )
    chaos.start_worker()

    code, stdout, stderr = finish_cli(cli, REDELIVERY_TIMEOUT)
    assert code == 0, stderr
    assert json.loads(stdout)["task_id"] == job_id
    assert_rows_once(rows, tmp_path / "out.csv")


# 3: poison items.


def test_poison_items_reported(chaos: Chaos, tmp_path: Path) -> None:
    chaos.worker()
    texts = sentences("poison", 12)
    texts[5] = f"This row kills its worker {CRASH_MARKER}."
    texts[9] = f"This row raises {RAISE_MARKER}."
    rows = write_input(tmp_path / "in.csv", texts)
    known = existing_jobs(chaos.client)
    cli = start_cli(chaos, tmp_path / "in.csv", tmp_path / "out.csv")

    code, stdout, stderr = finish_cli(cli)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["errors"] == 2
    failed_rows = {entry["row"]: entry["error"] for entry in summary["failed_rows"]}
    assert set(failed_rows) == {6, 10}
    assert "died" in failed_rows[6]
    assert f"failed {MAX_ATTEMPTS} times" in failed_rows[10]
    assert "RuntimeError" in failed_rows[10]
    assert_rows_once(rows, tmp_path / "out.csv", failed={5, 9})

    job_id = summary["task_id"]
    assert job_id not in known
    report = jobs.job_status(job_id, include_result=False)
    assert report["status"] == "done"
    errors = {entry["index"]: entry["error"] for entry in report["errors"]}
    assert set(errors) == {5, 9}
    assert "died" in errors[5]
    assert "RuntimeError" in errors[9]
    assert chaos.client.keys("mt:attempts:*") == []

    status = subprocess.run(
        [sys.executable, "app_batch_celery.py", "--status", job_id],
        cwd=PROJECT_ROOT,
        env=chaos.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "Failed rows: 2" in status.stdout
    assert "row 6: The worker process died" in status.stdout


# 4: redelivery.


def test_redelivery_idempotent(chaos: Chaos, tmp_path: Path) -> None:
    worker = chaos.worker()
    texts = sentences("redelivered", 12)
    rows = write_input(tmp_path / "in.csv", texts)
    queued = subprocess.run(
        [
            sys.executable,
            "app_batch_celery.py",
            str(tmp_path / "in.csv"),
            str(tmp_path / "out.csv"),
            "--source-lang",
            "en",
            "--target-lang",
            "es",
            "--chunk-size",
            str(CHUNK_SIZE),
            "--async",
            "--json",
        ],
        cwd=PROJECT_ROOT,
        env=chaos.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["task_id"]

    # Deliver every chunk a second time: the same task id and arguments.
    chunks = [
        json.loads(raw) for raw in chaos.client.lrange(f"mt:job:{job_id}:chunks", 0, -1)
    ]
    assert len(chunks) == 3
    options = TranslationOptions().to_dict()
    for index, chunk in enumerate(chunks):
        # The command sends rows shortest first, and the job records their rows.
        detail = json.loads(chaos.client.get(f"mt:job:{job_id}:hits:{index}"))
        chunk_rows = detail.get("rows") or range(
            chunk["start"], chunk["start"] + chunk["count"]
        )
        chunk_texts = [texts[chunk_rows[position]] for position in detail["misses"]]
        send(
            "tasks.translate_batch",
            args=[chunk_texts, "en", "es"],
            kwargs={"options": options, "job_id": job_id},
            queue="bulk",
            task_id=chunk["task_id"],
        )

    def delivered_twice() -> bool:
        # Celery logs success after it stored the task's result.
        log = worker.log()
        return all(
            log.count(f"Task tasks.translate_batch[{chunk['task_id']}] succeeded") == 2
            for chunk in chunks
        )

    wait_for(delivered_twice, JOB_TIMEOUT, interval=0.2, description="2 deliveries")

    report = jobs.job_status(job_id)
    assert report["status"] == "done"
    assert report["progress"] == {"current": 12, "total": 12}
    assert len(report["result"]["items"]) == 12
    collected = subprocess.run(
        [
            sys.executable,
            "app_batch_celery.py",
            "--collect",
            job_id,
            str(tmp_path / "out.csv"),
            "--json",
        ],
        cwd=PROJECT_ROOT,
        env=chaos.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["rows"] == 12
    assert_rows_once(rows, tmp_path / "out.csv")


# 5: Redis restarts.


def http_json(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> tuple[int, dict[str, Any]]:
    """Send a request; ``timeout`` detects a hang, it is no speed requirement."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def api_cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "api-cache"


@pytest.fixture
def api(chaos: Chaos, tmp_path: Path) -> Iterator[str]:
    """The API under gunicorn, pointed at the module's Redis."""
    port = free_port()
    env = dict(chaos.env, CACHE_DIR=str(api_cache_dir(tmp_path)), PORT=str(port))
    with (tmp_path / "api.log").open("wb") as log:
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
                "90",
                "api_server:app",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{LOCALHOST}:{port}"
    try:
        wait_for_http(f"{url}/health", API_START_TIMEOUT)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


def lookup_in_new_process(chaos: Chaos, cache_dir: Path, text: str) -> dict[str, Any]:
    """Look a text up in a new front-end process that shares ``cache_dir``."""
    code = (
        "import json, sys\n"
        "from core import dispatch\n"
        "print(json.dumps(dispatch.lookup([sys.argv[1]], 'en', 'es')[0]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, text],
        cwd=PROJECT_ROOT,
        env=dict(chaos.env, CACHE_DIR=str(cache_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    item = json.loads(completed.stdout)
    assert item is not None, "the disk tier missed"
    return item


def test_redis_restart_job_completes(chaos: Chaos, api: str, tmp_path: Path) -> None:
    worker = chaos.worker()
    cached_text = sentences("cached before the outage", 1)[0]
    body = {"text": cached_text, "source_lang": "en", "target_lang": "es"}
    status, first = http_json("POST", f"{api}/api/translate", body, JOB_TIMEOUT)
    assert status == 200, first
    # The worker stored the translation in Redis; reading it again copies it
    # into the API's memory and disk tiers.
    status, again = http_json("POST", f"{api}/api/translate", body)
    assert status == 200, again
    assert again["cache_tier"] == "redis"
    api_cache = api_cache_dir(tmp_path)

    rows = write_input(tmp_path / "in.csv", sentences("redis restart", 16))
    known = existing_jobs(chaos.client)
    cli = start_cli(chaos, tmp_path / "in.csv", tmp_path / "out.csv")
    wait_mid_batch(chaos.client, known)

    chaos.redis.stop()
    try:
        new_text = dict(body, text=sentences("during the outage", 1)[0])
        status, refused = http_json("POST", f"{api}/api/translate", new_text)
        assert status == 503, refused
        assert refused["success"] is False
        assert refused["code"] == "backend_unavailable"
        status, health = http_json("GET", f"{api}/health")
        assert status == 503
        assert health["status"] == "degraded"
        status, served = http_json("POST", f"{api}/api/translate", body)
        assert status == 200, served
        assert served["cached"] is True
        assert served["translation"] == first["translation"]
        assert served["cache_tier"] == "memory"
        from_disk = lookup_in_new_process(chaos, api_cache, cached_text)
        assert from_disk["cache_tier"] == "disk"
        assert from_disk["translation"] == first["translation"]
    finally:
        chaos.redis.start()

    code, stdout, stderr = finish_cli(cli)
    assert code == 0, stderr
    assert json.loads(stdout)["resubmissions"] == []
    assert_rows_once(rows, tmp_path / "out.csv")
    assert worker.alive(), "the worker had to be restarted"
    assert worker is chaos.worker()


def test_redis_data_loss_resubmits(chaos: Chaos, tmp_path: Path) -> None:
    worker = chaos.worker()
    rows = write_input(tmp_path / "in.csv", sentences("redis wiped", 16))
    known = existing_jobs(chaos.client)
    cli = start_cli(chaos, tmp_path / "in.csv", tmp_path / "out.csv")
    job_id = wait_mid_batch(chaos.client, known)

    chaos.redis.restart(keep_data=False)
    assert chaos.client.exists(f"mt:job:{job_id}") == 0

    code, stdout, stderr = finish_cli(cli)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert len(summary["resubmissions"]) == 1
    resubmission = summary["resubmissions"][0]
    assert resubmission["lost"] == job_id
    assert f"Redis lost job {job_id}" in stderr
    assert "Resubmitted them as job" in stderr
    assert summary["task_id"] == job_id
    assert_rows_once(rows, tmp_path / "out.csv")
    assert worker.alive()


# 6: hostile messages.


class CreateFile:
    """Pickles to a call that creates ``path``: harmless proof of execution."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_pickle_message_never_runs(chaos: Chaos, tmp_path: Path) -> None:
    import pickle

    worker = chaos.worker()
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CreateFile(control))).close()  # noqa: S301
    assert control.exists(), "the payload does not run when unpickled"

    marker = tmp_path / "executed"
    task_id = str(uuid.uuid4())
    from core.broker import celery_app

    celery_app().send_task(
        "tasks.translate_batch",
        args=[CreateFile(marker), "en", "es"],
        queue="bulk",
        task_id=task_id,
        serializer="pickle",
    )

    def handled() -> bool:
        if marker.exists() or not worker.alive():
            return True
        return chaos.client.llen("bulk") == 0 and not chaos.client.hlen("unacked")

    wait_for(handled, JOB_TIMEOUT, interval=0.1, description="the message handled")
    assert not marker.exists(), "a worker unpickled the message"
    assert worker.alive()
    # A JSON task sent after it runs, so the worker is past the message.
    follow = dispatch.translate_sync(sentences("after pickle", 1), "en", "es")
    assert follow[0]["model"]
    assert not marker.exists()
    assert (
        "Refusing to deserialize untrusted content of type pickle "
        "(application/x-python-serialize)"
    ) in worker.log()
