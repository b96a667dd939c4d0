"""Celery tasks of the translation workers.

Workers are the only processes that import torch and transformers, and they
do so lazily, in the child process that runs the first translation, so the
parent never touches torch before it forks. Start a worker with
``celery -A tasks worker``; it consumes the ``interactive``, ``bulk`` and
``maintenance`` queues, or with ``WORKER_PAIRS`` set the queues of those
pairs' routes (see ``core.routing``), unless ``-Q`` names others.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, signals
from celery.app import trace as celery_trace

from core import batching, delivery, jobs, metrics, models, routing, store, workers
from core import cache as cache_module
from core.broker import BROKER_ERRORS
from core.cache import get_cache
from core.config import get_settings
from core.errors import UnsupportedLanguagePair
from core.options import TranslationOptions
from core.pipeline import Pipeline, detect_with_cache

logger = logging.getLogger(__name__)

app = Celery("tasks")
app.config_from_object("celery_config")

# By default Celery logs every task's return value at INFO and puts its repr in
# the task-succeeded event that Flower shows. Results contain user text, which
# this service logs only at DEBUG, so both leave the result out.
celery_trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
app.Task.resultrepr_maxsize = 0

# Routes this worker serves, or None for every route. A worker started with
# WORKER_PAIRS consumes only the queues of its routes, and WORKER_QUEUES
# limits it to some priorities.
_routes = routing.worker_routes()
app.conf.task_queues = routing.worker_queues(_routes, get_settings().worker_queues)
metrics.check_worker_exporter(get_settings().worker_metrics_port)

_heartbeat: workers.Heartbeat | None = None
# The Celery node name (such as worker@host), set in the parent before the
# pool forks, so each child records its models under the name in heartbeats.
_node_name: str | None = None


def translate_items(
    task: Task | None,
    texts: Sequence[str],
    source_lang: str,
    target_lang: str,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Translate texts with the cache; return one item per text, in order.

    Items that fail on every attempt come back with an ``error`` (see
    ``core.delivery``) while the others are translated.
    """
    task_id = task.request.id if task is not None else None
    _check_route(source_lang, target_lang)
    started = time.perf_counter()
    settings = get_settings()
    translation_options = TranslationOptions.from_dict(options)

    def translate_range(start: int, subset: list[str]) -> list[dict[str, Any]]:
        delivery.inject_test_faults(subset)
        pipeline = Pipeline(
            translation_options,
            worker=True,
            progress=lambda done: _report_progress(task, start + done, len(texts)),
            group_size=settings.max_batch_size,
            owner=task_id,
        )
        items = pipeline.run(subset, source_lang, target_lang)
        return [item for item in items if item is not None]

    items = delivery.translate_bounded(texts, translate_range, task_id=task_id)
    cached = sum(1 for item in items if item.get("cached"))
    logger.info(
        "Task %s: %d texts %s-%s, %d cache hits, done in %.2f s",
        task_id,
        len(texts),
        source_lang,
        target_lang,
        cached,
        time.perf_counter() - started,
    )
    return items


def _check_route(source_lang: str, target_lang: str) -> None:
    """Raise ``UnsupportedLanguagePair`` for a route outside ``WORKER_PAIRS``."""
    if _routes is None or source_lang == routing.AUTO:
        return
    route = routing.served_route_key(source_lang, target_lang)
    if route not in _routes:
        raise UnsupportedLanguagePair(
            f"This worker serves only {', '.join(_routes)} (WORKER_PAIRS), not "
            f"{route!r}. Its task was sent to a queue of this worker; check "
            "that '-Q' was not used to consume another pair's queue."
        )


def _report_progress(task: Task | None, current: int, total: int) -> None:
    """Publish ``{current, total}``, logging a broker error instead of raising it."""
    if task is None or task.request.called_directly or task.request.is_eager:
        return
    try:
        task.update_state(state="PROGRESS", meta={"current": current, "total": total})
    except BROKER_ERRORS as error:
        logger.warning("Task %s: progress update failed: %s", task.request.id, error)


