"""Prometheus metrics of the API and the workers, and the ``/metrics`` endpoint.

Each metric is created once per process, when this module is first imported.
When ``PROMETHEUS_MULTIPROC_DIR`` is set before that import, prometheus_client
writes every value to a file in that folder. A scrape then adds up the files
of every process on the host, which includes the gunicorn workers and the
Celery worker's children. The queue depth is read from the broker at scrape
time, so it is never stored.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import Iterable, Iterator

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core import workers
from core.config import ConfigError, get_settings

logger = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The shared queues that celery_config.py declares. Per-pair queues of
# WORKER_PAIRS workers are read from the live workers' heartbeats.
QUEUES = ("interactive", "bulk", "maintenance")
# kombu's Redis transport (5.7) stores a message without priority in the list
# "<queue>", and one with priority 3, 6 or 9 in "<queue>\x06\x16<priority>".
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
# Synchronous requests wait up to SYNC_TIMEOUT (30 s by default) for a worker.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
UNMATCHED_ENDPOINT = "unmatched"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
# Headers a reverse proxy adds. A request that carries one came through a
# proxy, so its loopback address does not identify the client.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
# The field that carries the texts in each translation route of the API.
TEXT_FIELDS = {
    "/api/translate": "text",
    "/api/batch": "texts",
    "/translate": "q",
    "/v2/translate": "text",
}

HTTP_REQUESTS = Counter(
    "mt_http_requests",
    "HTTP requests answered by the API, by route, method and status.",
    ["endpoint", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "mt_http_request_seconds",
    "Time from the start of a request to its response, by route.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
CHARACTERS_TRANSLATED = Counter(
    "mt_characters_translated",
    "Characters of the texts of successful translation requests to the API, "
    "whether served from the cache or by a worker.",
)
CACHE_LOOKUPS = Counter(
    "mt_cache_lookups",
    "Translation cache lookups, by tier and result (hit or miss).",
    ["tier", "result"],
)
TASK_OUTCOMES = Counter(
    "mt_task_outcomes",
    "Celery task outcomes recorded by the workers (success, failure, retry).",
    ["task", "outcome"],
)

_broker_client: redis.Redis | None = None
_broker_lock = threading.Lock()


def record_request(
    endpoint: str | None, method: str, status: int, seconds: float
) -> None:
    """Count one finished request and observe its duration in seconds."""
    label = endpoint or UNMATCHED_ENDPOINT
    # Clients choose the method, so any other value shares one label instead
    # of adding a series per value.
    method_label = method if method in HTTP_METHODS else OTHER_METHOD
    HTTP_REQUESTS.labels(endpoint=label, method=method_label, status=str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(endpoint=label).observe(seconds)


def record_characters(texts: Iterable[object]) -> None:
    """Add the length of every string in ``texts`` to the character counter."""
    total = sum(len(text) for text in texts if isinstance(text, str))
    if total:
        CHARACTERS_TRANSLATED.inc(total)


def record_request_characters(rule: str | None, status: int) -> None:
    """Count the characters of a successful translation request to the API.

    ``rule`` is the matched route, such as ``/api/batch``. The texts are read
    from the route's field in the JSON body, else in the query and form.
    """
    field = TEXT_FIELDS.get(rule or "")
    if field is None or status not in (200, 202):
        return
    if request.is_json:
        body = request.get_json(silent=True)
        value = body.get(field) if isinstance(body, dict) else None
        texts = value if isinstance(value, list) else [value]
    else:
        texts = request.args.getlist(field) + request.form.getlist(field)
    record_characters(texts)


def record_cache_lookups(tier: str, hits: int, misses: int) -> None:
    """Count the hits and misses of one tier in one ``get_many`` call."""
    if hits:
        CACHE_LOOKUPS.labels(tier=tier, result="hit").inc(hits)
    if misses:
        CACHE_LOOKUPS.labels(tier=tier, result="miss").inc(misses)


def record_task_outcome(task: str | None, outcome: str) -> None:
    """Count one task ending in ``outcome`` (success, failure or retry)."""
    TASK_OUTCOMES.labels(task=task or "unknown", outcome=outcome).inc()


def _broker() -> redis.Redis | None:
    """Return a client for the Celery broker, or None when it is not Redis."""
    global _broker_client
    settings = get_settings()
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    if _broker_client is None:
        with _broker_lock:
            if _broker_client is None:
                _broker_client = redis.Redis.from_url(
                    settings.broker_url,
                    socket_timeout=settings.redis_timeout * 5,
                    socket_connect_timeout=settings.redis_timeout,
                )
    return _broker_client


def reset_broker_client() -> None:
    """Drop the broker client, for tests that change ``CELERY_BROKER_URL``."""
    global _broker_client
    _broker_client = None


class QueueDepthCollector(Collector):
    """``mt_queue_depth{queue}``: messages waiting in each broker queue.

    The lists are read with LLEN at every scrape. While the broker is
    unreachable the metric is left out of the scrape instead of reading 0.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        client = _broker()
        if client is None:
            # NOTE: only a Redis broker is read; other brokers show no depth.
            return
        try:
            queues = _queue_names()
            with client.pipeline(transaction=False) as pipeline:
                for queue in queues:
                    pipeline.llen(queue)
                    for step in PRIORITY_STEPS:
                        pipeline.llen(f"{queue}{PRIORITY_SEPARATOR}{step}")
                lengths = pipeline.execute()
        except redis.RedisError as error:
            logger.warning("Metrics scrape: broker queue length unreadable: %s", error)
            return
        gauge = GaugeMetricFamily(
            "mt_queue_depth",
            "Messages waiting in each Celery queue of the broker.",
            labels=["queue"],
        )
        per_queue = len(PRIORITY_STEPS) + 1
        for index, queue in enumerate(queues):
            depth = sum(lengths[index * per_queue : (index + 1) * per_queue])
            gauge.add_metric([queue], depth)
        yield gauge


