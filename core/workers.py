"""Worker presence in Redis: heartbeats, served pairs and loaded models.

Each worker's main process writes ``mt:worker:<hostname>`` every
``HEARTBEAT_INTERVAL`` seconds with a TTL of ``HEARTBEAT_TTL``, so front ends
learn which workers are alive with one Redis read instead of a broadcast.
Worker child processes record the models they hold under
``mt:models:<hostname>:<pid>``. Model fingerprints are published under
``mt:fingerprint:<source>-<target>`` for front ends that have no local copy of
the checkpoint files.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from core.store import redis_client

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15
MODELS_TTL = 90
MODELS_REFRESH_SECONDS = 30.0
FINGERPRINT_TTL = 7 * 24 * 3600
FINGERPRINT_REPUBLISH_SECONDS = 60.0
WORKER_PREFIX = "mt:worker:"
MODELS_PREFIX = "mt:models:"
FINGERPRINT_PREFIX = "mt:fingerprint:"


class Heartbeat:
    """A daemon thread that announces a live worker until stopped."""

    def __init__(self, hostname: str, info: dict[str, Any]) -> None:
        self.hostname = hostname
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="worker-heartbeat", daemon=True
        )

    @property
    def key(self) -> str:
        return f"{WORKER_PREFIX}{self.hostname}"

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(HEARTBEAT_INTERVAL)

    def beat(self) -> None:
        payload = {**self.info, "hostname": self.hostname, "seen_at": time.time()}
        try:
            redis_client().set(self.key, json.dumps(payload), ex=HEARTBEAT_TTL)
        except redis.RedisError as error:
            logger.warning("Heartbeat of %s failed: %s", self.hostname, error)

    def stop(self) -> None:
        self._stop.set()
        try:
            redis_client().delete(self.key)
        except redis.RedisError as error:
            logger.warning("Could not remove heartbeat of %s: %s", self.hostname, error)


def live_workers() -> list[dict[str, Any]]:
    """Return the heartbeat payloads of every live worker.

    Raises ``redis.RedisError`` when Redis is unreachable.
    """
    client = redis_client()
    names = list(client.scan_iter(match=f"{WORKER_PREFIX}*", count=200))
    if not names:
        return []
    workers = []
    for raw in client.mget(names):
        if raw:
            workers.append(json.loads(raw))
    return sorted(workers, key=lambda worker: worker["hostname"])


def record_models(hostname: str, models: list[str]) -> None:
    """Store the models one worker child process holds."""
    key = f"{MODELS_PREFIX}{hostname}:{os.getpid()}"
    try:
        if models:
            redis_client().set(key, json.dumps(models), ex=MODELS_TTL)
        else:
            redis_client().delete(key)
    except redis.RedisError as error:
        logger.warning("Could not record loaded models: %s", error)


def start_model_reporter(hostname: str, loaded: Any) -> threading.Thread:
    """Refresh this process's loaded-models record until the process exits.

    ``loaded`` returns the current model names. The record expires
    ``MODELS_TTL`` seconds after its process stops refreshing it, so a killed
    worker process drops out of the stats within that time.
    """

    def run() -> None:
        while True:
            record_models(hostname, loaded())
            time.sleep(MODELS_REFRESH_SECONDS)

    thread = threading.Thread(target=run, name="model-reporter", daemon=True)
    thread.start()
    return thread


def loaded_models_by_process() -> dict[str, list[str]]:
    """Return ``{"hostname:pid": [model names]}`` across all workers."""
    client = redis_client()
    names = list(client.scan_iter(match=f"{MODELS_PREFIX}*", count=200))
    result: dict[str, list[str]] = {}
    for name, raw in zip(names, client.mget(names) if names else [], strict=True):
        if raw:
            result[name.decode()[len(MODELS_PREFIX) :]] = json.loads(raw)
    return result


def publish_fingerprint(source: str, target: str, fingerprint: str) -> None:
    """Publish the fingerprint of a loaded checkpoint for front ends."""
    try:
        redis_client().set(
            f"{FINGERPRINT_PREFIX}{source}-{target}", fingerprint, ex=FINGERPRINT_TTL
        )
    except redis.RedisError as error:
        logger.warning(
            "Could not publish the fingerprint of %s-%s: %s", source, target, error
        )


_published_at: dict[tuple[str, str, str], float] = {}


def publish_fingerprint_throttled(source: str, target: str, fingerprint: str) -> None:
    """Publish a fingerprint at most once per ``FINGERPRINT_REPUBLISH_SECONDS``.

    Republishing now and then lets front ends relearn it after Redis lost data.
    """
    marker = (source, target, fingerprint)
    now = time.monotonic()
    last = _published_at.get(marker)
    if last is not None and now - last < FINGERPRINT_REPUBLISH_SECONDS:
        return
    publish_fingerprint(source, target, fingerprint)
    _published_at[marker] = now


def published_fingerprint(source: str, target: str) -> str | None:
    """Return the fingerprint a worker published for a pair, if any."""
    try:
        raw = redis_client().get(f"{FINGERPRINT_PREFIX}{source}-{target}")
    except redis.RedisError:
        return None
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def default_hostname() -> str:
    return socket.gethostname()
