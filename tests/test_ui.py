"""Unit tests of the browser UI: ``app_streamlit.py`` run by Streamlit's AppTest.

AppTest runs the script in this process, so the tests replace the functions
of ``core`` that the page calls (dispatch, jobs, workers, submission) with
fakes, and no Redis or worker is needed. The upload folder is a temporary
directory through ``CACHE_DIR``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from streamlit.testing.v1 import AppTest

from core import cache, dispatch, jobs, ui_files, ui_state, workers
from core.config import PROJECT_ROOT, reset_settings
from core.errors import BackendUnavailable
from tests.helpers import free_port

pytestmark = pytest.mark.unit

APP = str(PROJECT_ROOT / "app_streamlit.py")
PRODUCTS_CSV = PROJECT_ROOT / "tests" / "data" / "products_en_bom.csv"
APP_TIMEOUT = 30
FAKE_MODEL = "opus-mt-en-es"


@pytest.fixture
def ui_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Serve en-es, es-en and en-de, with Redis pointed at a closed port."""
    clean_env.setenv("LANGUAGE_PAIRS", "en-es,es-en,en-de")
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    clean_env.setenv("CACHE_DIR", str(tmp_path / "cache"))
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    clean_env.setenv("CHUNK_SIZE", "64")
    return clean_env


def fake_item(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "translation": f"ES[{text}]",
        "model": FAKE_MODEL,
        "models": [FAKE_MODEL],
        "score": 0.81,
        "cached": False,
        **extra,
    }


def new_app(**query: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=APP_TIMEOUT)
    for name, value in query.items():
        app.query_params[name] = value
    return app


def errors(app: AppTest) -> list[str]:
    return [element.value for element in app.error]


def texts(app: AppTest) -> str:
    """Return every markdown, caption and badge on the page as one string."""
    parts = [element.value for element in app.markdown]
    parts += [element.value for element in app.caption]
    return "\n".join(parts)


# Imports.