def _queue_names() -> list[str]:
    """Return the shared queues and every queue a live worker consumes."""
    announced = {
        str(queue)
        for worker in workers.live_workers()
        for queue in worker.get("queues", [])
    }
    return [*QUEUES, *sorted(announced - set(QUEUES))]


def check_worker_exporter(port: int) -> None:
    """Raise ``ConfigError`` when ``WORKER_METRICS_PORT`` cannot work."""
    if port and multiprocess_dir() is None:
        raise ConfigError(
            f"WORKER_METRICS_PORT is {port}, but {MULTIPROC_DIR_ENV} is unset, so "
            "the worker's child processes keep their metrics to themselves. Set "
            f"{MULTIPROC_DIR_ENV} to an empty folder the worker can write."
        )


def start_worker_exporter(host: str, port: int) -> None:
    """Serve the metrics of this host's worker processes on ``host:port``.

    For workers on hosts without an API process, whose ``/metrics`` would
    otherwise be the only reader of their metrics files.
    """
    path = multiprocess_dir()
    if path is None:
        raise ConfigError(f"{MULTIPROC_DIR_ENV} is unset; see check_worker_exporter.")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    start_http_server(port, addr=host, registry=registry)
    logger.info("Worker metrics served on http://%s:%d/metrics", host, port)


def multiprocess_dir() -> str | None:
    """Return ``PROMETHEUS_MULTIPROC_DIR``, or None when it is unset or empty."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def render_metrics() -> bytes:
    """Return every metric in the Prometheus text format.

    In multiprocess mode the values are summed over the files of every process
    in ``PROMETHEUS_MULTIPROC_DIR``; otherwise they come from this process.
    """
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        output = generate_latest(registry)
    else:
        output = generate_latest(REGISTRY)

    queues = CollectorRegistry()
    queues.register(QueueDepthCollector())
    return output + generate_latest(queues)


def scrape_allowed(
    remote_addr: str | None, authorization: str | None, proxied: bool = False
) -> bool:
    """Decide whether a client may read ``/metrics``.

    Loopback clients (127.0.0.0/8 and ::1) may, unless the request came
    through a proxy (``proxied``), whose own address is loopback for every
    client. Others need the header ``Authorization: Bearer <METRICS_TOKEN>``,
    and only when that variable is set.
    """
    try:
        loopback = (
            remote_addr is not None and ipaddress.ip_address(remote_addr).is_loopback
        )
        if loopback and not proxied:
            return True
    except ValueError:
        pass
    token = get_settings().metrics_token
    if not token or not authorization:
        return False
    scheme, _, supplied = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


def register_metrics_endpoint(app: Flask) -> None:
    """Attach ``GET /metrics`` to ``app``."""

    @app.get("/metrics")
    def metrics() -> Response:
        proxied = any(name in request.headers for name in PROXY_HEADERS)
        if not scrape_allowed(
            request.remote_addr, request.headers.get("Authorization"), proxied
        ):
            response = jsonify(
                {
                    "success": False,
                    "error": "Metrics are served to loopback clients only, or to "
                    "requests with 'Authorization: Bearer <METRICS_TOKEN>' when "
                    "METRICS_TOKEN is set.",
                    "code": "forbidden",
                }
            )
            response.status_code = 403
            return response
        return Response(
            render_metrics(), mimetype=None, content_type=CONTENT_TYPE_LATEST
        )
