"""Browser end to end: headless Chromium drives the Streamlit UI of a real stack.

``./start_services.sh`` starts Redis, a worker with tiny checkpoints, the API,
Flower and the UI on free ports; Playwright (sync API) translates a sentence
and a 220-row CSV file through the page, downloads the result and compares
it with the input row by row. Each step leaves a screenshot in
``test-artifacts/browser/``. Chromium is Debian's package (``.ci/run``
installs it); Playwright's own browser download is not used.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.config import PROJECT_ROOT
from tests.helpers import (
    STACK_START_TIMEOUT,
    STACK_STOP_TIMEOUT,
    run_script,
    stack_env,
)

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        "Chromium is not installed: apt-get install chromium (.ci/run does).",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (requirements-dev)"
)

# Flags that keep Chromium from reaching Google's hosts or needing a GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 30_000
JOB_TIMEOUT_MS = 120_000
# Time for the browser to send a widget change and the script to start again.
RERUN_START_MS = 300
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "browser"
CSV_FILE = PROJECT_ROOT / "tests" / "data" / "products_en_bom.csv"
SENTENCE = "The weather is nice today."
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def stack(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The whole stack started by the service scripts, stopped at the end."""
    base = tmp_path_factory.mktemp("browser-stack")
    env = stack_env(base, tiny_model_dir, NUM_BEAMS="1")
    started = run_script("start_services.sh", env, STACK_START_TIMEOUT)
    info = {
        "env": env,
        "ui": f"http://127.0.0.1:{env['STREAMLIT_PORT']}",
        "start": started,
        "base": base,
    }
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield info
    finally:
        run_script("stop_services.sh", env, STACK_STOP_TIMEOUT)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile that may only reach 127.0.0.1."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    blocked: list[str] = []

    def local_only(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1100, "height": 900},
        )
        context.route("**/*", local_only)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        context.blocked = blocked  # type: ignore[attr-defined]
        try:
            yield context
        finally:
            context.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_ui(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url)
    page.get_by_role("tab", name="Translate text").wait_for()
    return page


def wait_idle(page: Any) -> None:
    """Wait until the script rerun that the last action started has finished."""
    page.wait_for_timeout(RERUN_START_MS)
    page.locator('[data-test-script-state="notRunning"]').wait_for()


def choose(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    sync_api.expect(box).to_have_value(option)
    wait_idle(page)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def test_translate_text(stack: dict[str, Any], browser_context: Any) -> None:
    page = open_ui(browser_context, stack["ui"])
    page.get_by_label("Text to translate").wait_for()
    shot(page, "01_start")

    choose(page, "From", "English (en)")
    choose(page, "To", "Spanish (es)")
    page.get_by_label("Text to translate").fill(SENTENCE)
    page.get_by_role("button", name="Translate", exact=True).click()
    result = page.get_by_test_id("stCode")
    result.wait_for()
    page.get_by_text("opus-mt-en-es").first.wait_for()
    shot(page, "02_text_translated")
    assert result.inner_text().strip()
    assert page.get_by_text("Translated now").first.is_visible()
    assert page.get_by_text(f"{len(SENTENCE)} / 5,000 characters").is_visible()

    # The same request again comes from the cache.
    page.get_by_role("button", name="Translate", exact=True).click()
    page.get_by_text(re.compile(r"^Cached")).first.wait_for()
    shot(page, "03_text_cached")
    assert not page.get_by_test_id("stException").count()
    page.close()


def test_translate_csv_file(
    stack: dict[str, Any], browser_context: Any, tmp_path: Path
) -> None:
    page = open_ui(browser_context, stack["ui"])
    page.get_by_role("tab", name="Translate a file").click()
    page.locator("input[type=file]").set_input_files(str(CSV_FILE))
    page.get_by_text("220 rows", exact=False).wait_for()
    column = page.get_by_role("combobox", name="Column to translate")
    sync_api.expect(column).to_have_value("text")
    choose(page, "From", "English (en)")
    choose(page, "To", "Spanish (es)")
    shot(page, "04_file_preview")

    page.get_by_role("button", name="Start translation").click()
    page.wait_for_url(re.compile(r"[?&]job="))
    job_id = re.search(r"job=([0-9a-f-]+)", page.url).group(1)  # type: ignore[union-attr]
    page.get_by_text(f"Job id {job_id}").wait_for()
    shot(page, "05_file_submitted")

    # A second tab with the same URL re-attaches to the job.
    second = browser_context.new_page()
    second.goto(page.url)
    second.get_by_text(f"Job id {job_id}").wait_for()
    download_button = second.get_by_role("button", name="Download the translated file")
    download_button.wait_for(timeout=JOB_TIMEOUT_MS)
    wait_idle(second)
    shot(second, "06_file_done_second_tab")

    with second.expect_download() as download_info:
        download_button.click()
    output = tmp_path / "translated.csv"
    download_info.value.save_as(output)
    assert download_info.value.suggested_filename == "products_en_bom_es.csv"

    source_rows = read_rows(CSV_FILE)
    output_rows = read_rows(output)
    assert len(output_rows) == len(source_rows) == 220
    assert list(output_rows[0]) == [*source_rows[0], "text_es"]
    for number, (source, translated) in enumerate(
        zip(source_rows, output_rows, strict=True), 1
    ):
        for column, value in source.items():
            assert translated[column] == value, f"row {number}, column {column}"
        if source["text"].strip():
            assert translated["text_es"].strip(), f"row {number} not translated"
        else:
            assert translated["text_es"] == source["text"], f"row {number}"

    page.get_by_role("button", name="Download the translated file").wait_for()
    wait_idle(page)
    shot(page, "07_file_done_first_tab")
    second.close()
    page.close()


def test_status_panel(stack: dict[str, Any], browser_context: Any) -> None:
    page = open_ui(browser_context, stack["ui"])
    page.get_by_role("tab", name="Service status").click()
    page.get_by_text("Workers online").wait_for()
    page.get_by_role("button", name="Clear the cache…").click()
    page.get_by_role("button", name="Yes, clear the cache").click()
    page.get_by_text("The cache was cleared in every process.").wait_for()
    shot(page, "08_status")
    page.close()


def test_no_request_left_localhost(browser_context: Any) -> None:
    """Runs last: Chromium sent nothing to a host other than 127.0.0.1."""
    assert browser_context.blocked == []
