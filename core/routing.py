"""Routing of translation tasks to the workers that serve their pair.

A worker started without ``WORKER_PAIRS`` serves every configured pair and
consumes the shared queues ``interactive``, ``bulk`` and ``maintenance``. A
worker started with ``WORKER_PAIRS`` serves only the routes those pairs can
complete and consumes one queue per route and priority, such as
``interactive.en-de`` and ``bulk.en-de``, plus ``maintenance``. Front ends read
the routes and queues of live workers from their heartbeats and send each task
to a queue that a worker serving its route consumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kombu import Exchange, Queue

from core import models
from core.config import ConfigError, Settings, get_settings
from core.errors import BackendUnavailable, ServiceError

logger = logging.getLogger(__name__)

QUEUE_INTERACTIVE = "interactive"
QUEUE_BULK = "bulk"
QUEUE_MAINTENANCE = "maintenance"
SHARED_QUEUES = (QUEUE_INTERACTIVE, QUEUE_BULK, QUEUE_MAINTENANCE)
AUTO = "auto"


class PairUnavailable(BackendUnavailable):
    """No live worker serves the requested language pair."""

    code = "pair_unavailable"


def route_key(source_lang: str, target_lang: str) -> str:
    """Return the ``SOURCE-TARGET`` name of a route."""
    return f"{source_lang}-{target_lang}"


def served_route_key(source_lang: str, target_lang: str) -> str:
    """Return the name of the served route that translates a request's pair.

    Region codes map to the route that serves them, so ``en-US`` to ``es-ES``
    is the route ``en-es`` when only ``opus-mt-en-es`` is served. A pair
    without a served route keeps its own codes.
    """
    if source_lang == AUTO:
        return route_key(source_lang, target_lang)
    try:
        refs = models.resolve_route(source_lang, target_lang)
    except ServiceError:
        return route_key(source_lang, target_lang)
    return route_key(refs[0].source, refs[-1].target)


def pair_queue(base: str, source_lang: str, target_lang: str) -> str:
    """Return the name of the per-route queue, such as ``bulk.en-de``."""
    return f"{base}.{served_route_key(source_lang, target_lang)}"


def make_queue(name: str) -> Queue:
    """Return a queue with its own direct exchange and routing key.

    Without its own exchange and key, kombu binds every queue to the default
    queue's exchange and key.
    """
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def worker_routes(settings: Settings | None = None) -> list[str] | None:
    """Return the route names this worker serves, or None for every route.

    Raises ``ConfigError`` when ``WORKER_PAIRS`` names a pair the deployment
    does not serve.
    """
    settings = settings or get_settings()
    if settings.worker_pairs is None:
        return None
    served = models.served_pairs(settings)
    chosen = set()
    for name in settings.worker_pairs:
        pair = models.parse_pair(name)
        if pair not in served:
            listing = ", ".join(route_key(*pair) for pair in served) or "none"
            raise ConfigError(
                f"WORKER_PAIRS names {name!r}, which this deployment does not "
                f"serve. Served pairs: {listing}. Remove it from WORKER_PAIRS, "
                "or add its checkpoint to MODEL_DIR or LANGUAGE_PAIRS."
            )
        chosen.add(pair)
    routes = models.served_routes(settings, only=chosen)
    return [route_key(route["source_lang"], route["target_lang"]) for route in routes]


def worker_queues(
    routes: Sequence[str] | None, priorities: Sequence[str] = SHARED_QUEUES
) -> list[Queue]:
    """Return the queues a worker serving ``routes`` consumes.

    ``None`` means every route, which the shared queues carry. ``priorities``
    are the queues of ``WORKER_QUEUES``: for a worker of some routes,
    ``interactive`` and ``bulk`` stand for those routes' queues.
    """
    if routes is None:
        return [make_queue(name) for name in SHARED_QUEUES if name in priorities]
    names = [
        f"{base}.{route}"
        for route in routes
        for base in (QUEUE_INTERACTIVE, QUEUE_BULK)
        if base in priorities
    ]
    if QUEUE_MAINTENANCE in priorities:
        names.append(QUEUE_MAINTENANCE)
    return [make_queue(name) for name in names]


def _serves(worker: dict[str, Any], route: str) -> bool:
    # A heartbeat without "routes" comes from a worker that serves every route.
    routes = worker.get("routes")
    return routes is None or route in routes


def choose_queue(
    base: str,
    source_lang: str,
    target_lang: str,
    workers: Sequence[dict[str, Any]],
) -> str:
    """Return the queue for a task of ``base`` priority on one route.

    The shared queue wins when a live worker consuming it serves the route;
    otherwise the route's own queue, when a live worker consumes that. Raises
    ``PairUnavailable`` naming the pair when no live worker serves it.
    """
    prefix = f"{base}."
    if not any(
        name == base or name.startswith(prefix)
        for worker in workers
        for name in worker.get("queues", [])
    ):
        raise BackendUnavailable(
            f"No live worker consumes {base!r} tasks. Start one with "
            f"WORKER_QUEUES={base} celery -A tasks worker, or a worker without "
            "WORKER_QUEUES, then retry."
        )
    shared = [worker for worker in workers if base in worker.get("queues", [])]
    if source_lang == AUTO:
        if shared:
            return base
        raise PairUnavailable(
            f"source_lang 'auto' into {target_lang!r} needs a worker that serves "
            "every pair, and every live worker was started with WORKER_PAIRS. "
            "Name the source language, or start a worker without WORKER_PAIRS."
        )

    route = served_route_key(source_lang, target_lang)
    if any(_serves(worker, route) for worker in shared):
        return base
    dedicated = f"{base}.{route}"
    if any(dedicated in worker.get("queues", []) for worker in workers):
        return dedicated

    served = sorted({name for worker in workers for name in worker.get("routes") or []})
    listing = ", ".join(served) or "none"
    raise PairUnavailable(
        f"No live worker serves {route!r}. Live workers serve: {listing}. Put "
        "its checkpoint in a worker's MODEL_DIR ('python -m core.models list' "
        "shows what is missing) and restart that worker, or start a worker "
        f"with WORKER_PAIRS={route} celery -A tasks worker, then retry."
    )


def any_worker_queue(base: str, workers: Sequence[dict[str, Any]]) -> str:
    """Return a queue of ``base`` priority that some live worker consumes.

    For tasks any worker can run whatever pairs it serves, such as language
    detection. Raises ``BackendUnavailable`` when ``workers`` is empty.
    """
    for worker in workers:
        if base in worker.get("queues", []):
            return base
    prefix = f"{base}."
    for worker in workers:
        for name in worker.get("queues", []):
            if name.startswith(prefix):
                return str(name)
    raise BackendUnavailable(
        f"No live worker consumes a {base!r} queue. Start one with "
        "'celery -A tasks worker', then retry."
    )