@app.task(name="tasks.translate_text", bind=True)
def translate_text(
    self: Task,
    text: str,
    source_lang: str,
    target_lang: str,
    options: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Translate one text, batched with other pending texts; return its item.

    A text another task already translated is returned from the cache at
    once. Otherwise the pending texts of the same route and options join this
    text in one batch (see ``core.batching``).
    """
    if jobs.is_cancelled(job_id):
        logger.info("Task %s skipped: job %s was cancelled", self.request.id, job_id)
        return {"cancelled": True}
    parsed = TranslationOptions.from_dict(options)
    known = Pipeline(parsed, worker=False).run([text], source_lang, target_lang)[0]
    if known is not None:
        return known
    limit = get_settings().max_batch_size - 1
    others = batching.collect(source_lang, target_lang, parsed, limit)
    texts = [text, *(other for other in others if other != text)]
    if len(texts) > 1:
        logger.info(
            "Task %s: batching %d pending texts", self.request.id, len(texts) - 1
        )
    return translate_items(self, texts, source_lang, target_lang, options)[0]


@app.task(name="tasks.translate_batch", bind=True)
def translate_batch(
    self: Task,
    texts: list[str],
    source_lang: str,
    target_lang: str,
    options: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Translate a batch, reporting ``{current, total}`` progress."""
    if jobs.is_cancelled(job_id):
        logger.info("Task %s skipped: job %s was cancelled", self.request.id, job_id)
        return {"cancelled": True, "items": []}
    items = translate_items(self, texts, source_lang, target_lang, options)
    return {"translations": [item["translation"] for item in items], "items": items}


@app.task(name="tasks.clear_cache")
def clear_cache() -> dict[str, Any]:
    """Clear every cache tier in every process."""
    return get_cache().clear()


@app.task(name="tasks.get_cache_stats")
def get_cache_stats() -> dict[str, Any]:
    """Return the cache statistics and the models this worker process holds."""
    return {**get_cache().stats(), "models_loaded": models.loaded_models()}


@signals.celeryd_init.connect
def _remember_node_name(sender: Any = None, **_: Any) -> None:
    global _node_name
    _node_name = str(sender) if sender else None


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Give each forked child its own connections and cache handles."""
    cache_module.reset_cache()
    store.reset_client()
    # A model load cut short ends this child; the task goes to a fresh one.
    models.exit_on_broken_load = True
    hostname = _node_name or workers.default_hostname()
    models.on_model_change.append(lambda names: workers.record_models(hostname, names))
    workers.start_model_reporter(hostname, models.loaded_models)


@signals.worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    hostname = getattr(sender, "hostname", None) or workers.default_hostname()
    queues = sorted(queue.name for queue in app.amqp.queues.consume_from.values())
    settings = get_settings()
    served = [routing.route_key(*pair) for pair in models.served_pairs()]
    info = {
        "pid": os.getpid(),
        "queues": queues,
        "pairs": list(settings.worker_pairs or served),
        "routes": _served_route_keys(),
        "concurrency": settings.worker_concurrency,
    }
    _heartbeat = workers.Heartbeat(hostname, info)
    _heartbeat.start()
    if settings.worker_metrics_port:
        metrics.start_worker_exporter(
            settings.worker_metrics_host, settings.worker_metrics_port
        )
    logger.info("Worker %s ready on queues %s", hostname, ", ".join(queues))


def _served_route_keys() -> list[str]:
    if _routes is not None:
        return list(_routes)
    return [
        routing.route_key(route["source_lang"], route["target_lang"])
        for route in models.served_routes()
    ]


@signals.worker_shutdown.connect
def _retire(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
        logger.info("Worker %s stopped", _heartbeat.hostname)


@signals.task_success.connect
def _count_success(sender: Any = None, **_: Any) -> None:
    metrics.record_task_outcome(getattr(sender, "name", None), "success")


@signals.task_failure.connect
def _count_failure(sender: Any = None, **_: Any) -> None:
    metrics.record_task_outcome(getattr(sender, "name", None), "failure")


@signals.task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    metrics.record_task_outcome(getattr(sender, "name", None), "retry")


@app.task(name="tasks.detect_language", bind=True)
def detect_language(
    self: Task, texts: list[str], candidates: list[str]
) -> list[dict[str, Any]]:
    """Detect the language of each text among ``candidates``, through the cache.

    Returns ``{"language", "confidence"}`` per text, in order, under the same
    cache keys as the detections of ``source_lang: "auto"``. ``language`` is
    None when the detector cannot tell.
    """
    results = detect_with_cache(texts, candidates, run_detector=True)
    logger.info(
        "Task %s: detected the language of %d texts", self.request.id, len(texts)
    )
    return [result for result in results if result is not None]
