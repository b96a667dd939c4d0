"""The Celery client used by front ends to send tasks by name.

Front ends never import ``tasks``: they send ``tasks.translate_text`` and
friends by name through this client, so they stay free of torch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kombu.exceptions
import redis
from celery import Celery

from core.config import get_settings
from core.errors import BackendUnavailable, QueueFull
from core.store import redis_client
from core.workers import live_workers

logger = logging.getLogger(__name__)

_app: Celery | None = None
_lock = threading.Lock()

WITHHELD = "(withheld)"

BROKER_ERRORS = (
    redis.RedisError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def celery_app() -> Celery:
    """Return the client Celery app, configured from ``celery_config``."""
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                app = Celery("mt-client")
                app.config_from_object("celery_config")
                _app = app
    return _app


def reset_app() -> None:
    """Forget the client app, for tests that change the broker URL."""
    global _app
    _app = None


def require_workers() -> list[dict[str, Any]]:
    """Return the live workers, or raise ``BackendUnavailable``."""
    try:
        redis_client().ping()
        workers = live_workers()
    except redis.AuthenticationError as error:
        raise BackendUnavailable(
            f"Redis rejected this client's password ({error}). Set "
            "REDIS_PASSWORD, or REDIS_PASSWORD_FILE to the file start_services.sh "
            "wrote (var/redis-password by default), in this shell and retry."
        ) from None
    except redis.RedisError as error:
        raise BackendUnavailable(
            f"The broker at Redis is unreachable ({error}). Start Redis "
            "(./start_services.sh does) and retry."
        ) from None
    if not workers:
        raise BackendUnavailable(
            "No translation worker is running. Start one with "
            "'celery -A tasks worker' or ./start_services.sh, then retry."
        )
    return workers


def check_backpressure(queue: str = "bulk") -> int:
    """Return the queue's depth, or raise ``QueueFull`` above ``MAX_BULK_QUEUE``.

    Asynchronous jobs are refused while the bulk queue is this deep, so work
    does not pile up faster than the workers can take it.
    """
    limit = get_settings().max_bulk_queue
    try:
        depth = int(redis_client().llen(queue))
    except redis.RedisError as error:
        raise BackendUnavailable(
            f"The broker at Redis is unreachable ({error}). Start Redis and retry."
        ) from None
    if depth >= limit:
        raise QueueFull(
            f"The {queue!r} queue has {depth} waiting tasks, at or over the "
            f"limit of {limit} (MAX_BULK_QUEUE). Retry later, or add workers."
        )
    return depth


def send(
    name: str,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str,
    task_id: str | None = None,
) -> str:
    """Send a task by name; return its id or raise ``BackendUnavailable``."""
    try:
        # Arguments hold user text: events and Flower show a placeholder
        # instead of their repr.
        result = celery_app().send_task(
            name,
            args=args or [],
            kwargs=kwargs or {},
            queue=queue,
            task_id=task_id,
            argsrepr=WITHHELD,
            kwargsrepr=WITHHELD,
        )
    except BROKER_ERRORS as error:
        logger.warning("Sending %s failed: %s", name, error)
        raise BackendUnavailable(
            f"Could not queue the task {name}: the broker is unreachable "
            f"({error}). Check that Redis is running and retry."
        ) from None
    return str(result.id)
