"""Unit tests of the shared pipeline in front-end mode (no worker, no Redis)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import reset_settings
from core.pipeline import Pipeline, detection_candidates, needs_model
from tests.helpers import free_port

pytestmark = pytest.mark.unit


@pytest.fixture
def offline(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    reset_settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello", True),
        ("Él", True),
        ("Q-7", False),
        ("A4", False),
        ("12.5 %", False),
        ("", False),
        ("   \n", False),
        ("日本", True),
    ],
)
def test_needs_model(text: str, expected: bool) -> None:
    assert needs_model(text) is expected


def test_front_end_mode_leaves_misses_and_passes_through(offline: None) -> None:
    items = Pipeline(worker=False).run(["Hello world", "", "42"], "en", "es")
    assert items[0] is None
    assert items[1] is not None
    assert items[1]["translation"] == ""
    assert items[2] is not None
    assert items[2]["translation"] == "42"
    assert items[2]["model"] is None


def test_progress_counts_passthroughs(offline: None) -> None:
    seen: list[int] = []
    Pipeline(worker=False, progress=seen.append).run(["", "1", "Hi there"], "en", "es")
    assert seen == [2]


def test_detection_candidates_include_target(offline: None) -> None:
    assert detection_candidates("it") == ["de", "en", "es", "it"]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"translation": "x", "model": None, "error": "no route"}, "failed"),
        ({"translation": "", "model": None}, "unchanged"),
        ({"translation": "hola", "model": "opus-mt-en-es", "cached": True}, "cached"),
        (
            {"translation": "hola", "model": "opus-mt-en-es", "cached": False},
            "translated",
        ),
    ],
)
def test_item_outcome(item: dict, expected: str) -> None:
    from core.pipeline import item_outcome

    assert item_outcome(item) == expected
