"""Browser UI of the translation service (Streamlit).

Run it with ``streamlit run app_streamlit.py``; ``./start_services.sh`` does,
on 127.0.0.1 and ``STREAMLIT_PORT``. Three tabs:

- Translate text: pickers filled from the served pairs, a text box, the
  result with a copy button and badges for cache, model, time and detection.
- Translate a file: a CSV or text file goes to the bulk queue as one job. The
  job id is kept in the URL (``?job=<id>``), so a refresh or a second tab
  re-attaches to it, and the translated file is offered for download.
- Service status: workers, models loaded, cache entries and hit rates, and
  clearing the cache.

Like the API, the UI looks every text up in the shared cache and sends only
the misses to the Celery workers, through ``core.dispatch`` and ``core.jobs``.
It never imports torch. Every error from the service is shown as a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
import streamlit as st

from core import cache, dispatch, jobs, ui_files, ui_state, workers
from core.config import get_settings
from core.errors import BackendUnavailable, DeadlineExceeded, ServiceError
from core.logs import configure_logging
from core.pipeline import AUTO
from core.ui_files import Upload, UploadError, max_upload_mb, max_upload_rows
from core.ui_state import FileJob, LanguageChoices

logger = logging.getLogger(__name__)

PAGE_TITLE = "Translate"
TAB_TEXT = "Translate text"
TAB_FILE = "Translate a file"
TAB_STATUS = "Service status"
JOB_PARAM = "job"
POLL_SECONDS = 1.0
TEXT_AREA_HEIGHT = 180
PREFERRED_SOURCE = AUTO
UNAVAILABLE_HINT = (
    "The translation service is not available right now. Try again in a "
    "minute; if it keeps failing, ask whoever runs the service to check it."
)
state = st.session_state


# Messages.


def show_error(error: ServiceError) -> None:
    """Show a service error as a message, with a hint for outages."""
    if isinstance(error, BackendUnavailable) or error.status == 503:
        st.error(
            f"{UNAVAILABLE_HINT}\n\nDetails: {error.message}", icon=":material/error:"
        )
    else:
        st.error(error.message, icon=":material/error:")


def guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``; show a service or Redis error instead of raising it."""
    try:
        return action()
    except ServiceError as error:
        logger.warning("UI action failed with %s: %s", error.code, error.message)
        show_error(error)
    except redis.RedisError as error:
        logger.warning("UI action failed: Redis is unreachable: %s", error)
        show_error(BackendUnavailable(f"Redis is unreachable ({error})."))
    return None


# Translate text.


def _init_languages(choices: LanguageChoices) -> None:
    sources = choices.sources
    if state.get("source_lang") not in sources:
        state.source_lang = PREFERRED_SOURCE if PREFERRED_SOURCE in sources else AUTO
    targets = choices.targets(state.source_lang)
    if state.get("target_lang") not in targets:
        others = [code for code in targets if code not in {state.source_lang, "en"}]
        state.target_lang = (others or targets or [None])[0]


def _swap(choices: LanguageChoices) -> None:
    pair = choices.swapped(state.source_lang, state.target_lang)
    if pair is None:
        return
    result = state.get("text_result")
    if result is not None and result.get("pair") == (
        state.source_lang,
        state.target_lang,
    ):
        state.text = result["translation"]
    state.text_result = None
    state.source_lang, state.target_lang = pair


def _translate_text(text: str) -> None:
    settings = get_settings()
    if not text.strip():
        st.warning("Type or paste a text to translate first.")
        return
    if len(text) > settings.max_text_chars:
        st.error(
            f"The text has {len(text):,} characters; the limit is "
            f"{settings.max_text_chars:,}. Shorten it, or upload it as a text "
            "file with one paragraph per line."
        )
        return

    def run() -> dict[str, Any] | None:
        source, target = dispatch.resolve_languages(
            state.source_lang, state.target_lang
        )
        started = time.perf_counter()
        try:
            with st.spinner("Translating…"):
                items = dispatch.translate_sync([text], source, target, kind="text")
        except DeadlineExceeded:
            st.warning(
                f"The translation takes longer than {settings.sync_timeout:g} s. "
                "The workers keep working on it: press Translate again in a "
                "minute and the result comes straight from the cache."
            )
            return None
        return {
            "item": items[0],
            "translation": items[0]["translation"],
            "seconds": time.perf_counter() - started,
            "pair": (state.source_lang, state.target_lang),
        }

    result = guarded(run)
    if result is not None:
        state.text_result = result


def _show_badges(badges: list[ui_state.Badge]) -> None:
    with st.container(horizontal=True, gap="small"):
        for badge in badges:
            st.badge(badge.text, color=badge.color, help=badge.help or None)  # type: ignore[arg-type]


