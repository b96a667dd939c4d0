"""Worker child processes that are recycled mid-run keep translating.

A forked child that runs torch with several threads after its parent used
torch can deadlock. Workers load torch only in their children, and this test
runs many tasks through children that Celery replaces every few tasks, with
two torch threads each, to catch a hang.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import dispatch, jobs
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer, run_worker

pytestmark = pytest.mark.integration

TASKS = 1000
TASKS_PER_CHILD = 50
# Detects a hang: the tasks and the 20 child starts take about 90 s on
# two cores.
HANG_TIMEOUT = 600.0
CHILD_NAME = re.compile(r"ForkPoolWorker-(\d+)")


@pytest.fixture
def recycling_worker(
    stack_env: dict[str, str], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A transformers worker whose two children are replaced every few tasks."""
    with RedisServer() as server:
        env = {
            **stack_env,
            "REDIS_URL": server.url,
            "CACHE_DIR": str(tmp_path / "worker-cache"),
            "ENGINE": "transformers",
            "TORCH_THREADS": "2",
            "WORKER_MAX_TASKS_PER_CHILD": str(TASKS_PER_CHILD),
            # Greedy search and a 2-token output limit keep 1,000 tasks short;
            # the test is about processes and threads, not translations.
            "NUM_BEAMS": "1",
            "MAX_NEW_TOKENS_RATIO": "0.1",
            "MAX_NEW_TOKENS_EXTRA": "0",
        }
        clean_env.setenv("REDIS_URL", server.url)
        clean_env.setenv("MODEL_DIR", stack_env["MODEL_DIR"])
        clean_env.setenv("CHUNK_SIZE", "1")
        clean_env.setenv("MAX_BULK_QUEUE", str(TASKS * 2))
        _reset_process_state()
        with run_worker(env, "recycler", tmp_path, concurrency=2):
            yield tmp_path / "recycler.log"
        _reset_process_state()


@pytest.mark.timeout(HANG_TIMEOUT + 120)
def test_recycled_children_finish_all_tasks(recycling_worker: Path) -> None:
    texts = [f"Sentence {index} for a recycled child." for index in range(TASKS)]
    # One task per text, from CHUNK_SIZE=1.
    job_id = dispatch.submit_async(texts, "en", "es")
    deadline = time.monotonic() + HANG_TIMEOUT
    items = list(jobs.iter_items(job_id, deadline=deadline))

    assert len(items) == TASKS
    assert all(item["translation"] for item in items)
    assert not [item for item in items if item.get("error")]
    children = {
        int(number) for number in CHILD_NAME.findall(recycling_worker.read_text())
    }
    # Two children at a time, each replaced after TASKS_PER_CHILD tasks.
    assert max(children) >= TASKS // TASKS_PER_CHILD
