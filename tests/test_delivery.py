"""Tests of bounded attempts and bisection in ``core.delivery``.

The translate function here is a stand-in that records its calls, so each
split and retry can be counted. The chaos tier runs the same code in real
workers with real checkpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from core import delivery
from core.delivery import AttemptLog, translate_bounded
from core.errors import ModelNotAvailable
from tests.conftest import _reset_process_state
from tests.helpers import RedisServer

POISON = "poison"


class Recorder:
    """Translates by upper-casing; raises on any batch that contains POISON."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []

    def __call__(self, start: int, texts: list[str]) -> list[dict[str, object]]:
        self.calls.append((start, list(texts)))
        if any(POISON in text for text in texts):
            raise RuntimeError("cannot translate")
        return [{"translation": text.upper(), "model": "m"} for text in texts]


@pytest.mark.unit
def test_clean_batch_runs_once(clean_env: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    items = translate_bounded(["a", "b", "c"], recorder, task_id=None, max_attempts=3)
    assert [item["translation"] for item in items] == ["A", "B", "C"]
    assert recorder.calls == [(0, ["a", "b", "c"])]


@pytest.mark.unit
def test_raising_item_isolated(clean_env: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    texts = ["a", "b", "c", POISON, "e", "f", "g"]

    items = translate_bounded(texts, recorder, task_id=None, max_attempts=3)

    assert [item["translation"] for item in items] == [
        "A",
        "B",
        "C",
        POISON,
        "E",
        "F",
        "G",
    ]
    assert [index for index, item in enumerate(items) if "error" in item] == [3]
    assert items[3]["error"] == (
        "Translation failed 3 times: RuntimeError: cannot translate"
    )
    alone = [call for call in recorder.calls if call[1] == [POISON]]
    assert len(alone) == 3
    # Bisection, not one call per item: the good halves ran as batches.
    assert (0, ["a", "b", "c"]) in recorder.calls


@pytest.mark.unit
def test_progress_offsets_follow_items(clean_env: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    translate_bounded(["a", POISON, "c", "d"], recorder, task_id=None, max_attempts=1)
    for start, texts in recorder.calls:
        assert ["a", POISON, "c", "d"][start : start + len(texts)] == texts


@pytest.mark.unit
def test_request_errors_propagate(clean_env: pytest.MonkeyPatch) -> None:
    calls = []

    def unavailable(start: int, texts: list[str]) -> list[dict[str, object]]:
        calls.append(texts)
        raise ModelNotAvailable("no checkpoint for en-xx")

    with pytest.raises(ModelNotAvailable):
        translate_bounded(["a", "b"], unavailable, task_id=None, max_attempts=3)
    assert calls == [["a", "b"]]


@pytest.mark.unit
def test_raise_marker_raises(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TEST_RAISE_MARKER", "MARK")
    _reset_process_state()
    delivery.inject_test_faults(["plain"])
    with pytest.raises(RuntimeError, match="TEST_RAISE_MARKER"):
        delivery.inject_test_faults(["plain", "with MARK inside"])


@pytest.fixture
def attempts_redis(
    redis_server: RedisServer, clean_env: pytest.MonkeyPatch
) -> Iterator[redis.Redis]:
    clean_env.setenv("REDIS_URL", redis_server.url)
    _reset_process_state()
    yield redis.Redis.from_url(redis_server.url)


@pytest.mark.integration
def test_unfinished_range_is_split(attempts_redis: redis.Redis) -> None:
    """A range whose process died on an earlier delivery is not run whole again."""
    task_id = str(uuid.uuid4())
    key = f"mt:attempts:{task_id}"
    attempts_redis.hset(key, "0:4", 1)
    recorder = Recorder()

    items = translate_bounded(["a", "b", "c", "d"], recorder, task_id=task_id)

    assert [item["translation"] for item in items] == ["A", "B", "C", "D"]
    assert recorder.calls == [(0, ["a", "b"]), (2, ["c", "d"])]
    assert attempts_redis.exists(key) == 0


@pytest.mark.integration
def test_item_that_kept_dying_fails(attempts_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    attempts_redis.hset(f"mt:attempts:{task_id}", mapping={"0:2": 3, "1:2": 2})
    recorder = Recorder()

    items = translate_bounded(["a", "b"], recorder, task_id=task_id, max_attempts=2)

    assert items[0]["translation"] == "A"
    assert items[1]["translation"] == "b"
    assert "died on each of 2 attempts" in items[1]["error"]
    assert recorder.calls == [(0, ["a"])]


@pytest.mark.integration
def test_attempt_log_counts_across_processes(attempts_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    assert AttemptLog(task_id).start(0, 4) == 1
    assert AttemptLog(task_id).start(0, 4) == 2
    assert 0 < attempts_redis.ttl(f"mt:attempts:{task_id}") <= 86400
