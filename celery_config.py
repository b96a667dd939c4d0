"""Celery settings for the workers and for the front ends that send tasks.

Celery reads the lowercase module attributes through ``config_from_object``.
Values come from ``core.config`` so every process agrees on them.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from core.config import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
result_backend = _settings.result_backend

# JSON only: pickle would let anyone who can write to Redis run code in a worker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A task is acknowledged after it ran, and redelivered when its process died.
task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = True
worker_prefetch_multiplier = 1
worker_max_tasks_per_child = _settings.worker_max_tasks_per_child
worker_concurrency = _settings.worker_concurrency
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit
result_expires = _settings.job_ttl
# A worker that cannot store a result while Redis is down retries until Redis
# is back, instead of recording the task as failed.
result_backend_always_retry = True
result_backend_max_retries = float("inf")
result_extended = False

# Redis redelivers an unacknowledged message after the visibility timeout, so
# it is longer than the hard time limit: a running task is never run twice.
# Workers look for such messages every unacked_restore_interval seconds (kombu
# 5.7 defaults to 10 s times a throttle of 10, about 100 s), which bounds the
# redelivery of a killed worker's task to the timeout plus this interval.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "unacked_restore_interval": max(1, min(10, _settings.visibility_timeout // 4)),
    "unacked_restore_throttle": 1,
    "socket_timeout": _settings.redis_timeout * 5,
    "socket_connect_timeout": _settings.redis_timeout,
}
result_backend_transport_options = {
    "socket_timeout": _settings.redis_timeout * 5,
    "socket_connect_timeout": _settings.redis_timeout,
}
redis_socket_timeout = _settings.redis_timeout * 5
redis_socket_connect_timeout = _settings.redis_timeout
broker_connection_retry_on_startup = True
broker_connection_timeout = _settings.redis_timeout
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

# Each queue has its own direct exchange and routing key; without them kombu
# binds every queue to the default queue's exchange and key.
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in ("interactive", "bulk", "maintenance")
)
task_default_queue = "interactive"
task_routes = {
    "tasks.translate_text": {"queue": "interactive"},
    "tasks.translate_batch": {"queue": "bulk"},
    "tasks.detect_language": {"queue": "interactive"},
    "tasks.clear_cache": {"queue": "maintenance"},
    "tasks.get_cache_stats": {"queue": "maintenance"},
}

worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