def _show_text_result() -> None:
    result = state.get("text_result")
    if result is None or result.get("pair") != (state.source_lang, state.target_lang):
        # A result belongs to the languages it was made with.
        return
    item = result["item"]
    st.markdown("**Translation**")
    st.code(result["translation"], language=None, wrap_lines=True)
    _show_badges(ui_state.result_badges(item, result["seconds"]))
    if item.get("error"):
        st.warning(item["error"])
    if item.get("unrestored"):
        terms = ", ".join(repr(entry["text"]) for entry in item["unrestored"])
        st.warning(f"The model dropped these protected terms: {terms}.")


def render_text_tab(choices: LanguageChoices) -> None:
    """Draw the text translation form and its last result."""
    limit = get_settings().max_text_chars
    _init_languages(choices)
    source_column, swap_column, target_column = st.columns(
        [5, 1, 5], vertical_alignment="bottom"
    )
    with source_column:
        st.selectbox(
            "From", choices.sources, format_func=ui_state.label, key="source_lang"
        )
    targets = choices.targets(state.source_lang)
    if state.get("target_lang") not in targets:
        state.target_lang = targets[0]
    with swap_column:
        st.button(
            "⇄",
            key="swap",
            help="Swap the languages",
            on_click=_swap,
            args=(choices,),
            disabled=choices.swapped(state.source_lang, state.target_lang) is None,
            width="stretch",
        )
    with target_column:
        st.selectbox("To", targets, format_func=ui_state.label, key="target_lang")

    text = st.text_area(
        "Text to translate",
        key="text",
        height=TEXT_AREA_HEIGHT,
        placeholder="Type or paste the text to translate.",
    )
    with st.container(horizontal=True, vertical_alignment="center"):
        clicked = st.button("Translate", type="primary", icon=":material/translate:")
        length = len(text or "")
        if length > limit:
            st.caption(f":red[{length:,} / {limit:,} characters: over the limit]")
        else:
            st.caption(f"{length:,} / {limit:,} characters")
    if clicked:
        _translate_text(text or "")
    _show_text_result()


# Translate a file.


def _set_job(job: FileJob | None) -> None:
    state.file_job = job
    if job is None:
        st.query_params.pop(JOB_PARAM, None)
        st.query_params["tab"] = TAB_FILE
    else:
        st.query_params[JOB_PARAM] = job.job_id


def _current_job() -> FileJob | None:
    """Return the session's job, re-attaching to the one in the URL if needed."""
    job_id = st.query_params.get(JOB_PARAM)
    job: FileJob | None = state.get("file_job")
    if job is not None and job_id in (None, job.job_id):
        _set_job(job)
        return job
    if not job_id:
        return None
    attached = guarded(lambda: ui_state.attach_file_job(job_id))
    if attached is None:
        st.button("Translate another file", on_click=_set_job, args=(None,))
        return None
    logger.info("Job %s re-attached in a new session", job_id)
    _set_job(attached)
    return attached


def _accept_upload(uploaded: Any) -> Upload | None:
    """Save a new upload once; later reruns reuse it by its file id."""
    if state.get("upload_key") != uploaded.file_id:
        state.upload_key = uploaded.file_id
        state.upload = None
        state.upload_error = None
        try:
            ui_files.check_size(uploaded.name, uploaded.size)
            upload = ui_files.save_upload(uploaded.name, uploaded.getvalue())
            state.upload = upload
            state.upload_preview = ui_files.preview(upload)
            state.text_column = ui_files.guess_text_column(upload)
            ui_files.sweep_uploads(get_settings().job_ttl)
        except UploadError as error:
            logger.info("Upload %s rejected: %s", uploaded.name, error.message)
            state.upload_error = error.message
    if state.upload_error:
        st.error(state.upload_error, icon=":material/error:")
        return None
    upload: Upload = state.upload
    return upload


def _table(header: list[str], rows: list[list[str]]) -> list[dict[str, str]]:
    """Turn rows into records, numbering repeated or empty column names."""
    names: list[str] = []
    for position, name in enumerate(header, 1):
        name = name or f"column {position}"
        while name in names:
            name = f"{name} ({position})"
        names.append(name)
    return [dict(zip(names, row, strict=False)) for row in rows]


def _start_job(upload: Upload) -> None:
    source, target = state.file_source_lang, state.file_target_lang

    def run() -> FileJob:
        dispatch.resolve_languages(source, target)
        return ui_state.submit_file(upload, state.text_column, source, target)

    job = guarded(run)
    if job is not None:
        _set_job(job)
        st.rerun()