def test_import_leaves_out_torch() -> None:
    code = (
        "import sys, app_streamlit; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Translate text.


def test_pickers_list_served_pairs_by_name(ui_env: pytest.MonkeyPatch) -> None:
    app = new_app().run()
    assert not app.exception
    source, target = app.selectbox
    assert source.options == [
        "Detect language",
        "English (en)",
        "Spanish (es)",
    ]
    assert source.value == "auto"
    assert target.options == ["English (en)", "German (de)", "Spanish (es)"]

    # es-de has no checkpoint, but es-en and en-de make a pivot route.
    source.set_value("es").run()
    assert app.selectbox[1].options == ["English (en)", "German (de)"]
    assert app.selectbox[1].value == "de"


def test_swap_swaps_languages(ui_env: pytest.MonkeyPatch) -> None:
    app = new_app().run()
    swap = app.button(key="swap")
    assert swap.disabled, "swapping 'Detect language' makes no sense"

    app.selectbox[0].set_value("en").run()
    app.selectbox[1].set_value("es").run()
    app.button(key="swap").click().run()
    assert app.selectbox[0].value == "es"
    assert app.selectbox[1].value == "en"


def test_swap_disabled_without_reverse_pair(ui_env: pytest.MonkeyPatch) -> None:
    app = new_app().run()
    app.selectbox[0].set_value("en").run()
    app.selectbox[1].set_value("de").run()
    assert app.button(key="swap").disabled


def test_translate_shows_result_and_badges(ui_env: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def translate_sync(texts_, source, target, options=None, kind="batch"):
        calls.append((list(texts_), source, target, kind))
        return [
            fake_item(
                texts_[0],
                detected_source_lang="en",
                detection_confidence=0.97,
            )
        ]

    ui_env.setattr(dispatch, "translate_sync", translate_sync)
    app = new_app().run()
    app.text_area(key="text").input("The weather is nice today.")
    app.button[1].click().run()

    assert not app.exception
    assert calls == [(["The weather is nice today."], "auto", "de", "text")]
    assert app.code[0].value == "ES[The weather is nice today.]"
    page = texts(app)
    assert "Translated now" in page
    assert FAKE_MODEL in page
    assert "Detected: English (97%)" in page
    assert "Score 0.81" in page
    assert " s" in page
    assert "26 / 5,000 characters" in page


def test_cached_result_shows_tier(ui_env: pytest.MonkeyPatch) -> None:
    ui_env.setattr(
        dispatch,
        "translate_sync",
        lambda texts_, *args, **kwargs: [
            fake_item(texts_[0], cached=True, cache_tier="redis")
        ],
    )
    app = new_app().run()
    app.selectbox[0].set_value("en").run()
    app.text_area(key="text").input("Hello there.")
    app.button[1].click().run()
    assert "Cached (redis)" in texts(app)


def test_empty_text_warns(ui_env: pytest.MonkeyPatch) -> None:
    app = new_app().run()
    app.button[1].click().run()
    assert "Type or paste a text" in app.warning[0].value


def test_over_limit_text_not_sent(ui_env: pytest.MonkeyPatch) -> None:
    """A pasted text over the limit is kept whole, flagged and not sent."""
    calls: list[Any] = []
    ui_env.setattr(dispatch, "translate_sync", lambda *args, **kw: calls.append(1))
    ui_env.setenv("MAX_TEXT_CHARS", "10")
    app = new_app().run()
    app.text_area(key="text").input("x" * 11).run()
    assert "11 / 10 characters: over the limit" in texts(app)
    app.button[1].click().run()
    assert not app.exception
    assert calls == []
    assert app.text_area(key="text").value == "x" * 11
    assert "the limit is 10" in app.error[0].value


def test_backend_down_is_message(ui_env: pytest.MonkeyPatch) -> None:
    """translate_sync runs for real: the cache lookup and Redis both fail."""
    app = new_app().run()
    app.selectbox[0].set_value("en").run()
    app.text_area(key="text").input("Hello there.")
    app.button[1].click().run()
    assert not app.exception
    assert "not available right now" in errors(app)[0]


def test_unsupported_pair_is_message(ui_env: pytest.MonkeyPatch) -> None:
    """Pickers that list a pair the service rejects show its message."""
    stale = ui_state.LanguageChoices((("en", "es"), ("en", "fr")))
    ui_env.setattr(ui_state.LanguageChoices, "load", classmethod(lambda cls: stale))
    app = new_app().run()
    app.selectbox[0].set_value("en").run()
    app.selectbox[1].set_value("fr").run()
    app.text_area(key="text").input("Hello there.")
    app.button[1].click().run()
    assert not app.exception
    assert "'en' to 'fr'" in errors(app)[0] or "en-fr" in errors(app)[0]


# Translate a file.


class FakeSubmission:
    """Stands in for ``core.dispatch.Submission`` and counts what it gets."""

    created: ClassVar[list[FakeSubmission]] = []

    def __init__(self, kind: str, source_lang: str, target_lang: str, **meta: Any):
        self.kind = kind
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.queue = meta.pop("queue")
        self.meta = meta
        self.job_id = str(uuid.uuid4())
        self.chunks: list[list[str]] = []
        FakeSubmission.created.append(self)

    def add(self, texts_: list[str]) -> None:
        self.chunks.append(list(texts_))

    def finish(self) -> str:
        return self.job_id


@pytest.fixture
def fake_jobs(ui_env: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Fake submission and job reports; ``reports[job_id]`` sets the status."""
    FakeSubmission.created = []
    reports: dict[str, dict[str, Any]] = {}

    def job_status(job_id: str, include_result: bool = True) -> dict[str, Any]:
        submission = next(s for s in FakeSubmission.created if s.job_id == job_id)
        total = submission.meta["total"]
        return {
            "task_id": job_id,
            "status": "processing",
            "progress": {"current": total // 2, "total": total},
            "created_at": "2026-01-01T00:00:00Z",
            **reports.get(job_id, {}),
        }

    def load_job(job_id: str) -> dict[str, Any]:
        submission = next(s for s in FakeSubmission.created if s.job_id == job_id)
        return {
            "job_id": job_id,
            "kind": submission.kind,
            "source_lang": submission.source_lang,
            "target_lang": submission.target_lang,
            "meta": {
                name: value
                for name, value in submission.meta.items()
                if name != "total"
            },
        }

    def iter_items(job_id: str, deadline: float | None = None):
        submission = next(s for s in FakeSubmission.created if s.job_id == job_id)
        for chunk in submission.chunks:
            for text in chunk:
                yield {"translation": f"ES[{text}]" if text else text}

    ui_env.setattr(ui_state, "Submission", FakeSubmission)
    ui_env.setattr(ui_state, "require_workers", lambda: [{"hostname": "w"}])
    ui_env.setattr(jobs, "job_status", job_status)
    ui_env.setattr(jobs, "load_job", load_job)
    ui_env.setattr(jobs, "iter_items", iter_items)
    yield reports


def file_tab_app(**query: str) -> AppTest:
    return new_app(tab="Translate a file", **query).run()


def upload(app: AppTest, name: str, data: bytes) -> AppTest:
    app.get("file_uploader")[0].set_value((name, data, "text/csv"))
    return app.run()


def test_upload_previews_and_guesses_column(fake_jobs: dict[str, Any]) -> None:
    app = upload(file_tab_app(), "products.csv", PRODUCTS_CSV.read_bytes())
    assert not app.exception
    assert not errors(app)
    assert app.selectbox(key="text_column").value == "text"
    preview = app.dataframe[0].value
    assert list(preview.columns) == ["id", "text", "category", "price"]
    assert len(preview) == ui_files.PREVIEW_ROWS
    assert "220 rows" in texts(app)


def test_upload_saved_owner_only(fake_jobs: dict[str, Any], tmp_path: Path) -> None:
    upload(file_tab_app(), "products.csv", PRODUCTS_CSV.read_bytes())
    saved = list((tmp_path / ui_files.UPLOAD_DIR_NAME).glob("*/input.csv"))
    assert len(saved) == 1
    assert saved[0].stat().st_mode & 0o777 == 0o600
    assert saved[0].parent.stat().st_mode & 0o777 == 0o700


def test_rerun_does_not_resubmit(fake_jobs: dict[str, Any]) -> None:
    app = upload(file_tab_app(), "products.csv", PRODUCTS_CSV.read_bytes())
    app.selectbox(key="file_source_lang").set_value("en").run()
    app.selectbox(key="file_target_lang").set_value("es").run()
    app.selectbox(key="text_column").set_value("category").run()
    app.selectbox(key="text_column").set_value("text").run()
    assert FakeSubmission.created == []

    app.button[0].click().run()
    assert len(FakeSubmission.created) == 1
    submission = FakeSubmission.created[0]
    assert submission.kind == "csv"
    assert submission.queue == dispatch.QUEUE_BULK
    assert [len(chunk) for chunk in submission.chunks] == [64, 64, 64, 28]
    assert app.query_params["job"] == submission.job_id

    for _ in range(3):
        app.run()
    assert len(FakeSubmission.created) == 1
    assert not app.exception
    assert "110 of 220 rows" in app.get("progress")[0].proto.text


def test_job_reattaches_from_query_param(fake_jobs: dict[str, Any]) -> None:
    first = upload(file_tab_app(), "products.csv", PRODUCTS_CSV.read_bytes())
    first.selectbox(key="file_target_lang").set_value("es").run()
    first.button[0].click().run()
    job_id = FakeSubmission.created[0].job_id

    second = file_tab_app(job=job_id)
    assert not second.exception
    assert len(FakeSubmission.created) == 1
    assert "products.csv" in texts(second)
    assert "110 of 220 rows" in second.get("progress")[0].proto.text

    fake_jobs[job_id] = {"status": "done", "progress": {"current": 220, "total": 220}}
    second.run()
    assert not errors(second)
    download = second.get("download_button")[0]
    assert download.proto.label == "Download the translated file"
    result = second.dataframe[0].value
    assert list(result.columns) == ["id", "text", "category", "price", "text_es"]
    assert result["text_es"][0] == "ES[The kettle boils water in two minutes.]"


def test_unknown_job_param_is_message(fake_jobs: dict[str, Any]) -> None:
    app = file_tab_app(job="not-a-job")
    assert not app.exception
    assert "is not a job id" in errors(app)[0]


def test_bad_csv_is_message(fake_jobs: dict[str, Any]) -> None:
    data = b'id,text\n1,"' + b"x" * 200_000 + b'"\n'
    app = upload(file_tab_app(), "broken.csv", data)
    assert not app.exception
    assert "is not valid CSV near line 2" in errors(app)[0]


def test_binary_file_is_message(fake_jobs: dict[str, Any]) -> None:
    app = upload(file_tab_app(), "book.csv", b"PK\x03\x04\x00\x00binary")
    assert "binary file" in errors(app)[0]


def test_wrong_type_rejected_on_server(ui_env: pytest.MonkeyPatch) -> None:
    """The file picker filters by name; the server checks the name again."""
    with pytest.raises(ui_files.UploadError, match="not a CSV or text file"):
        ui_files.save_upload("book.xlsx", b"id,text\n1,hello\n")


def test_oversized_upload_is_message(
    fake_jobs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UI_MAX_UPLOAD_ROWS", "100")
    reset_settings()
    app = upload(file_tab_app(), "products.csv", PRODUCTS_CSV.read_bytes())
    assert "more than 100 rows" in errors(app)[0]

    monkeypatch.setenv("UI_MAX_UPLOAD_MB", "1")
    reset_settings()
    app = upload(file_tab_app(), "products2.csv", b"id,text\n" + b"1,x\n" * 300_000)
    assert "the limit is 1 MiB (UI_MAX_UPLOAD_MB)" in errors(app)[0]
    assert FakeSubmission.created == []


def test_workers_down_on_submit_is_message(
    fake_jobs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_workers() -> list[dict[str, Any]]:
        raise BackendUnavailable("No translation worker is running.")

    monkeypatch.setattr(ui_state, "require_workers", no_workers)
    app = upload(file_tab_app(), "products.csv", PRODUCTS_CSV.read_bytes())
    app.button[0].click().run()
    assert not app.exception
    assert "No translation worker is running." in errors(app)[0]
    assert FakeSubmission.created == []


def test_text_file_one_item_per_line(fake_jobs: dict[str, Any]) -> None:
    app = upload(file_tab_app(), "lines.txt", b"Hello.\r\n\r\nGood night.\r\n")
    app.selectbox(key="file_target_lang").set_value("es").run()
    app.button[0].click().run()
    submission = FakeSubmission.created[0]
    assert submission.kind == "text_file"
    assert submission.chunks == [["Hello.", "", "Good night."]]

    fake_jobs[submission.job_id] = {"status": "done"}
    app.run()
    path = ui_files.output_path(ui_files.Upload.from_meta(load_meta(submission)))
    assert path.read_bytes() == b"ES[Hello.]\r\n\r\nES[Good night.]\r\n"


def load_meta(submission: FakeSubmission) -> dict[str, Any]:
    return {name: value for name, value in submission.meta.items()}


# Service status.


def test_status_panel_without_redis(ui_env: pytest.MonkeyPatch) -> None:
    app = new_app(tab="Service status").run()
    assert not app.exception
    assert "not available right now" in errors(app)[0]
    assert any(metric.value == "unreachable" for metric in app.metric)


def test_status_panel_lists_workers(ui_env: pytest.MonkeyPatch) -> None:
    ui_env.setattr(
        workers,
        "live_workers",
        lambda: [{"hostname": "w1", "queues": ["bulk"], "pairs": ["en-es"]}],
    )
    ui_env.setattr(workers, "loaded_models_by_process", lambda: {"w1:42": [FAKE_MODEL]})
    app = new_app(tab="Service status").run()
    assert not app.exception
    assert app.metric[0].value == "1"
    frames = [frame.value for frame in app.dataframe]
    assert frames[0]["Worker"][0] == "w1"
    assert frames[1]["Models loaded"][0] == FAKE_MODEL
    assert list(frames[2]["Tier"]) == ["memory", "disk", "redis"]


def test_clear_cache_needs_confirmation(ui_env: pytest.MonkeyPatch) -> None:
    cleared: list[bool] = []
    real = cache.get_cache()
    ui_env.setattr(real, "clear", lambda: cleared.append(True) or {})
    ui_env.setattr(workers, "live_workers", lambda: [])
    ui_env.setattr(workers, "loaded_models_by_process", lambda: {})
    app = new_app(tab="Service status").run()
    next(b for b in app.button if b.label == "Clear the cache…").click().run()
    assert cleared == []
    assert "deletes every stored translation" in app.warning[-1].value

    next(b for b in app.button if b.label == "Yes, clear the cache").click().run()
    assert cleared == [True]
    assert "The cache was cleared" in app.success[0].value


def test_result_hidden_after_language_change(ui_env: pytest.MonkeyPatch) -> None:
    ui_env.setattr(
        dispatch,
        "translate_sync",
        lambda texts_, *args, **kwargs: [fake_item(texts_[0])],
    )
    app = new_app().run()
    app.selectbox[0].set_value("en").run()
    app.selectbox[1].set_value("es").run()
    app.text_area(key="text").input("Good morning.")
    app.button[1].click().run()
    assert len(app.code) == 1

    app.selectbox[1].set_value("de").run()
    assert len(app.code) == 0, "a result must not show under other languages"


def test_job_outcome_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import jobs

    items = [
        {"translation": "hola", "model": "opus-mt-en-es"},
        {"translation": "", "model": None},
        {"translation": "Ciao", "model": None, "error": "Pair it-es is not served."},
        {"translation": "Ciao", "model": None, "error": "Pair it-es is not served."},
        {"translation": "12", "model": None},
    ]
    monkeypatch.setattr(jobs, "iter_items", lambda job_id, deadline=None: iter(items))
    outcome = ui_state.job_outcome("job")
    assert (outcome.rows, outcome.translated, outcome.unchanged, outcome.failed) == (
        5,
        1,
        2,
        2,
    )
    assert outcome.reasons == ["Pair it-es is not served."]
