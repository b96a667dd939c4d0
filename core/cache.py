"""The translation cache shared by every process, in three tiers.

Lookups go memory, then disk, then Redis; a hit in a lower tier is promoted to
the tiers above it, and a translation made by a worker is written to all three.
Values are JSON, never pickle.

Clearing works across processes and hosts through a generation number kept in
Redis under ``<prefix>generation``. Every lookup reads it in the same round
trip as the Redis values; a process that sees a new generation empties its
memory and disk tiers, and every stored value carries the generation it was
written under, so a value from before a clear is never served. While Redis is
unreachable the cache serves from memory and disk under the last generation it
saw, and ``stats()`` reports ``redis_connected: false``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import redis

from core import metrics
from core.config import Settings, get_settings, redact_url

logger = logging.getLogger(__name__)

KEY_VERSION = 1
REDIS_SCAN_BUDGET_SECONDS = 0.2
DISK_GENERATION_KEY = "__generation__"
# Failures of the disk tier: I/O errors such as ENOSPC or a read-only folder,
# SQLite errors ("database or disk is full"), and diskcache's lock timeout.
DISK_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
STATS_FIELDS = (
    "lookups",
    "memory_hits",
    "memory_misses",
    "disk_hits",
    "disk_misses",
    "redis_hits",
    "redis_misses",
)


def cache_key(
    *,
    model_fingerprint: str,
    engine: str,
    precision: str,
    generation: Mapping[str, Any],
    source_lang: str,
    target_lang: str,
    options: Mapping[str, Any],
    text: str,
) -> str:
    """Return the hex key of one translation, the same in every process.

    The text is NFC-normalised so that composed and decomposed accents share
    an entry. Every input that changes the output is part of the hash.
    """
    material = {
        "v": KEY_VERSION,
        "model": model_fingerprint,
        "engine": engine,
        "precision": precision,
        "generation": dict(generation),
        "source": source_lang,
        "target": target_lang,
        "options": dict(options),
        "text": unicodedata.normalize("NFC", text),
    }
    encoded = json.dumps(material, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyContext:
    """Everything but the text and options that a cache key depends on."""

    source_lang: str
    target_lang: str
    model_fingerprint: str
    engine: str
    precision: str
    generation: tuple[tuple[str, Any], ...]

    @classmethod
    def build(
        cls,
        source_lang: str,
        target_lang: str,
        model_fingerprint: str,
        settings: Settings | None = None,
    ) -> KeyContext:
        """Build the context from the fingerprint and the generation settings."""
        from core.translator import generation_settings

        settings = settings or get_settings()
        return cls(
            source_lang=source_lang,
            target_lang=target_lang,
            model_fingerprint=model_fingerprint,
            engine=settings.engine,
            precision=settings.precision,
            generation=tuple(sorted(generation_settings(settings).items())),
        )

    def key(self, text: str, options: Mapping[str, Any]) -> str:
        return cache_key(
            model_fingerprint=self.model_fingerprint,
            engine=self.engine,
            precision=self.precision,
            generation=dict(self.generation),
            source_lang=self.source_lang,
            target_lang=self.target_lang,
            options=options,
            text=text,
        )


class JSONOnlyDisk(diskcache.Disk):
    """A diskcache ``Disk`` that stores and reads only strings and bytes.

    diskcache pickles any other key or value by default and unpickles pickled
    rows on read; this class rejects both, so a planted pickle row is never
    loaded.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str | bytes):
            raise TypeError(f"cache keys must be str or bytes, got {type(key)!r}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise ValueError("refusing to unpickle a disk cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        if read or not isinstance(value, str | bytes | int):
            raise TypeError(
                f"disk cache values must be str, bytes or int, got {type(value)!r}"
            )
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("refusing to unpickle a disk cache value")
        return super().fetch(mode, filename, value, read)


@dataclass
class CacheHit:
    """A cached value and the tier that served it."""

    value: dict[str, Any]
    tier: str


class MemoryTier:
    """An LRU dict bounded by entry count, safe across threads."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class DiskTier:
    """A diskcache store bounded in bytes; errors disable it for a while."""

    def __init__(self, directory: Path, size_limit: int, retry_interval: float):
        self.directory = directory
        self.size_limit = size_limit
        self.retry_interval = retry_interval
        self.last_error: str | None = None
        self._cache: diskcache.Cache | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return self.last_error is None

    def _open(self) -> diskcache.Cache | None:
        if self.size_limit <= 0 or time.monotonic() < self._down_until:
            return None
        if self._cache is not None:
            return self._cache
        with self._lock:
            if self._cache is None:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(self.directory, 0o700)
                self._cache = diskcache.Cache(
                    str(self.directory),
                    size_limit=self.size_limit,
                    disk=JSONOnlyDisk,
                    eviction_policy="least-recently-stored",
                )
        return self._cache

    def _failed(self, action: str, error: Exception) -> None:
        # /health shows last_error, so it names the error without the path.
        reason = error.strerror if isinstance(error, OSError) else None
        self.last_error = f"{action} failed: {type(error).__name__}: {reason or error}"
        self._down_until = time.monotonic() + self.retry_interval
        logger.warning("Disk cache %s failed in %s: %s", action, self.directory, error)

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            cache = self._open()
            if cache is None:
                return None
            raw = cache.get(key)
        except ValueError as error:
            logger.warning("Disk cache entry rejected in %s: %s", self.directory, error)
            return None
        except (*DISK_ERRORS, TypeError) as error:
            self._failed("read", error)
            return None
        self.last_error = None
        return _decode(raw)

    def set_many(self, items: Mapping[str, dict[str, Any]]) -> None:
        try:
            cache = self._open()
            if cache is None:
                return
            with cache.transact():
                for key, value in items.items():
                    cache.set(key, _encode(value))
        except (*DISK_ERRORS, ValueError, TypeError) as error:
            self._failed("write", error)
            return
        self.last_error = None

    def generation(self) -> int | None:
        try:
            cache = self._open()
            value = None if cache is None else cache.get(DISK_GENERATION_KEY)
        except (*DISK_ERRORS, ValueError, TypeError) as error:
            self._failed("read", error)
            return None
        return value if isinstance(value, int) else None

    def reset(self, generation: int) -> None:
        """Drop every entry and record the generation they now belong to."""
        try:
            cache = self._open()
            if cache is None:
                return
            cache.clear()
            cache.set(DISK_GENERATION_KEY, generation)
        except (*DISK_ERRORS, ValueError, TypeError) as error:
            self._failed("clear", error)

    def counts(self) -> tuple[int, int]:
        """Return the entry count and the bytes used on disk."""
        try:
            cache = self._open()
            if cache is None:
                return 0, 0
            entries = len(cache) - (1 if DISK_GENERATION_KEY in cache else 0)
            return entries, int(cache.volume())
        except (*DISK_ERRORS, ValueError, TypeError) as error:
            self._failed("stats", error)
            return 0, 0

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


class RedisTier:
    """Cache entries in Redis with a TTL, behind a short circuit breaker.

    After a connection error the tier is skipped for ``retry_interval``
    seconds, so an outage costs one timeout per interval instead of one per
    lookup.
    """

    def __init__(self, url: str, prefix: str, ttl: int, timeout: float, retry: float):
        self.url = url
        self.prefix = prefix
        self.ttl = ttl
        self.timeout = timeout
        self.retry_interval = retry
        self._client: redis.Redis | None = None
        self._down_until = 0.0
        self.connected = True

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry_on_timeout=False,
            )
        return self._client

    @property
    def generation_key(self) -> str:
        return f"{self.prefix}generation"

    @property
    def stats_key(self) -> str:
        return f"{self.prefix}stats"

    def entry_key(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, error: Exception) -> None:
        if self.connected:
            logger.warning(
                "Redis cache tier unreachable at %s: %s", redact_url(self.url), error
            )
        self.connected = False
        self._down_until = time.monotonic() + self.retry_interval

    def _succeeded(self) -> None:
        if not self.connected:
            logger.info("Redis cache tier reachable again at %s", redact_url(self.url))
        self.connected = True

    def run(self, operation: str, function: Any) -> Any:
        """Call ``function(client)``; return None when Redis is unreachable."""
        if not self.available():
            return None
        try:
            result = function(self.client)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._failed(error)
            return None
        except redis.RedisError as error:
            logger.warning("Redis cache %s failed: %s", operation, error)
            return None
        self._succeeded()
        return result

    def read_generation(self) -> int | None:
        raw = self.run("generation", lambda client: client.get(self.generation_key))
        if raw is None:
            return 0 if self.connected and self.available() else None
        return int(raw)

    def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        names = [self.entry_key(key) for key in keys]
        raw = self.run("read", lambda client: client.mget(names))
        if raw is None:
            return [None] * len(keys)
        return [_decode(value) for value in raw]

    def set_many(self, items: Mapping[str, dict[str, Any]]) -> None:
        def write(client: redis.Redis) -> None:
            pipeline = client.pipeline(transaction=False)
            for key, value in items.items():
                pipeline.set(self.entry_key(key), _encode(value), ex=self.ttl)
            pipeline.execute()

        self.run("write", write)

    def add_stats(self, counts: Mapping[str, int]) -> None:
        def write(client: redis.Redis) -> None:
            pipeline = client.pipeline(transaction=False)
            for name, count in counts.items():
                if count:
                    pipeline.hincrby(self.stats_key, name, count)
            pipeline.execute()

        if any(counts.values()):
            self.run("stats", write)

    def read_stats(self) -> dict[str, int] | None:
        raw = self.run("stats", lambda client: client.hgetall(self.stats_key))
        if raw is None:
            return None
        return {key.decode(): int(value) for key, value in raw.items()}

    def count_entries(self) -> tuple[int, bool]:
        """Count entry keys by SCAN within a time budget; return (count, exact)."""

        def scan(client: redis.Redis) -> tuple[int, bool]:
            deadline = time.monotonic() + REDIS_SCAN_BUDGET_SECONDS
            count = 0
            cursor = 0
            while True:
                cursor, keys = client.scan(
                    cursor, match=f"{self.prefix}e:*", count=1000
                )
                count += len(keys)
                if cursor == 0:
                    return count, True
                if time.monotonic() > deadline:
                    return count, False

        result = self.run("count", scan)
        return result if result is not None else (0, False)

    def clear(self) -> int | None:
        """Delete every entry and the stats; return the new generation."""

        def wipe(client: redis.Redis) -> int:
            generation = int(client.incr(self.generation_key))
            batch: list[bytes] = []
            for name in client.scan_iter(match=f"{self.prefix}e:*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
            client.delete(self.stats_key)
            return generation

        return self.run("clear", wipe)


def _encode(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _decode(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        logger.warning("Ignoring a cache value that is not valid JSON")
        return None
    return value if isinstance(value, dict) else None


class TranslationCache:
    """The three-tier cache of one process."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        self.settings = settings
        self.memory = MemoryTier(settings.cache_memory_entries)
        self.disk = DiskTier(
            settings.cache_dir, settings.cache_disk_bytes, settings.redis_retry_interval
        )
        self.redis = RedisTier(
            settings.redis_url,
            settings.cache_prefix,
            settings.cache_redis_ttl,
            settings.redis_timeout,
            settings.redis_retry_interval,
        )
        self._generation: int | None = None
        self._lock = threading.Lock()
        self.local_stats = dict.fromkeys(STATS_FIELDS, 0)

    def _current_generation(self) -> int:
        """Read the generation from Redis and drop local tiers when it moved."""
        remote = self.redis.read_generation()
        with self._lock:
            if self._generation is None:
                self._generation = self.disk.generation()
            if remote is None:
                # Redis is down: the disk tier, shared by the processes of this
                # host, records the newest clear any of them saw.
                on_disk = self.disk.generation()
                if on_disk is not None and on_disk != self._generation:
                    self.memory.clear()
                    self._generation = on_disk
                return self._generation or 0
            if remote != self._generation:
                logger.info(
                    "Cache generation moved from %s to %s; clearing local tiers",
                    self._generation,
                    remote,
                )
                self.memory.clear()
                if self.disk.generation() != remote:
                    self.disk.reset(remote)
                self._generation = remote
            return remote

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheHit]:
        """Look up keys in every tier; return the hits by key."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        generation = self._current_generation()
        counts = dict.fromkeys(STATS_FIELDS, 0)
        counts["lookups"] = len(keys)
        hits: dict[str, CacheHit] = {}

        remaining = self._lookup_memory(keys, generation, hits, counts)
        remaining = self._lookup_disk(remaining, generation, hits, counts)
        self._lookup_redis(remaining, generation, hits, counts)

        for name, count in counts.items():
            self.local_stats[name] += count
        for tier in ("memory", "disk", "redis"):
            metrics.record_cache_lookups(
                tier, counts[f"{tier}_hits"], counts[f"{tier}_misses"]
            )
        self.redis.add_stats(counts)
        return hits

    def _lookup_memory(
        self, keys: list[str], generation: int, hits: dict, counts: dict
    ) -> list[str]:
        remaining = []
        for key in keys:
            value = self.memory.get(key)
            if value is not None and value.get("g") == generation:
                hits[key] = CacheHit(value, "memory")
                counts["memory_hits"] += 1
            else:
                remaining.append(key)
                counts["memory_misses"] += 1
        return remaining

    def _lookup_disk(
        self, keys: list[str], generation: int, hits: dict, counts: dict
    ) -> list[str]:
        remaining = []
        for key in keys:
            value = self.disk.get(key)
            if value is not None and value.get("g") == generation:
                hits[key] = CacheHit(value, "disk")
                counts["disk_hits"] += 1
                self.memory.set(key, value)
            else:
                remaining.append(key)
                counts["disk_misses"] += 1
        return remaining

    def _lookup_redis(
        self, keys: list[str], generation: int, hits: dict, counts: dict
    ) -> None:
        if not keys:
            return
        promoted: dict[str, dict[str, Any]] = {}
        for key, value in zip(keys, self.redis.get_many(keys), strict=True):
            if value is not None and value.get("g") == generation:
                hits[key] = CacheHit(value, "redis")
                counts["redis_hits"] += 1
                self.memory.set(key, value)
                promoted[key] = value
            else:
                counts["redis_misses"] += 1
        if promoted:
            self.disk.set_many(promoted)

    def set_many(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Write translated values to every tier under the current generation."""
        if not items:
            return
        generation = self._current_generation()
        stored = {key: {**value, "g": generation} for key, value in items.items()}
        for key, value in stored.items():
            self.memory.set(key, value)
        self.disk.set_many(stored)
        self.redis.set_many(stored)

    def clear(self) -> dict[str, Any]:
        """Clear every tier in every process; return what was cleared."""
        generation = self.redis.clear()
        with self._lock:
            if generation is None:
                generation = (self._generation or 0) + 1
            self.memory.clear()
            self.disk.reset(generation)
            self._generation = generation
            self.local_stats = dict.fromkeys(STATS_FIELDS, 0)
        redis_cleared = self.redis.connected and self.redis.available()
        logger.info("Cache cleared; generation is now %s", generation)
        return {"generation": generation, "redis_cleared": redis_cleared}

    def stats(self, count_redis_entries: bool = True) -> dict[str, Any]:
        """Return entries, hits and misses per tier, and the hit rate.

        Counting Redis entries scans the keyspace for up to
        ``REDIS_SCAN_BUDGET_SECONDS``; health checks skip it.
        """
        generation = self._current_generation()
        shared = self.redis.read_stats()
        counters = shared if shared is not None else self.local_stats
        counters = {name: counters.get(name, 0) for name in STATS_FIELDS}
        disk_entries, disk_bytes = self.disk.counts()
        redis_entries, redis_exact = (
            self.redis.count_entries() if count_redis_entries else (None, False)
        )
        lookups = counters["lookups"]
        hits = counters["memory_hits"] + counters["disk_hits"] + counters["redis_hits"]
        return {
            "redis_connected": self.redis.connected and self.redis.available(),
            "disk_ok": self.disk.ok,
            "disk_error": self.disk.last_error,
            "generation": generation,
            "counters_scope": "all processes" if shared is not None else "this process",
            "lookups": lookups,
            "hits": hits,
            "misses": lookups - hits,
            "hit_rate": round(hits / lookups, 4) if lookups else 0.0,
            "tiers": {
                "memory": {
                    "entries": len(self.memory),
                    "max_entries": self.memory.max_entries,
                    "hits": counters["memory_hits"],
                    "misses": counters["memory_misses"],
                },
                "disk": {
                    "entries": disk_entries,
                    "bytes": disk_bytes,
                    "max_bytes": self.disk.size_limit,
                    "hits": counters["disk_hits"],
                    "misses": counters["disk_misses"],
                },
                "redis": {
                    "entries": redis_entries,
                    "entries_exact": redis_exact,
                    "ttl_seconds": self.redis.ttl,
                    "hits": counters["redis_hits"],
                    "misses": counters["redis_misses"],
                },
            },
        }


_cache: TranslationCache | None = None
_cache_lock = threading.Lock()


def get_cache() -> TranslationCache:
    """Return this process's cache, created on first use."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = TranslationCache()
    return _cache


def reset_cache() -> None:
    """Forget this process's cache (tests and forked children use this)."""
    global _cache
    with _cache_lock:
        if _cache is not None:
            _cache.disk.close()
        _cache = None