def render_upload_form(choices: LanguageChoices) -> None:
    """Draw the upload, its preview and the job settings."""
    uploaded = st.file_uploader(
        "CSV or text file",
        type=["csv", "tsv", "txt"],
        help=(
            f"Up to {max_upload_mb()} MiB and {max_upload_rows():,} rows. A CSV "
            "file needs a header row; a text file is one item per line."
        ),
    )
    if uploaded is None:
        st.caption(
            "The translation is added as a new column; every other column and "
            "the row order stay as they are."
        )
        return
    upload = _accept_upload(uploaded)
    if upload is None:
        return

    st.caption(
        f"{upload.rows:,} rows · {upload.csv_format.encoding} · first "
        f"{len(state.upload_preview)} rows shown"
    )
    st.dataframe(
        _table(upload.header, state.upload_preview), hide_index=True, height="auto"
    )
    if state.get("text_column") not in upload.header:
        state.text_column = upload.header[0]
    column, source, target = st.columns(3)
    with column:
        st.selectbox(
            "Column to translate",
            upload.header,
            key="text_column",
            disabled=upload.kind != ui_files.KIND_CSV,
        )
    with source:
        if state.get("file_source_lang") not in choices.sources:
            chosen = state.get("source_lang", AUTO)
            state.file_source_lang = (
                chosen
                if chosen != AUTO
                else (PREFERRED_SOURCE if PREFERRED_SOURCE in choices.sources else AUTO)
            )
        st.selectbox(
            "From", choices.sources, format_func=ui_state.label, key="file_source_lang"
        )
    targets = choices.targets(state.file_source_lang)
    if state.get("file_target_lang") not in targets:
        preferred = state.get("target_lang")
        others = [code for code in targets if code != state.file_source_lang]
        state.file_target_lang = (
            preferred if preferred in others else (others or targets)[0]
        )
    with target:
        st.selectbox("To", targets, format_func=ui_state.label, key="file_target_lang")
    if st.button("Start translation", type="primary", icon=":material/play_arrow:"):
        _start_job(upload)


@st.fragment(run_every=POLL_SECONDS)
def _job_progress(job_id: str) -> None:
    """Redraw the progress bar every second; rerun the page when the job ends."""
    report = guarded(lambda: jobs.job_status(job_id, include_result=False))
    if report is None:
        return
    if report["status"] in ui_state.FINISHED_STATUSES:
        st.rerun(scope="app")
    progress = ui_state.progress_of(report)
    label = "Waiting for a worker…" if report["status"] == "queued" else "Translating"
    st.progress(progress.fraction, text=f"{label} · {progress.text}")
    live = guarded(workers.live_workers)
    if live == []:
        st.warning(
            "No translation worker is running, so the job is paused. It goes on "
            "by itself, with nothing lost, once the service's worker is started "
            "again; tell whoever runs the service.",
            icon=":material/pause_circle:",
        )


def _cancel(job: FileJob) -> None:
    guarded(lambda: jobs.cancel_job(job.job_id))


def _show_done(job: FileJob) -> None:
    path = ui_files.output_path(job.upload)
    if not path.exists():
        with st.spinner("Writing the translated file…"):
            written = guarded(
                lambda: ui_files.write_output(
                    job.upload,
                    job.text_column,
                    job.output_column,
                    ui_state.translations(job.job_id),
                )
            )
        if written is None:
            return
    header, rows = ui_files.output_preview(job.upload, job.output_column)
    outcome = state.get(f"outcome-{job.job_id}")
    if outcome is None:
        outcome = guarded(lambda: ui_state.job_outcome(job.job_id))
        state[f"outcome-{job.job_id}"] = outcome
    _show_outcome(job, outcome)
    st.download_button(
        "Download the translated file",
        data=path.read_bytes,
        file_name=ui_files.download_name(job.upload, job.target_lang),
        mime="text/csv" if job.upload.kind == ui_files.KIND_CSV else "text/plain",
        type="primary",
        icon=":material/download:",
        on_click="ignore",
    )
    st.caption(f"First {len(rows)} rows of the translated file")
    st.dataframe(_table(header, rows), hide_index=True)


def _show_outcome(job: FileJob, outcome: ui_state.JobOutcome | None) -> None:
    if outcome is None:
        st.success(f"Done. The new column is **{job.output_column}**.")
        return
    message = (
        f"Done: {outcome.translated:,} of {outcome.rows:,} rows translated into "
        f"the new column **{job.output_column}**."
    )
    if outcome.unchanged == 0 and outcome.failed == 0:
        st.success(message, icon=":material/check_circle:")
        return
    details = []
    if outcome.unchanged:
        details.append(
            f"{outcome.unchanged:,} rows were copied unchanged: they are empty, "
            "have no words, or are already in the target language"
        )
    if outcome.failed:
        reasons = "; ".join(outcome.reasons)
        details.append(
            f"{outcome.failed:,} rows could not be translated and keep their "
            f"source text ({reasons}). Pick the source language instead of "
            "'Detect language' if it is known"
        )
    st.warning(f"{message} " + ". ".join(details) + ".", icon=":material/info:")


def render_job(job: FileJob) -> None:
    """Draw a submitted job: progress while it runs, then the result."""
    st.markdown(
        f"**{job.upload.file_name}** · column **{job.text_column}** · "
        f"{ui_state.label(job.source_lang)} → {ui_state.label(job.target_lang)}"
    )
    report = guarded(lambda: jobs.job_status(job.job_id, include_result=False))
    if report is not None:
        status = report["status"]
        if status == jobs.STATUS_DONE:
            _show_done(job)
        elif status == jobs.STATUS_FAILED:
            st.error(
                f"The job failed: {report.get('error')}. Check the file and try "
                "again; rows already translated come from the cache.",
                icon=":material/error:",
            )
        elif status == jobs.STATUS_CANCELLED:
            st.warning("The job was cancelled.")
        else:
            _job_progress(job.job_id)
            st.button("Cancel the job", on_click=_cancel, args=(job,))
    st.button(
        "Translate another file",
        on_click=_set_job,
        args=(None,),
        icon=":material/upload_file:",
    )
    st.caption(f"Job id {job.job_id}. Bookmark this page to come back to the job.")


def render_file_tab(choices: LanguageChoices) -> None:
    """Draw the running or finished job, else the upload form."""
    job = _current_job()
    if job is not None:
        render_job(job)
    elif not st.query_params.get(JOB_PARAM):
        render_upload_form(choices)


# Service status.


def _clear_cache() -> None:
    result = guarded(lambda: cache.get_cache().clear())
    state.confirm_clear = False
    if result is not None:
        state.cache_cleared = True
        logger.info("The cache was cleared from the UI")


def _show_workers() -> None:
    try:
        live = workers.live_workers()
        loaded = workers.loaded_models_by_process()
    except redis.RedisError as error:
        show_error(BackendUnavailable(f"Redis is unreachable ({error})."))
        return
    st.metric("Workers online", len(live))
    if live:
        st.dataframe(ui_state.worker_rows(live), hide_index=True)
    else:
        st.warning(
            "No worker is running, so nothing new can be translated. Start one "
            "with ./start_services.sh."
        )
    st.markdown("**Models loaded**")
    if loaded:
        st.dataframe(ui_state.model_rows(loaded), hide_index=True)
    else:
        st.caption("No model is loaded yet; a worker loads one on its first job.")


def _show_cache() -> None:
    stats = cache.get_cache().stats()
    entries, rate, redis_column = st.columns(3)
    entries.metric("Lookups", f"{stats['lookups']:,}")
    rate.metric("Hit rate", f"{stats['hit_rate']:.0%}")
    redis_column.metric(
        "Redis", "connected" if stats["redis_connected"] else "unreachable"
    )
    st.dataframe(ui_state.tier_rows(stats), hide_index=True)
    st.caption(f"Hits and misses counted over {stats['counters_scope']}.")
    if stats.get("disk_error"):
        st.warning(f"The disk cache has a problem: {stats['disk_error']}")


def render_status_tab() -> None:
    """Draw workers, models and cache statistics, and the cache clear action."""
    st.button("Refresh", icon=":material/refresh:")
    st.subheader("Workers")
    _show_workers()
    st.subheader("Cache")
    _show_cache()
    if state.pop("cache_cleared", False):
        st.success("The cache was cleared in every process.")
    if not state.get("confirm_clear"):
        st.button(
            "Clear the cache…",
            on_click=lambda: state.update(confirm_clear=True),
        )
        return
    st.warning(
        "Clearing deletes every stored translation in every tier and process. "
        "The next requests are translated again by the workers."
    )
    with st.container(horizontal=True):
        st.button("Yes, clear the cache", type="primary", on_click=_clear_cache)
        st.button("Keep it", on_click=lambda: state.update(confirm_clear=False))


# Page.


def main() -> None:
    """Draw the page."""
    configure_logging()
    st.set_page_config(page_title=PAGE_TITLE, page_icon=None, layout="centered")
    st.title("Translate")
    st.caption("Machine translation on this organisation's own servers.")
    choices = guarded(LanguageChoices.load)
    if choices is None:
        return
    if not choices.routes:
        st.error(
            "This deployment serves no language pair. Ask whoever runs the "
            "service to add models (see 'python -m core.models list')."
        )
        return

    default = TAB_FILE if st.query_params.get(JOB_PARAM) else TAB_TEXT
    text_tab, file_tab, status_tab = st.tabs(
        [TAB_TEXT, TAB_FILE, TAB_STATUS],
        default=default,
        key="tab",
        on_change="rerun",
        bind="query-params",
    )
    if text_tab.open:
        with text_tab:
            render_text_tab(choices)
    if file_tab.open:
        with file_tab:
            render_file_tab(choices)
    if status_tab.open:
        with status_tab:
            render_status_tab()


if __name__ == "__main__":
    main()
